"""Slurm (training/slurm.py, tools/slurm/train.sbatch): node lists, an srun task's rank layout, the warning signal
that checkpoints and requeues; then a real one-node Slurm started on this machine (tests/slurm_cluster.py): node
lists against `scontrol show hostnames`, and the batch script's job on 2 tasks, stopped by the warning signal,
requeued, resumed and finished on the samples and losses of an uninterrupted run."""
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
from slurm_cluster import LocalSlurm, unavailable

import train
from training import TrainingError
from training.distributed import cuda_index
from training.faults import Peers, StopSignal
from training.sample_log import read_sample_log
from training.slurm import (HostlistError, adopt_srun_env, hostnames, lone_batch_shell, rendezvous_port, requeue,
                            srun_env)

ROOT = Path(__file__).resolve().parent.parent

# node list → what `scontrol show hostnames` prints (Slurm 22.05); test_node_lists_match_scontrol checks each
EXPANDED = {
    "gpu[001-004,017],cpu7": ["gpu001", "gpu002", "gpu003", "gpu004", "gpu017", "cpu7"],
    "a[1-2]b[3-4]": ["a1b3", "a1b4", "a2b3", "a2b4"],  # every combination, the first bracket outermost
    "n[1-2][3-4]": ["n13", "n14", "n23", "n24"],
    "rack[1-2]-node[01-02]": ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"],
    "n[9-11]": ["n9", "n10", "n11"],
    "n[08-11]": ["n08", "n09", "n10", "n11"],  # as wide as the first number
    "n[1-03]": ["n1", "n2", "n3"],
    "n[01-2]": ["n01", "n02"],
    "n[99-101]": ["n99", "n100", "n101"],
    "n[7,1-2]": ["n7", "n1", "n2"],  # order kept
    "n1,n1": ["n1", "n1"],  # duplicates kept
    "n1,n2,": ["n1", "n2"],
    ",n1": ["n1"],
    "n[1-2],,n3": ["n1", "n2", "n3"],
    "gpu-a100-[01-04]": ["gpu-a100-01", "gpu-a100-02", "gpu-a100-03", "gpu-a100-04"],
    "compute-0-[1-3]": ["compute-0-1", "compute-0-2", "compute-0-3"],
    "n[0-1],m[1-2]": ["n0", "n1", "m1", "m2"],
    "n[5]": ["n5"],
    "vm": ["vm"],
}
# lists Slurm refuses ("Invalid hostlist" or a range error, nothing printed)
REFUSED = ["n[1-3]-ib", "node[1-2].cluster", "a[1-2]b", "n[2-1]", "n[a-c]", "n[]", "n[1-2,]"]
# unbalanced brackets: scontrol prints `n]` and `n1-3]`; refused here, naming the list
UNBALANCED = ["n[1-3", "n1-3]", "n[[1-2]]"]


# ------------------------------------------------------------------------------------------------ node lists, ranks

@pytest.mark.parametrize("nodelist", sorted(EXPANDED))
def test_node_lists_expand_as_slurm_expands_them(nodelist):
    assert hostnames(nodelist) == EXPANDED[nodelist]


@pytest.mark.parametrize("nodelist", REFUSED + UNBALANCED)
def test_a_node_list_slurm_would_refuse_is_refused_naming_it(nodelist):
    with pytest.raises(HostlistError, match=f"invalid Slurm node list {re.escape(repr(nodelist))}"):
        hostnames(nodelist)


