"""The collapse alarm's parts in process (training/collapse.py, training/metrics.py FeatureMoments): the rule on the
figures measured on the tiny config (a healthy run never fires, the collapse of e2e/test_collapse.py does, once per
fall), its line, collapse.json across launches, the moments against a direct SVD, and the fixed set: the same images
split over the ranks. The launched runs that collapse for real: e2e/test_collapse.py."""
import json
import logging
import math
import shutil

import pytest
import torch

from config import load_config
from model.vit import VisionTransformer
from training.checkpoints import checkpoint_dir, tag_for
from training.collapse import FIXED_IMAGES, CollapseRule, History, alarm_line, encode, read_share
from training.best_checkpoint import offer_best
from training.metrics import FeatureMoments

from test_best_checkpoint import make_tag  # noqa: E402  (tests/unit is on sys.path: a tag folder as a save leaves it)

# Measured on configs/tiny_cpu.yaml with the digits (docs/training.md, "Collapse"): a healthy run of 400 steps at
# batch 32, checked every 10 steps, and the collapse (ema.momentum [0, 0], lr 5e-2 from step 0, batch 16) checked
# every 2 steps; the patch tokens' effective rank of the fixed set.
HEALTHY_TOKEN_RANK = [12.4, 12.4, 12.4, 12.5, 12.5, 12.5, 12.5, 12.6, 12.6, 12.7, 12.7, 12.7, 12.8, 12.8, 12.9, 12.9,
                      12.9, 13.0, 13.0, 13.0, 13.1, 13.1, 13.1, 13.1, 13.1, 13.0, 13.0, 12.9, 12.9, 12.8, 12.8, 12.8,
                      12.7, 12.7, 12.7, 12.7, 12.6, 12.6, 12.6, 12.6]
HEALTHY_KNN = [0.280, 0.289, 0.400, 0.462, 0.489, 0.507, 0.471, 0.471, 0.458, 0.431]
COLLAPSE_TOKEN_RANK = {2: 8.4, 4: 1.2, 6: 1.3, 8: 1.3, 10: 1.3, 12: 1.4}


def test_a_healthy_run_never_fires_and_the_collapse_fires_once_at_its_third_check_under_half_the_peak():
    rule = CollapseRule(0.5, 3)
    for i, value in enumerate(HEALTHY_TOKEN_RANK):
        assert rule.check(10 * (i + 1), {"token_rank": value, "feature_std": 0.04 / (1 + i)}) is None
    for i, value in enumerate(HEALTHY_KNN):
        assert rule.check(40 * (i + 1), {"knn_top1": value}) is None
    assert not rule.firing

    rule = CollapseRule(0.5, 3)
    fired = [(step, rule.check(step, {"token_rank": v})) for step, v in COLLAPSE_TOKEN_RANK.items()]
    assert [step for step, f in fired if f is not None] == [8]  # steps 4, 6, 8 under 4.2; not again after
    alarm = fired[3][1]
    assert (alarm.name, alarm.value, alarm.watch.peak, alarm.watch.peak_step, alarm.watch.since) == \
        ("token_rank", 1.3, 8.4, 2, 4)
    assert rule.firing


def test_the_rule_fires_again_only_after_a_recovery_and_takes_a_nan_as_a_fall():
    rule = CollapseRule(0.5, 2)
    fires = [rule.check(s, {"effective_rank": v}) is not None for s, v in enumerate([8, 3, 3, 3, 8, 3, math.nan])]
    assert fires == [False, False, True, False, False, False, True]
    assert CollapseRule(0.5, 1).check(1, {"feature_std": 0.0}) is None  # the std is logged, not judged


