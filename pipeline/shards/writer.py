"""Turns an image folder into WebDataset shards in the pipeline.shards format: scan, assign, verify/convert, write.

1. Scan SRC (sorted; symlinked folders followed once) and stat every image file.
2. Assign files to shards before reading any: shuffle the sorted list with `random.Random(seed)` and cut it into
   shards by samples and/or bytes, from the sizes on disk. The assignment alone decides where each file goes, so the
   output is the same byte for byte whatever the worker count. The manifest records it (its `plan_sha256` fields).
3. DEST must be empty, or hold a manifest of the same source, options and assignment (then this run resumes it).
4. Workers build whole shards: a shard the manifest records is kept if its inputs are unchanged and its files still
   match their sha256, others are written under a temporary name and renamed when complete; the main process
   rewrites the manifest after each.

Changed sources. The assignment (`assignment_digest`: class list, and the path, size, label and shuffle position of
every file) decides whether DEST belongs to this run; files added, removed, renamed or resized change it, and DEST is
refused unless --overwrite. Each shard's digest (`inputs_digest`) also covers its files' modification times
(st_mtime_ns), so a source file replaced by other content of the same size, or edited in place, makes a rerun
rebuild exactly the shards holding it. Not detected: a change that keeps both size and mtime (a replacement whose
mtime was set back, e.g. `touch -r` or `cp -p` of a same-size file, or one within the file system's timestamp
granularity, 1-2 s on some network and FAT file systems).

Byte cap: a shard closes before the sample that would take its estimated tar size past `shard_bytes`. The estimate
is exact for copied JPEGs (headers and padding included; the tar end adds at most 10 KiB); re-encoded files count
with their source size, so a shard holding many of them can end below the cap, or above it by their growth.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import signal
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import PIL
import webdataset as wds
from tqdm import tqdm

from pipeline import DataError
from pipeline.shards.dest import lock_dest, open_dest
from pipeline.shards.format import TAR_BLOCK, format_index, index_name, sample_key, shard_name, tar_member_bytes
from pipeline.shards.images import BadInput, prepare_jpeg, read_source
from pipeline.shards.manifest import (MANIFEST_NAME, STATUS_COMPLETE, STATUS_IN_PROGRESS, Manifest, ShardRecord,
                                      verify_shard, write_manifest)
from pipeline.shards.scan import IMAGE_EXTENSIONS, SourceFile, SourceScan, check_paths, scan_source, source_lines
from util.files import partial_name, write_file_atomic
from util.processes import forking_workers

logger = logging.getLogger(__name__)

LABEL_MODES = ("folders", "none")
VERIFY_MODES = ("full", "header")
_TAR_MTIME = 0  # webdataset's TarWriter fixes uid/gid (0), user/group names and mode; its mtime defaults to now
_progress = None  # a worker's shared counter of processed inputs, set by _init_worker


@dataclass(frozen=True)
class ShardOptions:
    """The options that decide the output bytes; recorded in the manifest and compared when resuming."""

    labels: str = "folders"  # "folders": one sub-folder per class; "none": unlabeled, no .cls
    seed: int = 0
    shard_samples: int | None = None
    shard_bytes: int | None = 1_000_000_000
    prefix: str = "shard"
    verify: str = "full"  # "full": decode every image; "header": parse headers (and a JPEG's marker structure)
    quality: int = 90  # JPEG quality of re-encoded images
    max_size: int | None = None  # longer side above this is resized down (aspect kept)
    json: bool = False  # also write <key>.json


@dataclass(frozen=True)
class RunSettings:
    """How to run; no effect on the output bytes."""

    workers: int = 1
    strict: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ShardInputs:
    """The files assigned to one shard."""

    shard: int
    members: tuple[tuple[int, SourceFile], ...]  # (position in the shuffle, file)
    digest: str  # inputs_digest: the manifest's plan_sha256 of this shard
    estimated_bytes: int  # tar bytes if every member is copied (see estimated_sample_bytes)


@dataclass(frozen=True)
class ShardTask:
    src: str
    dest: str
    inputs: ShardInputs
    options: ShardOptions
    classes: list[str] | None
    previous: ShardRecord | None  # what the manifest recorded for this shard, if anything
    strict: bool


@dataclass(frozen=True)
class ShardResult:
    record: ShardRecord
    skipped: list[dict]
    kept: bool
    resized: list[dict] = dataclasses.field(default_factory=list)  # {"path", "reason"}: fitted to JPEG's side limit


# ---------------------------------------------------------------------------------------------- scan and assignment
def sample_json(file: SourceFile, classes: list[str] | None) -> bytes:
    meta = {"path": file.path, "class": None if file.label is None else classes[file.label], "label": file.label}
    return json.dumps(meta, sort_keys=True).encode("ascii")  # ASCII escapes: safe for any file name


def estimated_sample_bytes(file: SourceFile, options: ShardOptions, classes: list[str] | None) -> int:
    """Tar bytes of this file's sample if its bytes are copied (exact then)."""
    size = tar_member_bytes(file.size)
    if file.label is not None:
        size += tar_member_bytes(len(str(file.label)))
    if options.json:
        size += tar_member_bytes(len(sample_json(file, classes)))
    return size


