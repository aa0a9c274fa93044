"""What DEST holds for shard_dataset.py and who may write it: one writer at a time (a lock), the check that DEST is
empty or holds a run of the same source, options and assignment (then it is resumed), and --overwrite's removal of old
shards (never of other files)."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from pipeline import DataError
from pipeline.shards.format import ManifestError
from pipeline.shards.manifest import MANIFEST_NAME, Manifest, read_manifest
from util.files import is_partial_name

logger = logging.getLogger(__name__)

LOCK_NAME = ".shard_dataset.lock"  # held by the writer while it runs


def describe_mismatch(manifest: Manifest, source: str, options: dict, plan_sha256: str,
                      planned_inputs: int) -> str | None:
    """Why `manifest` does not describe a run over `source` with `options` and this assignment; None when it does."""
    if manifest.source != source:
        return f"it holds shards of {manifest.source}, not of {source}"
    changed = [f"{k} {manifest.options.get(k)!r} → {v!r}" for k, v in options.items() if manifest.options.get(k) != v]
    if changed or set(manifest.options) != set(options):
        return f"it was written with other options ({', '.join(changed) or 'another set of options'})"
    if manifest.plan_sha256 != plan_sha256:
        return (f"the image files in the source changed since it was written ({manifest.planned_inputs} files then, "
                f"{planned_inputs} now, or as many with other names or sizes)")
    return None


def remove_shard_files(dest: str | os.PathLike, manifest: Manifest | None, prefix: str) -> int:
    """Removes DEST's manifest, the files it lists, and any file named like a shard or index of `prefix` (or of the
    manifest's prefix); leaves every other file alone. Returns how many files it removed."""
    dest = Path(dest)
    removed = int((dest / MANIFEST_NAME).exists())
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    names = {n for r in (manifest.shards if manifest else []) for n in (r.name, r.index_name) if n}
    prefixes = {prefix, manifest.options.get("prefix") if manifest else None} - {None}
    ours = re.compile("|".join(rf"{re.escape(str(p))}-\d{{6}}\.(tar|idx)" for p in prefixes))
    for path in [p for p in dest.iterdir() if p.name in names or ours.fullmatch(p.name)]:
        path.unlink()
        removed += 1
    return removed


def remove_partials(dest: str | os.PathLike) -> None:
    """Removes the temporary files a killed writer left (call only while holding the writer's lock on DEST)."""
    for path in Path(dest).iterdir():
        if is_partial_name(path.name):
            path.unlink()


@contextlib.contextmanager
def lock_dest(dest: Path, wait_s: float = 10.0):
    """Holds an exclusive lock on DEST for a writer (released by the kernel however the writer and its workers end;
    waits `wait_s` for one that is dying)."""
    with open(dest / LOCK_NAME, "a") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataError(f"{dest} is being written by another shard_dataset.py (it holds "
                                    f"{dest / LOCK_NAME}); wait for it to finish or stop it") from None
                time.sleep(0.2)
        yield


def open_dest(dest: Path, source: str, options: dict, plan_sha256: str, planned_inputs: int,
              overwrite: bool) -> Manifest | None:
    """Makes DEST ready for a writer holding `lock_dest`: returns its manifest when the run resumes it (same source,
    options and assignment), None when DEST is empty or, with `overwrite`, was cleared of its old shards.

    Raises:
        DataError: DEST holds another dataset, other options, or files without a manifest, and not `overwrite`.
    """
    remove_partials(dest)
    old, problem = None, None
    if (dest / MANIFEST_NAME).exists():
        try:
            old = read_manifest(dest, check="none", allow_incomplete=True)
            problem = describe_mismatch(old, source, options, plan_sha256, planned_inputs)
        except ManifestError as err:
            problem = str(err)
    elif others := sorted(p.name for p in dest.iterdir() if p.name != LOCK_NAME):
        problem = f"it is not empty ({len(others)} entries, e.g. {others[:3]}) and has no {MANIFEST_NAME}"
    if problem is None:
        return old
    if not overwrite:
        raise DataError(f"refusing to write into {dest}: {problem}. Choose another DEST, or pass --overwrite to "
                        f"replace its shards (SRC is never modified)")
    removed = remove_shard_files(dest, old, options["prefix"])
    logger.info("--overwrite: removed %d old manifest, shard and index files from %s", removed, dest)
    return None
