"""Shards on a server or in a bucket: `http(s)://` and `s3://` URLs through fsspec (its aiohttp HTTP implementation,
and s3fs for buckets, which takes its credentials from the usual AWS environment and files, never from the config).
HTTP requests trust the environment: proxies (HTTP(S)_PROXY, NO_PROXY) and ~/.netrc for a server's user and
password, so that none need be in the URL.

Every request is retried with exponential backoff within a bounded total wait (`RetryPolicy`): no try outlives it,
however slowly the server sends (aiohttp's total timeout covers the body). A file streams to a local path or to
memory while its sha256 is computed, never past its bound (the manifest's size, `index_bound` for an index, the
caller's for a manifest), and is good only when its size and sha256 are the manifest's. What the server did, when
the wait runs out, is one line naming the URL (`RemoteError`). What waiting would not change fails at once: a
missing file (404), refused access (401, 403), any other 4xx but 408 and 429, a redirect loop, a file larger than
its bound, a host the DNS does not know (a typo), a bucket with no AWS credentials; and a local disk that cannot
take the file is the disk's fault, not the server's (`LocalDiskError`). The local cache that uses this is
pipeline/remote/cache.py.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pipeline import DataError
from util.urls import redact, redact_url

logger = logging.getLogger(__name__)

HTTP = ("http://", "https://")
CHUNK = 1 << 20  # bytes read per call from a bucket while a file streams in
MAX_UNSIZED = 1 << 30  # the most a file of no recorded size may have when the caller gives no bound
INDEX_LINE_BYTES = 1024  # an index's bound per sample: the writer's lines (three members) are under 200 bytes
INDEX_HEAD_BYTES = 64  # its first line, "v1.2 <samples>"
MAX_REDIRECTS = 10  # aiohttp's default, followed before TooManyRedirects
RETRIED_4XX = {408, 425, 429}  # the client errors a later try may not get (timeout, too early, too many requests)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
T = TypeVar("T")
# getaddrinfo's "this name does not exist" (EAI_NODATA: it exists without an address); EAI_AGAIN, a resolver that did
# not answer, is retried like any connection failure
NAME_NOT_KNOWN = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def join(base: str, name: str) -> str:
    """The file `name` in the folder `base`, before the folder URL's query (a signed URL's ?token=...), if any."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def index_bound(samples: int) -> int:
    """The most bytes the index of a shard of `samples` samples may have (the manifest records its sha256, not its
    size): a header and a generous line per sample, so that an endless index stops there."""
    return INDEX_HEAD_BYTES + INDEX_LINE_BYTES * samples


class RemoteError(DataError):
    """A file the server would not give, within the retry policy's wait; the message names the URL."""


class LocalDiskError(DataError):
    """The local file a download goes to could not be written (a full disk, a quota): not retried, not the
    server's fault. `path` and `errno` say which and why, for a caller that names its own setting."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        self.path, self.errno = Path(path), err.errno
        why = os.strerror(err.errno) if err.errno else str(err)
        advice = "free space on that disk" if err.errno in DISK_FULL else "check that its folder is writable"
        super().__init__(f"{path}: cannot write the download ({why}); {advice}")


class TransferError(OSError):
    """A transfer that completed with the wrong bytes: too few (cut or truncated) or a wrong sha256."""


class TooLarge(TransferError):
    """More bytes than the file may have: not retried (the next try would send them again)."""


class TooSlow(TransferError):
    """A try that ran out of time while the body arrived (or before anything did)."""

    def __init__(self, got: int, seconds: float, read_timeout_s: float):
        self.got = got
        if got:
            super().__init__(f"was too slow: {got:,} byte{'' if got == 1 else 's'} in {seconds:.1f} s")
        else:
            super().__init__(f"sent nothing for {min(seconds, read_timeout_s):.2g} s")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one file may take, all tries together (`timeout_s`), and the backoff between tries: first_delay_s,
    doubling up to max_delay_s. A server that sends nothing for read_timeout_s is a failed try. `timeout_key` and
    `url_key` are what the caller calls the bound and the URL (a config key, an option): the lines name them."""

    timeout_s: float = 300.0
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_key: str = "data.fetch_timeout_s"
    url_key: str = "data.shards"

    @property
    def read_timeout_s(self) -> float:
        return min(60.0, self.timeout_s)


def filesystem(url: str, policy: RetryPolicy):
    """The fsspec filesystem for `url` (instances are cached per process by fsspec)."""
    import fsspec

    if url.startswith(HTTP):
        return fsspec.filesystem("http", client_kwargs={"timeout": _http_timeout(policy, None), "trust_env": True})
    return fsspec.filesystem(url.split("://", 1)[0])


