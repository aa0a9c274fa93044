"""The encoder a probe evaluates, and its random-init twin: from a train.py checkpoint folder or an official-format
file; the target (EMA) encoder by default, as the paper evaluates."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
import yaml

from config import config_from_dict
from model.jepa import build_jepa
from model.official import load_encoder_for_eval
from model.vit import init_weights
from training.checkpoints import COMPLETE


def load_encoder(checkpoint: str | Path, which: Literal["target", "context"] = "target"):
    """(encoder, random-init encoder of the same architecture) from this project's checkpoint folder (a DeepSpeed
    tag folder written by train.py) or an official-format file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return _load_ours(checkpoint, which)
    encoder = load_encoder_for_eval(checkpoint, which=which)
    random_init = copy.deepcopy(encoder)
    torch.manual_seed(0)
    random_init.apply(init_weights)  # official init; the fixed positions stay as they are
    return encoder, random_init.eval()


def _load_ours(tag_dir: Path, which: str):
    if not (tag_dir / COMPLETE).is_file():
        raise FileNotFoundError(f"{tag_dir}: not a complete checkpoint of train.py (no {COMPLETE} marker)")
    states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed model states (*mp_rank_00_model_states.pt) in it")
    client = torch.load(states[0], map_location="cpu", weights_only=False)
    cfg = config_from_dict(yaml.safe_load(client["config"]), f"{tag_dir} (saved config)")
    torch.manual_seed(cfg.run.seed)
    _, random_target = build_jepa(cfg.model, cfg.data.crop_size)  # the run's own init: the random baseline is step 0
    encoder = copy.deepcopy(random_target)
    if which == "target":
        encoder.load_state_dict(client["target_encoder"])
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        prefix = "context_encoder."
        state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        state.setdefault("pos_embed", encoder.pos_embed.detach())  # frozen: not in DeepSpeed's fp32 copy
        encoder.load_state_dict(state)
    return encoder.eval(), random_target.eval()
