"""Damaged and crafted DALI index files (issue 15, item 6): every one is caught before any sample is read — by the
manifest's index_sha256, or, when the manifest was edited to match, by the index's own checks (fields, names,
offsets within the tar) — and reaches the user as one line naming the shard and saying how to rebuild it, through
both backends, the eval reader and `python train.py`.

12 tiny JPEGs in 2 class folders, sharded by shard_dataset.py's main() into 3 shards of 4; shard 1 is damaged.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from loaders import training_loader
from PIL import Image

import shard_dataset
from config import load_config
from pipeline import DataError
from pipeline.shards.format import INDEX_VERSION, read_span
from pipeline.shards.manifest import MANIFEST_NAME, list_shards

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
SHARD = 1  # the damaged one
STEM = f"shard-{SHARD:06d}"

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed"))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("damage")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = tmp / "src" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    # shard_dataset.py's main() in this process: test_shard_dataset.py runs its command line as a user does
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


def make_cfg(shards: Path, backend: str):
    overrides = {"shards": str(shards), "backend": backend, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 4}
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[f"data.{k}={v}" for k, v in overrides.items()])


def assert_one_line_naming_the_shard(message: str) -> None:
    assert "\n" not in message and STEM in message and "shard_dataset.py" in message, message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_index_is_refused_before_reading(dataset, tmp_path, damage, backend):
    """Caught while the loader is built: before the DALI pipeline (which reads the .idx itself) exists."""
    dest = damaged(dataset, tmp_path / "shards", damage)
    with pytest.raises(DataError) as err:
        training_loader(make_cfg(dest, backend), rank=0, world_size=1, device=CPU)
    assert_one_line_naming_the_shard(str(err.value))


@pytest.mark.parametrize("damage", ["truncated", "size 1e13", "member ../.."])
def test_eval_reader_refuses_a_damaged_index(dataset, tmp_path, damage):
    from evaluation.features import eval_images

    dest = damaged(dataset, tmp_path / "shards", damage)
    with pytest.raises(DataError) as err:
        eval_images(dest, 32)
    assert_one_line_naming_the_shard(str(err.value))


def test_undamaged_copy_still_loads(dataset, tmp_path):
    """The checks pass on what shard_dataset.py writes (so the refusals above are not refusing everything)."""
    dest = tmp_path / "shards"
    shutil.copytree(dataset, dest)
    batch = next(iter(training_loader(make_cfg(dest, "torch"), rank=0, world_size=1, device=CPU)))
    assert batch.images.shape == (4, 3, 32, 32)


def test_read_span_never_allocates_past_the_end_of_the_file(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(b"\0" * 2048)
    assert read_span(str(path), (1024, 16)) == b"\0" * 16
    for span in [(0, 10**13), (2040, 9), (4096, 1)]:
        with pytest.raises(OSError, match="s.tar"):
            read_span(str(path), span, {})


@pytest.mark.slow
def test_train_cli_prints_one_error_line(dataset, tmp_path):
    """What a user sees, through each backend: `error: ...` naming the shard, no traceback (today's main: a
    MemoryError traceback). The index is read once the process group is up, so these stay real launches; both start
    at once (each is mostly start-up). Without DALI the torch backend alone."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    procs = {}
    for backend in ["torch"] + (["dali"] if HAVE_DALI else []):
        dest = damaged(dataset, tmp_path / backend / "shards", "size 1e13")
        procs[backend] = subprocess.Popen([sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--set",
                                           f"data.shards={dest}", "--set", f"data.backend={backend}", "--set",
                                           f"run.out_dir={tmp_path / backend / 'run'}", "--set", "data.batch_size=4"],
                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for backend, proc in procs.items():
        stderr = proc.communicate(timeout=300)[1]
        assert proc.returncode != 0, (backend, stderr)
        assert "Traceback" not in stderr, (backend, stderr)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (backend, stderr)
        assert_one_line_naming_the_shard(errors[0])
