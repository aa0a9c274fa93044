"""shard_dataset.py --upload: a finished shard folder put at a URL (an HTTP server that takes PUT, or a bucket), with
the retries of every request (pipeline/remote/fetch.py) within the policy's bound per file."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pipeline import DataError
from pipeline.remote.fetch import HTTP, RetryPolicy, TransferError, by_deadline, filesystem, join, with_retries
from pipeline.shards.manifest import MANIFEST_NAME, Manifest


def upload_shards(folder: Path, manifest: Manifest, url: str, policy: RetryPolicy) -> int:
    """Puts a shard folder at `url`: its tars and indexes, then its manifest, so that nobody reads a manifest whose
    shards are not there yet; returns the bytes sent. An HTTP server must take PUT."""
    names = [n for r in manifest.shards if r.samples > 0 for n in (r.name, r.index_name)]
    return upload(folder, names + [MANIFEST_NAME], url, policy)


def upload(folder: Path, names: list[str], url: str, policy: RetryPolicy) -> int:
    """Puts folder/name at url/name for each name, in order; returns the bytes sent."""
    fs, sent = filesystem(url, policy), 0
    for name in names:
        source, target = folder / name, join(url, name)
        if not source.is_file():  # checked here: a local file missing must not read as the server's 404
            raise DataError(f"{source}: missing, so it cannot be uploaded; rerun the same shard_dataset.py command")
        with_retries(target, lambda deadline: _put(fs, source, target, policy, deadline), policy)
        sent += source.stat().st_size
    return sent


def _put(fs, source: Path, target: str, policy: RetryPolicy, deadline: float) -> None:
    if not target.startswith(HTTP):
        fs.put_file(str(source), target)
        return
    started = time.monotonic()
    try:
        by_deadline(fs, "put_file", str(source), target, method="put", policy=policy, deadline=deadline)
    except (asyncio.TimeoutError, TimeoutError) as err:
        raise TransferError(f"did not take the file in {time.monotonic() - started:.1f} s") from err
