"""Damaged and crafted DALI index files (issue 15, item 6): every one is caught before any sample is read — by the
manifest's index_sha256, or, when the manifest was edited to match, by the index's own checks (fields, names,
offsets within the tar) — and reaches the user as one line naming the shard and saying how to rebuild it, through
both backends and the eval reader (`python train.py`: e2e/test_train_hardening.py).

12 tiny JPEGs in 2 class folders, sharded by shard_dataset.py's main() into 3 shards of 4; shard 1 is damaged
(tests/index_damage.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from index_damage import DAMAGES, HAVE_DALI, assert_one_line_naming_the_shard, damaged
from loaders import training_loader

from config import load_config
from pipeline import DataError
from pipeline.shards.format import read_span

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI is not installed"))]


def make_cfg(shards: Path, backend: str):
    overrides = {"shards": str(shards), "backend": backend, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 4}
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[f"data.{k}={v}" for k, v in overrides.items()])


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
