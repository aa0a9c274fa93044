"""The report of a training run, in pictures: the masks on the run's own images, the loss and the schedules, the
throughput, the collapse diagnostics, the trained encoder's patch features beside its random init, the probe table.
PNGs and one index.html (no server, nothing fetched: open it in a browser).

    python report.py runs/demo/train [--val-shards runs/demo/shards-val] [--probe runs/demo/probe.json] [--out DIR]

RUN_DIR is train.py's run.out_dir, or one of its checkpoint folders (RUN_DIR/checkpoints/best: the feature picture
then shows that checkpoint's encoder instead of the newest). What the folder lacks (a step log, a checkpoint) leaves
its section out, saying why.
The report is written to RUN_DIR/report unless --out says otherwise (a RUN_DIR/report that is a link out of the run
folder is refused); a live run's folder can be reported on.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

import torch

from util.cli import HelpFormatter
from util.errors import UserError
from util.processes import exit_without_teardown


def image_count(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to 16")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="train.py's run.out_dir, or one of its checkpoints (e.g. checkpoints/best)")
    p.add_argument("--out", default=None, help="where the report goes (default RUN_DIR/report)")
    p.add_argument("--val-shards", default=None,
                   help="images of the feature picture (default: logging.probe_shards, else the training shards)")
    p.add_argument("--shards", default=None, help="the run's training shards, if data.shards no longer points there")
    p.add_argument("--probe", default=None, help="eval.py's --json file (default RUN_DIR/probe.json if present)")
    p.add_argument("--images", type=image_count, default=6, help="images in the mask and feature pictures, 1 to 16 "
                                                                 "(default 6)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the encoders run for the feature picture")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # torch's advice on a damaged file's pickle protocol; the file is then refused in one line of ours
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    args = parse_args(argv)
    from evaluation.encoders import check_device
    from reporting.report import write_report  # matplotlib and the models: after the arguments are checked

    start = time.perf_counter()
    try:
        check_device(args.device)
        report = write_report(args.run_dir, args.out, val_shards=args.val_shards, shards=args.shards,
                              probe=args.probe, count=args.images, device=args.device)
    except UserError as err:  # the user's folder, files or options: one line naming them and the fix
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    drawn = sum(1 for s in report.sections if s.note is None)
    print(f"report: {report.folder / 'index.html'} ({drawn} of {len(report.sections)} sections, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
