"""Frozen-encoder evaluation of a checkpoint: kNN and linear probe top-1, beside the same architecture at random init.

    python eval.py --checkpoint runs/demo/train/checkpoints/step00000500 --train-shards runs/demo/shards \\
                   --val-shards runs/demo/shards-val [--encoder target|context] [--pool avg|last4]

CHECKPOINT is a checkpoint folder written by train.py or a file in the official I-JEPA release format. The TARGET
(EMA) encoder is evaluated by default, as the paper does.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch

from probe import eval_images, extract_features, knn_accuracy, linear_accuracy, load_encoder

logger = logging.getLogger("eval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="train.py checkpoint folder, or an official-format file")
    p.add_argument("--train-shards", required=True, help="labeled shards the probes are fitted on")
    p.add_argument("--val-shards", required=True, help="labeled shards the probes are scored on")
    p.add_argument("--encoder", choices=("target", "context"), default="target")
    p.add_argument("--pool", choices=("avg", "last4"), default="avg")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images per split")
    p.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def evaluate(args) -> dict:
    encoder, random_init = load_encoder(args.checkpoint, args.encoder)
    crop = encoder.patch_embed.img_size[0]
    train_images, train_y = eval_images(args.train_shards, crop, args.limit)
    val_images, val_y = eval_images(args.val_shards, crop, args.limit)
    results = {}
    for name, model in (("checkpoint", encoder), ("random init", random_init)):
        start = time.perf_counter()
        train_x = extract_features(model, train_images, args.pool, device=args.device)
        val_x = extract_features(model, val_images, args.pool, device=args.device)
        knn = knn_accuracy(train_x, train_y, val_x, val_y)
        linear, lr = linear_accuracy(train_x, train_y, val_x, val_y, epochs=args.epochs)
        results[name] = {"knn_top1": knn, "linear_top1": linear, "linear_lr": lr,
                         "seconds": time.perf_counter() - start}
    results["setup"] = {"checkpoint": str(args.checkpoint), "encoder": args.encoder, "pool": args.pool,
                        "train_images": len(train_y), "val_images": len(val_y), "classes": int(train_y.max()) + 1}
    return results


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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    try:
        results = evaluate(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
