"""DeepSpeed's universal checkpoint conversion, run by training.elastic in a process of its own:

    python -m training.universal CHECKPOINT_FOLDER OUTPUT_FOLDER [--workers N]

It is deepspeed.checkpoint.ds_to_universal (the re-partition is DeepSpeed's, not ours) with every torch.load inside
unpickling weights_only=True (DeepSpeed's own calls pass weights_only=False), so a file planted in a checkpoint
folder cannot run code here either. A process of its own: the converter forks workers and holds whole parameters in
memory, neither of which belongs inside a training process with its communication threads.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_folder", help="a checkpoint tag folder written by train.py")
    p.add_argument("output_folder", help="where the universal checkpoint goes")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes that extract shards")
    args = p.parse_args(argv)
    from deepspeed.checkpoint import ds_to_universal

    from model.official import DAMAGED_FILE_ERRORS, first_line, weights_only_loads
    from training.checkpoints import deepspeed_safe_types

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
