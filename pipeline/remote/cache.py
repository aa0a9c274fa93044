"""A node's local cache of remote shards (data.shards a URL): the loaders read the cached files exactly as they read
a local shard folder.

    cache = ShardCache.open(url, manifest, root=Path(data.cache_dir), bound_bytes=gb * 1e9, policy=policy)
    shards = cache.shard_files()      # ShardFile list, as list_shards gives for a folder; the indexes are fetched
    path = cache.ensure(shards[0].path)   # the verified local tar, fetched first if needed
    cache.prefetch(paths)             # a background thread fetches these ahead, in order

Layout: `ROOT/<16 hex of the URL's sha256>/` holds `<name>` (a tar or index, at its final name only once its size
and sha256 are the manifest's: it is downloaded to `<name>.<pid>.<thread>.part` and renamed) and `<name>.ok` (what it
was verified as, pipeline/remote/records.py: a shard rebuilt on the server under the same name is fetched again, a
file changed on disk hashed again). `<name>.lock` serialises the fetch of one file between threads, the ranks of a
node and DataLoader workers, so that a file is fetched once; `.evict.lock` serialises making room.

The bound counts every cached file and every download in flight (at its final size). Indexes stay; shard tars are
evicted least recently used (a lookup marks the file's access time). A reader that lost a file to eviction between
its lookup and its open looks it up again (`read`).

    python -m pipeline.remote.cache DATA_CACHE_DIR    # a full re-check: every cached file hashed again
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline import DataError
from pipeline.remote.fetch import LocalDiskError, RetryPolicy, fetch_file, index_bound, join
from pipeline.shards.format import ShardFile, read_span
from pipeline.remote.records import file_lock, read_record, recheck, stat_key, write_record
from pipeline.shards.manifest import Manifest
from util.files import file_sha256
from util.urls import redact

logger = logging.getLogger(__name__)

FETCH_THREADS = 4  # files downloaded at once by the prefetcher
WAIT_FOR_ROOM_S = 0.2  # poll interval while downloads of other processes hold the room a fetch needs


@dataclass
class CacheStats:
    """What one process's lookups did: `network_bytes` received (failed tries included), `read_bytes` read from
    cached files, `lookups` and `hits` (the file was already there, verified), and `waits`: the readers' lookups
    that were not (they waited for the network; the fetch-ahead's own lookups are not counted)."""

    network_bytes: int = 0
    read_bytes: int = 0
    lookups: int = 0
    hits: int = 0
    waits: int = 0

    def add(self, other: "CacheStats") -> None:
        self.network_bytes += other.network_bytes
        self.read_bytes += other.read_bytes
        self.lookups += other.lookups
        self.hits += other.hits
        self.waits += other.waits

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return self.network_bytes, self.read_bytes, self.lookups, self.hits, self.waits


@dataclass(frozen=True)
class Entry:
    name: str
    bytes: int | None  # None for an index (the manifest records only its sha256)
    sha256: str
    most: int | None = None  # an index: the most it may have, from its shard's sample count

    @property
    def is_index(self) -> bool:
        return self.bytes is None


class ShardCache:
    """The cache of one remote shard folder on this node; picklable (DataLoader workers get a copy and share the
    files and locks through the file system)."""

    def __init__(self, url: str, manifest: Manifest, root: Path, bound_bytes: int | None, policy: RetryPolicy):
        self.url, self.bound, self.policy = url, bound_bytes, policy
        self.records = [r for r in manifest.shards if r.samples > 0]
        self.entries = {r.name: Entry(r.name, r.bytes, r.sha256) for r in self.records}
        self.entries.update({r.index_name: Entry(r.index_name, None, r.index_sha256, index_bound(r.samples))
                             for r in self.records})
        self.dir = Path(root).expanduser().absolute() / hashlib.sha256(url.encode()).hexdigest()[:16]
        self.stats, self._lock, self._prefetcher = CacheStats(), threading.Lock(), None
        self._verified: dict[str, tuple[int, int, int]] = {}  # name: (size, mtime_ns, inode) when verified

    @classmethod
    def open(cls, url: str, manifest: Manifest, root: Path, bound_bytes: int | None,
             policy: RetryPolicy) -> "ShardCache":
        cache = cls(url, manifest, root, bound_bytes, policy)
        try:
            cache.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"data.cache_dir {root}: cannot create {cache.dir} ({err.strerror or err}); set "
                            f"data.cache_dir to a writable folder on this node's local disk") from err
        cache.remove_stale_parts()
        cache._check_room()
        return cache

    def remove_stale_parts(self) -> list[str]:
        """Removes the downloads that a process killed mid-fetch left (`<name>.<pid>.<thread>.part` whose process is
        gone): they would hold room in the bound forever. Returns their names."""
        removed = []
        for part in self.dir.glob("*.part"):
            pid = _part_of(part.name)[1]
            if pid is not None and not _alive(pid):
                part.unlink(missing_ok=True)
                removed.append(part.name)
        if removed:
            logger.info(f"shard cache: removed {len(removed)} download(s) left by processes that are gone")
        return removed

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(stats=CacheStats(), _lock=None, _prefetcher=None)  # a worker counts its own; no thread
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def forked(self) -> None:
        """In a forked DataLoader worker: counts of its own from zero, and a lock that no parent thread holds."""
        self.stats, self._lock, self._prefetcher = CacheStats(), threading.Lock(), None

    def _check_room(self) -> None:
        largest, total = max((r.bytes for r in self.records), default=0), self.total_tar_bytes()
        if self.bound is not None and self.bound < 2 * largest:
            raise DataError(f"data.cache_gb {self.bound / 1e9:g}: the cache must hold at least two shards "
                            f"({2 * largest / 1e9:.3g} GB for this folder's largest); raise data.cache_gb")
        need = total if self.bound is None else min(self.bound, total)
        free = shutil.disk_usage(self.dir).free + self.usage()
        if free < need:
            raise DataError(f"data.cache_dir {self.dir}: {free / 1e9:.3g} GB free, the cache needs "
                            f"{need / 1e9:.3g} GB ({'data.cache_gb' if self.bound else 'every shard: data.cache_gb 0'}"
                            f"); free space, or set data.cache_dir elsewhere or a smaller data.cache_gb")

    # ----- the files
    def path(self, name: str) -> Path:
        return self.dir / name

    def shard_files(self) -> list[ShardFile]:
        """The shards as list_shards gives them for a folder, with their tar sizes; the indexes are fetched now
        (small: the loaders read them all at start), the tars when they are looked up."""
        self.ensure_all([self.path(r.index_name) for r in self.records])
        return [ShardFile(self.path(r.name), self.path(r.index_name), r.samples, r.index_sha256, bytes=r.bytes)
                for r in self.records]

    def total_tar_bytes(self) -> int:
        return sum(r.bytes for r in self.records)

    def usage(self) -> int:
        """Bytes the cache holds now, downloads in flight counted at their final size."""
        total = 0
        for entry in os.scandir(self.dir) if self.dir.is_dir() else ():
            name = entry.name
            if name.endswith(".part"):
                known = self.entries.get(_part_of(name)[0])
                total += max(known.bytes or 0, _size(entry)) if known is not None else _size(entry)
            elif name in self.entries:
                total += _size(entry)
        return total

    # ----- lookups
    def ensure(self, path: str | Path, ahead: bool = False) -> Path:
        """The cached file at `path` (a path this cache gave out), verified, fetched first if needed (`ahead`: by
        the fetch-ahead, not for a reader)."""
        name = Path(path).name
        entry = self.entries.get(name)
        if entry is None:
            raise DataError(f"{path}: not a file of the shard cache of {redact(self.url)}")
        final = self.path(name)
        with self._lock:
            self.stats.lookups += 1
        if self._state(entry) == "ok":
            self._touch(final)
            with self._lock:
                self.stats.hits += 1
            return final
        if not ahead:
            with self._lock:
                self.stats.waits += 1
        with self._file_lock(name):
            state = self._state(entry)  # another process may have fetched it while this one waited
            if state == "missing" or (state == "changed" and not self._verify_again(entry)):
                self._fetch(entry)
        return final

    def read(self, path: str, span: tuple[int, int], counted: int | None = None) -> bytes:
        """`span` = (offset, size) bytes of the cached shard `path` (looked up again if evicted meanwhile), counted
        as `counted` bytes read (default: its size; the loader counts a sample as its share of the shard's bytes)."""
        for _ in range(3):
            final = self.ensure(path)
            try:
                data = read_span(str(final), span)
            except FileNotFoundError:
                continue  # evicted between the lookup and the open
            self.add(CacheStats(read_bytes=len(data) if counted is None else counted))
            return data
        raise DataError(f"shard {path}: evicted from the cache three times while being read; raise data.cache_gb")

    def take_stats(self) -> CacheStats:
        """This process's counts since the last call (a DataLoader worker's, handed back with its batch)."""
        with self._lock:
            stats, self.stats = self.stats, CacheStats()
        return stats

    def add(self, counts: CacheStats) -> None:
        """Counts made elsewhere for this cache: a worker's (take_stats), the bytes DALI's reader reads."""
        with self._lock:
            self.stats.add(counts)

    def _state(self, entry: Entry) -> str:
        """"ok": the file is there as it was when verified (size, mtime, inode: the lookups mark use in its access
        time, so only a write changes these); "changed": there, but not as verified (or verified before these were
        recorded); "missing"."""
        final = self.path(entry.name)
        try:
            stat = final.stat()
        except FileNotFoundError:
            return "missing"
        seen = stat_key(stat)
        if self._verified.get(entry.name) == seen:
            return "ok"
        record = read_record(final)
        if record is None or record.get("sha256") != entry.sha256:
            return "missing"  # never verified, or against another version of the file: fetched again
        if (record.get("size"), record.get("mtime_ns"), record.get("inode")) != seen:
            return "changed"
        self._verified[entry.name] = seen
        return "ok"

    def _verify_again(self, entry: Entry) -> bool:
        """A cached file that changed on disk since it was verified (under its lock): hashed again; kept (its record
        renewed) when it still has the manifest's size and sha256, else removed, saying so, for a fetch."""
        final = self.path(entry.name)
        if (entry.is_index or final.stat().st_size == entry.bytes) and file_sha256(final) == entry.sha256:
            self._record(final, entry.sha256)
            return True
        logger.warning(f"shard cache: {final} changed on disk after it was verified (its size or sha256 is no longer "
                       f"the manifest's); it is fetched again. A full re-check of the cache: python -m "
                       f"pipeline.remote.cache {self.dir.parent}")
        self._evict(final)
        return False

    def _record(self, final: Path, sha256: str) -> None:
        self._verified[final.name] = write_record(final, sha256)

    def _fetch(self, entry: Entry) -> None:
        """Downloads one file under its lock: room first, then to a .part file, checked, renamed; then its .ok."""
        self._verified.pop(entry.name, None)
        final = self.path(entry.name)
        part = final.with_name(_part_name(entry.name))
        if entry.is_index:
            part.touch()
        else:
            self._make_room(entry.name, entry.bytes, part)
        url = join(self.url, entry.name)
        try:
            fetch_file(url, part, entry.bytes, entry.sha256, self.policy, counted=self._count_network, most=entry.most)
            os.replace(part, final)
            self._record(final, entry.sha256)
        except LocalDiskError as err:
            raise DataError(self._disk_line(entry, err)) from err
        finally:
            part.unlink(missing_ok=True)

    def _disk_line(self, entry: Entry, err: LocalDiskError) -> str:
        """A download that this node's disk could not take: its words, the room there and the room needed."""
        free, need = shutil.disk_usage(self.dir).free, self.total_tar_bytes() if self.bound is None else self.bound
        return (f"data.cache_dir {self.dir.parent}: cannot write {entry.name} there "
                f"({os.strerror(err.errno) if err.errno else err}): {free / 1e9:.3g} GB free, the cache holds "
                f"{self.usage() / 1e9:.3g} GB of the {need / 1e9:.3g} GB it needs ("
                f"{'data.cache_gb' if self.bound else 'every shard: data.cache_gb 0'}); free space on that disk, or "
                f"set data.cache_dir to a disk with room, or a smaller data.cache_gb")

    def _count_network(self, n: int) -> None:
        with self._lock:
            self.stats.network_bytes += n

    # ----- room
    def _make_room(self, name: str, size: int, part: Path) -> None:
        """Evicts least recently used tars until `size` more bytes fit the bound, then reserves them by creating
        `part` (counted at `size` from then on); waits while other processes' downloads hold the room, for at most
        the retry policy's timeout."""
        if self.bound is None:
            part.touch()
            return
        deadline = time.monotonic() + self.policy.timeout_s
        while True:
            with self._file_lock(".evict"):
                used = self.usage()
                for victim in self._lru(exclude=name):
                    if used + size <= self.bound:
                        break
                    used -= self._evict(victim)
                if used + size <= self.bound:
                    part.touch()
                    return
            if time.monotonic() > deadline:
                raise DataError(f"data.cache_gb {self.bound / 1e9:g}: no room for shard {name} ({size:,} bytes) "
                                f"after {self.policy.timeout_s:g} s: the files in use fill the cache; raise "
                                f"data.cache_gb")
            time.sleep(WAIT_FOR_ROOM_S)

    def _lru(self, exclude: str) -> list[Path]:
        tars = []
        for e in self.entries.values():
            final = self.path(e.name)
            if not e.is_index and e.name != exclude and final.exists():
                try:
                    tars.append((final.stat().st_atime_ns, final))
                except FileNotFoundError:
                    continue
        return [p for _, p in sorted(tars)]

    def _evict(self, final: Path) -> int:
        try:
            size = final.stat().st_size
            final.with_name(final.name + ".ok").unlink(missing_ok=True)
            final.unlink()
        except FileNotFoundError:
            return 0
        self._verified.pop(final.name, None)
        logger.debug("shard cache: evicted %s (%d bytes)", final.name, size)
        return size

    @staticmethod
    def _touch(final: Path) -> None:
        """Marks a file used now, in its access time (its mtime stays the one verified)."""
        try:
            os.utime(final, ns=(time.time_ns(), final.stat().st_mtime_ns))
        except FileNotFoundError:
            pass  # evicted just now: the reader looks it up again

    def _file_lock(self, name: str):
        return file_lock(self.path(name))

    # ----- ahead of the readers
    def prefetch(self, paths: Iterable[str | Path]) -> None:
        """The files the readers need next, in the order they need them (the caller bounds them by the cache: the
        epoch order's `upcoming`): those cached are marked used now, latest needed first, so that making room evicts
        other files before them; the rest are fetched in the background, in order, on FETCH_THREADS threads.
        Replaces a prefetch in progress. A failure is left to the reader's own lookup, which retries and reports it."""
        names = [Path(p).name for p in dict.fromkeys(str(p) for p in paths)]
        if self._prefetcher is not None:
            self._prefetcher.stop()
        for name in reversed(names):
            self._touch(self.path(name))
        self._prefetcher = Prefetcher(self, names)
        self._prefetcher.start()

    def ensure_all(self, paths: Iterable[str | Path]) -> None:
        """Looks these files up now, FETCH_THREADS at a time: the indexes at start, and every tar for a reader that
        opens them all at start (DALI)."""
        with ThreadPoolExecutor(FETCH_THREADS) as pool:  # before the readers start: not their waits
            list(pool.map(lambda p: self.ensure(p, ahead=True), list(paths)))


