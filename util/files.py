"""Crash-safe writes: a file appears whole or not at all (written under a temporary name, synced, renamed), and a
folder's files reach stable storage before anything marks them complete. Shards, manifests, checkpoints, exports
and run summaries all go through here."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

HASH_READ = 1 << 24  # 16 MiB reads into one buffer per thread: few system calls, no allocation per read


def partial_name(name: str) -> str:
    """Temporary name a file is written under before its atomic rename: hidden, and unique to the writing process."""
    return f".{name}.{os.getpid()}.partial"


def is_partial_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".partial")


def write_file_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Writes `data` to a temporary name beside `path`, syncs it to disk (if `sync`), then renames it over `path`
    (and, if `sync`, syncs the folder, so that the rename itself survives a crash)."""
    tmp = path.with_name(partial_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flushes every file under `path`, then the folders, to stable storage (before a complete marker is written)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(min(HASH_READ, os.fstat(f.fileno()).st_size + 1))  # a small file: a small buffer
        view = memoryview(buffer)
        if hasattr(os, "posix_fadvise"):  # a hint to read ahead further
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def files_sha256(paths: Sequence[Path], workers: int) -> list[str]:
    """The sha256 of each file of `paths` (in their order), `workers` files at a time in threads: file reads and
    hashlib's update release the GIL, so the threads hash in parallel. The largest files start first, so that the
    longest hash does not start last (a digest is sequential within a file: the largest one bounds the time)."""
    order = sorted(paths, key=lambda p: os.path.getsize(p), reverse=True)
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        digests = dict(zip(order, pool.map(file_sha256, order)))
    return [digests[p] for p in paths]
