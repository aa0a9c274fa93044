"""run.out_dir: one run at a time (a lock), and room for the next checkpoint.

The lock is an flock on `<out_dir>/.run.lock`, taken by rank 0: the kernel releases it however the process ends
(SIGKILL included), so a dead run never leaves a stale lock behind. The file holds who took it (host, pid, time), for
the message a second run gets.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from training import TrainingError

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
SPACE_MARGIN = 1.1  # a checkpoint's size varies a little between saves (pickled client state); keep 10 % spare


@contextlib.contextmanager
def locked_out_dir(out_dir: Path):
    """Holds the exclusive lock on `out_dir` (created if needed) for the body; raises TrainingError naming the holder
    when another run has it."""
    path = out_dir / LOCK_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as err:
        raise cannot_hold(out_dir, f"{err.strerror}: {err.filename}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(in_use(out_dir, f)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield


def cannot_hold(out_dir: Path, why: str) -> TrainingError:
    return TrainingError(f"run.out_dir {out_dir} cannot hold a run ({why}): give a folder that can be created and "
                         f"written")


def in_use(out_dir: Path, f) -> str:
    f.seek(0)
    holder = f.read().strip() or "a process that has not written its name yet"
    return (f"run.out_dir {out_dir} is in use by another run ({holder}; lock {out_dir / LOCK_NAME}): wait for it to "
            f"end or give this run another run.out_dir")


def check_out_dir(out_dir: Path) -> None:
    """Raises TrainingError when `out_dir` cannot hold a run (it, or the nearest of its parents that exists, is not
    a folder) or when a live run holds its lock, naming the holder: before a new run reads or judges its checkpoints.
    A shared lock, at once released: the ranks of one starting run never block each other."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise cannot_hold(out_dir, f"{existing} is a file, not a folder")
    try:
        f = open(out_dir / LOCK_NAME)
    except OSError:  # no lock file: no run has used out_dir
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(in_use(out_dir, f)) from None
        fcntl.flock(f, fcntl.LOCK_UN)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_space(path: Path, need: int, what: str, kept: Optional[Path] = None) -> None:
    """Raises TrainingError when the file system of `path` has less than `need` bytes free; `kept`, the last complete
    checkpoint, is named as intact."""
    free = shutil.disk_usage(path).free
    if free < need:
        intact = f"; the last complete checkpoint {kept} is intact" if kept else ""
        raise TrainingError(f"no space on the file system of {path} for {what}: need {size_text(need)}, have "
                            f"{size_text(free)} free{intact}: free some space (or set checkpoint.keep_last lower) and "
                            f"resume with --resume auto")


def size_text(n: int) -> str:
    """Bytes in words a user compares with df: 10.4 MB, 3.52 GB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def is_out_of_space(err: BaseException) -> bool:
    """torch.save reports a full disk as an OSError (ENOSPC, EDQUOT) or as a RuntimeError from its C++ writer
    ('basic_ios::clear: iostream error', 'file write failed')."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("iostream error" in text or "write failed" in text)
