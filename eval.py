"""Frozen-encoder evaluation of a checkpoint, beside the same architecture at random init: kNN, linear, attentive
(V-JEPA) and low-shot (a few labels per class, 3 seeded subsets) top-1, in one table and, with --json, a file.

    python eval.py --checkpoint runs/demo/train/checkpoints/step00000500 --train-shards runs/demo/shards \\
                   --val-shards runs/demo/shards-val [--encoder target|context] [--pool avg|last4] [--low-shot 1%]

The linear, attentive and low-shot probes each train a grid of learning rates and weight decays at once, in one pass
over the frozen features; the best head of each grid on the val split is reported with its setting (as V-JEPA 2).

CHECKPOINT is a checkpoint folder written by train.py or a file in the official I-JEPA release format; either loads
with weights_only=True, so a file that would run code when unpickled is refused. The TARGET (EMA) encoder is evaluated
by default, as the paper does. The train and val shards must share one class list.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from evaluation import EvalError
from evaluation.encoders import check_device
from evaluation.report import evaluate, print_table
from evaluation.sweep import parse_low_shot
from pipeline.shards.manifest import scheme_problem
from util.cli import HelpFormatter, positive_int
from util.errors import UserError
from util.files import write_file_atomic
from util.processes import exit_without_teardown
from util.urls import redact, redact_logging

logger = logging.getLogger(__name__)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def low_shot_labels(text: str) -> str:
    try:
        parse_low_shot(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="train.py checkpoint folder, or an official-format file")
    p.add_argument("--train-shards", required=True, help="labeled shards the probes are fitted on")
    p.add_argument("--val-shards", required=True, help="labeled shards the probes are scored on")
    p.add_argument("--encoder", choices=("target", "context"), default="target", help="which encoder to probe")
    p.add_argument("--pool", choices=("avg", "last4"), default="avg",
                   help="features: the last block's tokens averaged, or the last 4 blocks' averages joined")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many images per split")
    p.add_argument("--epochs", type=positive_int, default=100, help="linear and low-shot probe epochs")
    p.add_argument("--attentive-epochs", type=positive_int, default=20, help="attentive-probe epochs")
    p.add_argument("--low-shot", type=low_shot_labels, default="1%",
                   help="labels per class of the low-shot probe: a percentage of each class (1%%) or a count (5)")
    p.add_argument("--cache-gb", type=positive_float, default=4.0,
                   help="hold the attentive probe's frozen tokens in memory up to this size, else recompute them")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def check_json_path(json_path: str, settings: dict) -> Path:
    """The --json file must be writable and must not be one of the inputs (good data is never overwritten)."""
    path = Path(json_path)
    if path.is_dir():
        raise EvalError(f"--json {path}: is a folder; give a file name, e.g. {path / 'probe.json'}")
    if not path.parent.is_dir():
        raise EvalError(f"--json {path}: its folder {path.parent} does not exist; create it first")
    for option in ("checkpoint", "train_shards", "val_shards"):
        source = Path(settings[option]).resolve()
        if path.resolve() == source or source in path.resolve().parents:
            raise EvalError(f"--json {path}: would overwrite the {option.replace('_', '-')} input {source}; "
                            f"write the figures elsewhere")
    return path


def write_json(path: Path, results: dict) -> None:
    """Written to a temporary file, then renamed: an interrupted write leaves no half file."""
    try:
        write_file_atomic(path, (json.dumps(results, indent=2) + "\n").encode())
    except OSError as err:
        raise EvalError(f"--json {path}: cannot be written ({err.strerror or err}); the figures are printed above") \
            from None


def run(settings: dict, json_path: str | None) -> None:
    for option in ("checkpoint", "train_shards", "val_shards"):
        if not settings[option].strip():  # Path("") is the current folder: say what was given instead
            raise EvalError(f"--{option.replace('_', '-')} is empty; give a path")
        if option != "checkpoint" and (problem := scheme_problem(settings[option])):
            raise EvalError(f"--{option.replace('_', '-')}: {problem}")
    check_device(settings["device"])
    path = check_json_path(json_path, settings) if json_path else None
    if Path(settings["train_shards"]).resolve() == Path(settings["val_shards"]).resolve():
        logger.warning("warning: --train-shards and --val-shards are the same folder: the probes are scored on the "
                       "images they were fitted on")
    results = evaluate(**settings)  # every other option is an argument of evaluate, by name
    print_table(results)
    if path:
        write_json(path, results)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    redact_logging()  # a password or signed URL given never reaches a log line, from any module
    # torch's advice on a damaged file's pickle protocol; the file is then refused in one line of ours
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    settings = vars(parse_args(argv))
    json_path = settings.pop("json")
    try:
        run(settings, json_path)
    except UserError as err:  # the user's checkpoint, shards or options: one line naming the file and the fix
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
