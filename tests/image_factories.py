"""Image files made for the tests of shard_dataset.py and its source checks: a photo-like array and its encodings
(`photo`, `encode`, `jpeg_bytes`); damaged or lying ones (a PNG header alone, a JPEG claiming another size, garbage or
stray markers inside its scan data); and an ImageNet-like class-folder tree holding every oddity the CLI meets
(`make_imagenet_like`, once per test file as the `imagenet` fixture).

    from image_factories import encode, imagenet, photo  # noqa: F401  (imagenet is a fixture)
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["n01440764", "n01443537", "n01484850"]  # the ImageNet-like tree's


def photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth image with noise: JPEG scan data like a photo's (long runs of short Huffman codes)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 9), 128 + 100 * np.cos(y / 7), (x + y) % 256], -1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt_name: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt_name, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb when large); its data holds a few rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` whose start-of-frame header claims another size."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def scan_end(jpeg: bytes) -> int:
    """Where the scan data of a baseline JPEG written by PIL ends: at its end-of-image marker."""
    assert jpeg.endswith(b"\xff\xd9")
    return len(jpeg) - 2


def garbage_mid_scan(jpeg: bytes, seed: int, with_markers: bool) -> bytes:
    """64 random bytes written over the data at 60% of the file (same size); `with_markers`: some are 0xFF, so they
    read as markers."""
    rng = np.random.default_rng(seed)
    data, at = bytearray(jpeg), int(len(jpeg) * 0.6)
    garbage = rng.integers(0, 255, 64, dtype=np.uint8)  # 0..254: no 0xFF
    if with_markers:
        garbage[::9] = 0xFF
    assert scan_end(jpeg) > at + 64 > at > jpeg.find(b"\xff\xda")  # inside the scan data
    data[at:at + 64] = garbage.tobytes()
    return bytes(data)


def stray_markers(jpeg: bytes) -> bytes:
    """Stuffed 0xFF00 bytes in the scan data turned into 0xFF xx markers that may not appear there."""
    data, start = bytearray(jpeg), jpeg.find(b"\xff\xda")
    stuffed = [i for i in range(start + 2, scan_end(jpeg)) if data[i] == 0xFF and data[i + 1] == 0]
    assert len(stuffed) >= 3
    for i, code in zip(stuffed[len(stuffed) // 2:], (0x3A, 0xC0, 0x01)):
        data[i + 1] = code
    return bytes(data)


def jpeg_bytes(arr: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    return encode(arr, "JPEG", mode, quality=90, **kw)


def make_imagenet_like(root: Path, per_class: int = 5) -> tuple[dict, dict]:
    """Writes an ImageNet-like folder; returns (good: relpath → (label, copied), bad: relpath → reason fragment)."""
    rng = np.random.default_rng(0)
    good, bad = {}, {}

    def put(rel: str, data: bytes, label: int, copied: bool) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        good[rel] = (label, copied)

    for label, cls in enumerate(CLASSES):
        for i in range(per_class):
            arr = rng.integers(0, 256, (int(rng.integers(12, 30)), int(rng.integers(12, 30)), 3), dtype=np.uint8)
            ext = ["JPEG", "jpg", "JPG", "jpeg"][i % 4]
            sub = "deep/er/" if i == 0 else ("sub/" if i == 1 else "")
            put(f"{cls}/{sub}{cls}_{i}.{ext}", jpeg_bytes(arr), label, copied=True)
        arr = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
        put(f"{cls}/gray.JPEG", jpeg_bytes(arr, "L"), label, copied=True)
        put(f"{cls}/cmyk.JPEG", jpeg_bytes(arr, "CMYK"), label, copied=False)
        put(f"{cls}/png_named.JPEG", encode(arr, "PNG"), label, copied=False)
        put(f"{cls}/alpha.png", encode(arr, "PNG", "RGBA"), label, copied=False)
        put(f"{cls}/pic.{'webp' if label % 2 else 'BMP'}", encode(arr, "WEBP" if label % 2 else "BMP"), label,
            copied=False)
    full = jpeg_bytes(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (root / CLASSES[0] / "truncated.JPEG").write_bytes(full[: len(full) // 2])  # cut inside the entropy-coded data
    (root / CLASSES[0] / "cut_header.jpg").write_bytes(full[:200])
    (root / CLASSES[0] / "zero.jpg").write_bytes(b"")
    (root / CLASSES[1] / "text.jpg").write_text("not an image at all\n")
    (root / CLASSES[1] / "dangling.JPEG").symlink_to(root / "does-not-exist.JPEG")
    os.mkfifo(root / CLASSES[2] / "fifo.jpg")
    (root / CLASSES[2] / "notes.txt").write_text("ignored: not an image file name\n")
    (root / "README.txt").write_text("ignored: not inside a class folder\n")
    bad.update({f"{CLASSES[0]}/truncated.JPEG": "truncated", f"{CLASSES[0]}/cut_header.jpg": "truncated",
                f"{CLASSES[0]}/zero.jpg": "empty",
                f"{CLASSES[1]}/text.jpg": "not an image", f"{CLASSES[1]}/dangling.JPEG": "dangling symlink",
                f"{CLASSES[2]}/fifo.jpg": "not a regular file"})
    return good, bad


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet") / "train"
    good, bad = make_imagenet_like(root)
    return root, good, bad
