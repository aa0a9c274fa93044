"""Shards on an HTTP server (data.shards a URL) through the node's verified cache, against a real nginx on
127.0.0.1 (tools/nginx.py, tests/served.py): the fetched files, a truncated file, a connection cut mid-file, 503
answers, a stopped server; the cache's bound; the wait inside the loader; DALI reading the cache; shard_dataset.py
--upload. 2 ranks training from the server: e2e/test_train.py. (No server, or a silent one, and the cache's own
checks, in process: unit/test_shard_cache.py.)"""
from __future__ import annotations

import hashlib
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from launches import launch, ok
from served import FAST, PATIENT, serve

from pipeline.remote.cache import ShardCache
from pipeline.remote.fetch import RemoteError, RetryPolicy
from pipeline.shards.manifest import read_manifest
from tools.nginx import Nginx


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(small_shards, tmp_path_factory):
    """nginx serving the 192 small digits (4 shards of 48) at /small/."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(small_shards, root / "small")
    server = serve(root, tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


@pytest.fixture
def own_server(small_shards, tmp_path):
    """An nginx of this test's own (it fails, truncates or stops it)."""
    shutil.copytree(small_shards, tmp_path / "root" / "small")
    server = serve(tmp_path / "root", tmp_path / "nginx")
    yield server
    server.stop()


def open_cache(server: Nginx, cache_dir: Path, bound: int | None = None, policy: RetryPolicy = FAST) -> ShardCache:
    url = server.url("small/")
    return ShardCache.open(url, read_manifest(url, fetch=policy), cache_dir, bound, policy)


def cached_files(cache: ShardCache) -> list[str]:
    return sorted(p.name for p in cache.dir.iterdir() if p.suffix in (".tar", ".idx"))


# ----- against nginx
def test_fetched_files_equal_the_served_ones_and_a_second_lookup_is_a_hit(served, small_shards, tmp_path):
    cache = open_cache(served, tmp_path / "cache")
    shards = cache.shard_files()
    assert len(shards) == 4 and all(s.index_path.exists() and not s.path.exists() for s in shards)
    for shard in shards:
        assert cache.ensure(shard.path) == shard.path
        assert sha256(shard.path) == sha256(small_shards / shard.path.name)
    first = cache.take_stats()
    total = sum((small_shards / n).stat().st_size for n in cached_files(cache))
    assert first.network_bytes == total and first.hits == 0 and first.lookups == 8
    for shard in shards:
        cache.ensure(shard.path)
    again = cache.take_stats()
    assert (again.network_bytes, again.hits, again.lookups) == (0, 4, 4)
    assert not list(cache.dir.glob("*.part"))