class Prefetcher(threading.Thread):
    """Looks up `names` in order on a few threads, until stopped."""

    def __init__(self, cache: ShardCache, names: list[str]):
        super().__init__(name="shard-prefetch", daemon=True)
        self.cache, self.names, self._stop_event = cache, names, threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for name in self.names:
                if self._stop_event.is_set():
                    break
                pool.submit(self._one, name)

    def _one(self, name: str) -> None:
        if self._stop_event.is_set():
            return
        try:
            self.cache.ensure(self.cache.path(name), ahead=True)
        except DataError as err:
            logger.warning(f"shard prefetch stopped: {err}")
            self._stop_event.set()


def _part_name(name: str) -> str:
    """This thread's download of the file `name`: `<name>.<pid>.<thread>.part`."""
    return f"{name}.{os.getpid()}.{threading.get_ident()}.part"


def _part_of(part_name: str) -> tuple[str, int | None]:
    """(the file, the pid of the process fetching it) of a download that _part_name named."""
    fields = part_name.rsplit(".", 3)
    return fields[0], int(fields[1]) if len(fields) == 4 and fields[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.remote.cache", description="A full re-check of a "
                                     "node's shard cache: every cached file hashed again; one that changed is removed "
                                     "and fetched again when a run needs it.")
    parser.add_argument("cache_dir", help="data.cache_dir (default ~/.cache/ijepa/shards)")
    args = parser.parse_args(argv)
    if not Path(args.cache_dir).expanduser().is_dir():
        print(f"error: {args.cache_dir}: no such folder; pass data.cache_dir", file=sys.stderr)
        return 2
    checked, removed = recheck(Path(args.cache_dir))
    for path in removed:
        print(f"removed {path}: not the file it was verified as")
    print(f"{checked} cached file(s) checked, {len(removed)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
