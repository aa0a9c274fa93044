"""A shard deleted or cut while the run reads it, on both backends: the run stops with one line that names the shard
(and the sample key where the reader knows it), whatever data.on_bad_sample says (it is not a bad sample).

PyTorch: the error is raised in a DataLoader worker; its message reaches the user as it was written, not behind
torch's "Caught DataError in DataLoader worker process 0" and the worker's traceback. DALI: its reader maps the
shards by default, and a mapped shard cut under it killed the process with SIGBUS and no message; so the DALI case
runs in a child process, as train.py prints errors (`error: <message>`, exit 1).

The digits (tests/conftest.py `digit_shards`: 8 shards of about 170 samples), copied; batches of 16 (84 per epoch).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loaders import training_loader

from config import load_config
from pipeline import DataError
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


@pytest.mark.parametrize("how, on_bad_sample", [("truncate", "raise"), ("delete", "raise"), ("truncate", "skip")])
def test_torch_shard_gone_mid_run_is_one_line_naming_it(digit_shards, tmp_path, how, on_bad_sample):
    dest = tmp_path / "shards"
    shutil.copytree(digit_shards["train"], dest)
    loader = training_loader(make_cfg(dest, "torch", on_bad_sample=on_bad_sample))
    batches = iter(loader)
    next(batches)
    tar, lost = damage(dest, how)
    with pytest.raises(DataError) as err:
        # a worker that opened the shard before it was deleted reads on: the next epoch's workers cannot
        for _ in range(2 * loader.batches_per_epoch):
            next(batches)
    message = str(err.value)
    assert message.startswith(f"shard {tar}, sample ") and "\n" not in message, message
    assert message.split(", sample ")[1].split(":")[0] in lost, message
    assert ("deleted" if how == "delete" else "truncated") in message and "resume" in message, message
    assert loader.backend.skipped == 0


CHILD = """
import os, sys
sys.path.insert(0, "tests")
from loaders import training_loader
from test_shard_vanish import damage, make_cfg
from util.errors import UserError
dest, how = sys.argv[1:]
try:
    loader = training_loader(make_cfg(dest, "dali"))
    batches = iter(loader)
    next(batches)
    damage(__import__("pathlib").Path(dest), how)
    for _ in range(2 * loader.batches_per_epoch):
        next(batches)
except UserError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
print("no error", file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_dali_shard_gone_mid_run_is_one_line_naming_it(digit_shards, tmp_path, how):
    pytest.importorskip("nvidia.dali")
    dest = tmp_path / "shards"
    shutil.copytree(digit_shards["train"], dest)
    tar = list_shards(dest)[-1].path
    proc = subprocess.run([sys.executable, "-c", CHILD, str(dest), how], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    first = next((line for line in proc.stderr.splitlines() if line.strip()), "")
    assert proc.returncode == 1, f"exit {proc.returncode} (-7: SIGBUS): {proc.stderr[-2000:]}"
    assert first.startswith(f"error: shard {tar}") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ("deleted" if how == "delete" else "truncated") in first, first
    if how == "truncate":  # DALI names the index line it could not read: its sample
        assert ", sample " in first.split(": the shard")[0], first
