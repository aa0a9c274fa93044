"""Data suite: images/s of each loader source (decode + random-resized crop + normalise, up to a float batch on the
training device) beside webdataset + PIL + torchvision in a 2-worker DataLoader, measured in the same run.

Fixed settings whatever the config (crop 224, batch 32, 2 workers or threads, prefetch 2) on 640 generated
ImageNet-like JPEGs sharded by shard_dataset.py's writer; one warm-up epoch, then 2 timed; the cases take turns for 2
rounds and each keeps its best. The same shards served over HTTP on 127.0.0.1 (nginx where installed) make one more
row, the PyTorch backend reading them through the node's shard cache (filled in the warm-up epoch), and the cache's
prefetcher is timed filling an empty cache (MB/s). Targets and measured figures: docs/benchmarks.md.
"""
from __future__ import annotations

import dataclasses
import io
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import run_or_error

BATCH, CROP, WORKERS, PREFETCH = 32, 224, 2, 2
IMAGES, UNIQUE, SHARDS = 640, 160, 4
EPOCHS = 2  # timed, after one warm-up epoch
GPU_EPOCHS = 10  # on a GPU an epoch of 640 images lasts about 0.1 s: time longer than the pipeline's start-up
ROUNDS = 2  # the backends take turns; each keeps its best round
TARGETS = {"dali cpu": 1.5}  # × reference
REMOTE = "torch cpu, shards from http:// via the cache"
GPU_TARGET = 5000.0  # images/s, torch backend with GPU decode


