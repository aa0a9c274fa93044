"""A shard deleted or cut while the run reads it, on both backends: the run stops with one line that names the shard
(and the sample key where the reader knows it), whatever data.on_bad_sample says (it is not a bad sample).

PyTorch: the error is raised in a DataLoader worker; its message reaches the user as it was written, not behind
torch's "Caught DataError in DataLoader worker process 0" and the worker's traceback. DALI: its reader maps the
shards by default, and a mapped shard cut under it killed the process with SIGBUS and no message; so the DALI case
runs in a child process, as train.py prints errors (`error: <message>`, exit 1): e2e/test_dali_shard_vanish.py.

The digits (tests/conftest.py `digit_shards`: 8 shards of about 170 samples), copied; batches of 16 (84 per epoch).
"""
from __future__ import annotations

import shutil

import pytest
from loaders import training_loader
from vanishing_shards import damage, make_cfg

from pipeline import DataError


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
    assert ("deleted" if how == "delete" else "truncated") in message and "restore it" in message, message
    assert loader.backend.skipped == 0
