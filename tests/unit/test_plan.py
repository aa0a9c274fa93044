"""Elastic resume, the plan's arithmetic (training/plan.py), in process: a checkpoint's run.json survives its JSON
(and one without a field the plan needs is refused as damaged); the global
batch is split exactly over a new world size or refused naming the sizes that can keep it; --keep-per-gpu-batch
rescales the schedules instead; what the plan expects to change is logged, any other change refused. (A checkpoint of
N ranks going on on M under real launchers: e2e/test_elastic.py.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import pytest

from config import ConfigError, config_from_dict
from model.safe_load import CheckpointError
from training.checkpoints import RUN_FILE, Checkpoint, CheckpointRecord, read_record
from training.plan import BatchLayout, RunPlan, check_resume, resume_layout, split_global_batch
from training.schedules import Schedules


def saved(world_size=2, batch=24, accum=1, requested=None, folder="ckpt/step00000010") -> Checkpoint:
    identity = {"data.batch_size": batch, "optimization.grad_accum": accum, "world size": world_size,
                "global batch size": batch * accum * world_size, "schedule: steps per epoch": 28}
    record = CheckpointRecord(10, world_size, identity, requested or (batch, accum), 0, (0, 480))
    return Checkpoint(Path(folder), record)


def plan_resume(cfg, saved, world_size, keep_per_gpu_batch=False):
    """The plan's batch decision as a record: layout, elastic, rescaled, expected changes, notes."""
    layout, elastic, rescaled, expected, notes = resume_layout(cfg, saved, world_size, keep_per_gpu_batch)
    return argparse.Namespace(batch_size=layout.batch_size, grad_accum=layout.grad_accum, elastic=elastic,
                              rescaled=rescaled, expected=expected, notes=notes)


def cfg_with(batch=24, accum=1, global_batch=0):
    """A config asking for data.batch_size `batch`, optimization.grad_accum `accum` and global_batch."""
    return config_from_dict({"data": {"batch_size": batch},
                             "optimization": {"grad_accum": accum, "global_batch": global_batch}})


def test_a_run_record_survives_its_json_and_one_without_a_field_is_damage(tmp_path):
    record = CheckpointRecord(10, 2, {"global batch size": 48, "data.batch_size": 24, "optimization.grad_accum": 1},
                              (24, 1), -2, (1, 96))
    assert CheckpointRecord.from_json(record.to_json()) == record
    assert (record.trained_global_batch, record.trained_batch) == (48, (24, 1))
    partial = json.loads(record.to_json())
    del partial["position"]
    (tmp_path / RUN_FILE).write_text(json.dumps(partial))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / RUN_FILE}: cannot be read \(KeyError: 'position'\); "
                                              r"the checkpoint is damaged: choose another one$"):
        read_record(tmp_path)


@pytest.mark.parametrize("global_batch,world,max_batch,want", [
    (48, 2, 24, (24, 1)),  # the run's own split
    (48, 2, 12, (12, 2)),  # the run's own split, with accumulation
    (48, 1, 24, (24, 2)),  # fewer GPUs: accumulate
    (48, 3, 24, (16, 1)),  # more GPUs: a smaller per-GPU batch
    (48, 1, 10, (8, 6)),  # never above the configured per-GPU batch (it is what fits in memory)
    (48, 4, 24, (12, 1)),  # the fewest accumulation steps
    (2048, 16, 128, (128, 1)),
    (2048, 12, 128, None),  # no whole split
    (48, 5, 24, None),
])
def test_the_global_batch_is_split_exactly_or_not_at_all(global_batch, world, max_batch, want):
    got = split_global_batch(global_batch, world, max_batch)
    assert got == want
    if got:
        assert got[0] * got[1] * world == global_batch and got[0] <= max_batch


def test_a_world_size_that_cannot_keep_the_global_batch_is_refused_naming_those_that_can():
    with pytest.raises(CheckpointError) as err:
        plan_resume(cfg_with(24), saved(world_size=2, batch=24), world_size=5, keep_per_gpu_batch=False)
    message = str(err.value)
    assert "global batch of 48; 5 GPUs cannot split it exactly" in message
    assert "Resume on 1, 2, 3, 4, 6, 8, 12, 16, 24 or 48 GPU(s)" in message
    assert "--keep-per-gpu-batch to train on with 24 samples per GPU and step (global batch 120" in message


def test_the_plan_keeps_the_global_batch_and_expects_only_the_layout_to_change():
    plan = plan_resume(cfg_with(24), saved(world_size=2, batch=24), world_size=3, keep_per_gpu_batch=False)
    assert (plan.batch_size, plan.grad_accum, plan.elastic, plan.rescaled) == (16, 1, True, False)
    assert plan.expected == {"world size", "data.batch_size", "optimization.grad_accum"}
    assert any("global batch 48 kept = 16 per GPU × grad_accum 1 × 3 GPU(s) (was 24 × 1 × 2)" in n for n in plan.notes)
    again = plan_resume(cfg_with(24), saved(world_size=3, batch=16, requested=(24, 1)), 3, False)
    assert (again.batch_size, again.elastic, again.expected) == (16, False, frozenset())  # the same command again
    back = plan_resume(cfg_with(24), saved(world_size=3, batch=16, requested=(24, 1)), 2, False)
    assert (back.batch_size, back.grad_accum) == (24, 1)