def srun_task(**more) -> dict:
    """The variables of task 3 of an `srun` step of 8 tasks on gpu007 and gpu008 (node 1, local 1 of 4)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]", **more}


def test_an_srun_task_takes_its_rank_world_and_rendezvous_from_slurm():
    env = srun_task()
    assert adopt_srun_env(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "NODE_RANK": "1", "MASTER_ADDR": "gpu007"}
    assert env["MASTER_PORT"] == str(rendezvous_port(4242, 0))
    # every task of a step meets on one port; another step of the job, or another job, on another one
    ports = {rendezvous_port(job, step) for job in range(4242, 4250) for step in range(4)}
    assert len(ports) == 32 and all(20000 <= p < 50000 for p in ports)
    # a step of 2 tasks inside a job of 8: the step's count is the world
    assert srun_env(srun_task(SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1"))["WORLD_SIZE"] == "2"


def test_variables_a_launcher_set_win_over_slurms():
    env = srun_task(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")  # torchrun under srun
    assert not adopt_srun_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("0", "2", "29500")


def test_the_batch_shell_is_one_process_and_says_how_to_use_the_tasks():
    shell = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # no SLURM_STEP_ID: not an srun task
    assert not adopt_srun_env(dict(shell))
    assert "batch shell of Slurm job 7, which has 2 tasks: start it with `srun python train.py" in lone_batch_shell(
        shell)
    assert lone_batch_shell({**shell, "SLURM_NTASKS": "1"}) is None
    assert lone_batch_shell(srun_task()) is None


def test_a_node_list_without_rank_0s_host_is_one_line(monkeypatch, capsys):
    for key, value in srun_task(SLURM_STEP_NODELIST="gpu[2-1]").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RANK", raising=False)
    assert train.main(["--config", "configs/tiny_cpu.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: srun task: cannot tell rank 0's host from SLURM_STEP_NODELIST='gpu[2-1]' (invalid Slurm "
                   "node list 'gpu[2-1]': range '2-1'); set MASTER_ADDR"]


def test_a_rank_uses_the_gpu_slurm_gave_it():
    assert cuda_index(3, 8) == 3
    assert cuda_index(3, 1) == 0  # srun --gpus-per-task=1: each task sees its own GPU only
    with pytest.raises(TrainingError, match=r"LOCAL_RANK 3 but this process sees 2 GPU\(s\).*--gpus-per-task=1"):
        cuda_index(3, 2)


def test_the_start_line_lays_the_ranks_out_by_host():
    assert Peers([("vm", 10), ("vm", 11)], 0).layout() == "2 ranks on 1 node (vm: ranks 0-1)"
    assert Peers([("solo", 1)], 0).layout() == "1 rank on 1 node (solo: rank 0)"
    many = [(f"gpu{n:03d}", n) for n in range(6) for _ in range(8)]
    assert Peers(many, 0).layout() == ("48 ranks on 6 nodes (gpu000: ranks 0-7, gpu001: ranks 8-15, gpu002: ranks "
                                       "16-23, gpu003: ranks 24-31, … 2 more)")


@pytest.fixture
def handlers():
    """The signal handlers as they were, put back after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("first,then,cause,requeue", [
    (signal.SIGUSR1, signal.SIGTERM, "SIGUSR1", True),  # the warning, then Slurm's SIGTERM as the job is requeued
    (signal.SIGUSR1, signal.SIGUSR1, "SIGUSR1", True),
    (signal.SIGTERM, signal.SIGUSR1, "SIGTERM", False),  # a plain stop stays one
    (signal.SIGINT, signal.SIGTERM, "SIGINT", False),
])
def test_the_first_signal_decides_and_a_second_changes_nothing(handlers, first, then, cause, requeue):
    stop = StopSignal("USR1")
    os.kill(os.getpid(), first)
    os.kill(os.getpid(), then)
    assert (stop.received, stop.requeue) == (cause, requeue)


def test_once_the_checkpoint_is_written_further_signals_are_ignored_to_the_end(handlers):
    stop = StopSignal("USR1")
    os.kill(os.getpid(), signal.SIGUSR1)
    stop.ignore_further()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):  # SIG_IGN: kept while Python exits, unlike a handler
        assert signal.getsignal(sig) == signal.SIG_IGN
        os.kill(os.getpid(), sig)
    assert (stop.received, stop.requeue) == ("SIGUSR1", True)


def test_the_requeue_signal_is_configurable_or_off(handlers):
    stop = StopSignal("USR2")
    os.kill(os.getpid(), signal.SIGUSR2)
    assert (stop.received, stop.requeue) == ("SIGUSR2", True)
    before = signal.getsignal(signal.SIGUSR1)
    StopSignal(None)
    assert signal.getsignal(signal.SIGUSR1) is before  # run.requeue_signal none: USR1 is left alone


def test_outside_slurm_nothing_requeues_and_the_line_says_so():
    assert requeue({}) == "not a Slurm job, so nothing requeues it: start it again with --resume auto"


# ------------------------------------------------------------------------------------------------ a real Slurm

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """slurmctld, slurmd and munged on this machine for this file's tests; skipped, saying why, where they cannot
    run (not root, Slurm not installed)."""
    why = unavailable()
    if why:
        pytest.skip(why)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
