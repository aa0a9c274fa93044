"""A run that cannot go on ends loudly, in one line, and soon: a rank killed or hung, a launcher that vanished, the
out_dir deleted mid-run (training/faults.py, training/loop.py); the /dev/shm buffer a killed rank left is removed by
the next run's start. The launches run the real launchers on the tiny config; each reads the run's output while it
runs (launches.Running). (A fresh run into another run's checkpoints, and which /dev/shm buffers count as dead, in
process: unit/test_run_leftovers.py.)"""
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from launches import (Running, complete_tags, deepspeed, launch, no_shm_leftovers, ok, python, torchrun,  # noqa: F401
                      train_args)

SETS = ("optimization.max_steps=400", "checkpoint.every_steps=2", "checkpoint.keep_last=1")
# A launch's start-up to its 4th step: two ranks import torch and DeepSpeed and, where DeepSpeed's CPU op must be
# (re)built, compile it. Measured on the 2-core machine: 8-15 s quiet, 37 s with the op's build, 10-27 s beside two
# busy processes, and the whole test took 157 s inside a full `make test` whose other worker launched at the same
# time; launches.Running waits 180 s by default, which left that no room.
START_S = 600


def first_error(output: str) -> str:
    """The first line that says something went wrong: an `error:` line, or the first line of a traceback."""
    for line in output.splitlines():
        if "error:" in line or "Traceback" in line or "Error" in line.split(":")[0]:
            return line
    raise AssertionError(f"no error line in: {output[-3000:]}")


def gone_within(procs, seconds: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return not alive


@pytest.mark.parametrize("launcher, killed", [(deepspeed, 1), (torchrun, 0)], ids=["deepspeed-rank1", "torchrun-rank0"])
def test_a_killed_rank_ends_every_rank_with_one_line_naming_it(digit_shards, tmp_path, launcher, killed):
    run = Running(launcher(2, train_args(digit_shards["train"], tmp_path, *SETS)))
    try:
        run.wait_for("step 4/")
        victim, survivor = run.rank(killed), run.rank(1 - killed)
        port = victim.environ()["MASTER_PORT"]
        victim.kill()
        assert gone_within([survivor], 60), "the surviving rank still runs 60 s after its peer died"
        run.finish(60)
    finally:
        run.kill()
    line = first_error(run.output())
    tag = complete_tags(tmp_path)[-1]
    assert f"error: rank {killed} lost (its process ended) at step " in line, run.output()[-3000:]
    assert f"last complete checkpoint {tmp_path / 'checkpoints' / tag}; resume with --resume auto" in line
    assert line.startswith("error:" if killed == 1 else "[rank 1] error:")  # the survivor's own line, first
    if launcher is torchrun:
        return  # DeepSpeed's shared-memory all-reduce runs under its own launcher only
    # what SIGKILL left in /dev/shm: the dead rank's DeepSpeed buffer; the next run's start removes it
    left = list(Path("/dev/shm").glob(f"deepspeed_*_{port}_{killed}"))
    assert left, "the killed rank left no /dev/shm buffer: nothing for the next start to remove"
    ok(launch(python(train_args(digit_shards["train"], tmp_path / "next", "optimization.max_steps=1"))))
    # its start removes it, however new (or a test starting on the other worker did, first)
    assert not any(p.exists() for p in left)


def test_a_hung_rank_ends_the_run_naming_the_stalled_step(digit_shards, tmp_path):
    run = Running(deepspeed(2, train_args(digit_shards["train"], tmp_path, *SETS, "run.timeout_s=8")))
    try:
        run.wait_for("step 4/")
        hung, rank0 = run.rank(1), run.rank(0)
        hung.suspend()  # SIGSTOP: alive, holding its sockets, answering nothing
        stopped = time.monotonic()
        assert gone_within([rank0], 30), "rank 0 still waits 30 s after rank 1 hung (run.timeout_s 8)"
        waited = time.monotonic() - stopped
    finally:
        run.kill()
    line = first_error(run.output())
    # rank 0's watchdog (its step clock) or its collective's timeout, whichever fires first: both after 8 s
    watchdog = line.startswith("error: step ") and " stalled: not finished after " in line
    collective = line.startswith("error: rank 1 hung (its process is stopped) at step ")
    assert watchdog or collective, run.output()[-3000:]
    assert "rank 1 hung (its process is stopped)" in line and "; last complete checkpoint " in line
    assert waited < 8 + 12, waited


@pytest.mark.parametrize("launcher, how", [(deepspeed, signal.SIGTERM), (torchrun, signal.SIGKILL)],
                         ids=["SIGTERM-to-the-deepspeed-command", "torchrun-killed"])
def test_no_rank_outlives_its_launcher(digit_shards, tmp_path, launcher, how):
    run = Running(launcher(2, train_args(digit_shards["train"], tmp_path, *SETS, "checkpoint.every_steps=1000")))
    try:
        run.wait_for("step 4/", timeout=START_S)
        ranks = [run.rank(0), run.rank(1)]
        os.kill(run.proc.pid, how)  # the command alone, not its process group
        # they end 1.4-2.5 s after their launcher, quiet or loaded (ranks that went on would print no line below)
        assert gone_within(ranks, 60), "ranks still train 60 s after their launcher ended"
    finally:
        run.kill()
    out = run.output()
    stopped = [line for line in out.splitlines() if "stopped by the end of its launcher" in line]
    assert stopped and " at step " in stopped[0], out[-3000:]
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert complete_tags(tmp_path) == [f"step{step:08d}"]  # checkpointed where it stopped, as on SIGTERM
    assert "Traceback" not in out


def test_out_dir_deleted_mid_run_is_one_line_on_every_rank(digit_shards, tmp_path):
    out_dir = tmp_path / "run"
    run = Running(deepspeed(2, train_args(digit_shards["train"], out_dir, *SETS)))
    try:
        run.wait_for("step 4/")
        out_dir.rename(tmp_path / "moved")  # as deleting it, atomically (rm -rf races the run's writes)
        assert run.finish(60) != 0
    finally:
        run.kill()
    out = run.output()
    line = first_error(out)
    assert f"run.out_dir {out_dir} vanished at step " in line, out[-3000:]
    assert "Traceback" not in out and "Exception in thread" not in out  # TensorBoard's writer thread fails too
    assert sum(f"run.out_dir {out_dir} vanished" in x for x in out.splitlines()) == 2  # every rank says why


def test_peers_name_the_rank_that_ended_or_is_stopped():
    import socket
    import subprocess

    from training.faults import Peers

    ended, stopped = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    try:
        host = socket.gethostname()
        ended.kill()  # asked at once: the process may not have ended yet (the case a collective's error meets)
        assert Peers([(host, os.getpid()), (host, ended.pid)], rank=0).lost() == "rank 1 lost (its process ended)"
        stopped.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        peers = Peers([(host, os.getpid()), (host, ended.pid), (host, stopped.pid), ("elsewhere", 1)], rank=0)
        assert peers.lost() == "rank 1 lost (its process ended), rank 2 hung (its process is stopped)"
        assert Peers([(host, os.getpid()), ("elsewhere", 1)], rank=0).lost(settle_s=0) == (
            "a rank on elsewhere lost or not responding")
    finally:
        for proc in (ended, stopped):
            proc.kill()
            proc.wait()
