"""The recipe's global batch on any number of ranks, and the micro batch that fits (training/plan.py,
training/micro_batch.py), by the real CLI under torchrun on 2 ranks:

- optimization.global_batch 64 with data.batch_size 16 trains at 16 × accum 2 × 2 ranks, the samples and the losses
  of 32 × 1 × 2 (within the elastic tests' tolerance: crops and masks are drawn per micro batch);
- data.batch_size auto under a real process memory limit (tests/e2e/memory_limit_worker.py: RLIMIT_AS, set as the
  first forward starts): a micro batch of 512 per rank fails in the CPU allocator on every rank, every rank goes on
  with 256 × 2 from the launch's start, and the step equals a run configured with 256 from the start; run.json
  records it; without auto the same failure is one line naming the micro batch and what to set.
"""
from __future__ import annotations

import json
import sys

from launches import (launch, logged_losses, no_shm_leftovers, ok, run_record, torchrun,  # noqa: F401
                      train_args)

from training.sample_log import read_sample_log

WORKER = "tests/e2e/memory_limit_worker.py"
# Crops of 64 px (256 patches) make a micro batch's memory the step's largest part: measured on this machine, each
# rank's mapped memory grows by ~2.5 GiB in a step of 512 per rank, ~1.7 GiB of 256; the limit is 2.0 GiB above
# what is mapped when the first forward starts. glibc returns freed blocks to the system (large blocks mmapped, two
# arenas), so that a rebuilt engine starts from the same mapped size as the first.
LIMIT_MB = "2000"
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
BIG = ("data.crop_size=64", "optimization.global_batch=1024", "optimization.max_steps=1", "logging.sample_log=true")


def step_keys(out_dir) -> dict[int, list[str]]:
    keys: dict[int, list[str]] = {}
    for row in read_sample_log(out_dir):
        keys.setdefault(row["step"], []).extend(row["keys"])
    return {step: sorted(k) for step, k in keys.items()}


def test_the_global_batch_is_kept_with_a_smaller_micro_batch(small_shards, tmp_path):
    """64 = 16 × 2 × 2: the same samples per step as 32 × 1 × 2 and the losses within half a step-to-step change."""
    def run(name, batch):
        out = tmp_path / name
        args = train_args(small_shards, out, f"data.batch_size={batch}", "optimization.global_batch=64",
                          "optimization.max_steps=6", "logging.sample_log=true")
        return out, ok(launch(torchrun(2, args)))

    ref, ref_log = run("ref", 32)
    split, split_log = run("split", 16)
    assert "global batch 64, 3 steps/epoch" in ref_log and "; 32 per GPU x grad_accum 1 x 2" in ref_log
    assert "global batch 64, 3 steps/epoch" in split_log and "; 16 per GPU x grad_accum 2 x 2" in split_log
    assert run_record(ref / "checkpoints" / "step00000006")["identity"]["optimization.grad_accum"] == 1
    identity = run_record(split / "checkpoints" / "step00000006")["identity"]
    assert (identity["data.batch_size"], identity["optimization.grad_accum"], identity["global batch size"]) == (
        16, 2, 64)
    assert step_keys(split) == step_keys(ref) and len(step_keys(ref)[1]) == 64
    want, got = logged_losses(ref), logged_losses(split)
    step_to_step = max(abs(want[s + 1] - want[s]) for s in range(1, 6))
    gaps = [abs(got[s] - want[s]) for s in range(1, 7)]
    assert max(gaps) <= step_to_step / 2, (gaps, step_to_step)


def test_auto_finds_the_micro_batch_that_fits_under_a_memory_limit(digit_shards, tmp_path):
    """Every rank runs out of memory with 512, agrees, rebuilds with 256 × 2 and trains the step: its samples and loss
    are those of a run that asked for 256 from the start; run.json records 256 × 2 and the config's auto."""
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    proc = launch(torchrun(2, [WORKER, LIMIT_MB, *train_args(digit_shards["train"], auto, *BIG,
                                                             "data.batch_size=auto")[1:]]), env=MALLOC)
    log = ok(proc)
    assert log.count("memory limit: ") == 2  # each rank's
    assert "; 512 per GPU x grad_accum 1 x 2 (data.batch_size auto: the first step tries it)" in log
    assert ("data.batch_size auto: step 1 ran out of memory with a micro batch of 512 per GPU; every rank goes on "
            "with 256 x grad_accum 2 (global batch 1024 kept), from the launch's start") in log
    assert "data.batch_size auto: a micro batch of 256 per GPU x grad_accum 2 fits" in log
    record = run_record(auto / "checkpoints" / "step00000001")
    assert record["requested"] == ["auto", 1]
    assert (record["identity"]["data.batch_size"], record["identity"]["optimization.grad_accum"]) == (256, 2)
    assert json.loads((auto / "micro_batch.json").read_text()) == {"out_of_memory_at": 512}

    ok(launch(torchrun(2, train_args(digit_shards["train"], fixed, *BIG, "data.batch_size=256"))))
    assert step_keys(auto) == step_keys(fixed) and len(step_keys(auto)[1]) == 1024
    assert logged_losses(auto) == logged_losses(fixed)  # the same computation: the failed attempt left nothing


def test_running_out_of_memory_without_auto_is_one_line_naming_what_to_set(digit_shards, tmp_path):
    """One process asking for 1024 per micro step under the limit: the CPU allocator's failure, worded."""
    args = train_args(digit_shards["train"], tmp_path / "run", *BIG, "data.batch_size=1024")
    proc = launch([sys.executable, WORKER, LIMIT_MB, *args[1:]], env=MALLOC)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(
        "error: out of memory in step 1 with a micro batch of 1024 per GPU: peak "), errors
    assert ("set data.batch_size 512 (optimization.global_batch 1024 is kept: grad_accum makes up the rest), or "
            "data.batch_size auto, or set model.activation_checkpointing true") in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())
