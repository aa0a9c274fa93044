"""The shard format that shard_dataset.py writes and the loaders read: naming, DALI index files, the manifest, the
listing of a dataset's shards and the samples their indexes hold.

A sharded dataset is a folder DEST holding `<prefix>-000000.tar ...` (WebDataset shards: `<key>.cls`, `<key>.jpg`,
optionally `<key>.json`; the key is the sample's position in the seeded shuffle, 10 digits), one DALI index per shard
(`<prefix>-000000.idx ...`, wds2idx v1.2) and `manifest.json` (schema in `manifest_to_dict`). Readers list shards
through the manifest (`list_shards`), never by globbing: a planned shard whose inputs were all bad has no files.
docs/data-pipeline.md describes the format in full. Only the standard library (and pipeline.DataError) is imported
here. Who may write DEST (its lock, resuming, --overwrite) is pipeline/shard_dest.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline import DataError
from util.files import file_sha256, write_file_atomic

FORMAT_NAME = "ijepa-webdataset-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_VERSION = "v1.2"  # DALI's wds2idx IndexCreator.index_file_version
TAR_BLOCK = 512
STATUS_COMPLETE = "complete"
STATUS_IN_PROGRESS = "in_progress"
CHECKS = ("none", "size", "checksum")
URL_SCHEMES = ("http://", "https://", "s3://")  # data.shards may be one of these (pipeline/remote.py)
_REBUILD = "rebuild DEST with `python shard_dataset.py SRC DEST --overwrite`"
# a shard whose files differ from their sha256 in the manifest: the writer's rerun rebuilds exactly those
_RERUN = ("rerun `python shard_dataset.py SRC DEST` (it rebuilds the shards whose files do not match the manifest), "
          "or rebuild all with --overwrite")
_INDEX_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: no sign, no Unicode digits, below 2**63
_INDEX_NAME = re.compile(r"([0-9A-Za-z_-]+)\.([0-9A-Za-z_.-]+)")  # <key>.<ext>: no path separator, no `..` key


class ManifestError(DataError, ValueError):
    """A manifest or a shard it lists is missing, damaged or inconsistent; the message names the file. A DataError,
    so that every data problem reaches the CLIs as one exception type; a ValueError, as it always was."""


@dataclass(frozen=True)
class ShardRecord:
    """One planned shard as the manifest records it."""

    shard: int  # position in the plan; names the files
    name: str | None  # tar file name in DEST; None when every planned input was bad
    index_name: str | None  # DALI index file name in DEST
    samples: int
    bytes: int  # size of the tar file
    sha256: str | None  # of the tar file
    index_sha256: str | None
    plan_sha256: str  # digest of the inputs planned for this shard (see pipeline.shard_writer.shard_plan_digest)
    converted: int  # samples re-encoded (non-JPEG, CMYK, or resized) rather than copied


@dataclass(frozen=True)
class Manifest:
    """DEST/manifest.json, parsed and type-checked."""

    status: str  # "complete", or "in_progress" while shard_dataset.py runs (or after it was killed)
    source: str  # absolute path of SRC
    options: dict  # the options that decide the output bytes (pipeline.shard_writer.ShardOptions)
    plan_sha256: str  # the plan's layout, without modification times (pipeline.shard_writer.plan_digest)
    planned_inputs: int  # image files that entered the shuffle
    planned_shards: int
    classes: list[str] | None  # None with --labels none
    shards: list[ShardRecord]  # in shard order; all planned shards once complete
    skipped: list[dict]  # {"path", "reason", "shard"}: bad inputs; shard null for those found while scanning
    ignored: list[dict]  # {"path", "reason"}: files that are not image files by name, or not in a class folder
    versions: dict

    @property
    def total_samples(self) -> int:
        return sum(r.samples for r in self.shards)


@dataclass(frozen=True)
class ShardFile:
    """What a loader needs to read one shard."""

    path: Path
    index_path: Path
    samples: int
    index_sha256: str | None = None  # the manifest's; the index is checked against it whenever it is read
    bytes: int | None = None  # the manifest's tar size, for a tar not fetched yet (pipeline/shard_cache.py)


def shard_name(prefix: str, shard: int) -> str:
    return f"{prefix}-{shard:06d}.tar"


def index_name(prefix: str, shard: int) -> str:
    return f"{prefix}-{shard:06d}.idx"


def sample_key(position: int) -> str:
    return f"{position:010d}"


def tar_member_bytes(size: int) -> int:
    """Bytes one tar member of `size` data bytes takes: a 512-byte header, then the data padded to 512."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def format_index(samples: Sequence[Sequence[tuple[str, int, int, str]]]) -> str:
    """The text of a DALI index (wds2idx v1.2) for `samples`, each a list of (ext, data offset, size, member name)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in members) for members in samples]
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: str = "index",
                tar_size: int | None = None) -> list[list[tuple[str, int, int, str]]]:
    """Inverse of `format_index`; raises ManifestError naming `where` when the text is not a v1.2 index as the writer
    makes them: members named `<key>.<ext>` (one key per sample), in tar order without overlap and, given the tar's
    `tar_size`, every member's data inside the tar, so that no reader seeks or allocates from an untrusted number."""
    lines = text.split("\n")  # DALI splits on newlines only
    if lines[-1] == "":
        lines.pop()
    head = lines[0].split(" ") if lines else []
    if (len(head) != 2 or head[0] != INDEX_VERSION or not _INDEX_NUMBER.fullmatch(head[1])
            or int(head[1]) != len(lines) - 1):
        raise ManifestError(f"{where}: not a DALI {INDEX_VERSION} index with a matching sample count; {_REBUILD}")
    samples, end = [], 0
    for number, line in enumerate(lines[1:], start=2):
        try:
            members, end = _parse_sample(line, end, tar_size)
        except ValueError as err:
            raise ManifestError(f"{where}: malformed line {number} {line[:80]!r} ({err}); {_REBUILD}") from None
        samples.append(members)
    return samples


