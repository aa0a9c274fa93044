"""Elastic resume (training/plan.py, training/checkpoints.py): a checkpoint written by N ranks goes on on M, through
DeepSpeed's universal checkpoint, with the global batch kept (or, on request, the per-GPU batch), the data position
continued and the schedules where they were. Here train.py (or the set-up it runs, tests/e2e/elastic_worker.py)
runs under real launchers: torchrun, DeepSpeed's launcher, two of each as two nodes. (The plan's arithmetic, in
process: unit/test_plan.py.)
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_checks import assert_target_is_the_ema_of_the_fp32_weights
from launches import (TRAIN_SETS, launch, launch_all, logged_losses, master_port, no_shm_leftovers, ok,  # noqa: F401
                      python, torchrun, train_main)

from training.sample_log import read_sample_log

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMALL = 192  # digits in the small set: 4 steps of 48 per epoch


# ------------------------------------------------------------------------------------------------------ launches

def sets(shards, out_dir, batch, *more) -> list[str]:
    """The --set arguments of train.py (or the worker) on the tiny config: TRAIN_SETS, this batch, the sample log."""
    base = [f"data.shards={shards}", f"run.out_dir={out_dir}", *TRAIN_SETS, f"data.batch_size={batch}",
            "logging.sample_log=true", *more]
    return [arg for s in base for arg in ("--set", s)]


# ------------------------------------------------------------------------------------------------------ states

def test_weights_moments_and_target_survive_a_change_of_world_size(digit_shards, tmp_path):
    """For ZeRO stages 1, 2 and 3: 2 ranks train 3 steps and checkpoint each (the target encoder saved at step 3 is
    the EMA of step 2's and the fp32 masters); 1 and 3 ranks load step 3 (DeepSpeed's universal conversion): the full
    fp32 masters, AdamW moments, 16-bit weights and target encoder equal those of the training engine at its save.
    One launch per world size runs the three stages in turn (e2e/elastic_worker.py), each in its own run folder."""
    stages = (1, 2, 3)
    common = sets(digit_shards["train"], "unused", 24, "optimization.max_steps=3", "checkpoint.every_steps=1",
                  "checkpoint.keep_last=2")
    worker = [str(ROOT / "tests" / "e2e" / "elastic_worker.py"), *[a for s in stages for a in ("--stage", str(s))]]
    out = tmp_path / "before"
    logs = ok(launch(torchrun(2, [*worker, str(out), "--train", *common]))).split("== ZeRO stage ")[1:]
    before = {}
    for stage, log in zip(stages, logs):
        assert log.startswith(str(stage))
        assert_target_is_the_ema_of_the_fp32_weights(out / f"stage{stage}" / "checkpoints", "step00000002",
                                                      "step00000003", step=3, stage=stage,
                                                      steps_per_epoch=1348 // 48, log=log)
        before[stage] = torch.load(out / f"stage{stage}.pt", weights_only=False)
    for world, (batch, accum) in ((1, (24, 2)), (3, (16, 1))):
        launcher = python if world == 1 else lambda args: torchrun(world, args)  # one process needs no launcher
        logs = ok(launch(launcher([*worker, str(out), "--resume", "auto", *common]))).split("== ZeRO stage ")
        for stage, log in zip(stages, logs[1:]):
            assert "elastic resume" in log  # DeepSpeed converts once; the second resume reuses the conversion
            assert (f"global batch 48 kept = {batch} per GPU × grad_accum {accum} × {world} GPU(s) (was 24 × 1 × 2)"
                    in log)
            assert ("converted from" if world == 1 else "kept from an earlier attempt at this resume") in log
            after = torch.load(out / f"stage{stage}.pt", weights_only=False)
            assert_same_states(after, before[stage], stage, world, batch, accum)
    for stage in stages:
        assert (out / f"stage{stage}" / "checkpoints" / "universal" / "step00000003").is_dir()  # kept until it saves


def assert_same_states(after: dict, before: dict, stage: int, world: int, batch: int, accum: int) -> None:
    """A resumed engine's dump equals the dump of the engine that saved: every parameter's fp32 master, moments and
    16-bit value, the target encoder; the step, layout and loader position as planned."""
    assert (after["step"], after["world_size"], after["batch_size"], after["grad_accum"]) == (3, world, batch, accum)
    assert after["params"].keys() == before["params"].keys() and len(before["params"]) > 50
    for name, want in before["params"].items():
        for key, tensor in want.items():
            assert torch.equal(after["params"][name][key], tensor), (stage, world, name, key)
    for name, tensor in before["target"].items():
        assert torch.equal(after["target"][name], tensor), (stage, world, name)
    loader = after["loader"]
    assert (loader["epoch"], loader["offset"], loader["batch_in_epoch"], loader["batches_seen"]) == (
        0, 3 * 48, 0, 3 * accum)


# ------------------------------------------------------------------------------------------------------ 1 → 2 → 1

def test_an_epoch_spanning_a_change_reads_every_sample_once_and_the_loss_goes_on(small_shards, tmp_path):
    """An uninterrupted run of 14 steps on 1 rank; a run that resumes its step-6 checkpoint on 2 ranks (7-10), then
    1 rank (11-14), global batch 48 kept: every sample of an epoch once, the same global order, the loss goes on."""
    def train(nproc, out, last, *extra):
        more = (f"optimization.max_steps={last}", "checkpoint.every_steps=3", "checkpoint.keep_last=5")
        args = ["train.py", "--config", "configs/tiny_cpu.yaml", *sets(small_shards, out, 48, *more), *extra]
        return ok(launch(python(args) if nproc == 1 else torchrun(nproc, args)))  # one process: no launcher

    assert "global batch 48, 4 steps/epoch" in train(1, tmp_path / "ref", 14)
    second = train(2, tmp_path / "run", 10, "--resume", str(tmp_path / "ref" / "checkpoints" / "step00000006"))
    assert "global batch 48 kept = 24 per GPU × grad_accum 1 × 2 GPU(s) (was 48 × 1 × 1)" in second
    assert "data: epoch 1 at sample 96 of 192, the same global sample order" in second
    third = train(1, tmp_path / "run", 14, "--resume", "auto")
    assert "global batch 48 kept = 48 per GPU × grad_accum 1 × 1 GPU(s) (was 24 × 1 × 2)" in third
    assert not (tmp_path / "run" / "checkpoints" / "universal").exists()  # removed once the run saved its own

    rows = [r for r in read_sample_log(tmp_path / "ref") if r["step"] <= 6] + read_sample_log(tmp_path / "run")
    by_step = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append(row)
    assert sorted(by_step) == list(range(1, 15))
    assert {r["world_size"] for s in range(7, 11) for r in by_step[s]} == {2}
    for epoch, steps in ((1, range(5, 9)), (2, range(9, 13))):  # both epochs span a change of world size
        keys = [k for s in steps for r in by_step[s] for k in r["keys"]]
        assert all(r["epoch"] == epoch for s in steps for r in by_step[s])
        assert len(keys) == len(set(keys)) == SMALL  # every sample of the set, once
    reference = {}
    for row in read_sample_log(tmp_path / "ref"):
        reference.setdefault(row["step"], []).extend(row["keys"])
    for step in range(1, 15):  # the same global order: each step reads the samples the uninterrupted run read
        assert sorted(k for r in by_step[step] for k in r["keys"]) == sorted(reference[step])

    want, got = logged_losses(tmp_path / "ref"), logged_losses(tmp_path / "run")
    assert sorted(got) == list(range(7, 15))
    step_to_step = max(abs(want[s + 1] - want[s]) for s in range(1, 14))
    gaps = {s: abs(got[s] - want[s]) for s in range(7, 15)}
    assert max(gaps.values()) <= step_to_step / 2, (gaps, step_to_step)  # measured: 0.0023 vs 0.0235
    assert abs(got[7] - want[6]) <= 2 * step_to_step and abs(got[11] - got[10]) <= 2 * step_to_step


# ------------------------------------------------------------------------------------------------------ two nodes

def check_ranks(rows, steps, world, nproc_per_node, accum=1):
    """Each step: every global rank read `accum` batches, rank = node_rank × nproc_per_node + local_rank, no sample
    twice."""
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        assert sorted(r["rank"] for r in mine) == sorted(list(range(world)) * accum), (step, mine)
        for r in mine:
            assert r["world_size"] == world and r["rank"] == r["node_rank"] * nproc_per_node + r["local_rank"]
        keys = [k for r in mine for k in r["keys"]]
        assert len(keys) == len(set(keys))


def test_two_nodes_by_torchrun_then_one_node(small_shards, tmp_path):
    """2 torchrun launchers as 2 nodes × 2 processes train and checkpoint; one node of 2 processes goes on, each
    accumulating 2 micro batches."""
    run_dir, master = tmp_path / "run", master_port()
    args = ["train.py", "--config", "configs/tiny_cpu.yaml",
            *sets(small_shards, run_dir, 12, "optimization.max_steps=3", "checkpoint.every_steps=3")]
    procs = launch_all([torchrun(2, args, nnodes=2, node_rank=n, port=master) for n in (0, 1)])
    out = ok(procs[0]) + ok(procs[1])
    assert out.count("saved checkpoint") == 1  # global rank 0 alone writes run.json, COMPLETE and the log
    check_ranks(read_sample_log(run_dir), range(1, 4), world=4, nproc_per_node=2)
    more = ["train.py", "--config", "configs/tiny_cpu.yaml",
            *sets(small_shards, run_dir, 12, "optimization.max_steps=5", "checkpoint.every_steps=3"),
            "--resume", "auto"]
    out = ok(launch(torchrun(2, more)))
    assert "written by 4 rank(s), this run has 2" in out
    assert "global batch 48 kept = 12 per GPU × grad_accum 2 × 2 GPU(s) (was 12 × 1 × 4)" in out
    rows = read_sample_log(run_dir)
    check_ranks([r for r in rows if r["world_size"] == 2], (4, 5), world=2, nproc_per_node=2, accum=2)
    epoch0 = [k for r in rows if r["step"] <= 4 for k in r["keys"]]  # steps 1-3 on 4 ranks, step 4 on 2
    assert len(epoch0) == len(set(epoch0)) == SMALL


def test_two_nodes_by_the_deepspeed_launcher_without_ssh_then_three_processes(small_shards, tmp_path, caplog,
                                                                              monkeypatch):
    """DeepSpeed's launcher with a hostfile of 2 nodes and --no_ssh, one launcher per node (rank from its
    --node_rank), trains and checkpoints; 5 processes cannot split the batch (refused by the run plan before any
    process group: train.py's main in this process, as rank 0 of 5); 3 go on with --keep-per-gpu-batch. (Onto 1
    process, grad_accum 2: test_weights_moments_and_target_survive_a_change_of_world_size.)"""
    run_dir, master = tmp_path / "run", master_port()
    (tmp_path / "hostfile").write_text("node0 slots=1\nnode1 slots=1\n")
    args = ["train.py", "--config", "configs/tiny_cpu.yaml",
            *sets(small_shards, run_dir, 16, "optimization.max_steps=2", "checkpoint.every_steps=2")]
    procs = launch_all([[str(BIN / "deepspeed"), "--hostfile", str(tmp_path / "hostfile"), "--no_ssh",
                         f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={master}", *args]
                        for n in (0, 1)])
    ok(procs[0]), ok(procs[1])
    check_ranks(read_sample_log(run_dir), (1, 2), world=2, nproc_per_node=1)
    more = [a.replace("max_steps=2", "max_steps=4") for a in args] + ["--resume", "auto"]
    with monkeypatch.context() as env:
        env.setenv("WORLD_SIZE", "5")
        code, lines = train_main(more[1:], caplog)
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:")
    assert "global batch of 32; 5 GPUs cannot split it exactly" in lines[0]
    # --keep-per-gpu-batch on 3: 16 per GPU, global batch 32 → 48; step 2 read 64 samples of epoch 0, which is
    # step 64 // 48 = 1 of the new schedules (shift -1); two whole new steps are left in epoch 0 (32 samples unread)
    rescaled = [a.replace("max_steps=2", "max_steps=5") for a in args] + ["--resume", "auto", "--keep-per-gpu-batch"]
    out = ok(launch(torchrun(3, rescaled)))
    assert "written by 2 rank(s), this run has 3" in out
    assert "global batch 32 → 48" in out and "schedule: total steps: 120 → 80" in out
    assert "the schedules go on from their step 1 (shift -1; the step count goes on from 2)" in out
    saved = json.loads((run_dir / "checkpoints" / "step00000005" / "run.json").read_text())
    assert saved["schedule_shift"] == -1 and saved["identity"]["global batch size"] == 48
    assert saved["world_size"] == 3
    rows = read_sample_log(run_dir)
    epoch0 = [k for r in rows if r["step"] <= 4 for k in r["keys"]]
    assert len(epoch0) == len(set(epoch0)) == 2 * 32 + 2 * 48
    assert {r["epoch"] for r in rows if r["step"] == 5} == {1}


@pytest.mark.skipif(importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None,
                    reason="DALI is not installed")
def test_dali_backend_restarts_the_interrupted_epoch_and_says_which_samples_repeat(small_shards, tmp_path):
    """DALI's reader cannot start mid-order on another number of shards: 1 rank reads 2 steps of epoch 0, 2 ranks
    restart epoch 0 and read it whole; the log names the 96 samples read twice."""
    run_dir = tmp_path / "run"
    args = ["train.py", "--config", "configs/tiny_cpu.yaml", *sets(small_shards, run_dir, 48, "data.backend=dali",
                                                                   "checkpoint.every_steps=2")]
    ok(launch(python([*args, "--set", "optimization.max_steps=2"])))
    out = ok(launch(torchrun(2, [*args, "--set", "optimization.max_steps=6", "--resume", "auto"])))
    assert ("epoch 0 restarts: the 96 samples its old ranks had read in it are read a second time, the rest once"
            in out)
    rows = read_sample_log(run_dir)
    before = {k for r in rows if r["world_size"] == 1 for k in r["keys"]}
    restarted = [k for r in rows if r["world_size"] == 2 and r["epoch"] == 0 for k in r["keys"]]
    assert len(before) == 96 and len(restarted) == len(set(restarted)) == SMALL  # epoch 0 again, whole
    assert before <= set(restarted)
    assert sorted({r["step"] for r in rows if r["world_size"] == 2}) == [3, 4, 5, 6]  # the step count goes on
