"""The one launch harness of the tests that run train.py: its command line on the tiny config, the launchers (plain
python, DeepSpeed's, torchrun), a launch with a deadline, what a run writes (its losses, summary.json, run.json) and
its error lines; `train_main` runs train.py's main(argv) in this process for the refusals that come before any
process group exists. Master ports are handed out here, and their DeepSpeed /dev/shm buffers removed after each test
(a process killed with SIGKILL cannot unlink its own).

    from launches import deepspeed, launch, ok, train_args, no_shm_leftovers  # noqa: F401  (the fixture is autouse)
    out = ok(launch(deepspeed(2, train_args(shards, tmp_path, "optimization.max_steps=3"))))
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util.net import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PORTS: list[int] = []  # master ports handed out in this test session
# The tiny config as every launching test runs it: 16 images per rank and step, read in process by the PyTorch
# backend, a log line every step, no collapse diagnostics.
TRAIN_SETS = ("data.batch_size=16", "data.num_workers=0", "logging.every_steps=1", "logging.diagnostics_every=0",
              "data.backend=torch")


def master_port() -> int:
    PORTS.append(free_port())
    return PORTS[-1]


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """train.py unlinks its rank's DeepSpeed /dev/shm buffer on any exit but SIGKILL; this removes what is left."""
    yield
    for port in PORTS:
        for path in Path("/dev/shm").glob(f"deepspeed_*_127.0.0.1_{port}_*"):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ command lines

def train_args(shards, out_dir, *sets: str) -> list[str]:
    """train.py's arguments on the tiny config with TRAIN_SETS, then `sets` (later ones win)."""
    args = ["train.py", "--config", "configs/tiny_cpu.yaml", "--set", f"data.shards={shards}",
            "--set", f"run.out_dir={out_dir}"]
    for s in (*TRAIN_SETS, *sets):
        args += ["--set", s]
    return args


def python(args: list[str]) -> list[str]:
    """One process, no launcher: train.py's own exit code."""
    return [sys.executable, *args]


def deepspeed(nproc: int, args: list[str]) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(master_port()), *args]


def torchrun(nproc: int, args: list[str], nnodes: int = 1, node_rank: int = 0, port: int | None = None) -> list[str]:
    return [str(BIN / "torchrun"), f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={port or master_port()}", *args]


# ------------------------------------------------------------------------------------------------ launching

def environment(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra or {})}


def launch(cmd: list[str], timeout: float = 600, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs `cmd` from the repository root to its end (or the deadline) and returns it with its output as text."""
    return subprocess.run(cmd, cwd=ROOT, env=environment(env), capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Starts `cmd` in a process group of its own (as a scheduler starts a job), for a test that signals it."""
    return subprocess.Popen(cmd, cwd=ROOT, env=environment(), start_new_session=True, **kwargs)


class Running:
    """A launch read while it runs (its own process group, stdout and stderr together): the lines so far, a wait for
    a line, its rank processes, its end."""

    def __init__(self, cmd: list[str]):
        import threading

        self.proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 180) -> float:
        """Waits until a line holds `text`; returns the time.monotonic() it was seen. Fails the test at the
        deadline or when the launch ends first."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert time.monotonic() < deadline and self.proc.poll() is None, (text, self.output()[-3000:])
            time.sleep(0.05)
        return time.monotonic()

    def rank(self, rank: int):
        """The psutil process of global rank `rank` (its RANK environment variable)."""
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "train.py" in child.cmdline():
                    return child
            except psutil.Error:
                continue
        raise AssertionError(f"no rank {rank} among the launch's processes")

    def finish(self, timeout: float = 120) -> int:
        """Waits for the launcher to end (kills the group at the deadline and fails); returns its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the launch did not end within {timeout} s: {self.output()[-3000:]}") from None
        self.reader.join(timeout=30)
        return code

    def kill(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> str:
        return "".join(self.lines)


def launch_all(cmds: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Starts every command at once (the nodes of one job) and waits for all; stdout and stderr together."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [subprocess.CompletedProcess(c, p.returncode, out, "") for c, p, out in zip(cmds, procs, outs)]


def ok(proc: subprocess.CompletedProcess) -> str:
    """The output of a launch that must have succeeded."""
    out = (proc.stdout or "") + (proc.stderr or "")
    assert proc.returncode == 0, out[-4000:]
    return out


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines of a launch that must not have printed a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def train_main(argv: list[str], caplog) -> tuple[int, list[str]]:
    """train.py's main(argv) in this process: (exit code, its error lines). Only for what is refused before the
    process group: a run that gets as far as setting one up fails the test instead of training in pytest."""
    import logging

    import train
    import training.guard

    def no_further():
        raise AssertionError("train.py got past its run plan: run this case as a subprocess")

    real, training.guard.single_process_env = training.guard.single_process_env, no_further
    try:
        with caplog.at_level(logging.INFO):
            caplog.clear()
            code = train.main(argv)
    finally:
        training.guard.single_process_env = real
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    return code, lines


# ------------------------------------------------------------------------------------------------ what a run wrote

def logged(out_dir, name: str, run_name: str = "tiny_cpu") -> dict[int, float]:
    """One figure of DeepSpeed's CSV monitor (`name`, e.g. Diagnostics_token_rank), by step (a resumed run appends; a
    re-done step keeps its last value)."""
    out = {}
    with open(Path(out_dir) / "logs" / run_name / f"{name}.csv") as f:
        for row in csv.reader(f):
            if row and row[0] != "step":
                out[int(row[0])] = float(row[1])
    return out


def logged_losses(out_dir, run_name: str = "tiny_cpu") -> dict[int, float]:
    """Per-step losses from DeepSpeed's CSV monitor."""
    return logged(out_dir, "Train_loss", run_name)


def summary(out_dir) -> dict:
    return json.loads((Path(out_dir) / "summary.json").read_text())


def run_record(checkpoint) -> dict:
    return json.loads((Path(checkpoint) / "run.json").read_text())


def complete_tags(out_dir) -> list[str]:
    return sorted(p.name for p in (Path(out_dir) / "checkpoints").glob("step*") if (p / "COMPLETE").exists())