def _parse_sample(line: str, end: int, tar_size: int | None) -> tuple[list[tuple[str, int, int, str]], int]:
    """The members of one index line, and where the last one's data ends (padded to a block); `end` is where the
    previous member's ended. ValueError says what is wrong."""
    fields = line.split(" ")
    if len(fields) % 4 or not line:
        raise ValueError(f"{len(fields)} fields, not 4 per member")
    members, keys = [], set()
    for i in range(0, len(fields), 4):
        ext, offset, size, name = fields[i:i + 4]
        if not (_INDEX_NUMBER.fullmatch(offset) and _INDEX_NUMBER.fullmatch(size)):
            raise ValueError("offset and size must be non-negative decimal numbers")
        named = _INDEX_NAME.fullmatch(name)
        if not named or named[2] != ext:
            raise ValueError(f"member name {name[:40]!r} is not <key>.{ext[:10]}, without a path or `..`")
        offset, size = int(offset), int(size)
        if offset % TAR_BLOCK or offset < end + TAR_BLOCK:  # data starts on a block, after its 512-byte header
            raise ValueError(f"member data at offset {offset} does not follow a tar header after the previous member")
        if tar_size is not None and offset + size > tar_size:
            raise ValueError(f"member data of {size} bytes at offset {offset} ends past the tar's {tar_size} bytes")
        end = offset + -(-size // TAR_BLOCK) * TAR_BLOCK
        keys.add(named[1])
        members.append((ext, offset, size, name))
    if len(keys) != 1:
        raise ValueError(f"members of {len(keys)} keys on one line")
    return members, end


def member_key(member: str) -> str:
    """webdataset's key of a tar member: its name up to the first dot of the base name."""
    slash = member.rfind("/") + 1
    dot = member.find(".", slash)
    return member if dot < 0 else member[:dot]


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie in its shard."""

    shard: str  # tar path
    key: str
    jpg: tuple[int, int]  # (offset, size) of the JPEG bytes in the tar
    cls: tuple[int, int] | None  # (offset, size) of the ASCII class index; None for unlabeled data


def read_samples(shards: Sequence[ShardFile]) -> list[list[SampleRef]]:
    """Every sample of each shard, in tar order, from the shards' index files (each checked: `read_index`).

    Raises:
        ManifestError: naming the first shard whose index is missing, damaged or inconsistent.
    """
    return [read_index(shard) for shard in shards]


def read_index(shard: ShardFile) -> list[SampleRef]:
    """The samples of one shard, in tar order, from its index, once the index is checked: its sha256 against the
    manifest's (when `shard` carries it), then its text, its sample count and every member's place in the tar.
    Indexes are small; the tar is only stat'ed.

    Raises:
        ManifestError: naming the shard, what is wrong and how to rebuild it.
    """
    name, idx = f"shard {shard.path}", shard.index_path.name
    try:
        tar_size = shard.bytes if shard.bytes is not None else os.stat(shard.path).st_size
        idx_size = os.stat(shard.index_path).st_size
        if idx_size > tar_size:  # an index is far smaller than its tar: do not read a replaced, huge file
            raise ManifestError(f"{name}: its index {idx} ({idx_size} bytes) is larger than the tar; {_RERUN}")
        data = shard.index_path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{name}: cannot read it or its index {idx} ({err.strerror or err}); {_RERUN}") from err
    if shard.index_sha256 is not None and hashlib.sha256(data).hexdigest() != shard.index_sha256:
        raise ManifestError(f"{name}: its index {idx} does not match the index_sha256 in the manifest (damaged, "
                            f"truncated or replaced); {_RERUN}")
    where = f"{name}: index {idx}"
    try:
        entries = parse_index(data.decode("ascii"), where, tar_size)
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not ASCII text; {_REBUILD}") from None
    if len(entries) != shard.samples:
        raise ManifestError(f"{where}: lists {len(entries)} samples, the manifest records {shard.samples}; {_REBUILD}")
    samples = []
    for members in entries:
        by_ext = {ext: (offset, size, name) for ext, offset, size, name in members}
        if "jpg" not in by_ext:
            raise ManifestError(f"{where}: sample {member_key(members[0][3])} has no .jpg member; {_REBUILD}")
        offset, size, member = by_ext["jpg"]
        cls = by_ext.get("cls")
        samples.append(SampleRef(str(shard.path), member_key(member), (offset, size), None if cls is None else cls[:2]))
    return samples


def read_span(path: str, span: tuple[int, int], open_files: dict | None = None) -> bytes:
    """`span` = (offset, size) bytes of a shard file; `open_files` keeps the files open between calls."""
    if open_files is None:
        with open(path, "rb") as f:
            return _read_at(f, path, span)
    f = open_files.get(path) or open_files.setdefault(path, open(path, "rb"))
    return _read_at(f, path, span)


def _read_at(f, path: str, span: tuple[int, int]) -> bytes:
    offset, size = span
    file_size = os.fstat(f.fileno()).st_size  # a span past the end is refused before anything is allocated
    if offset < 0 or size < 0 or offset + size > file_size:
        raise OSError(f"{path}: truncated shard: wanted {size} bytes at offset {offset}, the file has {file_size}")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:  # the file shrank since the check
        raise OSError(f"{path}: truncated shard: wanted {size} bytes at offset {offset}, got {len(data)}")
    return data


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
        raise ManifestError(f"{where}: field {key!r} is missing; {_REBUILD}")
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"{where}: field {key!r} has the wrong type ({type(value).__name__}); {_REBUILD}")
    return value


def _record_from_dict(obj: object, where: str) -> ShardRecord:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: is not an object; {_REBUILD}")
    fields = {"shard": (int, False), "name": (str, True), "index_name": (str, True), "samples": (int, False),
              "bytes": (int, False), "sha256": (str, True), "index_sha256": (str, True),
              "plan_sha256": (str, False), "converted": (int, False)}
    values = {key: _field(obj, key, kind, where, nullable) for key, (kind, nullable) in fields.items()}
    record = ShardRecord(**values)
    files = (record.name, record.index_name, record.sha256, record.index_sha256)
    if record.samples < 0 or not all((f is not None) == (record.samples > 0) for f in files):
        raise ManifestError(f"{where}: a shard has files and checksums exactly when it has samples; {_REBUILD}")
    return record


def manifest_from_dict(obj: object, where: str) -> Manifest:
    """Type-checks a parsed manifest.json; `where` (its path) heads every error message."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: is not a JSON object; {_REBUILD}")
    if obj.get("format") != FORMAT_NAME or obj.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{where}: format {obj.get('format')!r} version {obj.get('format_version')!r}, this code "
                            f"reads {FORMAT_NAME!r} version {FORMAT_VERSION}; {_REBUILD}")
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
        raise ManifestError(f"{where}: an entry of 'skipped' or 'ignored' is not a {{path, reason}} object; {_REBUILD}")
    if manifest.classes is not None and not all(isinstance(c, str) for c in manifest.classes):
        raise ManifestError(f"{where}: the classes are not all names (strings); {_REBUILD}")
    if manifest.status not in (STATUS_COMPLETE, STATUS_IN_PROGRESS):
        raise ManifestError(f"{where}: unknown status {manifest.status!r}; {_REBUILD}")
    if [r.shard for r in shards] != sorted({r.shard for r in shards}) or any(
            not 0 <= r.shard < manifest.planned_shards for r in shards):
        raise ManifestError(f"{where}: shard numbers are not distinct, sorted and within the plan; {_REBUILD}")
    if _field(obj, "total_samples", int, where) != manifest.total_samples:
        raise ManifestError(f"{where}: total_samples {obj['total_samples']} is not the sum of the shards' samples "
                            f"({manifest.total_samples}); {_REBUILD}")
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


