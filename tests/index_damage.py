"""A small shard folder and the damage done to its DALI index, for the tests that the damage is caught (issue 15,
item 6): 12 tiny JPEGs in 2 class folders, sharded into 3 shards of 4 (the `dataset` fixture); `damaged` copies it and
damages shard SHARD's index one way of DAMAGES, either so that the manifest's index_sha256 catches it or, the manifest
edited to match, so that only the index's own checks can.

    from index_damage import DAMAGES, assert_one_line_naming_the_shard, damaged, dataset  # noqa: F401  (a fixture)
    dest = damaged(dataset, tmp_path / "shards", "size 1e13")
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shard_dataset
from pipeline.shards.format import INDEX_VERSION
from pipeline.shards.manifest import MANIFEST_NAME, list_shards

SHARD = 1  # the damaged one
STEM = f"shard-{SHARD:06d}"

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("damage")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = tmp / "src" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    # shard_dataset.py's main() in this process: e2e/test_shard_dataset_cli.py runs its command line as a user does
    assert shard_dataset.main([str(tmp / "src"), str(tmp / "shards"), "--shard-size", "4", "--no-progress",
                               "--workers", "1"]) == 0
    assert [s.path.name for s in list_shards(tmp / "shards")] == [f"shard-{i:06d}.tar" for i in range(3)]
    return tmp / "shards"


def set_index_sha(dest: Path, shard: int, digest: str) -> None:
    path = dest / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["shards"][shard]["index_sha256"] = digest
    path.write_text(json.dumps(manifest))


def write_index(dest: Path, data: bytes, manifest_agrees: bool) -> None:
    """Replaces shard SHARD's index with `data`; with `manifest_agrees`, the manifest records its sha256 (a crafted
    folder: only the index's own checks can catch it)."""
    (dest / f"{STEM}.idx").write_bytes(data)
    if manifest_agrees:
        set_index_sha(dest, SHARD, hashlib.sha256(data).hexdigest())


def edit_jpg_fields(dest: Path, edit) -> None:
    """Crafted: `edit(fields, j, tar_size)` changes the fields of sample 0's line (j: position of its "jpg" ext)."""
    lines = (dest / f"{STEM}.idx").read_text().splitlines()
    fields = lines[1].split(" ")
    edit(fields, fields.index("jpg"), (dest / f"{STEM}.tar").stat().st_size)
    lines[1] = " ".join(fields)
    write_index(dest, ("\n".join(lines) + "\n").encode("utf-8"), manifest_agrees=True)


def _set(position: int, value: str):
    def edit(fields, j, tar_size):
        fields[j + position] = value
    return edit


def _beyond_tar(fields, j, tar_size):
    fields[j + 1], fields[j + 2] = str(tar_size - 512), "4096"


def _drop_line(dest: Path) -> None:
    lines = (dest / f"{STEM}.idx").read_text().splitlines()
    text = "\n".join([f"{INDEX_VERSION} {len(lines) - 2}"] + lines[2:]) + "\n"  # a valid index of 3 samples
    write_index(dest, text.encode("ascii"), manifest_agrees=True)


DAMAGES = {
    # damaged: the manifest's index_sha256 catches them
    "truncated": lambda d: write_index(d, (d / f"{STEM}.idx").read_bytes()[:40], manifest_agrees=False),
    "empty": lambda d: write_index(d, b"", manifest_agrees=False),
    "binary garbage": lambda d: write_index(d, bytes(range(256)) * 3, manifest_agrees=False),
    "swapped with shard 0's": lambda d: write_index(d, (d / "shard-000000.idx").read_bytes(), manifest_agrees=False),
    "missing": lambda d: (d / f"{STEM}.idx").unlink(),
    "larger than its tar": lambda d: write_index(d, b"v1.2 0\n" + b" " * 10**6, manifest_agrees=False),
    "manifest digest differs": lambda d: set_index_sha(d, SHARD, "0" * 64),
    # crafted, the manifest edited to match: the index's own checks catch them
    "size 1e13": lambda d: edit_jpg_fields(d, _set(2, str(10**13))),
    "member ../..": lambda d: edit_jpg_fields(d, _set(3, "../..")),
    "member with a path separator": lambda d: edit_jpg_fields(d, _set(3, "x/0000000000.jpg")),
    "negative offset": lambda d: edit_jpg_fields(d, _set(1, "-512")),
    "negative size": lambda d: edit_jpg_fields(d, _set(2, "-5")),
    "hex offset": lambda d: edit_jpg_fields(d, _set(1, "0x600")),
    "offset + size beyond the tar": lambda d: edit_jpg_fields(d, _beyond_tar),
    "wrong field count": lambda d: edit_jpg_fields(d, lambda f, j, s: f.pop()),
    "non-ASCII member": lambda d: edit_jpg_fields(d, _set(3, "000000000\u00e9.jpg")),
    "binary garbage, digest matching": lambda d: write_index(d, bytes(range(256)) * 3, manifest_agrees=True),
    "fewer samples than the manifest": _drop_line,
}


def damaged(dataset: Path, dest: Path, damage: str) -> Path:
    shutil.copytree(dataset, dest)
    DAMAGES[damage](dest)
    return dest


def assert_one_line_naming_the_shard(message: str) -> None:
    assert "\n" not in message and STEM in message and "shard_dataset.py" in message, message
