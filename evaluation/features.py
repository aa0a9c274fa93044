"""Frozen features of a labeled shard folder: the eval transform (short side to S/0.875, centre crop), then the
encoder's average-pooled output tokens, or the concatenated pools of its last 4 blocks."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import center_crop, resize

from pipeline.shards import list_shards, read_samples, read_span
from pipeline.source import imagenet_stats


def eval_images(shards: str | Path, crop_size: int, limit: Optional[int] = None):
    """(images uint8 (N, 3, S, S), labels (N,)) from a shard folder: resize the short side to S/0.875, center crop."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import center_crop, resize

    refs = [ref for refs in read_samples(list_shards(shards)) for ref in refs][:limit]
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
    encoder = encoder.to(device).eval()
    mean, std = imagenet_stats(device)
    feats = []
    for chunk in images.split(batch_size):
        x = (chunk.to(device).float() - mean) / std
        if pool == "avg":
            feats.append(encoder(x).mean(dim=1).float().cpu())
            continue
        last4 = encoder.forward_intermediates(x, indices=4, norm=True, intermediates_only=True)  # 4 × (B, N, D)
        feats.append(torch.cat([t.mean(dim=1) for t in last4], dim=1).float().cpu())
    return torch.cat(feats)
