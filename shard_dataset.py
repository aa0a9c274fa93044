"""Turns an ImageNet-style image folder into WebDataset shards with DALI index files and a manifest.

    python shard_dataset.py SRC DEST [--shard-size 1GB] [--workers N] [--seed 0] [--verify full|header]
                            [--max-size N] [--quality 90] [--labels folders|none] [--json] [--strict] [--overwrite]
                            [--upload URL [--upload-timeout-s 300]]

SRC holds one sub-folder per class (class index = position in the sorted folder names, as torchvision's ImageFolder),
images found recursively inside; or any image files with --labels none. DEST receives <prefix>-000000.tar, its DALI
index <prefix>-000000.idx, ... and manifest.json (the format: pipeline/shards/). Bad inputs are skipped and listed
in the manifest with the reason (damaged JPEGs included: see pipeline/shards/images.py). Rerunning the same command
resumes: complete shards whose checksums match are kept, the rest rebuilt, and so are the shards holding a source file
modified since (a new modification time); files added, removed or resized make DEST refused unless --overwrite.
With --upload URL (http(s):// taking PUT, or s3://), the complete DEST is then put there, its manifest last, for
training with data.shards=URL; each file may take --upload-timeout-s, its retries included. An upload that failed is
one line (the URL, what the server did); rerunning the same command keeps DEST's shards and uploads them again.

Exit status: 0 done (bad inputs skipped), 1 error (message on stderr), 2 bad arguments, 130 interrupted (resumable).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from pipeline.remote.fetch import RemoteError, RetryPolicy
from pipeline.remote.upload import upload_shards
from pipeline.shards.manifest import MANIFEST_NAME, Manifest, is_url, scheme_problem
from pipeline.shards.writer import LABEL_MODES, VERIFY_MODES, RunSettings, ShardOptions, build_shards
from util.cli import HelpFormatter, positive_int
from util.errors import UserError
from util.processes import exit_without_teardown
from util.urls import redact, redact_logging

logger = logging.getLogger("shard_dataset")

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """"10000" → (10000 samples, no byte cap); "1GB" → (no sample cap, 10**9 bytes); "5000,500MiB" → both."""
    samples = size = None
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", part)
        if not match or (match[2] and match[2].lower() not in _UNITS) or (not match[2] and "." in match[1]):
            raise argparse.ArgumentTypeError(f"{part!r} is neither a sample count (e.g. 10000) nor a size with a "
                                             f"unit among {', '.join(_UNITS)} (e.g. 1GB)")
        if match[2]:
            size = int(float(match[1]) * _UNITS[match[2].lower()])
        else:
            samples = int(match[1])
    if samples == 0 or size == 0:
        raise argparse.ArgumentTypeError(f"shard size {text!r} must be positive")
    return samples, size


def _quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality {text!r} is not in 1..100")
    return int(text)


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"prefix {text!r} must be letters, digits, '_', '.', '-' (no leading dot)")
    return text


def _url(text: str) -> str:
    if not is_url(text):
        raise argparse.ArgumentTypeError(redact(scheme_problem(text, folder=False) or
                                                f"{text!r} is not an http://, https:// or s3:// URL"))
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder (one sub-folder per class, unless --labels none)")
    p.add_argument("dest", metavar="DEST", help="output folder for shards, index files and manifest.json")
    p.add_argument("--labels", choices=LABEL_MODES, default="folders",
                   help="folders: class = sub-folder of SRC (default); none: unlabeled, no .cls written")
    p.add_argument("--shard-size", type=parse_shard_size, default=parse_shard_size("1GB"), metavar="LIMITS",
                   help="samples (10000), bytes (1GB, 512MiB) or both (10000,1GB); default 1GB")
    p.add_argument("--prefix", type=_prefix, default="shard", help="shard file names: PREFIX-000000.tar ...")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that orders samples (default 0)")
    p.add_argument("--workers", type=positive_int, default=len(os.sched_getaffinity(0)),
                   help="processes building shards (default: all cores, %(default)s here)")
    p.add_argument("--verify", choices=VERIFY_MODES, default="full",
                   help="full: decode every image and check each JPEG's scan data (default); header: parse headers "
                        "and check each JPEG's marker structure")
    p.add_argument("--quality", type=_quality, default=90, help="JPEG quality of re-encoded images (default 90)")
    p.add_argument("--max-size", type=positive_int, default=None, metavar="N",
                   help="resize images whose longer side exceeds N pixels down to N (re-encodes only those)")
    p.add_argument("--json", action="store_true", help="also write <key>.json: source path, class name, label")
    p.add_argument("--strict", action="store_true", help="any bad input is an error (exit 1) instead of skipped")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the shards of a DEST written from another source or with other options")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none is shown off a terminal)")
    p.add_argument("--upload", metavar="URL", type=_url, default=None,
                   help="then put DEST's shards, indexes and manifest (last) at URL: http(s):// (a server that takes "
                        "PUT) or s3://bucket/prefix/ (credentials from the environment)")
    p.add_argument("--upload-timeout-s", type=positive_int, default=300, metavar="S",
                   help="with --upload: the seconds each file may take, its retries included")
    return p.parse_args(argv)


def log_summary(dest: str, manifest: Manifest, counts: dict) -> None:
    shards = sum(r.samples > 0 for r in manifest.shards)
    logger.info("%s: %d samples in %d shards (%d written now, %d kept from an earlier run, %d images re-encoded now)",
                dest, manifest.total_samples, shards, counts["written"], counts["kept"], counts["converted"])
    resized = counts.get("resized", [])
    if resized:  # among the re-encoded; listed because the sample is smaller than its source
        logger.warning("resized %d image(s) to fit JPEG's side limit:", len(resized))
        _log_entries(resized)
    if manifest.skipped:
        logger.warning("skipped %d bad input(s), all listed under 'skipped' in %s:", len(manifest.skipped),
                       os.path.join(dest, MANIFEST_NAME))
        _log_entries(manifest.skipped)


def _log_entries(entries: list[dict], most: int = 20) -> None:
    for entry in entries[:most]:
        logger.warning("  %s: %s", entry["path"], entry["reason"])
    if len(entries) > most:
        logger.warning("  ... and %d more", len(entries) - most)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    redact_logging()  # a password or signed --upload URL never reaches a log line, from any module or worker
    args = parse_args(argv)
    shard_samples, shard_bytes = args.shard_size
    options = ShardOptions(labels=args.labels, seed=args.seed, shard_samples=shard_samples, shard_bytes=shard_bytes,
                           prefix=args.prefix, verify=args.verify, quality=args.quality, max_size=args.max_size,
                           json=args.json)
    settings = RunSettings(workers=args.workers, strict=args.strict, overwrite=args.overwrite,
                           progress=not args.no_progress)
    try:
        manifest, counts = build_shards(args.src, args.dest, options, settings)
    except UserError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (complete shards are kept)", file=sys.stderr)
        return 130
    log_summary(args.dest, manifest, counts)
    if args.upload:
        try:
            policy = RetryPolicy(args.upload_timeout_s, timeout_key="--upload-timeout-s", url_key="--upload")
            sent = upload_shards(Path(args.dest), manifest, args.upload, policy)
        except RemoteError as err:  # DEST is complete: a rerun checks its shards, rebuilds none, uploads them all
            print(f"error: {redact(str(err))}, then rerun the same command: DEST's shards are kept (checked, not "
                  f"rebuilt) and uploaded again", file=sys.stderr)
            return err.exit_code
        except UserError as err:
            print(f"error: {redact(str(err))}", file=sys.stderr)
            return err.exit_code
        logger.info("%s: uploaded %s MB; train from it with --set data.shards=%s", args.upload,
                    f"{sent / 1e6:,.1f}", args.upload)
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
