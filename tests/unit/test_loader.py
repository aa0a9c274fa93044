"""pipeline.loading.loader with both backends (PyTorch, DALI on the CPU) on shards written by the real shard_dataset.py
CLI
from real images (scikit-learn's digits, via tools/digits.py): the batch contract, labels against the source class
folders, each sample once per epoch across 2 ranks, exact resume (keys, images, masks), bad data named by shard and
key, and `data.backend: auto`.

400 digits of 32×32 px in 4 shards of 100; 2 ranks read 200 samples each, so a batch of 20 uses every sample of an
epoch and a batch of 24 leaves 8 per rank over (the epoch boundary with a remainder); 3 ranks split them 133/133/134.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from loaders import training_loader

from config import load_config
from model.inputs import IMAGENET_MEAN, IMAGENET_STD
from pipeline import DataError
#FMT
from pipeline.loading.loader import resolve_backend
from pipeline.shards.format import parse_index
from pipeline.shards.manifest import MANIFEST_NAME, list_shards

ROOT = Path(__file__).resolve().parents[2]
SAMPLES, SHARD_SIZE = 400, 100
CPU = torch.device("cpu")

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed"))]


def run(*cmd: str) -> None:
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """(shard folder, expected label per key from the source class folders)."""
    tmp = tmp_path_factory.mktemp("digits")
    run("-m", "tools.digits", str(tmp / "digits"), "--size", "32")
    src = tmp / "src"
    for path in sorted((tmp / "digits" / "train").rglob("*.jpg"))[:SAMPLES]:
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, src / path.parent.name / path.name)
    dest = tmp / "shards"
    run("shard_dataset.py", str(src), str(dest), "--shard-size", str(SHARD_SIZE), "--json", "--no-progress")
    classes = sorted(p.name for p in src.iterdir())
    expected = {}
    for shard in list_shards(dest):
        with tarfile.open(shard.path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    expected[member.name.split(".")[0]] = classes.index(Path(meta["path"]).parts[-2])
    assert len(expected) == SAMPLES and len(list_shards(dest)) == SAMPLES // SHARD_SIZE
    return dest, expected


def make_cfg(shards: Path, backend: str, batch_size: int = 20, **data):
    overrides = {"shards": str(shards), "backend": backend, "batch_size": batch_size, "num_workers": 0,
                 "shuffle_buffer": 64, "prefetch": 2, **data}
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[f"data.{k}={v}" for k, v in overrides.items()])


def take(loader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


# ------------------------------------------------------------------------------------------------------ contract

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_contract_and_labels_match_the_class_folders(dataset, backend, dtype):
    shards, expected = dataset
    loader = training_loader(make_cfg(shards, backend), rank=0, world_size=1, device=CPU, dtype=dtype)
    assert loader.batches_per_epoch == SAMPLES // 20
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for batch in take(loader, 3):
        assert batch.images.shape == (20, 3, 32, 32) and batch.images.dtype == dtype
        images = batch.images.float()
        assert torch.isfinite(images).all() and images.min() >= lo - 0.02 and images.max() <= hi + 0.02
        assert images.std() > 0.3  # real digits: dark background, bright strokes
        assert batch.ctx_idx.dtype == batch.tgt_idx.dtype == torch.int64
        assert batch.ctx_idx.shape[0] == 20 and batch.tgt_idx.shape[:2] == (4, 20)
        assert 0 <= batch.ctx_idx.min() and batch.tgt_idx.max() < 64  # 8×8 patches of 4 px
        assert batch.labels.dtype == torch.int64 and batch.labels.shape == (20,)
        assert len(batch.keys) == 20
        assert batch.labels.tolist() == [expected[k] for k in batch.keys]


def test_backends_give_the_same_pixel_statistics(dataset):
    """Same decode, crop range and normalisation: per-channel means over an epoch agree (crops differ)."""
    if not HAVE_DALI:
        pytest.skip("DALI is not installed")
    shards, _ = dataset
    means = {}
    for backend in ("torch", "dali"):
        loader = training_loader(make_cfg(shards, backend), rank=0, world_size=1, device=CPU, dtype=torch.float32)
        images = torch.cat([b.images for b in take(loader, loader.batches_per_epoch)])
        means[backend] = images.mean(dim=(0, 2, 3))
    assert torch.allclose(means["torch"], means["dali"], atol=0.1), means


# ------------------------------------------------------------------------------------------------------ epochs

@pytest.mark.parametrize("world_size,batch_size", [(2, 20), (2, 24), (3, 20)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_sample_once_per_epoch_across_ranks(dataset, backend, world_size, batch_size):
    """2 ranks × 200 samples: batch 20 uses each once, batch 24 leaves 8 per rank over; 3 ranks: 133, 133, 134."""
    shards, expected = dataset
    per_rank = (SAMPLES // world_size) // batch_size
    epochs = {0: [], 1: []}
    for rank in range(world_size):
        loader = training_loader(make_cfg(shards, backend, batch_size), rank=rank, world_size=world_size, device=CPU)
        assert loader.batches_per_epoch == per_rank
        batches = take(loader, 2 * per_rank)
        assert loader.epoch == 1 and loader.batch_in_epoch == per_rank
        for epoch in (0, 1):
            epochs[epoch] += [k for b in batches[epoch * per_rank:(epoch + 1) * per_rank] for k in b.keys]
    for keys in epochs.values():
        assert len(keys) == len(set(keys)) == world_size * per_rank * batch_size  # at most once ...
        assert set(keys) <= set(expected)
        if world_size * per_rank * batch_size == SAMPLES:
            assert set(keys) == set(expected)  # ... and, with no remainder, exactly once
    assert epochs[0] != epochs[1]  # reshuffled


# ------------------------------------------------------------------------------------------------------ resume

def snapshot(batch) -> tuple:
    return (batch.keys, batch.images.clone(), batch.ctx_idx.clone(), batch.tgt_idx.clone(), batch.labels.clone())


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_k_batches_reproduces_the_uninterrupted_run(dataset, backend):
    shards, _ = dataset
    cfg = make_cfg(shards, backend, num_workers=1)
    total = 25  # 2.5 epochs of 10 batches on rank 1 of 2

    def fresh():
        return training_loader(cfg, rank=1, world_size=2, device=CPU, dtype=torch.float32)

    reference = [snapshot(b) for b in take(fresh(), total)]
    for k in (3, 9, 10, 17):  # mid-epoch, DALI prefetching across the epoch's end, exactly at it, the next epoch
        first = fresh()
        assert [snapshot(b)[0] for b in take(first, k)] == [r[0] for r in reference[:k]]
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)  # the state travels in a checkpoint file
        buffer.seek(0)
        resumed = fresh()
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
        for got, want in zip((snapshot(b) for b in take(resumed, total - k)), reference[k:]):
            assert got[0] == want[0]  # the same samples, in the same order
            for a, b in zip(got[1:], want[1:]):
                assert torch.equal(a, b)  # the same crops, masks and labels


@pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed")
def test_dali_state_from_another_setup_is_refused(dataset):
    shards, _ = dataset
    first = training_loader(make_cfg(shards, "dali"), rank=0, world_size=1, device=CPU)
    take(first, 2)
    other = training_loader(make_cfg(shards, "dali", batch_size=25), rank=0, world_size=1, device=CPU)
    with pytest.raises(DataError, match="batch_size"):
        other.load_state_dict(first.state_dict())


# ------------------------------------------------------------------------------------------------------ elastic

def read_steps(loaders: list, steps: int, grad_accum: int) -> list[list[str]]:
    """The keys each optimizer step reads across `loaders` (one per rank, grad_accum batches each per step)."""
    iters = [iter(loader) for loader in loaders]
    return [[k for it in iters for _ in range(grad_accum) for k in next(it).keys] for _ in range(steps)]


def layout(shards, backend, world_size, batch_size, grad_accum=1, order=None):
    """The loaders of `world_size` ranks; `order` an epoch order's saved parameters (OrderSpec.as_dict), taken as a
    resume takes them."""
    cfg = make_cfg(shards, backend, batch_size)
    cfg = dataclasses.replace(cfg, optimization=dataclasses.replace(cfg.optimization, grad_accum=grad_accum))
    loaders = [training_loader(cfg, rank=r, world_size=world_size, device=CPU) for r in range(world_size)]
    for loader in loaders if order else ():
        loader.backend.keep_order(order)
    return loaders


# cache_blocks for a cache of 2 of the 4 shards: blocks of one shard, each epoch starting with the 2 the last ended with
BLOCKS = {"kind": "cache_blocks", "block_bytes": 1, "keep_bytes": 2 * 399_360}  # 4 tars of 399,360 bytes


@pytest.mark.parametrize("old,new,k,order", [
    ((2, 20, 1), (1, 20, 2), 3, None),  # 2 ranks → 1, the global batch of 40 kept with grad_accum 2
    ((2, 24, 1), (3, 16, 1), 3, None),  # 2 → 3: 48 = 3 × 16
    ((2, 24, 1), (3, 16, 1), 8, None),  # stopped at the end of the epoch: the new ranks begin the next
    ((2, 20, 1), (3, 20, 1), 3, None),  # per-GPU batch kept: the global batch becomes 60
    ((2, 20, 1), (1, 20, 2), 3, BLOCKS),  # the cache-aware order, carried by the states
    ((2, 24, 1), (3, 16, 1), 3, BLOCKS),
])
def test_torch_backend_reads_every_sample_of_the_epoch_once_across_a_change_of_ranks(dataset, old, new, k, order):
    """Old ranks read k steps, new ranks continue from their states: over the epoch that spans the change, every
    sample the uninterrupted old run would read is read once (the new layout reads whole steps of its own batch)."""
    shards, _ = dataset
    (w0, b0, a0), (w1, b1, a1) = old, new
    uninterrupted = read_steps(layout(shards, "torch", *old, order=order), 400 // (w0 * b0 * a0), a0)
    before_loaders = layout(shards, "torch", *old, order=order)
    before = read_steps(before_loaders, k, a0)
    after_loaders = layout(shards, "torch", *new)
    notes = {loader.continue_from([l.state_dict() for l in before_loaders], w0, b0, step=k) for loader in after_loaders}
    assert len(notes) == 1 and "the same global sample order" in notes.pop()
    assert {loader.backend.order.spec.kind for loader in after_loaders} == {order["kind"] if order else "global"}
    epoch_steps = 400 // (w0 * b0 * a0)
    if k == epoch_steps:  # the old ranks had finished epoch 0: the new ones start epoch 1 at its first sample
        assert all(loader.epoch == 1 and loader.offset == 0 for loader in after_loaders)
        return
    g1 = w1 * b1 * a1
    left = (400 // (w0 * b0 * a0) * w0 * b0 * a0 - k * w0 * b0 * a0) // g1  # whole new steps left in the epoch
    after = read_steps(after_loaders, left, a1)
    keys = [key for step in before + after for key in step]
    assert len(keys) == len(set(keys))  # nothing twice
    epoch = {key for step in uninterrupted for key in step}
    assert set(keys) <= epoch
    if g1 == w0 * b0 * a0:  # the global batch kept: the very same samples, step by step
        assert [sorted(s) for s in before + after] == [sorted(s) for s in uninterrupted]
    else:  # a new global batch: the epoch ends at its last whole step of 60; the rest of the order is not read
        assert len(keys) == k * w0 * b0 * a0 + left * g1 and len(epoch - set(keys)) < g1
    next_epoch = read_steps(after_loaders, 400 // g1, a1)  # then whole epochs in the new layout
    assert all(loader.epoch == 1 for loader in after_loaders)
    assert len({key for step in next_epoch for key in step}) == 400 // g1 * g1


@pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed")
def test_dali_restarts_the_epoch_on_another_number_of_ranks_and_says_what_repeats(dataset):
    shards, expected = dataset
    before_loaders = layout(shards, "dali", 2, 20)
    before = read_steps(before_loaders, 3, 1)
    after = training_loader(make_cfg(shards, "dali", 20), rank=0, world_size=1, device=CPU)
    note = after.continue_from([l.state_dict() for l in before_loaders], 2, 20, step=3)
    assert "epoch 0 restarts: the 120 samples its old ranks had read in it are read a second time" in note
    assert after.epoch == 0 and after.offset == 0 and after.batches_seen == 3
    epoch = read_steps([after], after.batches_per_epoch, 1)
    keys = [key for step in epoch for key in step]
    assert sorted(keys) == sorted(expected)  # the restarted epoch reads each sample once
    assert {key for step in before for key in step} <= set(keys)  # so those read before the change repeat


# ------------------------------------------------------------------------------------------------------ bad data

def damaged_copy(shards: Path, dest: Path, shard: int, sample: int) -> tuple[Path, str]:
    """A copy of the shards whose sample `sample` of shard `shard` no longer starts like a JPEG (the index offsets
    still point at it, the file size is unchanged); returns (tar path, key)."""
    shutil.copytree(shards, dest)
    target = list_shards(dest)[shard]
    members = parse_index(target.index_path.read_text())[sample]
    offset, _, name = next((o, s, n) for ext, o, s, n in members if ext == "jpg")
    with open(target.path, "r+b") as f:
        f.seek(offset)
        f.write(b"NOT A JPEG " * 4)
    return target.path, name.split(".")[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_sample_is_named_by_shard_and_key(dataset, backend, tmp_path):
    shards, _ = dataset
    tar, key = damaged_copy(shards, tmp_path / "shards", shard=1, sample=37)
    loader = training_loader(make_cfg(tmp_path / "shards", backend, num_workers=1), rank=0, world_size=1, device=CPU)
    with pytest.raises(DataError) as err:
        take(loader, loader.batches_per_epoch)
    assert str(tar) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_sample_with_skip(dataset, backend, tmp_path):
    """torch: skipped and counted; DALI cannot skip inside a pipeline: the same named error, saying so."""
    shards, _ = dataset
    tar, key = damaged_copy(shards, tmp_path / "shards", shard=2, sample=5)
    cfg = make_cfg(tmp_path / "shards", backend, on_bad_sample="skip")
    loader = training_loader(cfg, rank=0, world_size=1, device=CPU)
    if backend == "torch":
        batches = take(loader, loader.batches_per_epoch)
        assert loader.backend.skipped == 1
        assert key not in {k for b in batches for k in b.keys}
        assert all(b.images.shape[0] == 20 for b in batches)
    else:
        with pytest.raises(DataError, match="cannot skip") as err:
            take(loader, loader.batches_per_epoch)
        assert str(tar) in str(err.value) and key in str(err.value)
        assert loader.backend.skipped == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_shard_is_named_by_shard_and_key(dataset, backend, tmp_path):
    shards, _ = dataset
    dest = tmp_path / "shards"
    shutil.copytree(shards, dest)
    target = list_shards(dest)[3]
    entries = parse_index(target.index_path.read_text())
    cut = next(o for ext, o, s, n in entries[60] if ext == "jpg") - 100  # samples 60.. lose their bytes
    with open(target.path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(DataError, match=target.path.name):  # the manifest records the size: caught at build
        training_loader(make_cfg(dest, backend), rank=0, world_size=1, device=CPU)
    lost = {n.split(".")[0] for sample in entries[60:] for ext, o, s, n in sample}
    manifest = json.loads((dest / MANIFEST_NAME).read_text())  # the size recorded too: the index's offsets
    manifest["shards"][3]["bytes"] = cut                               # are checked against the tar at build
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        training_loader(make_cfg(dest, backend), rank=0, world_size=1, device=CPU)
    message = str(err.value)
    assert str(target.path) in message and any(key in message for key in lost) and "\n" not in message, message
    shutil.rmtree(dest)  # a shard cut while the run goes on: named by the read that fails
    shutil.copytree(shards, dest)
    loader = training_loader(make_cfg(dest, backend), rank=0, world_size=1, device=CPU)
    with open(target.path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(DataError) as err:
        take(loader, loader.batches_per_epoch)
    message = str(err.value)
    assert str(target.path) in message and any(key in message for key in lost), message


def test_gpu_decode_path_names_or_skips_an_undecodable_sample(dataset):
    """decode_crop_on_gpu, run here on the CPU: the sample nvJPEG rejects is named, or replaced and reported."""
    from pipeline.loading.torch_backend import decode_crop_on_gpu

    shards, _ = dataset
    shard = list_shards(shards)[0]
    data = shard.path.read_bytes()
    spans = [next((o, s) for ext, o, s, n in m if ext == "jpg") for m in parse_index(shard.index_path.read_text())]
    jpgs = [torch.frombuffer(bytearray(data[o:o + s]), dtype=torch.uint8) for o, s in spans[:4]]
    jpgs[2] = torch.frombuffer(bytearray(b"NOT A JPEG" * 10), dtype=torch.uint8)
    keys, boxes = ["k0", "k1", "k2", "k3"], [(0, 0, 32, 32)] * 4
    with pytest.raises(DataError, match="k2"):
        decode_crop_on_gpu(jpgs, boxes, keys, {"k2": str(shard.path)}, 16, CPU)
    with pytest.raises(DataError):
        decode_crop_on_gpu(jpgs[2:3], boxes[:1], keys[2:3], {}, 16, CPU, on_bad_sample="skip")
    images, picks = decode_crop_on_gpu(jpgs, boxes, keys, {}, 16, CPU, on_bad_sample="skip")
    assert images.shape == (4, 3, 16, 16) and picks[:2] == [0, 1] and picks[3] == 3 and picks[2] != 2
    assert torch.equal(images[2], images[picks[2]])


# ------------------------------------------------------------------------------------------------------ backend

def test_auto_backend_picks_dali_when_importable(dataset, monkeypatch):
    shards, _ = dataset
    if HAVE_DALI:
        from pipeline.loading.dali_backend import DaliBackend

        assert resolve_backend("auto") == "dali"
        loader = training_loader(make_cfg(shards, "auto"), rank=0, world_size=1, device=CPU)
        assert isinstance(loader.backend, DaliBackend)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if DALI were not installed
    assert resolve_backend("auto") == "torch"
    assert resolve_backend("dali") == "dali" and resolve_backend("torch") == "torch"
    from pipeline.loading.torch_backend import TorchBackend

    assert isinstance(training_loader(make_cfg(shards, "auto"), 0, 1, CPU).backend, TorchBackend)


@pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed")
def test_dali_label_and_key_parsing():
    from pipeline.loading.dali_backend import parse_keys, parse_labels
    from pipeline.shards.format import member_key

    ascii_labels = torch.tensor([[ord("7"), 0, 0], [ord("1"), ord("2"), ord("3")], [0, 0, 0]], dtype=torch.uint8)
    assert parse_labels(ascii_labels).tolist() == [7, 123, -1]
    assert member_key("0000000042.jpg") == "0000000042" and member_key("dir.x/abc.seg.png") == "dir.x/abc"
    info = [b"/data/s-000001.tar:1536:0000000042.jpg", b"/d/t.tar:512:0000000007.jpg"]
    width = max(map(len, info))
    rows = torch.tensor([list(s.ljust(width, b"\0")) for s in info], dtype=torch.uint8)
    assert parse_keys(rows) == ["0000000042", "0000000007"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_blocks_forced_without_a_bounded_cache_or_with_dali_is_one_line(dataset, backend):
    shards, _ = dataset
    with pytest.raises(DataError) as err:
        training_loader(make_cfg(shards, backend, epoch_order="cache_blocks"))
    said = {"torch": "its blocks are cut for a bounded shard cache, and this run has none; set data.shards to a URL "
                     "with data.cache_gb, or data.epoch_order auto",
            "dali": "the DALI backend reads the shards in an order of its own"}[backend]
    assert str(err.value).startswith("data.epoch_order cache_blocks: ") and said in str(err.value)
