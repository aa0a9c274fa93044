"""Frozen-feature probes: weighted kNN and a linear head (its learning rate chosen on held-out train features), and
the kNN probe run during training.

Every figure is meant to be read beside the same architecture at random init, measured with the same code
(eval.py prints both): small runs can look barely better than random features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation.features import eval_images, extract_features
from pipeline import DataError


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN on cosine similarity (weights exp(sim / T)), as DINO evaluates; top-1 accuracy in [0, 1]."""
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1  # votes only: classes nobody votes for cost nothing
    k = min(k, len(train_x))
    correct = 0
    for xs, ys in zip(test_x.split(1024), test_y.split(1024)):
        sim, idx = (xs @ train_x.T).topk(k, dim=1)  # (n, k)
        votes = torch.zeros(len(xs), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == ys).sum().item()
    return correct / len(test_x)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, lr: float, epochs: int = 100, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0, num_classes: Optional[int] = None) -> nn.Module:
    """BatchNorm without affine + Linear (one output per class: `num_classes`, else as many as train_y needs),
    trained with AdamW on frozen features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = num_classes or int(train_y.max()) + 1
    head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    if len(train_x) < 2:
        return head.eval()  # BatchNorm needs two samples: an untrained head (a --limit of 1 or 2 images)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for idx in order.split(batch_size):
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return head.eval()


@torch.no_grad()
def accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (head(x).argmax(1) == y).float().mean().item()


def linear_accuracy(train_x, train_y, test_x, test_y, lrs=(1e-3, 1e-2, 1e-1), epochs: int = 100,
                    seed: int = 0) -> tuple[float, float]:
    """(test top-1, chosen lr): the lr is chosen on a held-out fifth of the TRAIN features, never on the test set."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1  # every head the same width, whatever its fit split
    order = torch.randperm(len(train_x), generator=gen)
    cut = max(1, len(order) // 5)
    hold, fit = order[:cut], order[cut:]
    scores = {lr: accuracy(linear_probe(train_x[fit], train_y[fit], lr, epochs, seed=seed, num_classes=num_classes),
                           train_x[hold], train_y[hold]) for lr in lrs}
    best = max(scores, key=scores.get)
    head = linear_probe(train_x, train_y, best, epochs, seed=seed, num_classes=num_classes)
    return accuracy(head, test_x, test_y), best


class TrainingProbe:
    """The kNN probe run during training on a small labeled held-out set: first half fits, second half scores."""

    def __init__(self, shards: str | Path, crop_size: int, limit: int = 2000):
        images, labels = eval_images(shards, crop_size, limit)
        half = len(labels) // 2
        if half < 1:
            raise DataError(f"{shards}: a training probe needs at least 2 labeled images, the folder has 1")
        self.fit, self.score = (images[:half], labels[:half]), (images[half:], labels[half:])

    def __call__(self, encoder, device) -> float:
        was_training = encoder.training
        fit_x = extract_features(encoder, self.fit[0], device=device)
        score_x = extract_features(encoder, self.score[0], device=device)
        encoder.train(was_training)
        return knn_accuracy(fit_x, self.fit[1], score_x, self.score[1])

