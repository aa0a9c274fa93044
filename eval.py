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

import torch

from evaluation.report import evaluate, print_table

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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = vars(parse_args(argv))
    json_path = settings.pop("json")
    try:
        results = evaluate(**settings)  # every other option is an argument of evaluate, by name
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_table(results)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
