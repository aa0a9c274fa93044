"""EXIF orientation (issue 15, item 11): no path rotates. A JPEG whose EXIF tag says "rotate 90° to display" reaches
training and eval as its stored pixels, through DALI (adjust_orientation=False), the PyTorch backend and the eval
reader alike, as in the official code (PIL without exif_transpose). shard_dataset.py copies such a JPEG as it is, tag
included; a file it re-encodes loses the tag, which comes to the same.

The test image is a horizontal ramp, 64×40, dark on the left, bright on the right: any crop of it, resized, still
brightens from left to right and is flat from top to bottom. Rotated by 90°, it would brighten from top to bottom.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from loaders import training_loader
from PIL import Image, ImageOps

from config import load_config
from model.inputs import imagenet_stats
from pipeline.shards.format import read_samples, read_span
from pipeline.shards.manifest import list_shards

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
WIDTH, HEIGHT = 64, 40
ORIENTATION = 0x0112  # the EXIF tag; 6 = "rotate 90° clockwise to display", 8 = "... counter-clockwise"

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed"))]


def ramp_jpeg(orientation: int) -> bytes:
    row = np.linspace(0, 255, WIDTH)
    pixels = np.broadcast_to(row[None, :, None], (HEIGHT, WIDTH, 3)).astype(np.uint8)  # (H, W, 3)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """8 rotated-by-EXIF ramps (orientations 6 and 8) in 2 class folders, sharded by the real CLI (copied as is)."""
    tmp = tmp_path_factory.mktemp("exif")
    for i in range(8):
        folder = tmp / "src" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(ramp_jpeg(6 if i % 2 else 8))
    proc = subprocess.run([sys.executable, "shard_dataset.py", str(tmp / "src"), str(tmp / "shards"), "--shard-size",
                           "4", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return tmp / "shards"


def stored_jpegs(shards: Path) -> list[bytes]:
    refs = [ref for refs in read_samples(list_shards(shards)) for ref in refs]
    return [read_span(ref.shard, ref.jpg) for ref in refs]


def assert_left_to_right_ramp(pixels: torch.Tensor) -> None:
    """`pixels` (B, 3, S, S) in 0..255: each image brightens from left to right and is flat from top to bottom."""
    columns = pixels.float().mean(dim=(1, 2))  # (B, S)
    rows = pixels.float().mean(dim=(1, 3))  # (B, S)
    assert (columns[:, -1] - columns[:, 0] > 40).all(), columns[:, [0, -1]]
    assert (rows.amax(dim=1) - rows.amin(dim=1) < 12).all(), rows


def test_the_shards_keep_the_tag_so_a_rotation_would_show(shards):
    jpegs = stored_jpegs(shards)
    assert len(jpegs) == 8
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as im:
            assert im.getexif()[ORIENTATION] in (6, 8) and im.size == (WIDTH, HEIGHT)
            assert ImageOps.exif_transpose(im).size == (HEIGHT, WIDTH)  # what a rotating decoder would give


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_backends_do_not_rotate(shards, backend):
    overrides = {"shards": str(shards), "backend": backend, "batch_size": 8, "num_workers": 0, "shuffle_buffer": 8}
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[f"data.{k}={v}" for k, v in overrides.items()])
    loader = training_loader(cfg, rank=0, world_size=1, device=CPU, dtype=torch.float32)
    images = next(iter(loader)).images  # (8, 3, 32, 32), normalised
    mean, std = imagenet_stats(CPU)
    assert_left_to_right_ramp(images * std + mean)


def test_eval_reader_does_not_rotate(shards):
    from evaluation.features import eval_images

    images, _ = eval_images(shards, 32)
    assert images.shape == (8, 3, 32, 32)
    assert_left_to_right_ramp(images)
