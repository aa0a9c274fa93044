"""A checkpoint judged as papers do, beside the same architecture at random init: the figures and their table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

from evaluation import EvalError
from evaluation.attentive import ATTENTIVE_GRID, Tokens, attentive_sweep, token_bytes
from evaluation.encoders import load_encoder
from evaluation.features import eval_images, extract_features, shard_classes
from evaluation.probes import knn_accuracy
from evaluation.sweep import LINEAR_GRID, linear_sweep, low_shot_sweep, parse_low_shot

LOW_SHOT_SEEDS = (0, 1, 2)


def evaluate(checkpoint: str | Path, train_shards: str | Path, val_shards: str | Path,
             encoder: Literal["target", "context"] = "target", pool: Literal["avg", "last4"] = "avg",
             limit: Optional[int] = None, epochs: int = 100, attentive_epochs: int = 20, low_shot: str = "1%",
             cache_gb: float = 4.0, device: str = "cpu") -> dict:
    """kNN, linear, attentive and low-shot top-1 of the checkpoint's encoder and of its random-init twin, fitted on
    the train shards and scored on the val shards; with the set-up under "setup".

    Args:
        epochs: the linear and low-shot probes' epochs; attentive_epochs: the attentive probe's.
        low_shot: labels per class of the low-shot probe: '1%' (of each class) or a count such as '5'.
        cache_gb: the attentive probe holds both splits' output tokens in memory up to this size, else the encoder
            recomputes them for every batch.
    Raises:
        util.errors.UserError (EvalError, pipeline.DataError, model.official.CheckpointError, config.ConfigError):
            one line naming the file or folder and what is wrong (checked in that order: the
            shard folders' manifests, the checkpoint, then the images).
    """
    per_class = parse_low_shot(low_shot)
    classes = same_classes(train_shards, val_shards)
    which = encoder
    encoder, random_init = load_encoder(checkpoint, which)
    crop = encoder.patch_embed.img_size[0]
    train_images, train_y = eval_images(train_shards, crop, limit)
    val_images, val_y = eval_images(val_shards, crop, limit)
    cache = token_bytes(encoder, len(train_y) + len(val_y)) <= cache_gb * 1e9
    results = {}
    for name, model in (("checkpoint", encoder), ("random init", random_init)):
        start = time.perf_counter()
        train, val = Tokens(model, train_images, device, cache), Tokens(model, val_images, device, cache)
        train_x, val_x = (pooled(model, tokens, pool, device) for tokens in (train, val))
        results[name] = {
            "knn": {"top1": knn_accuracy(train_x, train_y, val_x, val_y)},
            "linear": linear_sweep(train_x, train_y, val_x, val_y, epochs=epochs, num_classes=len(classes)).as_dict(),
            "attentive": attentive_sweep(train, train_y, val, val_y, model.num_heads, len(classes),
                                         epochs=attentive_epochs).as_dict(),
            "low_shot": low_shot_sweep(train_x, train_y, val_x, val_y, per_class, LOW_SHOT_SEEDS, len(classes),
                                       epochs=epochs),
            "seconds": time.perf_counter() - start}
    results["setup"] = {
        "checkpoint": str(checkpoint), "encoder": which, "pool": pool, "train_images": len(train_y),
        "val_images": len(val_y), "classes": len(classes), "linear_epochs": epochs, "linear_grid": len(LINEAR_GRID),
        "attentive_epochs": attentive_epochs, "attentive_grid": len(ATTENTIVE_GRID),
        "attentive_tokens": "cached" if cache else "recomputed every batch", "low_shot": low_shot,
        "low_shot_seeds": list(LOW_SHOT_SEEDS), "selection": "the best head of each grid on the val split"}
    return results


def pooled(model, tokens: Tokens, pool: Literal["avg", "last4"], device: str):
    """(N, D) features of the kNN, linear and low-shot probes: the average of the cached tokens when the attentive
    probe holds them (the same numbers, without a second pass of the encoder), else extract_features."""
    if pool == "avg" and tokens.cached is not None:
        return tokens.cached.mean(dim=1).cpu()
    return extract_features(model, tokens.images, pool, device=device)


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


COLUMNS = {"knn": "kNN", "linear": "linear", "attentive": "attentive"}  # JSON key → table heading


def setup_line(results: dict) -> str:
    """What the probes were run on, in one line (eval.py's table and report.py's caption)."""
    s = results["setup"]
    return (f"{s['encoder']} encoder, {s['pool']} pool, {s['train_images']} train / {s['val_images']} val images, "
            f"{s['classes']} classes (chance {100 / s['classes']:.1f}%); linear, attentive and low-shot: "
            f"{s['selection']}")


def table_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(name, cells) of the checkpoint, its random init and the margin: kNN, linear and attentive top-1, then the
    low-shot mean ± std (eval.py's table and report.py's)."""
    rows = []
    for name in ("checkpoint", "random init"):
        r = results[name]
        cells = [f"{100 * r[key]['top1']:.1f}%" for key in COLUMNS]
        cells.append(f"{100 * r['low_shot']['mean']:.1f} ± {100 * r['low_shot']['std']:.1f}%")
        rows.append((name, cells))
    ours, theirs = results["checkpoint"], results["random init"]
    gains = [100 * (ours[key]["top1"] - theirs[key]["top1"]) for key in COLUMNS]
    gains.append(100 * (ours["low_shot"]["mean"] - theirs["low_shot"]["mean"]))
    rows.append(("margin", [f"{g:+.1f}%" for g in gains]))
    return rows


def print_table(results: dict) -> None:
    s = results["setup"]
    print(f"probe: {setup_line(results)}")
    shots = f"low-shot {s['low_shot']}"
    print(f"{'encoder':<14}" + "".join(f"{c + ' top-1':>17}" for c in COLUMNS.values()) + f"{shots + ' top-1':>22}")
    for name, cells in table_rows(results):
        print(f"{name:<14}" + "".join(f"{cell:>17}" for cell in cells[:3]) + f"{cells[3]:>22}")
    for name in ("checkpoint", "random init"):
        r = results[name]
        print(f"{name}: linear best of {s['linear_grid']} at {_setting(r['linear'])}; attentive best of "
              f"{s['attentive_grid']} at {_setting(r['attentive'])}; low-shot seeds {s['low_shot_seeds']}: "
              + ", ".join(f"{100 * run['top1']:.1f}% ({run['labels']} labels)" for run in r["low_shot"]["runs"]))


def _setting(probe: dict) -> str:
    return f"lr {probe['lr']:g}, wd {probe['weight_decay']:g}"
