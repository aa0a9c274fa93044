"""What the node's shard cache knows of each cached file (pipeline/remote/cache.py): `<name>.ok` beside it records
the sha256 it was verified against with its size, mtime and inode then. Uses are marked in the access time, so only
a write changes these: a lookup that finds them changed hashes the file again. `<name>.lock` serialises whoever
fetches or checks that file. And the full re-check of a cache folder, by hash.

    seen = write_record(final, sha256)        # after a download or a check; (size, mtime_ns, inode)
    record = read_record(final)               # {"sha256", "size", "mtime_ns", "inode"} or None
    with file_lock(final): ...                # the one process fetching or checking `final`
    checked, removed = recheck(cache_dir)     # python -m pipeline.remote.cache DIR
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from pipeline.remote.fetch import LocalDiskError
from util.files import file_sha256


def stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    """(size, mtime_ns, inode): what a write to the file changes."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def record_path(final: Path) -> Path:
    return final.with_name(final.name + ".ok")


def write_record(final: Path, sha256: str) -> tuple[int, int, int]:
    """Records that `final` was verified against `sha256`, as it is now; returns its stat_key. A record the disk
    cannot take is a LocalDiskError."""
    seen = stat_key(final.stat())
    record = {"sha256": sha256, "size": seen[0], "mtime_ns": seen[1], "inode": seen[2]}
    try:
        record_path(final).write_text(json.dumps(record))
    except OSError as err:
        raise LocalDiskError(record_path(final), err) from err
    return seen


def read_record(final: Path) -> dict | None:
    """The record of `final`: {"sha256", "size", "mtime_ns", "inode"}; one that holds only the sha256 (written before
    these were recorded) gives the sha256 alone; None when there is none or it is unreadable."""
    try:
        text = record_path(final).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"sha256": text.strip()}
    return record if isinstance(record, dict) else None


@contextmanager
def file_lock(final: Path):
    """`final`'s lock (flock on `<name>.lock`): one thread or process at a time fetches or checks it."""
    with open(final.with_name(final.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recheck(root: Path) -> tuple[int, list[Path]]:
    """Every cached file under the cache folder `root` (data.cache_dir) hashed against the sha256 it was verified
    against; a file that no longer has it is removed (fetched again at its next lookup). Returns (files checked, files
    removed)."""
    checked, removed = 0, []
    for ok in sorted(Path(root).expanduser().glob("*/*.ok")):
        final = ok.with_suffix("")
        record = read_record(final)
        with file_lock(final):  # not while a process fetches it
            good = record is not None and final.is_file() and file_sha256(final) == record.get("sha256")
        checked += 1
        if not good:
            ok.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            removed.append(final)
    return checked, removed
