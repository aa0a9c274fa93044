"""DeepSpeed's universal checkpoint conversion: a resume on another world size loads a universal copy of its
checkpoint, which rank 0 makes (`universal_copy`) by running this module in a process of its own:

    python -m training.universal CHECKPOINT_FOLDER OUTPUT_FOLDER [--workers N]

It is deepspeed.checkpoint.ds_to_universal (the re-partition is DeepSpeed's, not ours) with every torch.load inside
unpickling weights_only=True (DeepSpeed's own calls pass weights_only=False), so a file planted in a checkpoint
folder cannot run code here either. A process of its own: the converter forks workers and holds whole parameters in
memory, neither of which belongs inside a training process with its communication threads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

from model.safe_load import DAMAGED_FILE_ERRORS, CheckpointError, first_line, weights_only_loads
from training.out_dir import check_space, folder_bytes
from training.states import deepspeed_safe_types
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILE = "SOURCE.json"  # in a converted folder: which checkpoint it was converted from
CONVERSION_SPACE = 2.5  # the universal copy (fp32 masters and moments, module states) plus DeepSpeed's temp files


def universal_copy(saved: "Checkpoint", root: Path) -> Path:
    """Rank 0: the universal conversion of checkpoint `saved` (training.checkpoints.Checkpoint) in `root` (made
    now, or kept from an earlier attempt at this resume). Raises CheckpointError when it fails or the disk is too
    full."""
    dest = root / saved.folder.name
    source = {"source": str(saved.folder.resolve()), "step": saved.record.step,
              "world_size": saved.record.world_size}
    try:
        if json.loads((dest / SOURCE_FILE).read_text()) == source:
            logger.info("universal checkpoint %s: kept from an earlier attempt at this resume", dest)
            return dest
    except (OSError, ValueError):
        pass
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_space(dest.parent, int(folder_bytes(saved.folder) * CONVERSION_SPACE),
                f"the universal conversion of {saved.folder}")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.universal", str(saved.folder), str(dest)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        said = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CheckpointError(f"checkpoint {saved.folder}: DeepSpeed's universal conversion failed ({said}); resume "
                              f"on {saved.record.world_size} rank(s), or choose another checkpoint")
    write_file_atomic(dest / SOURCE_FILE, json.dumps(source).encode())
    logger.info("universal checkpoint %s: converted from %s in %.1f s (%.2f GB)", dest, saved.folder,
                time.perf_counter() - started, folder_bytes(dest) / 1e9)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_folder", help="a checkpoint tag folder written by train.py")
    p.add_argument("output_folder", help="where the universal checkpoint goes")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes that extract shards")
    args = p.parse_args(argv)
    from deepspeed.checkpoint import ds_to_universal

    workers = max(1, args.workers)
    options = argparse.Namespace(input_folder=args.input_folder, output_folder=args.output_folder,
                                 num_extract_workers=workers, num_merge_workers=max(1, workers // 2),
                                 keep_temp_folder=False, strict=True,
                                 inject_missing_state=True)  # our engine does not declare universal_checkpoint_info
    try:
        with weights_only_loads(deepspeed_safe_types()):
            ds_to_universal.main(options)
    except pickle.UnpicklingError as err:  # torch's message is pages long; the first line of its cause says why
        print(f"a file in {args.input_folder} holds objects other than tensors and plain values "
              f"({first_line(err.__context__ or err)}); not loaded, because unpickling it could run code",
              file=sys.stderr)
        return 1
    except (*DAMAGED_FILE_ERRORS, AssertionError) as err:  # raised inside DeepSpeed about the folder's files
        print(f"{type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
