"""What an export folder of export.py must satisfy, checked from its files and against our encoder: the CLI's lines,
exactly FILES, every weight file safetensors byte for byte, transformers' tokens within TOL; and the official fixture's
encoders (the `official` fixture), loaded once per test file.

    from export_checks import EXPECTED, TOL, assert_exported, official, ours_on, transformers_tokens  # noqa: F401
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoint_files import OFFICIAL
from safetensors import safe_open

from model.official import load_official_checkpoint

EXPECTED = OFFICIAL.parent / "expected.pt"
FILES = ["config.json", "export.json", "model.safetensors", "timm/config.json", "timm/model.safetensors"]
TOL = 1e-5


@pytest.fixture(scope="module")
def official():
    """The official fixture's (context encoder, target encoder), loaded once."""
    encoder, _, target = load_official_checkpoint(OFFICIAL)
    return encoder.eval(), target.eval()


def ours_on(images: torch.Tensor, encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(images)


def transformers_tokens(folder: Path, images: torch.Tensor) -> torch.Tensor:
    from transformers import IJepaModel

    model, info = IJepaModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        return model.eval()(pixel_values=images).last_hidden_state


def assert_safetensors(path: Path) -> None:
    """A safetensors file, byte for byte: an 8-byte header length, a JSON header whose tensors tile the rest of the
    file exactly; so no pickle (nor torch's zip) hides in it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
    assert tensors and 8 + n + max(entry["data_offsets"][1] for entry in tensors.values()) == len(raw), path
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(tensors)


def assert_exported(proc, out: Path, which: str) -> dict:
    """The CLI succeeded, printed one line per format with its figure and load line, and wrote exactly FILES, every
    weight file a safetensors file. Returns export.json."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("transformers:") and f'IJepaModel.from_pretrained("{out}")' in line for line in lines)
    assert any(line.startswith("timm (") and f'timm.create_model("local-dir:{out / "timm"}", pretrained=True)' in line
               for line in lines), proc.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == FILES
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    for name in ("model.safetensors", "timm/model.safetensors"):
        assert_safetensors(out / name)
    record = json.loads((out / "export.json").read_text())
    assert record["encoder"] == which
    assert all(0 <= f["max_abs_diff"] <= TOL for f in record["formats"].values()), record
    return record
