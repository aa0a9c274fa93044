"""Schedules: the spec's values at step 1, end of warmup and the last step; the official schedules' values at every
step of four settings (tests/fixtures/official_train_steps/schedules.json), through the plan and set_schedules."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

import training.plan
from config import config_from_dict
from model.predictor import Predictor
from model.vit import VisionTransformer
from training.engine import param_groups, set_schedules
from training.plan import plan_run
from training.schedules import Schedules, lr_at, momentum_at, wd_at

WARMUP, TOTAL = 40 * 625, 300 * 625  # the paper's recipe at ImageNet-1K, global batch 2048
OFFICIAL = json.loads((Path(__file__).parents[1] / "fixtures" / "official_train_steps" / "schedules.json").read_text())
CASES = {case["name"]: case for case in OFFICIAL["cases"]}


def test_lr_at_key_steps():
    assert lr_at(1, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(2e-4 + (1 / WARMUP) * (1e-3 - 2e-4))
    assert lr_at(WARMUP, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert lr_at(TOTAL, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6)
    mid = (WARMUP + TOTAL) // 2
    assert lr_at(mid, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5, rel=1e-4)


def test_wd_and_momentum_at_key_steps():
    assert wd_at(1, TOTAL, 0.04, 0.4) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / TOTAL)))
    assert wd_at(TOTAL, TOTAL, 0.04, 0.4) == pytest.approx(0.4)
    assert wd_at(TOTAL // 2, TOTAL, 0.04, 0.4) == pytest.approx(0.22)
    assert momentum_at(1, TOTAL, 0.996, 1.0) == 0.996
    assert momentum_at(TOTAL + 1, TOTAL, 0.996, 1.0) == 1.0
    assert momentum_at(TOTAL // 2 + 1, TOTAL, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(TOTAL + 9, TOTAL, 0.996, 1.0) == 1.0  # held at the end past the official generator


def case_config(settings: dict, **optimization):
    """The config of a schedules.json case: its optimization settings (then `optimization`) and EMA momentum, one
    sample per step (so that the plan's steps per epoch are the case's iterations per epoch)."""
    opt = {key: settings[key] for key in ("epochs", "ipe_scale", "start_lr", "lr", "final_lr", "weight_decay",
                                          "final_weight_decay")}
    return config_from_dict({"optimization": {**opt, "warmup_epochs": settings["warmup"], **optimization},
                             "ema": {"momentum": settings["ema"]},
                             "data": {"shards": "official", "batch_size": 1, "backend": "torch"}})


def official_plan(settings: dict, monkeypatch, **optimization):
    """plan_run of the case on one rank, a fresh start, over shards of `iterations_per_epoch` samples (a stand-in
    manifest: nothing is read)."""
    manifest = SimpleNamespace(total_samples=settings["iterations_per_epoch"], plan_sha256="0" * 64)
    monkeypatch.setattr(training.plan, "read_manifest", lambda shards, **_: manifest)
    return plan_run(case_config(settings, **optimization), world_size=1)


@pytest.mark.parametrize("name", CASES)
def test_plan_lays_out_the_official_lengths(name, monkeypatch):
    """warmup, T_max and the momentum denominator by the official arithmetic (order of operations included), and a
    run as long as the official loop: epochs x iterations per epoch, whatever ipe_scale."""
    case = CASES[name]
    plan = official_plan(case["settings"], monkeypatch)
    derived = case["derived"]
    assert plan.schedules == Schedules(derived["warmup_steps"], derived["T_max"], derived["momentum_denominator"],
                                       derived["train_steps"])
    assert plan.last_step == derived["train_steps"]
    assert plan.identity["schedule: warmup steps"] == derived["warmup_steps"]
    assert plan.identity["schedule: total steps"] == derived["T_max"]


@pytest.mark.parametrize("name", CASES)
def test_set_schedules_gives_the_official_values_at_every_step(name, monkeypatch):
    """lr, weight decay and EMA momentum at each listed step within 1e-9 relative of the official schedulers'."""
    case = CASES[name]
    plan = official_plan(case["settings"], monkeypatch)
    cfg = case_config(case["settings"])
    optimizer = SimpleNamespace(param_groups=[{"WD_exclude": False}, {"WD_exclude": True, "weight_decay": 0.0}])
    worst = dict.fromkeys(("lr", "wd", "momentum"), 0.0)
    for segment in case["segments"]:
        for i, step in enumerate(range(segment["first_step"], segment["last_step"] + 1)):
            got = set_schedules(optimizer, step, cfg, plan.schedules)
            assert optimizer.param_groups[0] == {"WD_exclude": False, "lr": got["lr"], "weight_decay": got["wd"]}
            assert optimizer.param_groups[1]["weight_decay"] == 0.0
            for key in worst:
                want = segment[key][i]
                worst[key] = max(worst[key], abs(got[key] - want) / abs(want))
    print(name, "max relative differences", worst)
    assert max(worst.values()) <= 1e-9, worst


def test_max_steps_ends_the_run_early_and_the_schedules_keep_their_length(monkeypatch):
    settings = CASES["ipe5_ep3_scale1.25"]["settings"]
    short = official_plan(settings, monkeypatch, max_steps=7)
    assert short.last_step == 7 and short.schedules == official_plan(settings, monkeypatch).schedules
    assert official_plan(settings, monkeypatch, max_steps=99).last_step == 15  # no further than the official loop


def test_param_groups_exclude_biases_and_1d_but_decay_mask_token():
    enc = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    pred = Predictor(enc.grid, 32, 16, 1, 2)
    groups = param_groups(pred, 0.04)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert id(pred.mask_token) in decay and id(pred.predictor_proj.weight) in decay
    assert id(pred.predictor_proj.bias) in no_decay and id(pred.predictor_norm.weight) in no_decay
    assert id(pred.predictor_pos_embed) not in decay | no_decay  # fixed: not optimized
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.04
