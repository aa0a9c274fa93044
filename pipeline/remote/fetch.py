"""Shards on a server or in a bucket: `http(s)://` and `s3://` URLs through fsspec (its aiohttp HTTP implementation,
and s3fs for buckets, which takes its credentials from the usual AWS environment and files, never from the config).

Every request is retried with exponential backoff within a bounded total wait (`RetryPolicy`); a file is fetched
to a local path while its sha256 is computed, and is good only when its size and sha256 are the manifest's. What
the server did, when the wait runs out, is one line naming the URL (`RemoteError`). A missing file, refused access
and a host name the DNS does not know (a typo) are not retried: waiting would not change them. The local cache that
uses this is pipeline/remote/cache.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from pipeline import DataError

logger = logging.getLogger(__name__)

HTTP = ("http://", "https://")
CHUNK = 1 << 20  # bytes read per call while a file streams in
MAX_UNSIZED = 1 << 30  # the most a file of no recorded size (an index) may have
T = TypeVar("T")
# getaddrinfo's "this name does not exist" (EAI_NODATA: it exists without an address); EAI_AGAIN, a resolver that did
# not answer, is retried like any connection failure
NAME_NOT_KNOWN = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


class RemoteError(DataError):
    """A file the server would not give, within the retry policy's wait; the message names the URL."""


class TransferError(OSError):
    """A transfer that completed with the wrong bytes: too few (cut or truncated) or a wrong sha256."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long one file may take, all tries together (`timeout_s`: data.fetch_timeout_s), and the backoff between
    tries: first_delay_s, doubling up to max_delay_s. A server that sends nothing for read_timeout_s is a failed try."""

    timeout_s: float = 300.0
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0

    @property
    def read_timeout_s(self) -> float:
        return min(60.0, self.timeout_s)


def filesystem(url: str, policy: RetryPolicy):
    """The fsspec filesystem for `url` (instances are cached per process by fsspec)."""
    import fsspec

    if url.startswith(HTTP):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.read_timeout_s,
                                        sock_read=policy.read_timeout_s)
        return fsspec.filesystem("http", client_kwargs={"timeout": timeout})
    return fsspec.filesystem(url.split("://", 1)[0])


def server_said(err: BaseException, policy: RetryPolicy) -> str:
    """What the server did, in words that follow "the server"."""
    import aiohttp

    if isinstance(err, aiohttp.ClientResponseError):
        return f"answered {err.status} {err.message}"
    if isinstance(err, FileNotFoundError):
        return "has no such file"
    if isinstance(err, PermissionError):
        return f"refused access ({err}); check the credentials in the environment"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"could not be reached ({err.os_error.strerror or err.os_error})"
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return f"sent nothing for {policy.read_timeout_s:g} s"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "cut the connection mid-file"
    if isinstance(err, TransferError):
        return str(err)
    return f"failed: {type(err).__name__}: {err}"


def unknown_host(err: BaseException, url: str) -> str | None:
    """The host that the DNS says does not exist, when that is why `err` happened (aiohttp's ClientConnectorDNSError
    over a socket.gaierror, found through the exception's causes); None otherwise."""
    seen, host = set(), None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        host = host or getattr(err, "host", None)  # aiohttp's connection errors name the host they tried
        if isinstance(err, socket.gaierror) and err.errno in NAME_NOT_KNOWN:
            return host or urlsplit(url).hostname
        err = getattr(err, "os_error", None) or err.__cause__ or err.__context__
    return None


def _retryable() -> tuple[type[BaseException], ...]:
    import aiohttp

    return OSError, asyncio.TimeoutError, TimeoutError, aiohttp.ClientError


def with_retries(url: str, action: Callable[[], T], policy: RetryPolicy) -> T:
    """action() until it succeeds, with backoff, for at most policy.timeout_s; then a RemoteError naming `url` and
    what the server did the last time. A missing file, refused access or an unknown host is not retried."""
    deadline, delay, tries = time.monotonic() + policy.timeout_s, policy.first_delay_s, 0
    while True:
        tries += 1
        try:
            return action()
        except (FileNotFoundError, PermissionError) as err:
            raise RemoteError(f"{url}: the server {server_said(err, policy)}; check data.shards") from err
        except _retryable() as err:
            if host := unknown_host(err, url):
                raise RemoteError(f"{url}: the host {host} is not known (DNS); check the URL") from err
            said = server_said(err, policy)
            if time.monotonic() + delay > deadline:
                raise RemoteError(f"{url}: the server {said}, {tries} tr{'y' if tries == 1 else 'ies'} in "
                                  f"{policy.timeout_s:g} s (data.fetch_timeout_s); check the server") from err
            logger.warning(f"{url}: the server {said}; try {tries + 1} in {delay:g} s")
            time.sleep(delay)
            delay = min(2 * delay, policy.max_delay_s)


def read_bytes(url: str, policy: RetryPolicy, limit: int = MAX_UNSIZED) -> bytes:
    """A small file (a manifest, an index) whole."""
    def cat() -> bytes:
        data = filesystem(url, policy).cat_file(url)
        if len(data) > limit:
            raise RemoteError(f"{url}: {len(data):,} bytes, more than the {limit:,} this file may have")
        return data

    return with_retries(url, cat, policy)


def read_json(url: str, policy: RetryPolicy) -> object:
    try:
        return json.loads(read_bytes(url, policy, limit=1 << 28))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RemoteError(f"{url}: not valid JSON ({err}); is data.shards the folder shard_dataset.py wrote?") from err


def fetch_file(url: str, path: Path, size: int | None, sha256: str, policy: RetryPolicy,
               counted: Callable[[int], None] = lambda n: None) -> None:
    """Downloads `url` to `path` (overwritten on each try), retrying until its size (None: any up to MAX_UNSIZED)
    and sha256 are the given ones. `counted(n)` hears of every n bytes received, failed tries included."""
    most = MAX_UNSIZED if size is None else size
    def attempt() -> None:
        fs = filesystem(url, policy)
        with open(path, "wb") as out:
            sink = _Sink(out, most, counted)
            if url.startswith(HTTP):
                fs.get_file(url, sink)  # one streaming GET; fs.open would ask for the size first (a HEAD)
            else:
                with fs.open(url, "rb") as src:
                    while chunk := src.read(CHUNK):
                        sink.write(chunk)
        if size is not None and sink.got != size:
            raise TransferError(f"sent {sink.got:,} bytes, the manifest records {size:,}")
        if sink.digest.hexdigest() != sha256:
            raise TransferError("sent a file whose sha256 differs from the manifest's")

    with_retries(url, attempt, policy)


class _Sink:
    """Where a download streams: the file `out`, hashed and counted as the bytes arrive; more than `most` bytes is a
    TransferError. File-like enough for fsspec's get_file (read, tell, close)."""

    def __init__(self, out, most: int, counted: Callable[[int], None]):
        self.out, self.most, self.counted = out, most, counted
        self.digest, self.got = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> int:
        self.counted(len(chunk))
        self.got += len(chunk)
        if self.got > self.most:
            raise TransferError(f"sent more than {self.most:,} bytes")
        self.digest.update(chunk)
        return self.out.write(chunk)

    def read(self, *_):
        raise OSError("a download sink is written, not read")

    def tell(self) -> int:
        return self.got

    def close(self) -> None:
        pass  # the caller closes `out`