def test_the_alarm_line_names_the_figure_its_peak_and_the_newest_checkpoint_before_the_fall(tmp_path):
    for step in (2, 6, 10):
        make_tag(tmp_path, step)
    rule = CollapseRule(0.5, 3)
    fired = [rule.check(s, {"token_rank": v}) for s, v in COLLAPSE_TOKEN_RANK.items()][3]
    line = alarm_line(fired, 0.5, tmp_path)
    assert line.startswith("collapse alarm: step 8: effective rank of the patch tokens 1.3 is under 0.5 x its peak "
                           "8.4 (step 2) for 3 checks in a row, since step 4: ")
    assert line.endswith(f"go back to the newest checkpoint before it (--resume {checkpoint_dir(tmp_path)}/"
                         f"step00000002) with a lower optimization.lr or a higher ema.momentum") and "\n" not in line
    assert "no checkpoint was saved before it: start again" in alarm_line(fired, 0.5, tmp_path / "elsewhere")
    offer_best(make_tag(tmp_path, 3), 3, 0.5)  # the best probe's save, after the newest tag before the fall ...
    shutil.rmtree(checkpoint_dir(tmp_path) / tag_for(3))  # ... whose tag keep_last pruned
    assert alarm_line(fired, 0.5, tmp_path).endswith(f"go back to the newest checkpoint before it (--resume "
                                                     f"{checkpoint_dir(tmp_path) / 'best'}) with a lower "
                                                     f"optimization.lr or a higher ema.momentum")
    offer_best(make_tag(tmp_path, 12), 12, 0.9)  # after the fall: named beside the tag before it
    assert alarm_line(fired, 0.5, tmp_path).endswith(f"optimization.lr or a higher ema.momentum; "
                                                     f"{checkpoint_dir(tmp_path) / 'best'} holds the checkpoint of the "
                                                     f"best kNN probe (step 12)")


def test_collapse_json_gives_a_resumed_launch_the_peaks_of_the_steps_before_it(tmp_path, caplog):
    history = History(tmp_path, 0)
    for step, value in COLLAPSE_TOKEN_RANK.items():
        history.add(step, {"token_rank": value, "images": 449})
    rule = CollapseRule(0.5, 3)
    History(tmp_path, 6).replay(rule)  # resumed from step 6: the checks of 8, 10 and 12 are another course's
    assert (rule.watches["token_rank"].peak, rule.watches["token_rank"].below) == (8.4, 2)
    assert rule.check(8, {"token_rank": 1.3}) is not None  # the fall that began before the resume fires
    (tmp_path / "collapse.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert History(tmp_path, 12).checks == []
    assert "not a record of collapse checks" in caplog.text


def collapse_diagnostics(features: torch.Tensor) -> dict:
    """features (N, D), one row per image (or token), in one piece → FeatureMoments.diagnostics."""
    moments = FeatureMoments()
    moments.add(features)
    return moments.diagnostics()


def test_moments_summed_over_chunks_give_the_svd_s_effective_rank_and_its_ceiling():
    x = torch.randn(300, 20) @ torch.randn(20, 20) + 5.0
    sv = torch.linalg.svdvals((x - x.mean(0)).double())
    p = sv / sv.sum()
    whole, parts = collapse_diagnostics(x), FeatureMoments()
    for chunk in x.split(7):
        parts.add(chunk)
    assert whole["effective_rank"] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-9)
    assert whole["feature_std"] == pytest.approx(x.std(0).mean().item(), rel=1e-5)
    assert parts.diagnostics() == pytest.approx(whole, rel=1e-9)
    assert whole["effective_rank_ceiling"] == 20 and collapse_diagnostics(x[:8])["effective_rank_ceiling"] == 7
    one_direction = torch.randn(300, 1) * torch.randn(1, 20) + 5.0  # every image on one line: collapsed
    assert collapse_diagnostics(one_direction)["effective_rank"] == pytest.approx(1.0, abs=1e-3)


def test_the_ranks_split_the_same_fixed_images_and_encode_them_in_fp32(small_shards):
    cfg = load_config("configs/tiny_cpu.yaml", [f"data.shards={small_shards}"])
    whole = read_share(cfg, None, 0, 1)
    halves = [read_share(cfg, None, rank, 2) for rank in (0, 1)]
    assert whole.shape == (min(FIXED_IMAGES, 192), 3, 32, 32) and whole.dtype == torch.uint8
    assert torch.equal(halves[0], whole[0::2]) and torch.equal(halves[1], whole[1::2])
    encoder = VisionTransformer(img_size=32, patch_size=4, embed_dim=24, depth=1, num_heads=2)
    pooled, tokens = encode(encoder, whole, torch.device("cpu"))
    split = [encode(encoder, half, torch.device("cpu")) for half in halves]
    assert (pooled.count, tokens.count) == (192, 192 * 64)
    assert (split[0][1] + split[1][1]).diagnostics() == pytest.approx(tokens.diagnostics(), rel=1e-6)
    assert encode(encoder, whole[:0], torch.device("cpu"))[0].count == 0  # a rank with no share adds nothing
    assert (pooled + encode(encoder, whole[:0], torch.device("cpu"))[0]).count == 192
    json.dumps(pooled.diagnostics())  # plain floats: TensorBoard, collapse.json