def test_a_truncated_file_is_fetched_again_and_never_used(own_server, small_shards, tmp_path):
    cache = open_cache(own_server, tmp_path / "cache")
    shard = cache.shard_files()[1]
    served = own_server.root / "small" / shard.path.name
    good = served.read_bytes()
    served.write_bytes(good[: len(good) // 3])  # the server has a cut copy at first

    def mend_after_first_get():
        while not own_server.requests(shard.path.name):
            time.sleep(0.02)
        assert not shard.path.exists()  # the cut copy never reached the final name
        served.write_bytes(good)

    mender = threading.Thread(target=mend_after_first_get)
    cache.take_stats()  # the indexes'
    mender.start()
    assert cache.ensure(shard.path) == shard.path
    mender.join()
    gets = own_server.requests(shard.path.name, until=lambda rows: len(rows) >= 2)
    assert [status for status, _ in gets] == [200, 200] and gets[0][1] == len(good) // 3 and gets[1][1] == len(good)
    assert shard.path.read_bytes() == good
    assert cache.take_stats().network_bytes == len(good) // 3 + len(good)


def test_503_for_a_while_then_the_file(own_server, small_shards, tmp_path):
    cache = open_cache(own_server, tmp_path / "cache", policy=PATIENT)
    shard = cache.shard_files()[0]
    own_server.fail_with(503)
    timer = threading.Timer(1.0, own_server.fail_with, args=(None,))
    timer.start()
    t0 = time.monotonic()
    cache.ensure(shard.path)
    timer.join()
    statuses = [status for status, _ in own_server.requests(shard.path.name, until=lambda r: r and r[-1][0] == 200)]
    assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}, statuses
    assert 1.0 <= time.monotonic() - t0 < PATIENT.timeout_s
    assert sha256(shard.path) == sha256(small_shards / shard.path.name)


def test_503_beyond_the_bound_is_one_line_naming_the_url_and_what_the_server_said(own_server, tmp_path):
    cache = open_cache(own_server, tmp_path / "cache")
    shard = cache.shard_files()[0]
    own_server.fail_with(503)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        cache.ensure(shard.path)
    assert time.monotonic() - t0 < FAST.timeout_s + 1
    message = str(err.value)
    assert message.startswith(f"{own_server.url('small/')}{shard.path.name}: the server answered 503 "), message
    assert "\n" not in message and not shard.path.exists() and not list(cache.dir.glob("*.part"))


def test_a_connection_cut_mid_file_is_fetched_again(own_server, small_shards, tmp_path):
    url = own_server.url("slow/small/")  # 256 KB/s: the server stops while the file streams
    cache = ShardCache.open(url, read_manifest(url, fetch=PATIENT), tmp_path / "cache", None, PATIENT)
    shard = cache.shard_files()[2]
    cache.take_stats()

    def streaming() -> bool:
        try:
            return any(p.stat().st_size > 0 for p in cache.dir.glob(shard.path.name + ".*.part"))
        except FileNotFoundError:
            return False

    def cut_then_restart():
        while not streaming():
            time.sleep(0.01)
        own_server.stop()
        own_server.start()
    cutter = threading.Thread(target=cut_then_restart)
    cutter.start()
    cache.ensure(shard.path)
    cutter.join()
    size = shard.path.stat().st_size
    assert sha256(shard.path) == sha256(small_shards / shard.path.name)
    assert size < cache.take_stats().network_bytes < 2 * size  # a part of the file, then all of it


def test_a_stopped_server_is_waited_for_then_one_line(own_server, small_shards, tmp_path):
    cache = open_cache(own_server, tmp_path / "cache", policy=PATIENT)
    first, second = cache.shard_files()[:2]
    own_server.stop()
    restart = threading.Timer(1.0, own_server.start)  # back within the bound: the fetch goes on
    restart.start()
    cache.ensure(first.path)
    restart.join()
    assert sha256(first.path) == sha256(small_shards / first.path.name)
    own_server.stop()  # gone for good: one line once the bound is spent
    cache.policy = FAST
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"could not be reached .*tries in 2.5 s \(data.fetch_timeout_s\)"):
        cache.ensure(second.path)
    assert time.monotonic() - t0 < FAST.timeout_s + 1
    assert not second.path.exists() and not list(cache.dir.glob("*.part"))


