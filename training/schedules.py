"""Learning rate, weight decay and EMA momentum as pure functions of the optimizer step (1-based), as the spec says.

Any step is computed directly, so a resumed run needs only its step: no generator to replay.
`warmup` and `total` are in steps (config.derived.schedule_steps gives them: warmup_epochs·ipe and epochs·ipe·ipe_scale).
"""
from __future__ import annotations

import math


def lr_at(step: int, warmup: int, total: int, start_lr: float, lr: float, final_lr: float) -> float:
    """Linear warmup start_lr → lr over `warmup` steps, then cosine lr → final_lr until `total` (official formula)."""
    if step < warmup:
        return start_lr + (step / warmup) * (lr - start_lr)
    progress = (step - warmup) / max(1, total - warmup)
    return max(final_lr, final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def wd_at(step: int, total: int, weight_decay: float, final_weight_decay: float) -> float:
    """Cosine-shaped from weight_decay to final_weight_decay over `total` steps (rises 0.04 → 0.4 in the recipe)."""
    progress = step / total
    wd = final_weight_decay + (weight_decay - final_weight_decay) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(final_weight_decay, wd) if final_weight_decay <= weight_decay else min(final_weight_decay, wd)


def momentum_at(step: int, total: int, start: float, end: float) -> float:
    """EMA momentum used after optimizer step `step`: m_i = start + i·(end − start)/total with i = step − 1."""
    m = start + (step - 1) * (end - start) / total
    return min(m, end) if end >= start else max(m, end)  # held at `end` if training outlasts the schedule
