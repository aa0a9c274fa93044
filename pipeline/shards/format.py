"""A shard's files: the names of a tar and its DALI index, the index's text (wds2idx v1.2, written by the writer and
checked before any reader trusts it), and reading one sample's bytes from a tar.

A sharded dataset is a folder DEST holding `<prefix>-000000.tar ...` (WebDataset shards: `<key>.cls`, `<key>.jpg`,
optionally `<key>.json`; the key is the sample's position in the seeded shuffle, 10 digits), one DALI index per shard
(`<prefix>-000000.idx ...`) and `manifest.json` (pipeline/shards/manifest.py). docs/data-pipeline.md describes the
format in full. Only the standard library (and pipeline.DataError) is imported here.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline import DataError

INDEX_VERSION = "v1.2"  # DALI's wds2idx IndexCreator.index_file_version
TAR_BLOCK = 512
REBUILD = "rebuild DEST with `python shard_dataset.py SRC DEST --overwrite`"
# a shard whose files differ from their sha256 in the manifest: the writer's rerun rebuilds exactly those
RERUN = ("rerun `python shard_dataset.py SRC DEST` (it rebuilds the shards whose files do not match the manifest), "
         "or rebuild all with --overwrite")
_INDEX_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: no sign, no Unicode digits, below 2**63
_INDEX_NAME = re.compile(r"([0-9A-Za-z_-]+)\.([0-9A-Za-z_.-]+)")  # <key>.<ext>: no path separator, no `..` key


class ManifestError(DataError, ValueError):
    """A manifest or a shard it lists is missing, damaged or inconsistent; the message names the file. A DataError,
    so that every data problem reaches the CLIs as one exception type; a ValueError, as it always was."""


@dataclass(frozen=True)
class ShardFile:
    """What a loader needs to read one shard."""

    path: Path
    index_path: Path
    samples: int
    index_sha256: str | None = None  # the manifest's; the index is checked against it whenever it is read
    bytes: int | None = None  # the manifest's tar size, for a tar not fetched yet (pipeline/remote/cache.py)


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
        raise ManifestError(f"{where}: not a DALI {INDEX_VERSION} index with a matching sample count; {REBUILD}")
    samples, end = [], 0
    for number, line in enumerate(lines[1:], start=2):
        try:
            members, end = _parse_sample(line, end, tar_size)
        except ValueError as err:
            raise ManifestError(f"{where}: malformed line {number} {line[:80]!r} ({err}); {REBUILD}") from None
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
            raise ManifestError(f"{name}: its index {idx} ({idx_size} bytes) is larger than the tar; {RERUN}")
        data = shard.index_path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{name}: cannot read it or its index {idx} ({err.strerror or err}); {RERUN}") from err
    if shard.index_sha256 is not None and hashlib.sha256(data).hexdigest() != shard.index_sha256:
        raise ManifestError(f"{name}: its index {idx} does not match the index_sha256 in the manifest (damaged, "
                            f"truncated or replaced); {RERUN}")
    where = f"{name}: index {idx}"
    try:
        entries = parse_index(data.decode("ascii"), where, tar_size)
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not ASCII text; {REBUILD}") from None
    if len(entries) != shard.samples:
        raise ManifestError(f"{where}: lists {len(entries)} samples, the manifest records {shard.samples}; {REBUILD}")
    samples = []
    for members in entries:
        by_ext = {ext: (offset, size, name) for ext, offset, size, name in members}
        if "jpg" not in by_ext:
            raise ManifestError(f"{where}: sample {member_key(members[0][3])} has no .jpg member; {REBUILD}")
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
