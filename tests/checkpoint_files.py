"""Checkpoint files made by hand for the refusal tests: the official-format fixture, a train.py tag folder laid out by
hand with the client state train.py saves, a planted pickle, and damage done in place.

    from checkpoint_files import OFFICIAL, STATES, Planted, damage, our_client, tag_folder
    tag = tag_folder(tmp_path / "run", our_client(loader=Planted(tmp_path / "ran")))
"""
from __future__ import annotations

from pathlib import Path

import torch

from config import config_to_yaml, load_config
from model.jepa import build_jepa

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / "tests" / "fixtures" / "official_tiny" / "checkpoint.pth.tar"
STATES = "mp_rank_00_model_states.pt"


class Planted:
    """Unpickling this creates `marker`: what a hostile checkpoint's __reduce__ would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def tag_folder(root: Path, client=None, complete: bool = True) -> Path:
    """A train.py checkpoint laid out by hand: <root>/checkpoints/step00000010/ with COMPLETE and the states file."""
    tag = root / "checkpoints" / "step00000010"
    tag.mkdir(parents=True)
    if client is not None:
        torch.save(client, tag / STATES)
    if complete:
        (tag / "COMPLETE").write_text("10\n")
    return tag


def our_client(**changes) -> dict:
    """The client state train.py saves (tiny_cpu recipe), with the keys DeepSpeed's zero_to_fp32 reads."""
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    torch.manual_seed(1)
    _, target = build_jepa(cfg.model, cfg.data.crop_size)
    client = {"step": 10, "config": config_to_yaml(cfg), "target_encoder": target.state_dict(), "world_size": 1,
              "module": {}, "buffer_names": [], "param_shapes": [], "shared_params": {}}
    return {**client, **changes}


def damage(path, offset=None) -> bytes:
    """Overwrites 256 bytes inside `path` in place (each byte flipped, so all differ), its size unchanged; returns
    the file's bytes after."""
    size = path.stat().st_size
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        chunk = f.read(256)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))
    assert path.stat().st_size == size
    return path.read_bytes()
