"""I-JEPA training service: DeepSpeed ZeRO over the context encoder + predictor, an fp32 EMA target encoder.

    deepspeed train.py --config configs/vith14_in1k.yaml [--set section.key=value ...] [--resume auto|PATH]
                       [--accept-changes]            # resume although the data, batch or schedule changed
                       [--keep-per-gpu-batch]        # on another number of GPUs: keep data.batch_size, not the
                                                     # global batch (the schedules are rescaled)
    torchrun --nproc_per_node 8 train.py --config ...
    srun --ntasks-per-node 8 python train.py --config ...          # under Slurm: tools/slurm/train.sbatch
    python train.py --config configs/tiny_cpu.yaml                 # one process
    python train.py --config FILE --init-from FILE_OR_FOLDER       # a warm start (official .pth.tar, checkpoint, export)
    python train.py --config FILE --print-config [--world-size 8]  # resolved config as YAML, then exit
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from config import ConfigError, config_to_yaml, grid_size, load_config
from model.sizes import encoder_size
from training.plan import ResumeRequest, preview
from training.slurm import SlurmError, adopt_srun_env
from util.cli import HelpFormatter, positive_int
from util.errors import UserError
from util.processes import exit_without_teardown
from util.urls import redact, redact_logging

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="YAML config: this project's schema or an official I-JEPA one")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set optimization.lr=5e-4")
    p.add_argument("--resume", default=None, help="'auto' (latest complete checkpoint), a checkpoint folder, or '' "
                                                  "for a fresh start; default: checkpoint.resume from the config")
    p.add_argument("--accept-changes", action="store_true",
                   help="resume even though the data, batch or schedule differ from the checkpoint's (each change is "
                        "logged); without it such a resume is refused, naming the differences")
    p.add_argument("--keep-per-gpu-batch", action="store_true",
                   help="resuming on another number of GPUs: keep data.batch_size per GPU and let the global batch "
                        "change (the schedules are laid out for it, logged); by default the global batch is kept and "
                        "the per-GPU batch and grad_accum adjusted")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="a warm start: the weights of an official I-JEPA .pth.tar, a checkpoint tag folder or an "
                        "export folder, then a fresh optimizer and schedules (sets checkpoint.init_from; a run that "
                        "has a checkpoint of its own resumes from it instead)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and the run's batch layout and steps, then exit")
    p.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                   help="--print-config: the number of ranks to lay the batch out for (default: WORLD_SIZE as the "
                        "launchers set it, else 1)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def derived_summary(cfg, world_size: int) -> str:
    """Values computed from the config and the shards' manifest (never written in YAML), as YAML comments."""
    dim, depth, heads, _ = encoder_size(cfg.model)
    h, w = grid_size(cfg)
    lines = [f"world_size: {world_size}", *preview(cfg, world_size), f"patch_grid: {h}x{w}",
             f"encoder: {cfg.model.arch} dim {dim}, depth {depth}, heads {heads}"]
    return "".join(f"# derived: {line}\n" for line in lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # an srun task: its rank and rendezvous from Slurm's variables, before anything reads RANK
        adopt_srun_env(os.environ)
    except SlurmError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return err.exit_code
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    redact_logging()  # a password or signed URL in data.shards never reaches a log line, from any module
    try:
        init = [] if args.init_from is None else [f"checkpoint.init_from={json.dumps(args.init_from)}"]  # a YAML string
        cfg = load_config(args.config, overrides=[*args.set, *init])
        if args.print_config:
            world_size = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
            sys.stdout.write(redact(config_to_yaml(cfg) + derived_summary(cfg, world_size)))
            return 0
        return run_training(cfg, ResumeRequest(cfg.checkpoint.resume if args.resume is None else args.resume,
                                               args.accept_changes, args.keep_per_gpu_batch))
    except UserError as err:  # bad input, config, data, a refused resume: one line, no traceback
        logger.error("%s: %s", "config error" if isinstance(err, ConfigError) else "error", redact(str(err)))
        return err.exit_code


def run_training(cfg, request: ResumeRequest) -> int:
    """training.loop.fit with rank 0's kNN probe, its log lines printed above the progress bar."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from evaluation.probes import TrainingProbe
    from training.loop import fit

    make_probe = lambda: TrainingProbe(cfg.logging.probe_shards, cfg.data.crop_size)  # noqa: E731  (rank 0 only)
    with logging_redirect_tqdm():  # log lines print above the progress bar instead of through it
        return fit(cfg, request, make_probe)


if __name__ == "__main__":
    exit_without_teardown(main())  # an exception still ends it as usual, with its traceback