def inputs_digest(members: tuple[tuple[int, SourceFile], ...], mtimes: bool = True) -> str:
    """Digest of the inputs assigned to one shard: shuffle position, label, size and path of each file and, with
    `mtimes`, its modification time (a shard whose digest differs from the recorded one is rebuilt)."""
    digest = hashlib.sha256()
    for position, f in members:
        stamp = f"{f.mtime_ns}\t" if mtimes else ""
        digest.update(f"{position}\t{f.label}\t{f.size}\t{stamp}{f.path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def assign_shards(scan: SourceScan, options: ShardOptions) -> list[ShardInputs]:
    """The seeded shuffle of the sorted file list, cut into shards of at most `shard_samples` samples and
    `shard_bytes` estimated bytes (a single larger sample still gets a shard of its own)."""
    order = list(scan.files)
    random.Random(options.seed).shuffle(order)
    groups, current, current_bytes = [], [], 0
    for position, f in enumerate(order):
        size = estimated_sample_bytes(f, options, scan.classes)
        full = options.shard_samples is not None and len(current) >= options.shard_samples
        over = options.shard_bytes is not None and current_bytes + size > options.shard_bytes
        if current and (full or over):
            groups.append((tuple(current), current_bytes))
            current, current_bytes = [], 0
        current.append((position, f))
        current_bytes += size
    if current:
        groups.append((tuple(current), current_bytes))
    return [ShardInputs(i, members, inputs_digest(members), size)
            for i, (members, size) in enumerate(groups)]


def assignment_digest(shards: list[ShardInputs], classes: list[str] | None) -> str:
    """Digest of the assignment: the class list and which file (path, size, label) goes where. Modification times
    are left out, so a file modified in place keeps DEST resumable and changes only its shard's digest."""
    digest = hashlib.sha256(json.dumps(classes).encode("ascii"))
    for shard in shards:
        digest.update(inputs_digest(shard.members, mtimes=False).encode("ascii"))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ one shard
class _HashingFile:
    """A write-only file that hashes and counts what passes through it to `raw`."""

    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _write_sample(tw: wds.TarWriter, sample: dict) -> list[tuple[str, int, int, str]]:
    """Writes one sample; returns its DALI index entries (ext, data offset, size, member name)."""
    key, offset, entries = sample["__key__"], tw.tarstream.offset, []
    for ext in sorted(k for k in sample if k != "__key__"):  # the order TarWriter writes members in
        size = len(sample[ext])
        entries.append((ext, offset + TAR_BLOCK, size, f"{key}.{ext}"))
        offset += tar_member_bytes(size)
    tw.write(sample)
    if tw.tarstream.offset != offset:  # e.g. a member name too long for one ustar header
        raise RuntimeError(f"tar member layout of sample {key} differs from its index entries")
    return entries


def _write_samples(sink: _HashingFile, task: ShardTask) -> tuple[list, list[dict], int, list[dict]]:
    """Writes the shard's samples that pass verification as a tar into `sink`; returns (index entries, skipped,
    converted count, resized to fit JPEG)."""
    options, entries, skipped, converted, resized = task.options, [], [], 0, []
    tw = wds.TarWriter(sink, encoder=False, mtime=_TAR_MTIME)
    for position, f in task.inputs.members:
        try:
            jpeg, reencoded, note = prepare_jpeg(read_source(Path(task.src) / f.path), options.verify,
                                                 options.quality, options.max_size)
        except BadInput as bad:
            if task.strict:
                raise DataError(f"{Path(task.src) / f.path}: {bad.reason} (--strict: fix or remove the file, "
                                f"or run without --strict to skip it)") from None
            skipped.append({"path": f.path, "reason": bad.reason, "shard": task.inputs.shard})
        else:
            sample = {"__key__": sample_key(position), "jpg": jpeg}
            if f.label is not None:
                sample["cls"] = str(f.label).encode("ascii")
            if options.json:
                sample["json"] = sample_json(f, task.classes)
            entries.append(_write_sample(tw, sample))
            converted += reencoded
            if note:
                resized.append({"path": f.path, "reason": note})
        _advance(1)
    tw.close()  # the tar end; `sink` stays open
    return entries, skipped, converted, resized


def write_shard(task: ShardTask) -> ShardResult:
    """Writes one shard and its DALI index, each under a temporary name renamed when complete.

    Neither is fsynced (an fsync per shard stalls the worker on the disk): a resume re-checks every recorded shard
    against its sha256, so one that a machine crash left incomplete is rebuilt. The manifest is fsynced."""
    dest, shard, prefix = Path(task.dest), task.inputs.shard, task.options.prefix
    tar_path, idx_path = dest / shard_name(prefix, shard), dest / index_name(prefix, shard)
    tmp = dest / partial_name(tar_path.name)
    try:
        with _output_errors(tar_path), open(tmp, "wb") as raw:
            sink = _HashingFile(raw)
            entries, skipped, converted, resized = _write_samples(sink, task)
        if not entries:
            record = ShardRecord(shard, None, None, 0, 0, None, None, task.inputs.digest, 0)
            return ShardResult(record, skipped, kept=False, resized=resized)
        index = format_index(entries).encode("ascii")
        with _output_errors(tar_path):
            write_file_atomic(idx_path, index, sync=False)
            os.replace(tmp, tar_path)
    finally:
        tmp.unlink(missing_ok=True)
    record = ShardRecord(shard, tar_path.name, idx_path.name, len(entries), sink.size, sink.sha256.hexdigest(),
                         hashlib.sha256(index).hexdigest(), task.inputs.digest, converted)
    return ShardResult(record, skipped, kept=False, resized=resized)


@contextlib.contextmanager
def _output_errors(path: Path):
    """Turns a failure to write DEST (disk full, permissions) into an error that says so. Reading errors never get
    here: they make the input a BadInput."""
    try:
        yield
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}. Free space or fix permissions, then rerun "
                        f"the same command to resume") from err


