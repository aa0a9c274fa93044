"""A warm start: a fresh run's weights from an earlier one (checkpoint.init_from, train.py --init-from): an official
I-JEPA .pth.tar, one of our checkpoint tag folders or an export folder. The optimizer and schedules start at step 0
(or, with checkpoint.init_continue and an official file, at the epoch it records). docs/training.md, "Warm start".

    init = plan_init(cfg, saved)            # the run plan, before any process group: None, or what to load
    load_init(init, model, target)          # training.engine.build_engine, before DeepSpeed wraps the model
"""
from __future__ import annotations

from typing import Optional


def plan_init(cfg, saved) -> Optional[dict]:
    """What the run starts from: None when checkpoint.init_from is empty or the run resumes a checkpoint of its own
    (`saved`); else a dict recorded in run.json (source, kind, sha256 ...). Raises a UserError in one line for a
    file that cannot be a warm start."""
    if not cfg.checkpoint.init_from or saved is not None:
        return None
    raise NotImplementedError("checkpoint.init_from")


def load_init(init: Optional[dict], model, target) -> None:
    """Loads `init` (plan_init's) into the context encoder + predictor `model` and the `target` encoder."""
    if init is not None:
        raise NotImplementedError("checkpoint.init_from")
