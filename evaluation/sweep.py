"""Probe heads trained as a grid of settings at once, as V-JEPA 2 trains its probes: every head sees the same batches
in one pass over the frozen features, each with its own learning rate and weight decay (one AdamW, one parameter group
per head). Probe settings move results by points, so no single setting is trusted: the best head on the validation
split is reported with its setting, and every head's figure is kept.

The linear probe (BatchNorm without affine + Linear) and the low-shot probe (the linear probe on a few labels per
class, over seeded subsets) live here; the attentive probe's head is in evaluation.attentive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Batch = Callable[[torch.Tensor], torch.Tensor]  # sample indices (B,) → the heads' input for them, on their device


@dataclass(frozen=True)
class Setting:
    lr: float
    weight_decay: float

    def __str__(self) -> str:
        return f"lr {self.lr:g}, wd {self.weight_decay:g}"


def settings_grid(lrs: Sequence[float], weight_decays: Sequence[float]) -> list[Setting]:
    return [Setting(lr, wd) for lr in lrs for wd in weight_decays]


# The linear probe's grid: its regularisation (weight decay) swept at three learning rates
LINEAR_GRID = settings_grid((1e-3, 1e-2, 1e-1), (0.0, 1e-3, 1e-2, 1e-1))


@dataclass(frozen=True)
class SweepResult:
    top1: float  # the best head's top-1 on the validation split
    setting: Setting  # that head's setting
    grid: tuple[tuple[Setting, float], ...]  # every head's setting and top-1, in grid order

    def as_dict(self) -> dict:
        return {"top1": self.top1, "lr": self.setting.lr, "weight_decay": self.setting.weight_decay,
                "grid": [{"lr": s.lr, "weight_decay": s.weight_decay, "top1": top1} for s, top1 in self.grid]}


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The factor on each head's learning rate at a step: linear warm-up from 0, then cosine to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Heads(nn.Module):
    """`count` probe heads over one input: forward gives every head's logits (G, B, classes); head_parameters()
    lists each head's parameters, in the order of the settings they train with."""

    def __init__(self, heads: Sequence[nn.Module], shared: nn.Module | None = None):
        super().__init__()
        self.shared = shared or nn.Identity()  # computed once for all heads (parameter-free)
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(x)
        return torch.stack([head(x) for head in self.heads])  # (G, B, classes)

    def head_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]


def linear_heads(dim: int, num_classes: int, count: int) -> Heads:
    """`count` linear probes: BatchNorm without affine (features at one scale for every lr; parameter-free, so
    computed once for all), then a Linear each."""
    return Heads([nn.Linear(dim, num_classes) for _ in range(count)], nn.BatchNorm1d(dim, affine=False))


def train_heads(heads: Heads, settings: Sequence[Setting], batch: Batch, labels: torch.Tensor, epochs: int,
                batch_size: int, seed: int = 0, warmup_epochs: float = 0.0) -> None:
    """Trains every head on the same shuffled batches, each with its setting; the heads' mean losses are summed into
    one backward (their parameters are disjoint, so each head gets exactly its own gradient).

    Args:
        batch: the heads' shared input for a batch of sample indices (frozen features, fetched or computed once).
        labels: (N,) class of each sample, on the heads' device.
    """
    if len(labels) < 2:
        return  # BatchNorm needs two samples: untrained heads (a --limit of 1 image)
    gen = torch.Generator().manual_seed(seed)
    groups = [{"params": params, "lr": s.lr, "weight_decay": s.weight_decay}
              for params, s in zip(heads.head_parameters(), settings, strict=True)]
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)))
    heads.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            logits, y = heads(batch(idx)), labels[idx.to(labels.device)]  # (G, B, classes), (B,)
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="sum") / len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    heads.eval()


@torch.no_grad()
def head_accuracies(heads: Heads, batch: Batch, labels: torch.Tensor, batch_size: int = 256) -> list[float]:
    """Each head's top-1 in [0, 1] on the samples batch() gives."""
    heads.eval()
    correct = torch.zeros(len(heads.heads), dtype=torch.long, device=labels.device)
    for idx in torch.arange(len(labels)).split(batch_size):
        correct += (heads(batch(idx)).argmax(-1) == labels[idx.to(labels.device)]).sum(dim=1)
    return (correct.float() / len(labels)).tolist()


def best_of(settings: Sequence[Setting], accuracies: Sequence[float]) -> SweepResult:
    """The best head (the first of equals, in grid order) with its setting, and the whole grid."""
    best = max(range(len(settings)), key=lambda i: (accuracies[i], -i))
    return SweepResult(accuracies[best], settings[best], tuple(zip(settings, accuracies)))


def linear_sweep(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 settings: Sequence[Setting] = LINEAR_GRID, epochs: int = 100, batch_size: int = 256, seed: int = 0,
                 num_classes: int | None = None) -> SweepResult:
    """A linear probe per setting, all trained in one pass over the frozen features (N, D); the best on val.

    Args:
        num_classes: the heads' width; by default as many classes as the labels of both splits name.
    """
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    torch.manual_seed(seed)
    heads = linear_heads(train_x.shape[1], num_classes, len(settings)).to(train_x.device)
    train_heads(heads, settings, lambda idx: train_x[idx], train_y, epochs, batch_size, seed)
    return best_of(settings, head_accuracies(heads, lambda idx: val_x[idx], val_y))


def parse_low_shot(text: str) -> float | int:
    """'1%' → the fraction 0.01 of each class's labels; '5' → 5 labels per class."""
    value = text.strip()
    try:
        if value.endswith("%"):
            fraction = float(value[:-1]) / 100
            if 0 < fraction <= 1:
                return fraction
        elif int(value) >= 1:
            return int(value)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is neither a percentage in (0%, 100%] (e.g. 1%) nor a count of labels per class of "
                     f"at least 1 (e.g. 5)")


def low_shot_subset(labels: torch.Tensor, per_class: float | int, seed: int) -> torch.Tensor:
    """Sample indices with `per_class` labels of every class (a fraction: of that class's count, at least 1), drawn
    by `seed`; a class with fewer labels gives them all."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        want = max(1, round(per_class * len(members))) if isinstance(per_class, float) else per_class
        chosen.append(members[torch.randperm(len(members), generator=gen)[:want]])
    return torch.cat(chosen).sort().values


def low_shot_sweep(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             per_class: float | int, seeds: Sequence[int] = (0, 1, 2), num_classes: int | None = None,
             **sweep) -> dict:
    """The linear sweep fitted on a few labels per class, once per seeded subset, scored on all of val: the best
    head's top-1 of each subset, their mean and standard deviation (over the seeds)."""
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    runs = []
    for seed in seeds:
        idx = low_shot_subset(train_y.cpu(), per_class, seed).to(train_y.device)
        result = linear_sweep(train_x[idx], train_y[idx], val_x, val_y, seed=seed, num_classes=num_classes, **sweep)
        runs.append({"seed": seed, "labels": len(idx), "top1": result.top1, "lr": result.setting.lr,
                     "weight_decay": result.setting.weight_decay})
    top1 = torch.tensor([r["top1"] for r in runs])
    return {"per_class": per_class, "mean": top1.mean().item(),
            "std": top1.std().item() if len(runs) > 1 else 0.0, "runs": runs}