def run_shard_task(task: ShardTask) -> ShardResult:
    """Keeps the recorded shard if its files still match their checksums, else (re)writes it."""
    previous = task.previous
    if previous is not None and previous.plan_sha256 != task.inputs.digest:
        why = ("it was written by an older shard_dataset.py, which did not record modification times"
               if previous.plan_sha256 == inputs_digest(task.inputs.members, mtimes=False) else
               "a source file in it was modified since it was written")
        logger.warning("rebuilding shard %d: %s", previous.shard, why)
    elif previous is not None:
        problem = verify_shard(task.dest, previous, checksum=True)
        if problem is None:
            _advance(len(task.inputs.members))
            return ShardResult(previous, [], kept=True)
        logger.warning("rebuilding shard %d: %s", previous.shard, problem)
    return write_shard(task)


def _advance(n: int) -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += n


def _init_worker(progress, parent_pid: int) -> None:
    """Pool worker set-up: share the progress counter; die with the main process (so a killed run leaves no writer
    behind to race its rerun); leave Ctrl-C to the main process, which stops the pool."""
    global _progress
    _progress = progress
    if platform.system() == "Linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the main process died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------------- the run
class _ManifestInProgress:
    """What the manifest records as shards complete; rewritten after each one so a killed run can resume."""

    def __init__(self, src: Path, dest: Path, options: ShardOptions, scan: SourceScan, shards: list[ShardInputs],
                 old: Manifest | None):
        self.src, self.dest, self.options, self.scan, self.shards = src, dest, options, scan, shards
        self.digest = assignment_digest(shards, scan.classes)
        self.records = {r.shard: r for r in (old.shards if old else [])}
        self.skipped: dict[int, list[dict]] = {}
        for entry in old.skipped if old else []:
            if entry.get("shard") is not None:
                self.skipped.setdefault(entry["shard"], []).append(entry)
        self.counts = {"kept": 0, "written": 0, "converted": 0}
        self.resized: list[dict] = []  # {"path", "reason"}: images this run resized to fit JPEG's side limit
        self.versions = {"python": platform.python_version(), "pillow": PIL.__version__,
                         "webdataset": metadata.version("webdataset")}

    def manifest(self, status: str) -> Manifest:
        bad = self.scan.skipped + [e for s in sorted(self.records) for e in self.skipped.get(s, [])]
        return Manifest(status, str(self.src), dataclasses.asdict(self.options), self.digest,
                        len(self.scan.files), len(self.shards), self.scan.classes,
                        [self.records[s] for s in sorted(self.records)], sorted(bad, key=lambda e: e["path"]),
                        self.scan.ignored, self.versions)

    def add(self, result: ShardResult) -> None:
        self.records[result.record.shard] = result.record
        if not result.kept:
            self.skipped[result.record.shard] = result.skipped
            self.counts["converted"] += result.record.converted
            self.resized += result.resized
        self.counts["kept" if result.kept else "written"] += 1
        write_manifest(self.dest, self.manifest(STATUS_IN_PROGRESS))


