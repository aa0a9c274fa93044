"""A checkpoint's integrity: its COMPLETE marker, written last, records the size and sha256 of every file of its tag
folder; a resume checks them before it loads anything, so a checkpoint damaged since its save is named, skipped by
`--resume auto` or refused, and never deleted. docs/training.md, "Integrity".

    hashed = mark_complete(folder, step)      # rank 0, once every rank's files are synced
    problems = verify_checkpoint(folder)      # [] when every recorded file is there, unchanged, and no other
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Optional

from util.files import files_sha256, write_file_atomic

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"  # JSON {"step": N, "files": {relative path: {"bytes": n, "sha256": hex}}}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def saved_files(folder: Path) -> list[str]:
    """The files of tag folder `folder` as sorted relative paths: every file but the COMPLETE marker and hidden
    names (a write's temporary file)."""
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != COMPLETE and not any(part.startswith(".") for part in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def hash_workers() -> int:
    """Threads that hash a checkpoint's files in this process: the CPUs it may use, shared with the other ranks of
    its node (LOCAL_SIZE from DeepSpeed's launcher, LOCAL_WORLD_SIZE from torchrun's)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    return max(1, len(os.sched_getaffinity(0)) // max(1, local))


def timed_sha256(paths: list[Path], total_bytes: int) -> tuple[list[str], str]:
    """The sha256 of each file, hashed in hash_workers() threads, and what was hashed in how long (for the log)."""
    started, workers = time.perf_counter(), hash_workers()
    digests = files_sha256(paths, workers)
    return digests, (f"sha256 of {len(paths)} files ({total_bytes / 1e9:.2f} GB) in "
                     f"{time.perf_counter() - started:.2f} s with {workers} thread(s)")


def mark_complete(folder: Path, step: int) -> str:
    """Rank 0, once every rank's files and run.json are synced: records the size and sha256 of every file of tag
    folder `folder` in its COMPLETE marker, written last and atomically (a crash before leaves no marker: the folder
    stays incomplete). Returns what it hashed, for the log."""
    names = saved_files(folder)
    paths = [folder / name for name in names]
    sizes = [path.stat().st_size for path in paths]
    digests, hashed = timed_sha256(paths, sum(sizes))
    marker = {"step": step, "files": {name: {"bytes": size, "sha256": digest}
                                      for name, size, digest in zip(names, sizes, digests)}}
    write_file_atomic(folder / COMPLETE, json.dumps(marker, indent=1).encode())
    return hashed


def read_marker(folder: Path) -> tuple[int, dict]:
    """(step, {relative path: {"bytes": n, "sha256": hex}}) from `folder`'s COMPLETE marker. Raises ValueError saying
    what is wrong."""
    try:
        text = (folder / COMPLETE).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None
    try:
        meta = json.loads(text)
        step, files = int(meta["step"]), dict(meta["files"])
        for name, entry in files.items():
            rel = PurePosixPath(name)
            if (rel.is_absolute() or ".." in rel.parts or type(entry["bytes"]) is not int
                    or not SHA256.match(entry["sha256"])):
                raise ValueError(f"its entry {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"not a marker train.py writes ({type(err).__name__}: {err})") from None
    return step, files


def verify_checkpoint(folder: Path, step: Optional[int] = None) -> list[str]:
    """What is wrong with complete checkpoint `folder` (of `step`, when its tag names one), each naming the file: []
    when every file its save recorded in COMPLETE is there with its size and sha256, and no other."""
    try:
        marked, recorded = read_marker(folder)
    except ValueError as err:
        return [f"{folder / COMPLETE}: unreadable ({err})"]
    if step is not None and step != marked:
        return [f"{folder / COMPLETE}: says step {marked}, not the folder's {step}"]
    try:
        return file_problems(folder, recorded)
    except OSError as err:  # a file that cannot be read (a bad sector: EIO) is damage like any other
        return [f"{err.filename or folder}: cannot be read ({err.strerror or err})"]


def file_problems(folder: Path, recorded: dict) -> list[str]:
    """What differs in `folder` from the files its save `recorded`, each naming the file: files missing, added or of
    another size (cheap: checked first, and nothing is hashed when one is found), else each whose sha256 differs.
    Logs the seconds the hashing took."""
    found = set(saved_files(folder))
    out = [f"{folder / name}: missing" for name in sorted(set(recorded) - found)]
    out += [f"{folder / name}: a file its save did not write" for name in sorted(found - set(recorded))]
    for name in sorted(set(recorded) & found):
        size, want = (folder / name).stat().st_size, recorded[name]["bytes"]
        if size != want:
            out.append(f"{folder / name}: {size:,} bytes, its save wrote {want:,}")
    if out:
        return out
    names = sorted(recorded)
    digests, hashed = timed_sha256([folder / name for name in names], sum(e["bytes"] for e in recorded.values()))
    logger.info("checkpoint %s: %s", folder, hashed)
    return [f"{folder / name}: its sha256 differs from the one its save recorded (same size: bytes inside it "
            f"changed)" for name, digest in zip(names, digests) if digest != recorded[name]["sha256"]]
