"""Writes scikit-learn's handwritten digits (1,797 real 8×8 scans that ship with the package) as an ImageNet-style
folder of JPEGs: OUT/train/<digit>/*.jpg and OUT/val/<digit>/*.jpg, upscaled to --size pixels.

    python -m tools.digits runs/demo/digits --size 32 --val-fraction 0.25
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: Path, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Writes the folder; returns the number of images per split. Existing files are left alone."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    n_val = int(len(order) * val_fraction)
    counts = {"train": 0, "val": 0}
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 ink → 0..255
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
        folder = out / split / f"digit_{digits.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            image.save(path, quality=95)
        counts[split] += 1
    return counts


def shard_digits(root: Path, size: int = 32, shard_size: int = 170) -> dict[str, Path]:
    """The digits as class folders under root/img, sharded by the real shard_dataset.py CLI into root/train and
    root/val (what the tests and the scaling benchmark train and probe on). Returns {"train": ..., "val": ...}."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    write_digits(root / "img", size)
    for split in ("train", "val"):
        subprocess.run([sys.executable, str(repo / "shard_dataset.py"), str(root / "img" / split), str(root / split),
                        "--shard-size", str(shard_size), "--no-progress"], cwd=repo, check=True, capture_output=True)
    return {split: root / split for split in ("train", "val")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=32, help="side of the written images in pixels")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = write_digits(args.out, args.size, args.val_fraction, args.seed)
    print(f"wrote {counts['train']} train and {counts['val']} val images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
