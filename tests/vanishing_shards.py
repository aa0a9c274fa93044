"""A shard deleted or cut while a run reads it (tests/unit/test_shard_vanish.py; the DALI case in a child process,
tests/e2e/test_dali_shard_vanish.py, which imports this module): the loader's config on a shard folder, and the
damage.

    from vanishing_shards import damage, make_cfg
"""
from __future__ import annotations

import os
from pathlib import Path

from config import load_config
from pipeline.shards.format import member_key, parse_index
from pipeline.shards.manifest import list_shards

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16


def make_cfg(shards: Path, backend: str, **data):
    sets = {"shards": shards, "backend": backend, "batch_size": BATCH, "num_workers": 1, "shuffle_buffer": 16,
            "prefetch": 2, **data}
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[f"data.{k}={v}" for k, v in sets.items()])


def damage(dest: Path, how: str) -> tuple[Path, set[str]]:
    """Deletes the last shard of `dest`, or cuts it before its sample 60; (its tar, the keys it no longer holds)."""
    target = list_shards(dest)[-1]
    entries = parse_index(target.index_path.read_text())
    first_lost = 0 if how == "delete" else 60
    lost = {member_key(name) for sample in entries[first_lost:] for _, _, _, name in sample}
    if how == "delete":
        target.path.unlink()
    else:
        os.truncate(target.path, next(o for ext, o, _, _ in entries[first_lost] if ext == "jpg") - 100)
    return target.path, lost
