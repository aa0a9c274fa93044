"""The weighted kNN probe on frozen features, and the kNN probe run during training (the swept linear, low-shot and
attentive probes are in evaluation.sweep and evaluation.attentive).

Every figure is meant to be read beside the same architecture at random init, measured with the same code
(eval.py prints both): small runs can look barely better than random features.
"""
from __future__ import annotations

from pathlib import Path

import torch
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

