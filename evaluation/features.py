"""Frozen features of a labeled shard folder: the eval transform (short side to S/0.875, centre crop), then the
encoder's average-pooled output tokens, or the concatenated pools of its last 4 blocks."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch

from model.inputs import imagenet_stats
from pipeline import DataError
from pipeline.loading.eval_view import REBUILD, eval_view
from pipeline.shards.format import SampleRef, read_samples, read_span
from pipeline.shards.manifest import Manifest, list_shards, read_manifest

def shard_classes(shards: str | Path, manifest: Optional[Manifest] = None) -> list[str]:
    """The class names of a labeled shard folder, in label order (label i is classes[i]), from its manifest.

    Raises:
        DataError: the folder is not a complete shard folder, or it was written without labels.
    """
    classes = (manifest or read_manifest(shards)).classes
    if classes is None:
        raise DataError(f"{shards}: unlabeled shards (written with --labels none) cannot be used for a probe; shard "
                        f"the class folders with labels")
    return classes


def eval_images(shards: str | Path, crop_size: int, limit: Optional[int] = None):
    """(images uint8 (N, 3, S, S), labels (N,)) from a shard folder: resize the short side to S/0.875, center crop.

    Raises:
        DataError: naming the folder, or the shard and sample, when the images or labels cannot be read.
    """
    manifest = read_manifest(shards)
    num_classes = len(shard_classes(shards, manifest))
    images, labels, _ = _read(shards, manifest, crop_size, limit, num_classes)
    return images, torch.tensor(labels)


def first_images(shards: str | Path, crop_size: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """(images uint8 (N ≤ count, 3, S, S), their sample keys): the first `count` samples of a shard folder, labeled
    or not, through the eval transform (shard_dataset.py's seeded shuffle makes them a random draw)."""
    images, _, keys = _read(shards, read_manifest(shards), crop_size, count, None)
    return images, keys


def _read(shards: str | Path, manifest: Manifest, crop_size: int, limit: Optional[int], num_classes: Optional[int]):
    """(images (N, 3, S, S), labels (when num_classes is given, else []), keys) of the first `limit` samples."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 image, got {limit}")
    refs = [ref for refs in read_samples(list_shards(shards, manifest)) for ref in refs][:limit]
    if not refs:
        raise DataError(f"{shards}: holds no images (its manifest lists no samples); shard a non-empty folder")
    images, labels, files = [], [], {}
    try:
        for ref in refs:
            images.append(eval_view(ref, read_span(ref.shard, ref.jpg, files), crop_size))
            if num_classes is not None:
                labels.append(_label(ref, files, num_classes))
    except OSError as err:  # a shard shorter than its index says (read_span names it)
        raise DataError(f"{err}; {REBUILD}") from None
    finally:
        for f in files.values():
            f.close()
    return torch.stack(images), labels, [ref.key for ref in refs]


def _label(ref: SampleRef, files: dict, num_classes: int) -> int:
    text = "" if ref.cls is None else read_span(ref.shard, ref.cls, files).decode("ascii", errors="replace").strip()
    if not text.isdigit() or int(text) >= num_classes:
        raise DataError(f"{ref.shard}: sample {ref.key}: class {text[:20]!r} is not a label of the manifest's "
                        f"{num_classes} classes; {REBUILD}")
    return int(text)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) → float, normalised with the ImageNet statistics the encoder was trained with."""
    mean, std = imagenet_stats(images.device)
    return (images.float() - mean) / std


@torch.no_grad()
def extract_features(encoder, images: torch.Tensor, pool: Literal["avg", "last4"] = "avg", batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, D) average-pooled output tokens, or (N, 4·D) the concatenated average pools of the last 4 blocks (each
    through the final LayerNorm)."""
    encoder = encoder.to(device).eval()
    feats = []
    for chunk in images.split(batch_size):
        x = normalize(chunk.to(device))
        if pool == "avg":
            feats.append(encoder(x).mean(dim=1).float().cpu())
            continue
        last4 = encoder.forward_intermediates(x, indices=4, norm=True, intermediates_only=True)  # 4 × (B, N, D)
        feats.append(torch.cat([t.mean(dim=1) for t in last4], dim=1).float().cpu())
    return torch.cat(feats)