def test_keep_per_gpu_batch_expects_the_schedules_to_change():
    plan = plan_resume(cfg_with(24), saved(world_size=2, batch=24), world_size=3, keep_per_gpu_batch=True)
    assert (plan.batch_size, plan.grad_accum, plan.rescaled) == (24, 1, True)
    assert {"global batch size", "schedule: total steps", "schedule: steps per epoch"} <= plan.expected


def test_a_batch_changed_in_the_config_stays_a_change_to_refuse():
    plan = plan_resume(cfg_with(32), saved(world_size=2, batch=24), world_size=3, keep_per_gpu_batch=False)
    assert (plan.batch_size, plan.expected) == (32, frozenset({"world size"}))
    current = {**saved().record.identity, "world size": 3, "data.batch_size": 32, "global batch size": 96}
    with pytest.raises(CheckpointError, match=r"data.batch_size: 24 → 32; global batch size: 48 → 96\. Resume with"):
        check_resume(saved(), current, accept_changes=False, expected=plan.expected)


def test_planned_changes_are_logged_not_refused(caplog):
    current = {**saved().record.identity, "world size": 3, "data.batch_size": 16}
    with caplog.at_level(logging.INFO):
        check_resume(saved(), current, False, frozenset({"world size", "data.batch_size"}))
    assert "planned change: world size: 2 → 3" in caplog.text and "data.batch_size: 24 → 16" in caplog.text


def plan_at(saved_step, max_steps, epochs=20, steps_per_epoch=42) -> RunPlan:
    """A plan resuming a checkpoint of `saved_step` (None: a fresh start) with optimization.max_steps `max_steps`."""
    schedules = Schedules.official(epochs, 2, 1.0, steps_per_epoch)
    checkpoint = None
    if saved_step is not None:
        checkpoint = saved()
        checkpoint = Checkpoint(checkpoint.folder, dataclasses.replace(checkpoint.record, step=saved_step))
    return RunPlan(BatchLayout(24, 1, 2), (24, 1), "torch", None, steps_per_epoch, schedules, 0,
                   min(schedules.train_steps, max_steps or schedules.train_steps), {}, checkpoint)


def test_a_resume_with_nothing_left_to_train_says_so_and_what_to_raise():
    assert plan_at(None, 6).finished() is None and plan_at(5, 6).finished() is None
    assert plan_at(6, 6).finished() == ("nothing to do: the run is at step 6 and optimization.max_steps is 6 (the "
                                        "schedule has 840); raise optimization.max_steps to train on")
    assert plan_at(840, None).finished() == ("nothing to do: the run is at step 840 of 840, its schedule's last; "
                                             "evaluate its newest checkpoint, or train longer in another run.out_dir")


def test_the_recipes_global_batch_is_laid_out_afresh_on_every_world_size_and_on_resume():
    """optimization.global_batch: a fresh run on any ranks trains at that batch (micro batch ≤ data.batch_size, the
    fewest accumulation steps); a resume re-splits it as planned (not a change to refuse); auto starts from what fitted
    before; --keep-per-gpu-batch, which would change it, is refused."""
    from training.plan import fresh_layout

    assert fresh_layout(cfg_with(16, 1, 64), 2) == BatchLayout(16, 2, 2)
    assert fresh_layout(cfg_with(32, 1, 64), 2) == BatchLayout(32, 1, 2)
    assert fresh_layout(cfg_with("auto", 1, 64), 2) == BatchLayout(32, 1, 2)  # auto: the whole share first
    with pytest.raises(ConfigError, match=r"^optimization.global_batch 64 cannot be split over 3 ranks \(64 / 3 is "
                                          r"not whole\): train on 2 or 4 ranks .* to 63 or 66 "):
        fresh_layout(cfg_with(16, 1, 64), 3)
    then = saved(world_size=2, batch=32, accum=1, requested=(32, 1))
    got = plan_resume(cfg_with(16, 1, 64), then, 2)  # the config's micro batch changed: the plan re-splits
    assert (got.batch_size, got.grad_accum, got.elastic, got.rescaled) == (16, 2, False, False)
    assert {"data.batch_size", "optimization.grad_accum"} <= got.expected
    auto = saved(world_size=2, batch=8, accum=4, requested=("auto", 1))  # a launch found 8 to fit
    got = plan_resume(cfg_with("auto", 1, 64), auto, 4)
    assert (got.batch_size, got.grad_accum, got.elastic) == (8, 2, True)
    with pytest.raises(ConfigError, match="--keep-per-gpu-batch lets the global batch change"):
        plan_resume(cfg_with(16, 1, 64), then, 4, keep_per_gpu_batch=True)