def make_images(root: Path, n: int = IMAGES, unique: int = UNIQUE, seed: int = 0) -> None:
    """n ImageNet-like JPEG files (500×375, quality 90) in 4 class folders, `unique` distinct ones."""
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(unique):
        field = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(field).resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = (base + rng.normal(0, 18, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    for i in range(n):
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:05d}.JPEG").write_bytes(encoded[i % unique])


def make_shards(tmp: Path, n: int = IMAGES) -> Path:
    """`n` ImageNet-like JPEGs (make_images) sharded into SHARDS shards under tmp/shards by shard_dataset.py's
    writer, in this process (set-up, not what a suite times)."""
    from pipeline.shards.writer import RunSettings, ShardOptions, build_shards

    src, dest = tmp / "images", tmp / "shards"
    make_images(src, n=n)
    build_shards(src, dest, ShardOptions(shard_samples=-(-n // SHARDS)), RunSettings(progress=False))
    return dest


def reference_epochs(shards: Path):
    """The reference loader: webdataset + PIL + torchvision transforms, 2 persistent workers; yields epoch iterators
    of (images, labels) float batches."""
    import webdataset as wds
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from model.inputs import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.shards.manifest import list_shards

    transform = transforms.Compose([transforms.RandomResizedCrop(CROP, scale=(0.3, 1.0)), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    urls = [str(s.path) for s in list_shards(shards)]
    dataset = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "cls")
               .map_tuple(transform, int))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, prefetch_factor=PREFETCH,
                        persistent_workers=True, drop_last=True)
    while True:
        yield iter(loader)


def normalise(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """What the loader does to a backend's batch (pipeline/loading/loader.py Loader._images), in float32."""
    from model.inputs import imagenet_stats

    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        mean, std = imagenet_stats(device)
        images = (images.float() - mean) / std
    return images.float()


def backend_epochs(cfg, shards: Path | str, backend: str, device: torch.device, cache_dir: Path | None = None):
    """Epoch iterators of the backend's (images, labels) batches, normalised as the loader does; `shards` a folder,
    or its URL read through a shard cache in `cache_dir`."""
    from pipeline.loading.loader import shard_files
    from pipeline.remote.fetch import RetryPolicy
    from pipeline.shards.manifest import read_manifest

    data = dataclasses.replace(cfg.data, shards=str(shards), backend=backend, batch_size=BATCH, crop_size=CROP,
                               num_workers=WORKERS, prefetch=PREFETCH, shuffle_buffer=512, on_bad_sample="raise",
                               cache_gb=0.0)
    if cache_dir is not None:
        data = dataclasses.replace(data, cache_dir=str(cache_dir))
    all_shards, cache = shard_files(data, read_manifest(str(shards), fetch=RetryPolicy(60.0)))
    batches = sum(s.samples for s in all_shards) // BATCH
    if backend == "dali":
        from pipeline.loading.dali_backend import DaliBackend

        source = DaliBackend(data, cfg.run.seed, all_shards, batches, 0, 1, device, BATCH, torch.float32, cache)
    else:
        from pipeline.loading.torch_backend import TorchBackend

        source = TorchBackend(data, cfg.run.seed, all_shards, batches, 0, 1, device, BATCH, cache)
    epoch = 0
    while True:
        yield ((normalise(images, device), labels) for images, labels, _ in source.epoch_batches(epoch, 0))
        epoch += 1


@contextmanager
def local_server(folder: Path, work: Path):
    """(base URL, what serves it) of `folder` on 127.0.0.1: nginx where it is installed (tools/nginx.py), else
    Python's http.server in a thread."""
    from tools.nginx import Nginx, have_nginx

    if have_nginx():
        server = Nginx(folder, work).start()
        try:
            yield server.url(), "nginx"
        finally:
            server.stop()
        return
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", "Python http.server (no nginx installed)"
    finally:
        httpd.shutdown()


def prefetch_rate(url: str, cache_dir: Path) -> dict:
    """MB/s of the shard cache's prefetcher (FETCH_THREADS downloads at once, each verified) filling an empty
    cache with every shard of `url`."""
    from pipeline.remote.cache import FETCH_THREADS, ShardCache
    from pipeline.remote.fetch import RetryPolicy
    from pipeline.shards.manifest import read_manifest

    cache = ShardCache.open(url, read_manifest(url, fetch=RetryPolicy(60.0)), cache_dir, None, RetryPolicy(60.0))
    shards = cache.shard_files()
    start = time.perf_counter()
    cache.ensure_all([s.path for s in shards])
    seconds = time.perf_counter() - start
    total = cache.total_tar_bytes()
    return {"mb_per_s": total / seconds / 1e6, "mb": total / 1e6, "seconds": seconds, "shards": len(shards),
            "threads": FETCH_THREADS}


def epochs_for(device: torch.device) -> int:
    return GPU_EPOCHS if device.type == "cuda" else EPOCHS


def images_per_s(epochs, device: torch.device) -> dict:
    """One warm-up epoch, then EPOCHS timed ones (GPU_EPOCHS on a GPU); images/s over the timed ones."""
    def run_epoch() -> int:
        count = 0
        for images, _ in next(epochs):
            assert images.shape[1:] == (3, CROP, CROP) and images.dtype == torch.float32
            count += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return count

    run_epoch()
    start = time.perf_counter()
    count = sum(run_epoch() for _ in range(epochs_for(device)))
    elapsed = time.perf_counter() - start
    return {"images_per_s": count / elapsed, "images": count, "seconds": elapsed}


def best_round(name: str, rounds: list[dict]) -> dict:
    """The round with the most images/s for case `name`, with every round's rate; the first error if none ran."""
    ran = [r[name] for r in rounds if "images_per_s" in r[name]]
    if not ran:
        return rounds[0][name]
    return {**max(ran, key=lambda f: f["images_per_s"]), "rounds_images_per_s": [f["images_per_s"] for f in ran]}


def dali_stages(shards: Path, device: torch.device, epochs: int) -> dict:
    """images/s of the DALI pipeline cut after each stage (pipeline/loading/dali_backend.py STAGES), same batch and
    threads: the first stage whose rate is close to the whole pipeline's is what limits it."""
    from pipeline.loading.dali_backend import STAGES, stage_pipeline
    from pipeline.shards.manifest import list_shards

    all_shards = list_shards(shards)
    samples = sum(s.samples for s in all_shards)
    device_id = device.index if device.type == "cuda" else None
    rates = {}
    paths, index_paths = [str(s.path) for s in all_shards], [str(s.index_path) for s in all_shards]
    for stage in STAGES:
        pipe = stage_pipeline(paths=paths, index_paths=index_paths, crop_size=CROP, stage=stage, batch_size=BATCH,
                              num_threads=WORKERS, device_id=device_id, prefetch_queue_depth=PREFETCH, seed=0)
        pipe.build()
        for _ in range(samples // BATCH):  # warm-up: one pass
            pipe.run()
        start = time.perf_counter()
        for _ in range(epochs * samples // BATCH):
            pipe.run()
        rates[stage] = epochs * samples // BATCH * BATCH / (time.perf_counter() - start)
        del pipe
    return rates


def have_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def run(cfg=None) -> dict:
    """Measures and prints the table; from `cfg` only the seed and crop/aspect ranges are used (crop size, batch and
    workers are fixed here: docs/benchmarks.md)."""
    if cfg is None:
        from config import Config

        cfg = Config()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp, \
            local_server(Path(tmp), Path(tmp) / "server") as (base, server):
        shards, url = make_shards(Path(tmp)), base + "shards/"
        cases = [("reference (wds + PIL + torchvision, 2 workers)", lambda: reference_epochs(shards), cpu),
                 ("torch cpu", lambda: backend_epochs(cfg, shards, "torch", cpu), cpu),
                 (REMOTE, lambda: backend_epochs(cfg, url, "torch", cpu, Path(tmp) / "cache"), cpu)]
        if have_dali():
            cases.append(("dali cpu", lambda: backend_epochs(cfg, shards, "dali", cpu), cpu))
        if torch.cuda.is_available():
            gpu = torch.device("cuda", torch.cuda.current_device())
            cases.append(("torch gpu decode (nvJPEG)", lambda: backend_epochs(cfg, shards, "torch", gpu), gpu))
            if have_dali():
                cases.append(("dali gpu (mixed)", lambda: backend_epochs(cfg, shards, "dali", gpu), gpu))
        rounds = [{} for _ in range(ROUNDS)]
        for n, measured in enumerate(rounds):
            for name, make, device in cases:
                failed = any("error" in r.get(name, {}) for r in rounds)  # a case that failed is not tried again
                measured[name] = ({"error": "failed in an earlier round"} if failed else
                                  run_or_error(lambda: images_per_s(make(), device)))
            measured["prefetch"] = run_or_error(lambda: prefetch_rate(url, Path(tmp) / f"empty-cache-{n}"))
        stages = {}
        if have_dali():
            for device in [cpu] + ([gpu] if torch.cuda.is_available() else []):
                name = "dali gpu (mixed)" if device.type == "cuda" else "dali cpu"
                stages[name] = run_or_error(lambda: dali_stages(shards, device, epochs_for(device)))
    results = {name: best_round(name, rounds) for name, _, _ in cases}
    reference = results[cases[0][0]].get("images_per_s")
    for figures in results.values():
        if "images_per_s" in figures and reference:
            figures["vs_reference"] = figures["images_per_s"] / reference
    print(f"images/s, batch {BATCH}, crop {CROP}, {WORKERS} workers/threads, {IMAGES} JPEGs 500×375 q90 "
          f"({UNIQUE} distinct), {EPOCHS} epochs ({GPU_EPOCHS} on a GPU) after a warm-up, best of {ROUNDS} rounds")
    print(f"  {'backend':<48} {'img/s':>8} {'× ref':>7}  target")
    for name, figures in results.items():
        if "images_per_s" not in figures:
            print(f"  {name:<48} failed: {figures['error']}")
            continue
        target = (f"≥ {TARGETS[name]:.1f}× ref" if name in TARGETS else
                  f"≥ {GPU_TARGET:,.0f} img/s" if name.startswith("torch gpu") else "")
        ratio = f"{figures['vs_reference']:6.2f}×" if "vs_reference" in figures else "    n/a"
        print(f"  {name:<48} {figures['images_per_s']:8.0f} {ratio}  {target}")
    fetched = [r["prefetch"] for r in rounds if "mb_per_s" in r["prefetch"]]
    prefetch = max(fetched, key=lambda r: r["mb_per_s"]) if fetched else rounds[0]["prefetch"]
    print(f"  {REMOTE}: the shards served by {server} on 127.0.0.1, fetched into the node's cache in the warm-up "
          f"epoch, then read from it")
    print(f"  shard cache prefetcher from {server} on 127.0.0.1: " + (
        f"{prefetch['mb_per_s']:,.0f} MB/s ({prefetch['mb']:.1f} MB in {prefetch['shards']} shards, "
        f"{prefetch['threads']} downloads at once, each checked against its sha256), best of {ROUNDS}"
        if "mb_per_s" in prefetch else f"failed: {prefetch['error']}"))
    for name, rates in stages.items():
        print(f"  {name} cut after each stage, img/s: " + (f"failed: {rates['error']}" if "error" in rates else
                                                           " → ".join(f"{k} {v:,.0f}" for k, v in rates.items())))
    return {"batch_size": BATCH, "crop_size": CROP, "workers": WORKERS, "images": IMAGES, "unique_images": UNIQUE,
            "rounds": ROUNDS, "results": results, "dali_stages": stages, "server": server, "prefetch": prefetch}

