"""Checkpoint files read as data, never as code: torch.load with weights_only=True (tensors, plain values and the
classes a caller allows), every failure one CheckpointError line naming the file. Official checkpoints, our own and
DeepSpeed's files are all read through here; it imports torch alone, so DeepSpeed's converter process
(training/universal.py) starts without the model code.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch

from util.errors import UserError

# What torch.load raises for truncated or foreign bytes (found by cutting and flipping bytes of a real checkpoint)
DAMAGED_FILE_ERRORS = (OSError, EOFError, RuntimeError, ValueError, LookupError, TypeError, AttributeError,
                       ArithmeticError, MemoryError)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used (missing, incomplete, damaged, unsafe, not the expected layout, or written by
    a run a resume must not silently continue); the message is one line naming the folder or file, the part and
    key, and what is wrong."""


def safe_load(path: Path, map_location="cpu", allowed: Sequence[type] = (), mmap: bool = False):
    """torch.load of a file that may come from elsewhere: tensors, plain values and the `allowed` classes only
    (weights_only=True), never code. Every failure is one CheckpointError line naming the file. `mmap`: memory-mapped
    where torch can map it (torch.save's zip format; the legacy format is read whole), so that only the tensors used
    are read from disk."""
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "checkpoint not found"
        raise CheckpointError(f"{path}: {what} (give an official-format file or a checkpoint folder written by "
                                  f"train.py)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes): an interrupted copy or save? Use a "
                                  f"complete copy")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.simplefilter("ignore", UserWarning)
            with allowed_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True,
                                  mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:  # torch's message is pages long; the first line of its cause says why
        cause = first_line(err.__context__ or err)
        if cause.startswith("Unsupported operand"):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({cause}): damaged, or not written "
                                      f"by torch.save") from None
        found = re.search(r"GLOBAL (\S+)", cause)
        raise CheckpointError(f"{path}: holds objects other than tensors and plain values "
                                  f"({found.group(1) if found else cause}); not loaded, because unpickling them could "
                                  f"run code. Use a file saved from plain state dicts") from None
    except DAMAGED_FILE_ERRORS as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: "
                                  f"{first_line(err)}): damaged or truncated? Use a complete copy") from None


@contextmanager
def allowed_globals(allowed: Sequence[type]):
    """Adds `allowed` to torch's weights_only allow-list for the block, and on leaving removes only the classes it
    added: torch's own safe_globals removes them all, so a nested use would strip the outer block's classes."""
    added = [c for c in allowed if c not in torch.serialization.get_safe_globals()]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        kept = [c for c in torch.serialization.get_safe_globals() if c not in added]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(kept)


@contextmanager
def weights_only_loads(allowed: Sequence[type]):
    """Every torch.load inside unpickles with weights_only=True and `allowed`, DeepSpeed's own calls included (they
    pass weights_only=False; torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides that)."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with allowed_globals(allowed):
            yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def first_line(err: BaseException) -> str:
    """The gist of an exception's message: its first sentence, for a one-line error."""
    lines = str(err).strip().splitlines()
    return lines[0].split(". ")[0][:200] if lines else type(err).__name__  # torch adds sentences of advice