def by_deadline(fs, call: str, *args, policy: RetryPolicy, deadline: float, **kwargs):
    """fs.<call>(*args, **kwargs) as one HTTP request that ends at the try's `deadline` (time.monotonic()), body
    included. Called through fsspec's own loop, as its sync methods do: theirs take `timeout` for themselves."""
    from fsspec.asyn import sync

    timeout = _http_timeout(policy, deadline)
    return sync(fs.loop, lambda: getattr(fs, "_" + call)(*args, timeout=timeout, **kwargs))


def _http_timeout(policy: RetryPolicy, deadline: float | None):
    import aiohttp

    total = None if deadline is None else max(deadline - time.monotonic(), 0.01)
    return aiohttp.ClientTimeout(total=total, sock_connect=policy.read_timeout_s, sock_read=policy.read_timeout_s)


def server_said(err: BaseException, policy: RetryPolicy) -> str:
    """What the server did, in words that follow "the server"."""
    import aiohttp

    if isinstance(err, aiohttp.ClientResponseError):
        return f"answered {err.status} {err.message}"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"could not be reached ({err.os_error.strerror or err.os_error})"
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return f"sent nothing for {policy.read_timeout_s:g} s"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "cut the connection mid-file"
    if isinstance(err, TransferError):
        return str(err)
    return redact(f"failed: {type(err).__name__}: {err}")


