"""What a checkpoint holds besides DeepSpeed's own states, and how every file of one is read: unpickled with
weights_only=True (tensors, plain values and DeepSpeed's few data classes), so that a file planted in a checkpoint
folder cannot run code; each rank's RNG states in types that load that way."""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml

from model.safe_load import DAMAGED_FILE_ERRORS, CheckpointError, first_line, safe_load, weights_only_loads

STATES_GLOB = "*mp_rank_00_model_states.pt"  # ZeRO-3 names it zero_pp_rank_0_mp_rank_00_model_states.pt


def load_states_file(path: str | Path, map_location="cpu", allowed: Sequence[type] = (), mmap: bool = False) -> dict:
    """A torch checkpoint file as a dict, unpickled with weights_only=True (model.safe_load.safe_load): tensors, plain
    values and the `allowed` classes only; memory-mapped with `mmap`. Raises CheckpointError naming the file."""
    state = safe_load(Path(path), map_location, allowed, mmap)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not the dict of states a checkpoint holds")
    return state


def saved_client(tag_dir: Path, error: type[CheckpointError], where: str, todo: str,
                 mmap: bool = False) -> tuple[Path, dict]:
    """(its file, the client state) that train.py saved with checkpoint `tag_dir`: the first model states file, which
    holds the target encoder and the config as YAML text (memory-mapped with `mmap`: only what is used is read). When
    the folder has no such file or the state is not train.py's: an `error` of one line after `where`; `todo` says
    what to do for a folder without the file."""
    files = sorted(tag_dir.glob(STATES_GLOB))
    if not files:
        raise error(f"{where}{tag_dir} holds no DeepSpeed model states ({STATES_GLOB}): a damaged folder, or not a "
                    f"checkpoint of train.py; {todo}")
    client = load_states_file(files[0], mmap=mmap)
    if not isinstance(client.get("config"), str) or "target_encoder" not in client:
        raise error(f"{where}{files[0]} holds no saved config and target encoder: not written by this project's "
                    f"train.py")
    return files[0], client


def saved_config(client: dict, path: Path, error: type[CheckpointError], where: str = ""):
    """The config.Config in a checkpoint's client state (saved_client's; `path`: its file). An `error` of one line
    after `where` when the text is not a YAML mapping; config.ConfigError when the mapping is not a config."""
    from config import config_from_dict  # here: the universal converter's process imports this module, not config

    try:
        raw = yaml.safe_load(client["config"])
    except yaml.YAMLError as err:
        raise error(f"{where}{path}: its saved config is not valid YAML ({first_line(err)})") from None
    if not isinstance(raw, dict):
        raise error(f"{where}{path}: its saved config is a {type(raw).__name__}, not a mapping of sections")
    return config_from_dict(raw, f"{path} (saved config)")


def deepspeed_safe_types() -> list[type]:
    """The classes of DeepSpeed's own that its ZeRO optimizer states pickle (found with
    torch.serialization.get_unsafe_globals_in_checkpoint); plain data holders, safe to rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def zero_fp32_weights(tag_dir: Path, error: type[CheckpointError], where: str, todo: str) -> dict:
    """DeepSpeed's fp32 master weights of checkpoint `tag_dir` ({name: tensor} of the engine's module), gathered by
    its zero_to_fp32 from every rank's ZeRO partition, every file read weights-only. A failure is an `error` of one
    line: `where` (what names the folder), why, and for damaged files `todo`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with weights_only_loads(deepspeed_safe_types()):
            return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except pickle.UnpicklingError as err:  # torch's message is pages long; the first line of its cause says why
        raise error(f"{where}: its ZeRO states hold objects other than tensors and plain values "
                    f"({first_line(err.__context__ or err)}); not loaded, because unpickling them could run code") \
            from None
    except DAMAGED_FILE_ERRORS as err:  # raised inside DeepSpeed's reader, about the folder's files
        raise error(f"{where}: DeepSpeed cannot rebuild the fp32 weights from its ZeRO states ({type(err).__name__}: "
                    f"{first_line(err)}); {todo}") from None


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
