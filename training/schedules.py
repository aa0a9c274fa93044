"""Learning rate, weight decay and EMA momentum as pure functions of the optimizer step (1-based), by the official
I-JEPA arithmetic (src/utils/schedulers.py, src/train.py), its order of operations included.

Any step is computed directly, so a resumed run needs only its step: no generator to replay. With ipe the optimizer
steps per epoch, `Schedules.official` gives the lengths (training.plan.schedule_steps calls it once per run):

    warmup_steps          int(warmup_epochs * ipe)         lr: linear warmup
    t_max                 int(ipe_scale * epochs * ipe)    lr and weight decay: cosine over t_max steps
    momentum_denominator  ipe * epochs * ipe_scale         a float, not truncated (5 * 3 * 1.25 = 18.75)
    train_steps           epochs * ipe                     the steps the official loop trains

ipe_scale only stretches the schedules' horizon; the run still trains epochs * ipe steps. The products are taken in
the official order because float multiplication is not associative: 1.15 * 10 * 10 = 115.0, 10 * 10 * 1.15 =
114.99999999999999.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedules:
    """A run's schedule lengths, in optimizer steps (module docstring)."""

    warmup_steps: int  # the lr's linear warmup
    t_max: int  # the lr's and weight decay's cosine length
    momentum_denominator: float  # the EMA momentum rises by (end - start) / momentum_denominator per step
    train_steps: int  # the steps the official loop trains

    @classmethod
    def official(cls, epochs: int, warmup_epochs: float, ipe_scale: float, steps_per_epoch: int) -> "Schedules":
        """The official src/train.py / init_opt arithmetic, each product in its order there."""
        ipe = steps_per_epoch
        return cls(warmup_steps=int(warmup_epochs * ipe), t_max=int(ipe_scale * epochs * ipe),
                   momentum_denominator=ipe * epochs * ipe_scale, train_steps=epochs * ipe)


def lr_at(step: int, warmup: int, t_max: int, start_lr: float, lr: float, final_lr: float) -> float:
    """Linear warmup start_lr → lr over `warmup` steps, then cosine lr → final_lr until `t_max` (the official
    WarmupCosineSchedule)."""
    if step < warmup:
        return start_lr + (step / warmup) * (lr - start_lr)
    progress = (step - warmup) / max(1, t_max - warmup)
    return max(final_lr, final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def wd_at(step: int, t_max: int, weight_decay: float, final_weight_decay: float) -> float:
    """Cosine-shaped from weight_decay to final_weight_decay over `t_max` steps (the official CosineWDSchedule; rises
    0.04 → 0.4 in the recipe)."""
    progress = step / t_max
    wd = final_weight_decay + (weight_decay - final_weight_decay) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(final_weight_decay, wd) if final_weight_decay <= weight_decay else min(final_weight_decay, wd)


def momentum_at(step: int, denominator: float, start: float, end: float) -> float:
    """EMA momentum used after optimizer step `step`: the official generator's value i = step − 1,
    start + i·(end − start)/denominator."""
    m = start + (step - 1) * (end - start) / denominator
    return min(m, end) if end >= start else max(m, end)  # held at `end` if training outlasts the schedule
