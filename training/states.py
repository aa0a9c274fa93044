"""What a checkpoint holds besides DeepSpeed's own states, and how every file of one is read: unpickled with
weights_only=True (tensors, plain values and DeepSpeed's few data classes), so that a file planted in a checkpoint
folder cannot run code; each rank's RNG states in types that load that way."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.safe_load import CheckpointError, safe_load


def load_states_file(path: str | Path, map_location="cpu", allowed: Sequence[type] = ()) -> dict:
    """A torch checkpoint file as a dict, unpickled with weights_only=True (model.safe_load.safe_load): tensors, plain
    values and the `allowed` classes only. Raises CheckpointError naming the file."""
    state = safe_load(Path(path), map_location, allowed)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not the dict of states a checkpoint holds")
    return state


def deepspeed_safe_types() -> list[type]:
    """The classes of DeepSpeed's own that its ZeRO optimizer states pickle (found with
    torch.serialization.get_unsafe_globals_in_checkpoint); plain data holders, safe to rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def rng_state() -> dict:
    """This process's RNG states in types that load with weights_only=True (numpy's key array as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