def _results(results, on_tick, interval_s: float = 0.5):
    """The pool's results as they come, calling `on_tick` at least every `interval_s` meanwhile."""
    while True:
        try:
            yield results.next(timeout=interval_s)
        except StopIteration:
            return
        except mp.TimeoutError:
            on_tick()


def _run_pool(run: _ManifestInProgress, settings: RunSettings) -> None:
    """Builds the shards on forked workers (fork: no re-import of webdataset and torch per worker)."""
    tasks = [ShardTask(str(run.src), str(run.dest), p, run.options, run.scan.classes, run.records.get(p.shard),
                       settings.strict) for p in run.shards]
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    workers = max(1, min(settings.workers, len(tasks)))
    with forking_workers():
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(counter, os.getpid()))
    with pool, tqdm(total=len(run.scan.files), unit="img", disable=None if settings.progress else True) as bar:
        tick = lambda: bar.update(counter.value - bar.n)  # noqa: E731
        for result in _results(pool.imap_unordered(run_shard_task, tasks), tick):
            run.add(result)
            tick()


def round_balance(shards: list[tuple[int, int]], workers: int) -> str | None:
    """A warning when whole-shard parallelism leaves cores idle: workers take shards in rounds, and a last round with
    few shards keeps most workers waiting (141 shards of 1 GB on 64 cores: 3 rounds, the last with 13). Suggests the
    shard size that fills every round. `shards`: (samples, estimated bytes) per shard. None when ≥ 90% of
    the worker time is used."""
    n = len(shards)
    if workers < 2 or n == 0:
        return None
    rounds = -(-n // workers)
    used = n / (rounds * workers)
    if used >= 0.9:
        return None
    fill = rounds * workers  # shards that would fill every round
    samples, size = (sum(column) for column in zip(*shards))
    per_shard = -(-size // fill)  # rounded up, so that `fill` shards hold it all
    hint = f"{-(-per_shard // 10**6)}MB" if per_shard >= 10**7 else str(-(-samples // fill))
    return (f"{n} shards on {workers} workers: {rounds} round(s), the last with {n - (rounds - 1) * workers} "
            f"shard(s), so {100 * used:.0f}% of the worker time is used; --shard-size {hint} would make about {fill} "
            f"shards and fill every round")


def _scan(src: Path, options: ShardOptions, strict: bool) -> SourceScan:
    try:
        scan = scan_source(src, options.labels)
    except OSError as err:
        raise DataError(f"cannot read SRC {err.filename or src}: {err.strerror or err}") from err
    if not scan.files:
        hint = " (use --labels none for a folder without class sub-folders)" if scan.classes == [] else ""
        raise DataError(f"no usable image files ({' '.join(IMAGE_EXTENSIONS)}) found in {src}{hint}")
    if strict and scan.skipped:
        bad = scan.skipped[0]
        raise DataError(f"{src / bad['path']}: {bad['reason']} (--strict; {len(scan.skipped)} such input(s))")
    empty = sorted(set(scan.classes or []) - {scan.classes[f.label] for f in scan.files if f.label is not None})
    if empty:
        logger.warning("%d class folder(s) hold no usable image (their class index is kept): %s", len(empty),
                       ", ".join(empty[:10]))
    return scan


@contextlib.contextmanager
def _dest_errors(dest: Path):
    """A failure to create, lock or write DEST (permissions, a read-only or full disk) as one clear error."""
    try:
        yield
    except OSError as err:
        raise DataError(f"cannot write DEST {dest}: {err.filename or dest}: {err.strerror or err}. Fix "
                        f"permissions or free space, then rerun the same command to resume") from err


def build_shards(src: str | os.PathLike, dest: str | os.PathLike, options: ShardOptions,
                 settings: RunSettings) -> tuple[Manifest, dict]:
    """Writes (or resumes writing) SRC as shards in DEST; returns the complete manifest and this run's counts of
    shards written and kept and of images re-encoded, with under "resized" the images it had to resize to fit JPEG's
    side limit ({"path", "reason"}, by path).

    Raises:
        DataError: bad paths, nothing usable in SRC, a bad input under --strict, DEST not writable.
        pipeline.shards.dest.DataError: DEST holds something else (and not --overwrite), or another run holds it.
    """
    given = str(src), str(dest)  # as the user wrote them, for the start line and its advice
    src, dest = check_paths(src, dest)
    scan = _scan(src, options, settings.strict)
    start, splits = source_lines(scan, *given)
    logger.info(start)
    if splits:
        logger.warning(splits)
    shards = assign_shards(scan, options)
    warning = round_balance([(len(s.members), s.estimated_bytes) for s in shards], settings.workers)
    if warning:
        logger.warning(warning)
    with _dest_errors(dest):
        dest.mkdir(parents=True, exist_ok=True)
        with lock_dest(dest):
            old = open_dest(dest, str(src), dataclasses.asdict(options), assignment_digest(shards, scan.classes),
                            len(scan.files), settings.overwrite)
            run = _ManifestInProgress(src, dest, options, scan, shards, old)
            write_manifest(dest, run.manifest(STATUS_IN_PROGRESS))
            _run_pool(run, settings)
            manifest = run.manifest(STATUS_COMPLETE)
            if manifest.total_samples == 0:
                raise DataError(f"none of the {len(scan.files) + len(scan.skipped)} image files in {src} is a "
                                f"usable image: see 'skipped' in {dest / MANIFEST_NAME}")
            write_manifest(dest, manifest)
    return manifest, {**run.counts, "resized": sorted(run.resized, key=lambda e: e["path"])}
