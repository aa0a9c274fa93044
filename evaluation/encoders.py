"""The encoder a probe evaluates, and its random-init twin: from a train.py checkpoint folder or an official-format
file; the target (EMA) encoder by default, as the paper evaluates.

Both kinds may come from elsewhere, so every file loads with weights_only=True (tensors and plain values; for
DeepSpeed's states also its own plain data classes): a planted pickle is refused before it can run code.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch

from evaluation import EvalError
from model.jepa import build_jepa
from model.official import load_encoder_for_eval, load_strict
from model.vit import init_weights
from training.checkpoints import not_a_checkpoint
from training.integrity import COMPLETE
from training.states import STATES_GLOB, saved_client, saved_config, zero_fp32_weights



def load_encoder(checkpoint: str | Path, which: Literal["target", "context"] = "target"):
    """(encoder, random-init encoder of the same architecture) from this project's checkpoint folder (a DeepSpeed
    tag folder written by train.py) or an official-format file.

    Raises:
        util.errors.UserError (EvalError, model.official.CheckpointError, config.ConfigError):
            one line naming the checkpoint and what is wrong.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        encoder, random_init = _load_ours(checkpoint, which)
    else:
        encoder = load_encoder_for_eval(checkpoint, which=which)
        random_init = copy.deepcopy(encoder)
        torch.manual_seed(0)
        random_init.apply(init_weights)  # official init; the fixed positions stay as they are
    check_usable(encoder, f"{checkpoint} ({which} encoder)")
    return encoder, random_init.eval()


def check_usable(encoder, where: str) -> None:
    """Weights that can give figures: finite, and a patch embedding that takes the RGB images the probes feed."""
    channels = encoder.patch_embed.proj.in_channels
    if channels != 3:
        raise EvalError(f"{where}: takes {channels}-channel images; the probes feed RGB (3 channels)")
    bad = [name for name, t in encoder.state_dict().items() if not torch.isfinite(t).all()]
    if bad:
        raise EvalError(f"{where}: {len(bad)} tensors hold NaN or inf (first: {bad[0]}): its run diverged before "
                        f"this save; evaluate an earlier checkpoint")


def find_tag_dir(folder: Path) -> Path:
    """`folder` itself when it is a complete checkpoint of train.py; else one line saying which folder to give."""
    if (folder / COMPLETE).is_file():
        return folder
    raise EvalError(not_a_checkpoint(folder, "--checkpoint", ", or an official-format file"))


def _load_ours(folder: Path, which: str):
    """(encoder, the run's own init) from a train.py tag folder: the target from our client state, the context
    encoder from DeepSpeed's fp32 master weights."""
    tag_dir = find_tag_dir(folder)
    path, client = saved_client(tag_dir, EvalError, "", "evaluate another checkpoint")
    cfg = saved_config(client, path, EvalError)
    torch.manual_seed(cfg.run.seed)
    _, random_target = build_jepa(cfg.model, cfg.data.crop_size)  # the run's own init: the random baseline is step 0
    encoder = copy.deepcopy(random_target)
    state = client["target_encoder"] if which == "target" else _context_state(tag_dir, encoder)
    load_strict(encoder, state, f"{path}[{which}_encoder]", against="the model of its saved config")
    return encoder.eval(), random_target.eval()


def _context_state(tag_dir: Path, encoder) -> dict:
    """The context encoder's fp32 weights, gathered by DeepSpeed's zero_to_fp32 from every rank's ZeRO partition."""
    full = zero_fp32_weights(tag_dir, EvalError, str(tag_dir),
                             f"the folder may be damaged: evaluate another checkpoint, or --encoder target (which "
                             f"needs only {STATES_GLOB})")
    prefix = "context_encoder."
    state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    state.setdefault("pos_embed", encoder.pos_embed.detach())  # frozen: not in DeepSpeed's fp32 copy
    return state


def check_device(name: str) -> None:
    """Refuses a device this machine does not have (eval.py and report.py's --device) before any work is done."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EvalError(f"--device {name}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise EvalError(f"--device {name}: the encoders run on cpu or cuda only")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise EvalError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise EvalError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
