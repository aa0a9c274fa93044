"""What the tests that launch train.py across processes share: master ports whose DeepSpeed /dev/shm buffers are
removed after each test (a process killed with SIGKILL cannot unlink its own), and the per-step losses a run logs.

    from launches import master_port, logged_losses, no_shm_leftovers  # noqa: F401  (the fixture is autouse)
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.distributed import free_port

PORTS: list[int] = []  # master ports handed out in this test session


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


def logged_losses(out_dir, run_name: str = "tiny_cpu") -> dict[int, float]:
    """Per-step losses from DeepSpeed's CSV monitor (a resumed run appends; a re-done step keeps its last value)."""
    out = {}
    with open(Path(out_dir) / "logs" / run_name / "Train_loss.csv") as f:
        for row in csv.reader(f):
            if row and row[0] != "step":
                out[int(row[0])] = float(row[1])
    return out
