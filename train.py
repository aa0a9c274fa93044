"""I-JEPA training service.

    deepspeed train.py --config configs/vith14_in1k.yaml [--set section.key=value ...]
    python train.py --config FILE [--set ...] --print-config     # resolved config as YAML, then exit
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from config import ConfigError, config_to_yaml, global_batch_size, grid_size, load_config, model_size

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config: this project's schema or an official I-JEPA one")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set optimization.lr=5e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def derived_summary(cfg, world_size: int) -> str:
    """Values computed from the config (never written in YAML), as YAML comments."""
    dim, depth, heads, _ = model_size(cfg)
    h, w = grid_size(cfg)
    lines = [f"world_size: {world_size}", f"global_batch_size: {global_batch_size(cfg, world_size)}",
             f"patch_grid: {h}x{w}", f"encoder: {cfg.model.arch} dim {dim}, depth {depth}, heads {heads}"]
    return "".join(f"# derived: {line}\n" for line in lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, overrides=args.set)
    except ConfigError as err:
        logger.error("config error: %s", err)
        return 2
    if args.print_config:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        sys.stdout.write(config_to_yaml(cfg) + derived_summary(cfg, world_size))
        return 0
    logger.error("the training loop is not built yet (issue 7); use --print-config to check a config")
    return 3


if __name__ == "__main__":
    sys.exit(main())
