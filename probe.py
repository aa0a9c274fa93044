"""Frozen-encoder evaluation: features from shards (eval transform), kNN and linear probes, encoders from checkpoints.

Every figure is meant to be read beside the same architecture at random init, measured with the same code
(eval.py prints both): small runs can look barely better than random features.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- features

def eval_images(shards: str | Path, crop_size: int, limit: Optional[int] = None):
    """(images uint8 (N, 3, S, S), labels (N,)) from a shard folder: resize the short side to S/0.875, center crop."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import center_crop, resize

    from pipeline.shards import list_shards
    from pipeline.torch_loader import index_samples, read_span

    refs = index_samples(list_shards(shards))[:limit]
    if any(r.cls is None for r in refs):
        raise ValueError(f"{shards}: unlabeled shards (written with --labels none) cannot be used for a probe")
    images, labels, files = [], [], {}
    for ref in refs:
        jpg = torch.frombuffer(bytearray(read_span(ref.shard, ref.jpg, files)), dtype=torch.uint8)
        image = resize(decode_jpeg(jpg, mode=ImageReadMode.RGB), [round(crop_size / 0.875)], antialias=True)
        images.append(center_crop(image, [crop_size, crop_size]))
        labels.append(int(read_span(ref.shard, ref.cls, files)))
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def extract_features(encoder, images: torch.Tensor, pool: Literal["avg", "last4"] = "avg", batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, D) average-pooled output tokens, or (N, 4·D) the concatenated average pools of the last 4 blocks (each
    through the final LayerNorm)."""
    from pipeline.loader import imagenet_stats

    encoder = encoder.to(device).eval()
    mean, std = imagenet_stats(device)
    feats = []
    for chunk in images.split(batch_size):
        x = (chunk.to(device).float() - mean) / std
        if pool == "avg":
            feats.append(encoder(x).mean(dim=1).float().cpu())
            continue
        tokens = encoder.patch_embed(x) + encoder.pos_embed
        outs = []
        for blk in encoder.blocks:
            tokens = blk(tokens)
            outs.append(tokens)
        feats.append(torch.cat([encoder.norm(t).mean(dim=1) for t in outs[-4:]], dim=1).float().cpu())
    return torch.cat(feats)


# ---------------------------------------------------------------------------------------------------------- probes

def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN on cosine similarity (weights exp(sim / T)), as DINO evaluates; top-1 accuracy in [0, 1]."""
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    correct = 0
    for xs, ys in zip(test_x.split(1024), test_y.split(1024)):
        sim, idx = (xs @ train_x.T).topk(k, dim=1)  # (n, k)
        votes = torch.zeros(len(xs), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == ys).sum().item()
    return correct / len(test_x)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, lr: float, epochs: int = 100, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0) -> nn.Module:
    """BatchNorm without affine + Linear, trained with AdamW on frozen features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = int(train_y.max()) + 1
    head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
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
    order = torch.randperm(len(train_x), generator=gen)
    cut = max(1, len(order) // 5)
    hold, fit = order[:cut], order[cut:]
    scores = {lr: accuracy(linear_probe(train_x[fit], train_y[fit], lr, epochs, seed=seed), train_x[hold],
                           train_y[hold]) for lr in lrs}
    best = max(scores, key=scores.get)
    head = linear_probe(train_x, train_y, best, epochs, seed=seed)
    return accuracy(head, test_x, test_y), best


class TrainingProbe:
    """The kNN probe run during training on a small labeled held-out set: first half fits, second half scores."""

    def __init__(self, shards: str | Path, crop_size: int, limit: int = 2000):
        images, labels = eval_images(shards, crop_size, limit)
        half = len(labels) // 2
        if half < 1:
            raise ValueError(f"{shards}: a training probe needs at least 2 labeled images")
        self.fit, self.score = (images[:half], labels[:half]), (images[half:], labels[half:])

    def __call__(self, encoder, device) -> float:
        was_training = encoder.training
        fit_x = extract_features(encoder, self.fit[0], device=device)
        score_x = extract_features(encoder, self.score[0], device=device)
        encoder.train(was_training)
        return knn_accuracy(fit_x, self.fit[1], score_x, self.score[1])


# -------------------------------------------------------------------------------------------------------- encoders

def load_encoder(checkpoint: str | Path, which: Literal["target", "context"] = "target"):
    """(encoder, random-init encoder of the same architecture) from this project's checkpoint folder (a DeepSpeed
    tag folder written by train.py) or an official-format file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return _load_ours(checkpoint, which)
    from model.official import load_encoder_for_eval
    from model.vit import init_weights

    encoder = load_encoder_for_eval(checkpoint, which=which)
    random_init = copy.deepcopy(encoder)
    torch.manual_seed(0)
    random_init.apply(init_weights)  # official init; the fixed positions stay as they are
    return encoder, random_init.eval()


def _load_ours(tag_dir: Path, which: str):
    from checkpoints import COMPLETE
    from config import config_from_dict
    import yaml

    from model.jepa import build_jepa

    if not (tag_dir / COMPLETE).is_file():
        raise FileNotFoundError(f"{tag_dir}: not a complete checkpoint of train.py (no {COMPLETE} marker)")
    states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed model states (*mp_rank_00_model_states.pt) in it")
    client = torch.load(states[0], map_location="cpu", weights_only=False)
    cfg = config_from_dict(yaml.safe_load(client["config"]), f"{tag_dir} (saved config)")
    torch.manual_seed(cfg.run.seed)
    _, random_target = build_jepa(cfg)  # the run's own init: the random baseline is its step 0
    encoder = copy.deepcopy(random_target)
    if which == "target":
        encoder.load_state_dict(client["target_encoder"])
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        prefix = "context_encoder."
        state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        state.setdefault("pos_embed", encoder.pos_embed.detach())  # frozen: not in DeepSpeed's fp32 copy
        encoder.load_state_dict(state)
    return encoder.eval(), random_target.eval()