def test_the_cache_stays_within_its_bound_evicting_the_least_recently_used(served, small_shards, tmp_path):
    sizes = {r.name: r.bytes for r in read_manifest(small_shards).shards}
    bound = int(2.5 * max(sizes.values())) + 4 * 12_000  # two and a half shards, and the indexes
    cache = open_cache(served, tmp_path / "cache", bound=bound)
    shards = cache.shard_files()
    highest, stop = [0], threading.Event()

    def on_disk() -> int:
        total = 0
        for p in cache.dir.glob("*"):
            if p.suffix in (".tar", ".idx", ".part"):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass  # renamed or evicted while listed
        return total

    def watch():
        while not stop.is_set():
            highest[0] = max(highest[0], on_disk())
    watcher = threading.Thread(target=watch)
    watcher.start()
    order = [0, 1, 0, 2, 3, 1, 0, 3, 2, 2, 1]
    readers = [threading.Thread(target=lambda i=i: [cache.read(str(shards[j].path), (512, 64)) for j in order[i:]])
               for i in range(3)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    stop.set()
    watcher.join()
    assert 0 < highest[0] <= bound, (highest[0], bound)
    assert cache.usage() <= bound
    for i in (0, 1, 2):  # two shards fit: 2 takes the room of the least recently used, 0
        cache.ensure(shards[i].path)
    assert [s.path.exists() for s in shards] == [False, True, True, False]


def test_shard_dataset_uploads_its_output_to_the_server_manifest_last(served, digit_shards, tmp_path):
    src = digit_shards["val"].parent / "img" / "val"
    proc = ok(launch([sys.executable, "shard_dataset.py", str(src), str(tmp_path / "local"),
                      "--shard-size", "150", "--no-progress", "--upload", served.url("up/val/")]))
    assert f"train from it with --set data.shards={served.url('up/val/')}" in proc
    local = read_manifest(tmp_path / "local")
    names = [n for r in local.shards for n in (r.name, r.index_name)] + ["manifest.json"]
    puts = [line.split(" ")[3] for line in (served.work / "access.log").read_text().splitlines()
            if " PUT /up/val/" in line]
    assert puts == [f"/up/val/{n}" for n in names]  # the manifest last
    for name in names:
        assert sha256(served.root / "up" / "val" / name) == sha256(tmp_path / "local" / name)


def test_a_shard_still_on_its_way_is_waited_for_inside_the_loaders_next(own_server, small_shards, tmp_path):
    """The wait for the network is in the loader's next(), which the loop times as data wait."""
    from config.sections import DataConfig
    from pipeline.loading.loader import build_loader
    from pipeline.masks.sampler import MultiBlockMaskSampler
    from training.plan import BatchLayout

    layout = BatchLayout(batch_size=16, grad_accum=1, world_size=1)
    sampler = MultiBlockMaskSampler(input_size=32, patch_size=4, min_keep=4)
    waits = {}
    for where in (str(small_shards), own_server.url("slow/small/")):  # 256 KB/s: each shard about 0.55 s
        data = DataConfig(shards=where, cache_dir=str(tmp_path / "cache"), fetch_timeout_s=10, crop_size=32,
                          num_workers=0, prefetch=1)
        manifest = read_manifest(where, fetch=RetryPolicy(data.fetch_timeout_s))
        loader = build_loader(data, sampler, seed=0, rank=0, layout=layout,
                              steps_per_epoch=layout.steps_per_epoch(manifest.total_samples, where), manifest=manifest,
                              backend="torch", device=torch.device("cpu"), dtype=torch.float32)
        batches = iter(loader)
        t0 = time.monotonic()
        next(batches)
        waits[where] = time.monotonic() - t0
    local, remote = waits.values()
    floor = min(p.stat().st_size for p in small_shards.glob("*.tar")) / (256 * 1024)  # one shard at 256 KB/s
    assert remote > max(0.5 * floor, 2 * local), (waits, floor)  # half of it: room for a loaded machine's timer


# ----- the DALI backend
def test_the_dali_reader_reads_the_cached_shards_as_it_reads_the_folder(served, small_shards, tmp_path):
    from dataclasses import replace

    from config.sections import DataConfig
    from pipeline.loading.dali_backend import DaliBackend
    from pipeline.loading.loader import shard_files

    data = DataConfig(shards=served.url("small/"), cache_dir=str(tmp_path / "cache"), fetch_timeout_s=4, crop_size=32,
                      num_workers=1, prefetch=1)
    manifest = read_manifest(small_shards)
    batches = {}
    for where in (str(small_shards), served.url("small/")):
        shards, cache = shard_files(replace(data, shards=where), manifest)
        source = DaliBackend(data, 0, shards, 2, rank=1, world_size=2, device=torch.device("cpu"), batch_size=16,
                            cache=cache)
        batches[where] = list(source.epoch_batches(0, 0))
    here, there = batches.values()
    assert [k for _, _, k in here] == [k for _, _, k in there]
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(here, there))
