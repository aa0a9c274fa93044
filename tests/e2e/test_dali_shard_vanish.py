"""A shard deleted or cut while a DALI run reads it: the run stops with one line that names the shard (and the sample
key where the reader knows it). DALI's reader maps the shards by default, and a mapped shard cut under it killed the
process with SIGBUS and no message; so this case runs in a child process, as train.py prints errors (`error:
<message>`, exit 1). Skipped without DALI. (The PyTorch backend, in process: unit/test_shard_vanish.py.)

The digits (tests/conftest.py `digit_shards`: 8 shards of about 170 samples), copied; batches of 16 (84 per epoch).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.shards.manifest import list_shards

ROOT = Path(__file__).resolve().parents[2]


CHILD = """
import os, sys
sys.path.insert(0, "tests")
from loaders import training_loader
from vanishing_shards import damage, make_cfg
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
