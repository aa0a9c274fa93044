"""checkpoint.keep_best on fake tag folders (training/best_checkpoint.py, training/checkpoints.py): the best probe's
checkpoint is linked as checkpoints/best and verifies with the step of its run.json; a worse probe leaves it, a
better one replaces it; keep_last, --resume auto and the start's clean-up never take it for a tag; a run that died
while replacing it gets it back. A real run that keeps it and eval.py reading it: e2e/test_collapse.py."""
import json
import logging
import os

import pytest

from model.safe_load import CheckpointError
from training import checkpoints
from training.best_checkpoint import BEST, BEST_OLD, BEST_RECORD, BEST_STAGING, offer_best, read_best
from training.checkpoints import (CheckpointRecord, checkpoint_dir, choose_checkpoint, clean_crashed_saves,
                                  complete_tags, folder_step, not_a_checkpoint, prune, tag_for)
from training.integrity import mark_complete, verify_checkpoint


@pytest.fixture(autouse=True)
def rank0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


def make_tag(out_dir, step: int):
    """A fake complete tag folder with a run.json of `step`, as a save leaves it."""
    folder = checkpoint_dir(out_dir) / tag_for(step)
    (folder / "zero").mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(os.urandom(3000))
    (folder / "zero" / "optim_states.pt").write_bytes(os.urandom(2000))
    record = CheckpointRecord(step, 1, {"global batch size": 16}, (16, 1), 0, (0, 16 * step))
    (folder / "run.json").write_text(record.to_json())
    mark_complete(folder, step)
    return folder


def test_the_best_probe_is_kept_as_best_and_verifies_as_its_tag_did(tmp_path, caplog):
    ckpt_dir = checkpoint_dir(tmp_path)
    first = make_tag(tmp_path, 2)
    offer_best(first, 2, 0.40)
    best = ckpt_dir / BEST
    assert sorted(p.name for p in best.rglob("*")) == sorted(p.name for p in first.rglob("*"))
    assert os.path.samefile(best / "mp_rank_00_model_states.pt", first / "mp_rank_00_model_states.pt")  # linked
    assert folder_step(best) == 2 and verify_checkpoint(best, folder_step(best)) == []
    assert json.loads((ckpt_dir / BEST_RECORD).read_text()) == {"step": 2, "knn_top1": 0.40, "tag": "step00000002"}

    offer_best(make_tag(tmp_path, 4), 4, 0.40)  # a tie keeps the earlier
    assert read_best(ckpt_dir)["step"] == 2
    with caplog.at_level(logging.INFO):
        offer_best(make_tag(tmp_path, 6), 6, 0.55)
    assert read_best(ckpt_dir) == {"step": 6, "knn_top1": 0.55, "tag": "step00000006"}
    assert "kept step00000006 as" in caplog.text and "the previous best, step 2, had 40.0%" in caplog.text
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [BEST, BEST_RECORD, "step00000002", "step00000004",
                                                          "step00000006"]  # no staging or old folder left


def test_keep_last_resume_auto_and_the_clean_up_leave_best_alone(tmp_path):
    ckpt_dir = checkpoint_dir(tmp_path)
    offer_best(make_tag(tmp_path, 2), 2, 0.9)
    for step in (4, 6):
        make_tag(tmp_path, step)
    assert prune(ckpt_dir, 1, tag_for(6)) == ["step00000002", "step00000004"]
    assert complete_tags(ckpt_dir) == ["step00000006"] and choose_checkpoint("auto", tmp_path) == ckpt_dir / tag_for(6)
    clean_crashed_saves(tmp_path)
    best = ckpt_dir / BEST
    assert verify_checkpoint(best, folder_step(best)) == []  # its files outlive the pruned tag: they are links
    assert choose_checkpoint(str(best), tmp_path) == best  # --resume PATH takes it, checked at its run.json's step
    assert f"or the best by the in-training kNN probe: --checkpoint {best}" in not_a_checkpoint(tmp_path,
                                                                                                "--checkpoint")


def test_a_best_whose_run_json_and_marker_disagree_is_refused_naming_the_step(tmp_path):
    offer_best(make_tag(tmp_path, 2), 2, 0.9)
    best = checkpoint_dir(tmp_path) / BEST
    os.unlink(best / "run.json")  # a link: write a new file, not through it into the tag's
    (best / "run.json").write_text(CheckpointRecord(8, 1, {}, (16, 1), 0, (0, 0)).to_json())
    with pytest.raises(CheckpointError, match=r"COMPLETE: says step 2, not the folder's 8"):
        choose_checkpoint(str(best), tmp_path)


def test_a_run_that_died_while_replacing_best_gets_the_old_one_back(tmp_path, caplog):
    ckpt_dir = checkpoint_dir(tmp_path)
    offer_best(make_tag(tmp_path, 2), 2, 0.5)
    (ckpt_dir / BEST).rename(ckpt_dir / BEST_OLD)  # died between the two renames
    (ckpt_dir / BEST_STAGING).mkdir()
    with caplog.at_level(logging.WARNING):
        clean_crashed_saves(tmp_path)
    assert "put back" in caplog.text and not (ckpt_dir / BEST_STAGING).exists()
    assert read_best(ckpt_dir)["step"] == 2

    (ckpt_dir / BEST_RECORD).write_text(json.dumps({"step": 4, "knn_top1": 0.7, "tag": "step00000004"}))
    with caplog.at_level(logging.WARNING):
        assert read_best(ckpt_dir) is None  # died before best.json caught up: the next probed save replaces it
    assert "does not describe" in caplog.text
    offer_best(make_tag(tmp_path, 4), 4, 0.1)
    assert read_best(ckpt_dir)["step"] == 4


def test_the_checkpointer_offers_only_a_save_probed_at_its_own_step(tmp_path):
    from config import load_config

    cfg = load_config("configs/tiny_cpu.yaml", ["checkpoint.keep_best=true", "logging.probe_every=5",
                                                "logging.probe_shards=x"])
    checkpointer = checkpoints.Checkpointer(cfg, tmp_path, 100)
    checkpointer.probed(5, 0.3)
    assert checkpointer.probe == (5, 0.3)
    off = checkpoints.Checkpointer(load_config("configs/tiny_cpu.yaml"), tmp_path, 100)
    off.probed(5, 0.3)
    assert off.probe is None


def test_report_takes_a_checkpoint_folder_for_its_run_and_draws_that_checkpoint(tmp_path):
    from config import config_to_yaml, load_config
    from reporting import ReportError
    from reporting.run_folder import open_run

    (tmp_path / "config.yaml").write_text(config_to_yaml(load_config("configs/tiny_cpu.yaml")))
    offer_best(make_tag(tmp_path, 2), 2, 0.9)
    make_tag(tmp_path, 4)
    best = checkpoint_dir(tmp_path) / BEST
    run = open_run(best)
    assert (run.path, run.checkpoint, run.record.step) == (tmp_path, best, 2)
    assert open_run(tmp_path).checkpoint == checkpoint_dir(tmp_path) / tag_for(4)  # the folder: the newest
    lone = tmp_path / "elsewhere" / BEST
    lone.parent.mkdir()
    best.rename(lone)
    with pytest.raises(ReportError, match="a checkpoint outside a run folder of train.py"):
        open_run(lone)
