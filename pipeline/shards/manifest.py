"""manifest.json: what a shard folder holds (its schema, `manifest_to_dict`), written by shard_dataset.py and read,
type-checked and checked against the folder's files by every reader. `read_manifest` is the one way to open one:
a folder on this machine, or (given a retry policy) the folder's URL. Readers list shards through the manifest
(`list_shards`), never by globbing: a shard whose inputs were all bad has no files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.remote.fetch import RetryPolicy, join, read_bytes
from pipeline.shards.format import REBUILD, ManifestError, ShardFile
from util.errors import listed
from util.files import file_sha256, write_file_atomic
from util.urls import redact

FORMAT_NAME = "ijepa-webdataset-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATUS_COMPLETE = "complete"
STATUS_IN_PROGRESS = "in_progress"
CHECKS = ("none", "size", "checksum")
URL_SCHEMES = ("http://", "https://", "s3://")  # data.shards may be one of these (pipeline/remote/)
SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")  # RFC 3986's scheme, then "//"
# what a manifest read from anywhere may be: its bytes, its JSON's nesting (the schema needs 4: the manifest, a list,
# an entry, a value; json's parser recurses once per level), its file names (the writer's <prefix>-NNNNNN.tar and
# .idx: plain names in DEST, never a folder or `..`) and its digests (sha256 hex)
MAX_MANIFEST_BYTES = 1 << 28
MAX_JSON_DEPTH = 16
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SHA256 = re.compile(r"[0-9a-f]{64}")
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (brackets inside do not nest)
NOT_BRACKET = re.compile(rb"[^\[\]{}]")


@dataclass(frozen=True)
class ShardRecord:
    """One shard of the assignment as the manifest records it."""

    shard: int  # position in the assignment; names the files
    name: str | None  # tar file name in DEST; None when every assigned input was bad
    index_name: str | None  # DALI index file name in DEST
    samples: int
    bytes: int  # size of the tar file
    sha256: str | None  # of the tar file
    index_sha256: str | None
    plan_sha256: str  # digest of the inputs assigned to this shard (pipeline.shards.writer.inputs_digest)
    converted: int  # samples re-encoded (non-JPEG, CMYK, or resized) rather than copied


@dataclass(frozen=True)
class Manifest:
    """DEST/manifest.json, parsed and type-checked."""

    status: str  # "complete", or "in_progress" while shard_dataset.py runs (or after it was killed)
    source: str  # absolute path of SRC
    options: dict  # the options that decide the output bytes (pipeline.shards.writer.ShardOptions)
    plan_sha256: str  # the assignment of files to shards (pipeline.shards.writer.assignment_digest)
    planned_inputs: int  # image files that entered the shuffle
    planned_shards: int
    classes: list[str] | None  # None with --labels none
    shards: list[ShardRecord]  # in shard order; all assigned shards once complete
    skipped: list[dict]  # {"path", "reason", "shard"}: bad inputs; shard null for those found while scanning
    ignored: list[dict]  # {"path", "reason"}: files that are not image files by name, or not in a class folder
    versions: dict

    @property
    def total_samples(self) -> int:
        return sum(r.samples for r in self.shards)



def manifest_to_dict(manifest: Manifest) -> dict:
    """The JSON schema of manifest.json, field by field (the order written)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "status": manifest.status,
        "source": manifest.source,
        "options": manifest.options,
        "plan_sha256": manifest.plan_sha256,
        "planned_inputs": manifest.planned_inputs,
        "planned_shards": manifest.planned_shards,
        "classes": manifest.classes,
        "total_samples": manifest.total_samples,
        "shards": [dataclasses.asdict(r) for r in manifest.shards],
        "skipped": manifest.skipped,
        "ignored": manifest.ignored,
        "versions": manifest.versions,
    }


def write_manifest(dest: str | os.PathLike, manifest: Manifest) -> None:
    text = json.dumps(manifest_to_dict(manifest), indent=1) + "\n"  # ASCII escapes: any file name round-trips
    write_file_atomic(Path(dest) / MANIFEST_NAME, text.encode("ascii"))


