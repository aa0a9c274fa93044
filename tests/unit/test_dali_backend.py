"""The DALI source on ImageNet-like JPEGs (500×375, quality 90, 4 classes, sharded by the real shard_dataset.py), at
224 px, on each device it decodes on: the CPU here (device_id=None) and the GPU (`device="mixed"`: nvJPEG and the
hardware JPEG decoder where the card has one) on the GPU host (`pytest -m gpu`, benchmarks/gpu_check.sh).

The batch contract (shape, dtype, device, value range, labels, masks), the GPU path's per-channel pixel statistics
against the CPU path's over the same samples, and an exact resume (keys, masks and crops after a resume equal the
uninterrupted run's). The `cuda` cases skip without a GPU; their `cpu` twins are the dry run.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from itertools import islice
from pathlib import Path

import pytest
import torch
from loaders import training_loader

from benchmarks.data import make_images
from config import load_config
from model.inputs import IMAGENET_MEAN, IMAGENET_STD
from pipeline.shards.manifest import list_shards

pytest.importorskip("nvidia.dali")

ROOT = Path(__file__).resolve().parents[2]
IMAGES, SHARD_SIZE, BATCH, CROP = 96, 24, 16, 224  # 6 batches per epoch, 4 shards
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda-mixed", marks=pytest.mark.gpu)]
# Per-channel mean and std of normalised pixels over one epoch, GPU path vs CPU path (same samples, same crop
# windows): nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by about one level in 255 here and there.
MEAN_TOL, STD_REL_TOL = 0.02, 0.02


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("imagenet_like")
    make_images(tmp / "images", n=IMAGES, unique=IMAGES // 2)
    proc = subprocess.run([sys.executable, "shard_dataset.py", str(tmp / "images"), str(tmp / "shards"), "--json",
                           "--no-progress", "--shard-size", str(SHARD_SIZE)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "shards"


def folder_labels(shards: Path) -> dict[str, int]:
    """{key: index of its source class folder}, from the metadata shard_dataset.py stores beside each image."""
    labels = {}
    for shard in list_shards(shards):
        with tarfile.open(shard.path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    folder = Path(json.loads(tar.extractfile(member).read())["path"]).parts[-2]  # n0000000k
                    labels[member.name.split(".")[0]] = int(folder[1:])
    return labels


def loader(shards: Path, device: str, dtype: torch.dtype = torch.float32):
    sets = {"shards": shards, "backend": "dali", "batch_size": BATCH, "crop_size": CROP, "num_workers": 2,
            "shuffle_buffer": 64, "prefetch": 2}
    cfg = load_config(ROOT / "configs" / "vith14_in1k.yaml", overrides=[f"data.{k}={v}" for k, v in sets.items()]
                      + ["optimization.global_batch=0"])  # the batch as set, on one rank
    return training_loader(cfg, rank=0, world_size=1, device=torch.device(device), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_contract(shards, device, dtype):
    labels = folder_labels(shards)
    source = loader(shards, device, dtype)
    assert source.batches_per_epoch == IMAGES // BATCH
    assert source.backend.fingerprint["decode"] == ("mixed" if device == "cuda" else "cpu")
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    keys = []
    for batch in islice(source, source.batches_per_epoch):
        assert batch.images.shape == (BATCH, 3, CROP, CROP) and batch.images.dtype == dtype
        assert batch.images.device.type == device
        images = batch.images.float()
        assert torch.isfinite(images).all() and images.min() >= lo - 0.02 and images.max() <= hi + 0.02
        assert images.std() > 0.2  # noisy colour fields, not a constant
        assert batch.ctx_idx.shape[0] == BATCH and batch.tgt_idx.shape[:2] == (4, BATCH)
        assert batch.tgt_idx.max() < 256 and batch.ctx_idx.min() >= 0  # 16×16 patches of 14 px
        assert batch.labels.tolist() == [labels[k] for k in batch.keys]  # the class folder of each sample
        keys += batch.keys
    assert len(keys) == len(set(keys)) == IMAGES  # one epoch: every sample once


def epoch_figures(shards: Path, device: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys in order, per-channel mean, per-channel std) of normalised pixels over one epoch, in float64."""
    source = loader(shards, device)
    batches = list(islice(source, source.batches_per_epoch))
    images = torch.cat([b.images.double().cpu() for b in batches])  # (N, 3, S, S)
    return [k for b in batches for k in b.keys], images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


@pytest.mark.gpu
def test_gpu_decode_matches_the_cpu_path_over_the_same_samples(shards):
    keys_gpu, mean_gpu, std_gpu = epoch_figures(shards, "cuda")
    keys_cpu, mean_cpu, std_cpu = epoch_figures(shards, "cpu")
    assert keys_gpu == keys_cpu  # the reader runs on the host either way: the same samples in the same order
    figures = f"mean gpu {mean_gpu.tolist()} cpu {mean_cpu.tolist()}; std gpu {std_gpu.tolist()} cpu {std_cpu.tolist()}"
    print(f"dali mixed vs cpu over {IMAGES} images: {figures}")
    assert (mean_gpu - mean_cpu).abs().max() <= MEAN_TOL, figures
    assert ((std_gpu - std_cpu).abs() / std_cpu).max() <= STD_REL_TOL, figures


def snapshot(batch) -> tuple:
    return batch.keys, batch.ctx_idx.cpu().clone(), batch.tgt_idx.cpu().clone(), batch.images.float().cpu().clone()


@pytest.mark.parametrize("device", DEVICES)
def test_resume_gives_the_uninterrupted_runs_samples_masks_and_crops(shards, device):
    total = 10  # 1⅔ epochs of 6 batches
    reference = [snapshot(b) for b in islice(loader(shards, device), total)]
    for k in (4, 6):  # mid-epoch; exactly at the epoch's end
        first = loader(shards, device)
        list(islice(first, k))  # k batches handed out
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)  # the state travels in a checkpoint file
        buffer.seek(0)
        resumed = loader(shards, device)
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
        for got, want in zip((snapshot(b) for b in islice(resumed, total - k)), reference[k:], strict=True):
            assert got[0] == want[0]  # the same samples in the same order
            assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])  # the same masks
            assert torch.equal(got[3], want[3]), (k, (got[3] - want[3]).abs().max().item())  # the same crops