def read_manifest(dest: str | os.PathLike, check: str = "size", allow_incomplete: bool = False) -> Manifest:
    """Reads and validates DEST/manifest.json (DEST may also be the manifest's own path).

    Args:
        dest: the shard folder, or its manifest.json.
        check: what to check of each shard's files: "none", "size" (tar and index exist, tar size matches; cheap)
            or "checksum" (also the sha256 of both files; reads every byte).
        allow_incomplete: accept a manifest whose run has not finished (shard_dataset.py itself, when resuming).

    Raises:
        ManifestError: naming the file and the problem, and what to do about it.
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if is_url(dest):
        raise ManifestError(f"{dest}: a URL, where a shard folder on this machine is read (only data.shards is read "
                            f"from a server or bucket, through the node's shard cache); copy the folder here and give "
                            f"its path")
    path = Path(dest)
    if path.is_dir() or path.suffix != ".json":
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror}); is this a folder written by "
                            f"shard_dataset.py?") from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); {_REBUILD}") from err
    manifest = manifest_from_dict(obj, str(path))
    if manifest.status != STATUS_COMPLETE and not allow_incomplete:
        raise ManifestError(f"{path}: the run that writes this folder has not finished ({len(manifest.shards)} of "
                            f"{manifest.planned_shards} shards done); rerun the same shard_dataset.py command to "
                            f"finish it")
    if check != "none":
        problems = [p for r in manifest.shards if (p := verify_shard(path.parent, r, check == "checksum"))]
        if problems:
            listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ManifestError(f"{path}: {len(problems)} shard(s) do not match the manifest: {listed}. Rerun the "
                                f"same shard_dataset.py command: it rebuilds exactly those shards")
    return manifest


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
