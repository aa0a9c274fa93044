"""shard_dataset.py --upload: a finished shard folder put at a URL (an HTTP server that takes PUT, or a bucket), with
the retries of every request (pipeline/remote/fetch.py)."""
from __future__ import annotations

from pathlib import Path

from pipeline.remote.fetch import HTTP, RetryPolicy, filesystem, join, with_retries
from pipeline.shards.manifest import MANIFEST_NAME, Manifest


def upload_shards(folder: Path, manifest: Manifest, url: str, policy: RetryPolicy) -> int:
    """Puts a shard folder at `url`: its tars and indexes, then its manifest, so that nobody reads a manifest whose
    shards are not there yet; returns the bytes sent. An HTTP server must take PUT."""
    names = [n for r in manifest.shards if r.samples > 0 for n in (r.name, r.index_name)]
    return upload(folder, names + [MANIFEST_NAME], url, policy)


def upload(folder: Path, names: list[str], url: str, policy: RetryPolicy) -> int:
    """Puts folder/name at url/name for each name, in order; returns the bytes sent."""
    fs, sent = filesystem(url, policy), 0
    put = {"method": "put"} if url.startswith(HTTP) else {}
    for name in names:
        target = join(url, name)
        with_retries(target, lambda: fs.put_file(str(folder / name), target, **put), policy)
        sent += (folder / name).stat().st_size
    return sent
