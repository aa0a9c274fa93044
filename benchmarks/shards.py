"""shard_dataset throughput: images/s per worker when copying JPEGs with full or header-only verification and when
re-encoding with --max-size, beside a plain webdataset.ShardWriter loop measured in the same run; then 1 vs 2 workers.

Inputs are generated ImageNet-sized JPEGs read from the page cache, so the figures are CPU cost, not disk. Targets:
header-only copy >= 2,000 images/s per core, full verification >= 500 (docs/benchmarks.md).
"""
from __future__ import annotations

import io
import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import time_call

TARGETS = {"copy, header check": 2000.0, "copy, full decode": 500.0}


def make_images(root: Path, n: int, unique: int = 200, seed: int = 0) -> None:
    """n JPEG files of 500×375 at quality 90 in 4 class folders; `unique` distinct images, repeated (encoding takes
    20 ms an image, and a few hundred distinct ones exercise the decoder as well as more would)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(min(n, unique)):
        field = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(field).resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32)
        buf = io.BytesIO()
        Image.fromarray((base + rng.normal(0, 18, base.shape)).clip(0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                                                   quality=90)
        images.append(buf.getvalue())
    for i in range(n):
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:05d}.JPEG").write_bytes(images[i % len(images)])


def reference_loop(src: Path, dest: Path) -> None:
    """The reference: one process, sorted files, bytes read and written by webdataset.ShardWriter."""
    import webdataset as wds

    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    dest.mkdir(parents=True)
    with wds.ShardWriter(str(dest / "ref-%06d.tar"), maxsize=1e9, verbose=0) as sink:
        for label, name in enumerate(classes):
            for i, path in enumerate(sorted((src / name).iterdir())):
                sink.write({"__key__": f"{label:04d}_{i:06d}", "jpg": path.read_bytes(), "cls": str(label)})


def _timed(work, out_root: Path, repeat: int) -> float:
    """Median seconds of `work(fresh_dest)`, each call writing into a new folder."""
    counter = itertools.count()

    def once() -> None:
        dest = out_root / f"run{next(counter)}"
        work(dest)
        shutil.rmtree(dest)

    return time_call(once, repeat=repeat, warmup=1)["median_s"]


def _rate(src: Path, out: Path, n: int, options, workers: int, repeat: int) -> float:
    from pipeline.shards.writer import RunSettings, build_shards

    settings = RunSettings(workers=workers, progress=False)
    return n / _timed(lambda dest: build_shards(src, dest, options, settings), out, repeat)


def run(cfg=None, n_images: int = 1000, scaling_images: int = 4000, repeat: int = 3) -> dict:
    """Measures and prints the table; `cfg` is not used (the suite needs no model or data config). The scaling rows
    run on `scaling_images` in 8 shards, long enough that a run's fixed cost (scan, fork, manifest) does not hide it."""
    from pipeline.shards.writer import RunSettings, ShardOptions, build_shards

    logging.getLogger("pipeline.shards.writer").setLevel(logging.ERROR)  # no summaries or round warnings in the table
    size = {"shard_samples": max(1, n_images // 4), "shard_bytes": None}
    scaling_size = {"shard_samples": max(1, scaling_images // 8), "shard_bytes": None}
    cases = [("copy, full decode", ShardOptions(verify="full", **size)),
             ("copy, header check", ShardOptions(verify="header", **size)),
             ("re-encode, --max-size 256", ShardOptions(max_size=256, **size))]
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        src, big, out = Path(tmp) / "src", Path(tmp) / "big", Path(tmp) / "out"
        make_images(src, n_images)
        make_images(big, scaling_images)
        mean_kb = sum(p.stat().st_size for p in src.rglob("*.JPEG")) / n_images / 1e3
        make_images(Path(tmp) / "tiny", 8)
        overhead_s = _timed(lambda dest: build_shards(Path(tmp) / "tiny", dest, ShardOptions(verify="header"),
                                                      RunSettings(workers=1, progress=False)), out, repeat)
        ref = n_images / _timed(lambda dest: reference_loop(src, dest), out, repeat)
        rows = [(name, _rate(src, out, n_images, options, 1, repeat)) for name, options in cases]
        scaling = {name: [_rate(big, out, scaling_images, ShardOptions(verify=verify, **scaling_size), w, repeat)
                          for w in (1, 2)] for name, verify in (("copy, full decode", "full"),
                                                                ("copy, header check", "header"))}
    print(f"{n_images} JPEGs 500×375 q90, mean {mean_kb:.0f} kB, page cache; {os.cpu_count()} cores; "
          f"median of {repeat}; a run's fixed cost (scan, fork, manifest; 8 images): {overhead_s * 1e3:.0f} ms")
    print(f"{'case (one worker)':<40} {'img/s':>8} {'× ref':>6}")
    print(f"{'reference: ShardWriter loop, no check':<40} {ref:>8.0f} {1:>6.2f}")
    for name, rate in rows:
        print(f"{name:<40} {rate:>8.0f} {rate / ref:>6.2f}")
    print(f"scaling on {scaling_images} images in 8 shards: {'1 worker':>9} {'2 workers':>10} {'2 / 1':>6}")
    for name, (one, two) in scaling.items():
        print(f"{name:<40} {one:>9.0f} {two:>10.0f} {two / one:>5.2f}×")
    figures = {name: {"images_per_s_per_worker": rate, "ratio_to_reference": rate / ref} for name, rate in rows}
    for name, target in TARGETS.items():
        got = figures[name]["images_per_s_per_worker"]
        print(f"target {name}: ≥ {target:.0f} img/s per core, measured {got:.0f} ({'met' if got >= target else 'NOT met'})")
    return {"n_images": n_images, "mean_kB": mean_kb, "cpu_cores": os.cpu_count(), "fixed_cost_s": overhead_s,
            "reference_images_per_s": ref, "figures": figures, "targets_per_core": TARGETS,
            "scaling": {name: {"images": scaling_images, "workers_1": one, "workers_2": two, "ratio": two / one}
                        for name, (one, two) in scaling.items()}}


if __name__ == "__main__":
    run(None)
