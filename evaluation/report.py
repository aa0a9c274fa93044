"""A checkpoint judged as papers do, beside the same architecture at random init: the figures and their table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

from evaluation import EvalError
from evaluation.encoders import load_encoder
from evaluation.features import eval_images, extract_features, shard_classes
from evaluation.probes import knn_accuracy, linear_accuracy


def evaluate(checkpoint: str | Path, train_shards: str | Path, val_shards: str | Path,
             encoder: Literal["target", "context"] = "target", pool: Literal["avg", "last4"] = "avg",
             limit: Optional[int] = None, epochs: int = 100, device: str = "cpu") -> dict:
    """kNN and linear-probe top-1 of the checkpoint's encoder and of its random-init twin, fitted on the train shards
    and scored on the val shards; with the set-up under "setup".

    Raises:
        EvalError, pipeline.DataError, model.official.CheckpointFileError, training.checkpoints.CheckpointError,
            config.ConfigError: one line naming the file or folder and what is wrong (checked in that order: the
            shard folders' manifests, the checkpoint, then the images).
    """
    classes = same_classes(train_shards, val_shards)
    which = encoder
    encoder, random_init = load_encoder(checkpoint, which)
    crop = encoder.patch_embed.img_size[0]
    train_images, train_y = eval_images(train_shards, crop, limit)
    val_images, val_y = eval_images(val_shards, crop, limit)
    results = {}
    for name, model in (("checkpoint", encoder), ("random init", random_init)):
        start = time.perf_counter()
        train_x = extract_features(model, train_images, pool, device=device)
        val_x = extract_features(model, val_images, pool, device=device)
        knn = knn_accuracy(train_x, train_y, val_x, val_y)
        linear, lr = linear_accuracy(train_x, train_y, val_x, val_y, epochs=epochs)
        results[name] = {"knn_top1": knn, "linear_top1": linear, "linear_lr": lr,
                         "seconds": time.perf_counter() - start}
    results["setup"] = {"checkpoint": str(checkpoint), "encoder": which, "pool": pool,
                        "train_images": len(train_y), "val_images": len(val_y), "classes": len(classes)}
    return results


def same_classes(train_shards: str | Path, val_shards: str | Path) -> list[str]:
    """The class list both folders share: label i must name the same class in both, else the figures mean nothing."""
    train, val = shard_classes(train_shards), shard_classes(val_shards)
    if train == val:
        return train
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        what = f"only in train: {_some(only_train)}; only in val: {_some(only_val)}"
    else:  # the same names, ordered (or repeated) differently
        first = next((i for i, (a, b) in enumerate(zip(train, val)) if a != b), min(len(train), len(val)))
        at = [repr(names[first]) if first < len(names) else "nothing" for names in (train, val)]
        what = f"the same names in another order (label {first} is {at[0]} in train, {at[1]} in val)"
    raise EvalError(f"the class lists of the train shards {train_shards} ({len(train)} classes) and the val shards "
                    f"{val_shards} ({len(val)} classes) differ: {what}; label i must be the same class in both: shard "
                    f"both splits from folders with the same class folders")


def _some(names: list[str], limit: int = 3) -> str:
    return "none" if not names else ", ".join(map(repr, names[:limit])) + (f" and {len(names) - limit} more"
                                                                           if len(names) > limit else "")


def print_table(results: dict) -> None:
    s = results["setup"]
    print(f"probe: {s['encoder']} encoder, {s['pool']} pool, {s['train_images']} train / {s['val_images']} val "
          f"images, {s['classes']} classes (chance {100 / s['classes']:.1f}%)")
    print(f"{'encoder':<14}{'kNN top-1':>11}{'linear top-1':>14}")
    for name in ("checkpoint", "random init"):
        r = results[name]
        print(f"{name:<14}{100 * r['knn_top1']:>10.1f}%{100 * r['linear_top1']:>13.1f}%")
    gain = [100 * (results["checkpoint"][k] - results["random init"][k]) for k in ("knn_top1", "linear_top1")]
    print(f"{'margin':<14}{gain[0]:>+10.1f}%{gain[1]:>+13.1f}%")