def _field(obj: dict, key: str, kind: type | tuple, where: str, nullable: bool = False):
    """obj[key] if present and of `kind` (bool is not an int here); ManifestError naming `where` otherwise."""
    if key not in obj:
        raise ManifestError(f"{where}: field {key!r} is missing; {REBUILD}")
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"{where}: field {key!r} has the wrong type ({type(value).__name__}); {REBUILD}")
    return value


def _record_from_dict(obj: object, where: str) -> ShardRecord:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: is not an object; {REBUILD}")
    fields = {"shard": (int, False), "name": (str, True), "index_name": (str, True), "samples": (int, False),
              "bytes": (int, False), "sha256": (str, True), "index_sha256": (str, True),
              "plan_sha256": (str, False), "converted": (int, False)}
    values = {key: _field(obj, key, kind, where, nullable) for key, (kind, nullable) in fields.items()}
    _check_values(values, where)
    record = ShardRecord(**values)
    files = (record.name, record.index_name, record.sha256, record.index_sha256)
    if not all((f is not None) == (record.samples > 0) for f in files):
        raise ManifestError(f"{where}: a shard has files and checksums exactly when it has samples; {REBUILD}")
    return record


def _check_values(values: dict, where: str) -> None:
    """A record's counts not negative, its file names plain names in DEST (.tar, .idx) and its digests sha256s."""
    for key in ("samples", "bytes", "converted"):
        if values[key] < 0:
            raise ManifestError(f"{where}: field {key!r} is negative ({values[key]}); {REBUILD}")
    for key, suffix in (("name", ".tar"), ("index_name", ".idx")):
        name = values[key]
        if name is not None and not (FILE_NAME.fullmatch(name) and name.endswith(suffix)):
            raise ManifestError(f"{where}: field {key!r} {name[:60]!r} is not a file name <prefix>-NNNNNN{suffix} "
                                f"in the folder (no folder, no `..`); {REBUILD}")
    for key in ("sha256", "index_sha256"):
        if values[key] is not None and not SHA256.fullmatch(values[key]):
            raise ManifestError(f"{where}: field {key!r} {values[key][:70]!r} is not a sha256 (64 hex digits); "
                                f"{REBUILD}")


