"""Slurm for real: a one-node Slurm started on this machine (e2e/slurm_cluster.py; skipped, saying why, without root
or Slurm): node lists against `scontrol show hostnames`, a job that may not requeue is told so, and the batch
script's job (tools/slurm/train.sbatch) on 2 tasks, stopped by the warning signal, requeued, resumed and finished on
the samples and losses of an uninterrupted run. (training/slurm.py in process: unit/test_slurm.py.)"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launches import (TRAIN_SETS, complete_tags, environment, logged_losses, no_shm_leftovers, start,  # noqa: F401
                      torchrun)
from node_lists import EXPANDED, REFUSED
from slurm_cluster import LocalSlurm, unavailable

from training.sample_log import read_sample_log
from training.slurm import requeue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """slurmctld, slurmd and munged on this machine for this file's tests; skipped, saying why, where they cannot
    run (not root, Slurm not installed)."""
    why = unavailable()
    if why:
        pytest.skip(why)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def test_node_lists_match_scontrol(slurm):
    for nodelist, want in EXPANDED.items():
        assert slurm.run(["scontrol", "show", "hostnames", nodelist]).stdout.split() == want, nodelist
    for nodelist in REFUSED:
        said = slurm.run(["scontrol", "show", "hostnames", nodelist], check=False)
        assert said.stdout.split() == [] and said.stderr.strip(), nodelist  # nothing printed but the complaint


def wait_for(what, predicate, timeout: float, slurm: LocalSlurm, job: str):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s: {slurm.job(job)}\n{slurm.logs()}"
        time.sleep(0.1)
    return got


def test_a_job_that_may_not_requeue_is_told_so(slurm):
    job = slurm.run(["sbatch", "--parsable", "--no-requeue", "-n", "1", "--output=/dev/null", "--wrap",
                     "sleep 120"]).stdout.strip()
    wait_for("the job's start", lambda: slurm.job(job)["JobState"] == "RUNNING", 60, slurm, job)
    os.environ["SLURM_CONF"] = slurm.env()["SLURM_CONF"]  # what a task of this cluster has
    try:
        said = requeue({"SLURM_JOB_ID": job})
    finally:
        del os.environ["SLURM_CONF"]
    slurm.run(["scancel", job])
    assert said.startswith(f"Slurm job {job} not requeued: scontrol requeue said: Requested operation is presently "
                           f"disabled") and "--no-requeue" in said and said.endswith("--resume auto"), said


EPOCH = 8  # steps of 24 (12 per rank) in an epoch of the 192 small digits


STEPS = 2 * EPOCH


def test_the_warning_signal_checkpoints_requeues_and_the_job_goes_on_exactly(slurm, small_shards, tmp_path):
    """tools/slurm/train.sbatch on 2 tasks: `scancel --signal=USR1` mid-epoch (as Slurm's --signal=USR1@300 before
    the time limit) → every rank stops at the same step, a checkpoint, `scontrol requeue` → the job starts again,
    resumes from it with --resume auto and finishes: every sample of the interrupted epoch read once, the samples
    and losses of an uninterrupted run on 2 ranks (started beside it by torchrun)."""
    sets = [*TRAIN_SETS, f"data.shards={small_shards}", "data.batch_size=12", "logging.sample_log=true",
            f"optimization.max_steps={STEPS}", "checkpoint.every_steps=1000"]
    args = ["--config", "configs/tiny_cpu.yaml", *[a for s in sets for a in ("--set", s)]]
    reference = start(torchrun(2, ["train.py", *args, "--set", f"run.out_dir={tmp_path / 'ref'}"]),
                      stdout=open(tmp_path / "ref.log", "w"), stderr=subprocess.STDOUT)
    try:
        job, out, stopped = requeued_job(slurm, args, tmp_path)
        assert reference.wait(timeout=180) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
    assert complete_tags(tmp_path / "run") == [f"step{stopped:08d}", f"step{STEPS:08d}"]

    rows, ref_rows = read_sample_log(tmp_path / "run"), read_sample_log(tmp_path / "ref")
    assert sorted({r["step"] for r in rows}) == list(range(1, STEPS + 1))  # no step read twice or skipped
    interrupted = [k for r in rows if r["step"] <= EPOCH for k in r["keys"]]
    assert len(interrupted) == len(set(interrupted)) == 192 and {r["epoch"] for r in rows if r["step"] <= EPOCH} == {0}
    for step in range(1, STEPS + 1):  # each step read what the uninterrupted run read
        assert (sorted(k for r in rows if r["step"] == step for k in r["keys"])
                == sorted(k for r in ref_rows if r["step"] == step for k in r["keys"])), step

    got, want = logged_losses(tmp_path / "run"), logged_losses(tmp_path / "ref")
    assert [got[s] for s in range(1, stopped + 1)] == [want[s] for s in range(1, stopped + 1)]  # the same run so far
    step_to_step = max(abs(want[s + 1] - want[s]) for s in range(1, STEPS))
    gaps = {s: abs(got[s] - want[s]) for s in range(stopped + 1, STEPS + 1)}
    assert max(gaps.values()) <= step_to_step / 2, (gaps, step_to_step)  # the elastic tests' tolerance
    print(f"Slurm job {job}: stopped at step {stopped} of {STEPS} by SIGUSR1, requeued, resumed; epoch 0 read "
          f"{len(interrupted)} samples, {len(set(interrupted))} distinct; largest loss gap after the resume "
          f"{max(gaps.values()):.3g} (limit {step_to_step / 2:.3g})")


def requeued_job(slurm: LocalSlurm, args: list[str], tmp_path: Path) -> tuple[str, str, int]:
    """The batch script's job, stopped by the warning signal once its ranks are up, requeued and finished; (its id,
    its log, the step it stopped at), with its lines checked."""
    log = tmp_path / "job.out"
    job = slurm.run(["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
                     "--time=10", f"--output={log}", "tools/slurm/train.sbatch", *args,
                     "--set", f"run.out_dir={tmp_path / 'run'}"],
                    cwd=ROOT, env=environment({"PYTHON": sys.executable})).stdout.strip()
    # The start line comes after every rank's signal handlers are in place (it follows a collective) and before the
    # first step: the stop lands early in epoch 0 whatever the load (sent at step 2, it landed at step 8 under CI).
    wait_for("the start line", lambda: log.exists() and "launcher: srun" in log.read_text(), 120, slurm, job)
    slurm.run(["scancel", "--signal=USR1", job])  # then Slurm's own SIGTERM, as it requeues the job, lands on ranks
    done = wait_for("the job's end", lambda: (j := slurm.job(job))["JobState"] not in ("PENDING", "RUNNING",
                                                                                       "REQUEUED", "COMPLETING") and j,
                    180, slurm, job)
    out = log.read_text()
    assert (done["JobState"], done["Restarts"], done["ExitCode"]) == ("COMPLETED", "1", "0:0"), out[-4000:]

    host = socket.gethostname()  # as the ranks name their host
    assert f"launcher: srun (Slurm job {job}, step 0): 2 ranks on 1 node ({host}: ranks 0-1)" in out
    stopped = int(re.search(r"stopped by SIGUSR1 at step (\d+); resume with --resume auto", out).group(1))
    assert 1 <= stopped < EPOCH, out[-4000:]  # mid-epoch: the resume must pick the epoch up where it stopped
    assert f"Slurm job {job} requeued: it continues from this checkpoint when it starts again" in out
    assert f"launcher: srun (Slurm job {job}, step 0, restart 1): 2 ranks on 1 node ({host}: ranks 0-1)" in out
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / f'step{stopped:08d}'} at step {stopped}" in out

    return job, out, stopped