def final_failure(err: BaseException, url: str, policy: RetryPolicy) -> str | None:
    """Why `err` is not worth another try, in words that follow the URL; None when a later try may succeed."""
    import aiohttp

    status = err.status if isinstance(err, aiohttp.ClientResponseError) else None
    if host := unknown_host(err, url):
        return f"the host {host} is not known (DNS); check the URL"
    if isinstance(err, aiohttp.TooManyRedirects):
        return f"the server redirected more than {MAX_REDIRECTS} times (a redirect loop?); check the URL"
    if _no_credentials(err):
        return ("no AWS credentials found (botocore looked in the environment, ~/.aws and the instance metadata); "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials")
    if isinstance(err, FileNotFoundError) or status == 404:
        return f"the server has no such file (404); check {policy.url_key}"
    if isinstance(err, PermissionError) or status in (401, 403):
        answer = f"answered {status} {err.message}" if status else "refused access"
        return f"the server {answer}: check the credentials ({_credentials_for(url)})"
    if status is not None and 400 <= status < 500 and status not in RETRIED_4XX:
        return f"the server answered {status} {err.message}, which another try would not change; check the URL"
    if isinstance(err, TooLarge):
        return f"the server {err}; check {policy.url_key} and the server's copy"
    return None


def _credentials_for(url: str) -> str:
    if url.startswith(HTTP):
        return "the user and password in ~/.netrc, or in the URL"
    return "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment, ~/.aws/credentials"


def _no_credentials(err: BaseException) -> bool:
    try:
        from botocore.exceptions import NoCredentialsError
    except ImportError:
        return False
    return isinstance(err, NoCredentialsError)


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


def _failures(url: str) -> tuple[type[BaseException], ...]:
    """What a try may raise that with_retries turns into a retry or a line (anything else is a bug)."""
    import aiohttp

    kinds = (OSError, asyncio.TimeoutError, TimeoutError, aiohttp.ClientError)
    if url.startswith("s3://"):
        from botocore.exceptions import BotoCoreError
        kinds += (BotoCoreError,)
    return kinds


def with_retries(url: str, action: Callable[[float], T], policy: RetryPolicy) -> T:
    """action(deadline) until it succeeds, with backoff, for at most policy.timeout_s (each try is given the
    time.monotonic() it must end by); then a RemoteError naming `url` (redacted) and what the server did the last
    time. What another try would not change fails at once (`final_failure`)."""
    shown = redact_url(url)
    deadline, delay, tries = time.monotonic() + policy.timeout_s, policy.first_delay_s, 0
    while True:
        tries += 1
        try:
            return action(deadline)
        except _failures(url) as err:
            if final := final_failure(err, url, policy):
                raise RemoteError(f"{shown}: {final}") from err
            said = server_said(err, policy)
            if time.monotonic() + delay > deadline:
                slow = f", or raise {policy.timeout_key} for a slow link" if getattr(err, "got", 0) else ""
                raise RemoteError(f"{shown}: the server {said}, {tries} tr{'y' if tries == 1 else 'ies'} in "
                                  f"{policy.timeout_s:g} s ({policy.timeout_key}); check the server{slow}") from err
            logger.warning(f"{shown}: the server {said}; try {tries + 1} in {delay:g} s")
            time.sleep(delay)
            delay = min(2 * delay, policy.max_delay_s)


def read_bytes(url: str, policy: RetryPolicy, limit: int = MAX_UNSIZED) -> bytes:
    """A small file (a manifest) whole, read in chunks and refused past `limit` bytes."""
    def attempt(deadline: float) -> bytes:
        out = io.BytesIO()
        _download(url, _Sink(out, limit, deadline, policy), policy)
        return out.getvalue()

    return with_retries(url, attempt, policy)


def fetch_file(url: str, path: Path, size: int | None, sha256: str, policy: RetryPolicy,
               counted: Callable[[int], None] = lambda n: None, most: int | None = None) -> None:
    """Downloads `url` to `path` (overwritten on each try), retrying until its size and sha256 are the given ones.
    `size` None: a file the manifest records no size of (an index), of at most `most` bytes (index_bound(samples);
    MAX_UNSIZED when not given). `counted(n)` hears of every n bytes received, failed tries included.

    Raises:
        RemoteError: naming the URL, what the server did and what to do.
        LocalDiskError: `path` could not be written (not retried).
    """
    bound = size if size is not None else (MAX_UNSIZED if most is None else most)

    def attempt(deadline: float) -> None:
        try:
            out = open(path, "wb", buffering=0)  # unbuffered: a full disk fails in the sink's write, not at close
        except OSError as err:
            raise LocalDiskError(path, err) from err
        with out:
            sink = _download(url, _Sink(out, bound, deadline, policy, counted, path), policy)
        if size is not None and sink.got != size:
            raise TransferError(f"sent {sink.got:,} bytes, the manifest records {size:,}")
        if sink.digest.hexdigest() != sha256:
            raise TransferError("sent a file whose sha256 differs from the manifest's")

    with_retries(url, attempt, policy)


def _download(url: str, sink: "_Sink", policy: RetryPolicy) -> "_Sink":
    """One try: `url` streamed into `sink` by its deadline."""
    fs = filesystem(url, policy)
    try:
        if url.startswith(HTTP):  # one streaming GET; fs.open would ask for the size first (a HEAD)
            by_deadline(fs, "get_file", url, sink, callback=_Announced(sink.most), policy=policy,
                        deadline=sink.deadline)
        else:
            with fs.open(url, "rb") as src:
                while chunk := src.read(CHUNK):
                    sink.write(chunk)
    except (asyncio.TimeoutError, TimeoutError) as err:
        raise sink.too_slow() from err
    return sink


class _Announced:
    """fsspec's callback of a GET: a Content-Length above the file's bound is refused before the body is read."""

    def __init__(self, most: int):
        self.most = most

    def set_size(self, size: int | None) -> None:
        if size is not None and size > self.most:
            raise TooLarge(f"announced {size:,} bytes, more than the {self.most:,} this file may have")

    def relative_update(self, inc: int = 1) -> None:
        pass


class _Sink:
    """Where a download streams: `out` (a file, or memory), hashed and counted as the bytes arrive; more than
    `most` bytes is TooLarge, a byte after `deadline` TooSlow, a failed local write LocalDiskError (named `path`).
    File-like enough for fsspec's get_file (write, read, tell, close)."""

    def __init__(self, out, most: int, deadline: float, policy: RetryPolicy,
                 counted: Callable[[int], None] = lambda n: None, path: Path | None = None):
        self.out, self.most, self.deadline, self.counted, self.path = out, most, deadline, counted, path
        self.read_timeout_s, self.started = policy.read_timeout_s, time.monotonic()
        self.digest, self.got = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> int:
        self.counted(len(chunk))
        self.got += len(chunk)
        if self.got > self.most:
            raise TooLarge(f"sent more than the {self.most:,} bytes this file may have")
        if time.monotonic() > self.deadline:
            raise self.too_slow()
        self.digest.update(chunk)
        view = memoryview(chunk)
        try:
            while view:  # an unbuffered write may take part of a chunk (the disk filling)
                view = view[self.out.write(view):]
        except OSError as err:
            raise LocalDiskError(self.path, err) from err
        return len(chunk)

    def too_slow(self) -> TooSlow:
        return TooSlow(self.got, time.monotonic() - self.started, self.read_timeout_s)

    def read(self, *_):
        raise OSError("a download sink is written, not read")

    def tell(self) -> int:
        return self.got

    def close(self) -> None:
        pass  # the caller closes `out`