def manifest_from_dict(obj: object, where: str) -> Manifest:
    """Type-checks a parsed manifest.json; `where` (its path) heads every error message."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: is not a JSON object; {REBUILD}")
    if obj.get("format") != FORMAT_NAME or obj.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{where}: format {obj.get('format')!r} version {obj.get('format_version')!r}, this code "
                            f"reads {FORMAT_NAME!r} version {FORMAT_VERSION}; {REBUILD}")
    shards = [_record_from_dict(r, f"{where}: shards[{i}]") for i, r in enumerate(_field(obj, "shards", list, where))]
    manifest = Manifest(
        status=_field(obj, "status", str, where), source=_field(obj, "source", str, where),
        options=_field(obj, "options", dict, where), plan_sha256=_field(obj, "plan_sha256", str, where),
        planned_inputs=_field(obj, "planned_inputs", int, where),
        planned_shards=_field(obj, "planned_shards", int, where),
        classes=_field(obj, "classes", list, where, nullable=True), shards=shards,
        skipped=_field(obj, "skipped", list, where), ignored=_field(obj, "ignored", list, where),
        versions=_field(obj, "versions", dict, where))
    if not all(isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("reason"), str)
               for e in manifest.skipped + manifest.ignored):
        raise ManifestError(f"{where}: an entry of 'skipped' or 'ignored' is not a {{path, reason}} object; {REBUILD}")
    if manifest.classes is not None and not all(isinstance(c, str) for c in manifest.classes):
        raise ManifestError(f"{where}: the classes are not all names (strings); {REBUILD}")
    for key in ("planned_inputs", "planned_shards"):
        if getattr(manifest, key) < 0:
            raise ManifestError(f"{where}: field {key!r} is negative ({getattr(manifest, key)}); {REBUILD}")
    files = [n for r in shards for n in (r.name, r.index_name) if n is not None]
    if len(set(files)) != len(files):
        raise ManifestError(f"{where}: two shards name the same file; {REBUILD}")
    if manifest.status not in (STATUS_COMPLETE, STATUS_IN_PROGRESS):
        raise ManifestError(f"{where}: unknown status {manifest.status!r}; {REBUILD}")
    if [r.shard for r in shards] != sorted({r.shard for r in shards}) or any(
            not 0 <= r.shard < manifest.planned_shards for r in shards):
        raise ManifestError(f"{where}: shard numbers are not distinct, sorted and within the plan; {REBUILD}")
    if _field(obj, "total_samples", int, where) != manifest.total_samples:
        raise ManifestError(f"{where}: total_samples {obj['total_samples']} is not the sum of the shards' samples "
                            f"({manifest.total_samples}); {REBUILD}")
    return manifest


def verify_shard(dest: str | os.PathLike, record: ShardRecord, checksum: bool) -> str | None:
    """What is wrong with the files of one recorded shard (None when nothing): missing, wrong size, or, with
    `checksum`, a sha256 that differs from the record."""
    if record.samples == 0:
        return None
    tar, idx = Path(dest) / record.name, Path(dest) / record.index_name
    for path in (tar, idx):
        if not path.is_file():
            return f"{path} is missing"
    if tar.stat().st_size != record.bytes:
        return f"{tar} has {tar.stat().st_size} bytes, the manifest records {record.bytes}"
    if checksum:
        for path, expected in ((tar, record.sha256), (idx, record.index_sha256)):
            if file_sha256(path) != expected:
                return f"{path} does not match the sha256 in the manifest (damaged or replaced)"
    return None


def is_url(where: str | os.PathLike) -> bool:
    return isinstance(where, str) and where.startswith(URL_SCHEMES)


def scheme_problem(where: str | os.PathLike, folder: bool = True) -> str | None:
    """Why `where` is neither a folder on this machine (unless not `folder`: a URL is wanted) nor a URL this reads: a
    scheme other than those of URL_SCHEMES (a typo such as htps://, or file://), which would otherwise be read as a
    local path that does not exist. None when it is either."""
    match = SCHEME.match(where) if isinstance(where, str) else None
    if match is None or is_url(where):
        return None
    return (f"{where} has the scheme {match[1]!r}, which is not one this reads: use "
            f"{'a folder on this machine, ' if folder else ''}{', '.join(URL_SCHEMES[:-1])} or {URL_SCHEMES[-1]}")


def read_manifest(dest: str | os.PathLike, check: str = "size", allow_incomplete: bool = False,
                  fetch: RetryPolicy | None = None, key: str | None = None) -> Manifest:
    """Reads and validates DEST/manifest.json: the one way a manifest is opened.

    Args:
        dest: the shard folder, or its manifest.json; with `fetch`, also the folder's URL.
        check: what to check of each shard's files here: "none", "size" (tar and index exist, tar size matches;
            cheap) or "checksum" (also the sha256 of both files; reads every byte). A URL's files are checked as they
            arrive (pipeline/remote/cache.py).
        allow_incomplete: accept a manifest whose run has not finished (shard_dataset.py itself, when resuming).
        fetch: the retry policy of a URL (data.fetch_timeout_s); without it a URL is refused: only data.shards is
            read from a server, the other readers read a folder on this machine. A scheme other than URL_SCHEMES
            (htps://) is refused either way (`scheme_problem`).
        key: the config key that names `dest` (e.g. data.shards): every error then names it, and an empty `dest` is
            one line saying how to make a shard folder.

    Raises:
        ManifestError: naming the file (and `key`), the problem, and what to do about it.
    """
    if problem := scheme_problem(dest):
        raise ManifestError(f"{key}: {problem}" if key else problem)
    if key is None:
        return _read_manifest(dest, check, allow_incomplete, fetch)
    if not dest:
        raise ManifestError(f"{key} is not set: run `python shard_dataset.py IMAGE_FOLDER SHARDS` and set {key} to "
                            f"SHARDS")
    try:
        return _read_manifest(dest, check, allow_incomplete, fetch)
    except (ManifestError, ValueError) as err:
        raise ManifestError(redact(f"{key} {dest}: {err}")) from err


def _read_manifest(dest, check: str, allow_incomplete: bool, fetch: RetryPolicy | None) -> Manifest:
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if is_url(dest):
        if fetch is None:
            raise ManifestError(f"{dest}: a URL, where a shard folder on this machine is read (only data.shards is "
                                f"read from a server or bucket, through the node's shard cache); copy the folder here "
                                f"and give its path")
        return _remote_manifest(dest, fetch)
    path = Path(dest)
    if path.is_dir() or path.suffix != ".json":
        path = path / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror}); is this a folder written by "
                            f"shard_dataset.py?") from err
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: more than {MAX_MANIFEST_BYTES:,} bytes, far more than a manifest has; "
                            f"{REBUILD}")
    manifest = manifest_from_dict(parse_json(data, str(path)), str(path))
    if manifest.status != STATUS_COMPLETE and not allow_incomplete:
        raise ManifestError(f"{path}: the run that writes this folder has not finished ({len(manifest.shards)} of "
                            f"{manifest.planned_shards} shards done); rerun the same shard_dataset.py command to "
                            f"finish it")
    if check != "none":
        problems = [p for r in manifest.shards if (p := verify_shard(path.parent, r, check == "checksum"))]
        if problems:
            raise ManifestError(f"{path}: {len(problems)} shard(s) do not match the manifest: "
                                f"{listed(problems, 5)}. Rerun the same shard_dataset.py command: it rebuilds exactly "
                                f"those shards")
    return manifest


def _remote_manifest(url: str, fetch: RetryPolicy) -> Manifest:
    """URL/manifest.json, fetched and type-checked; its shards are checked as they arrive (pipeline/remote/cache.py)."""
    where = join(url, MANIFEST_NAME)
    shown = redact(where)
    manifest = manifest_from_dict(parse_json(read_bytes(where, fetch, limit=MAX_MANIFEST_BYTES), shown), shown)
    if manifest.status != STATUS_COMPLETE:
        raise ManifestError(f"{shown}: the shard_dataset.py run that wrote it had not finished ({len(manifest.shards)} "
                            f"of {manifest.planned_shards} shards); finish it and upload the folder again")
    return manifest


def parse_json(data: bytes, where: str) -> object:
    """The JSON of manifest.json's bytes, refused in one line naming `where` when it is not UTF-8 JSON or nests
    deeper than MAX_JSON_DEPTH (checked before parsing: json's parser would recurse until a RecursionError)."""
    depth = 0
    for c in NOT_BRACKET.sub(b"", JSON_STRING.sub(b"", data)):
        depth += 1 if c in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ManifestError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep, not a manifest; {REBUILD}")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{where}: not valid JSON ({err}); is it the manifest.json of a folder that "
                            f"shard_dataset.py wrote? If so, {REBUILD}") from err


def list_shards(dest: str | os.PathLike, manifest: Manifest | None = None) -> list[ShardFile]:
    """The shards holding samples, in shard order, with absolute paths (reads the manifest when not given). `dest`
    is the shard folder or its manifest.json, as for read_manifest."""
    dest = Path(dest).absolute()
    if dest.suffix == ".json" and not dest.is_dir():
        dest = dest.parent
    if manifest is None:
        manifest = read_manifest(dest)
    return [ShardFile(dest / r.name, dest / r.index_name, r.samples, r.index_sha256)
            for r in manifest.shards if r.samples > 0]
