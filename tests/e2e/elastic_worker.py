"""Launched by tests/e2e/test_elastic.py (torchrun): the set-up train.py runs (training.plan.plan_run, then
training.loop.Trainer.build: the engine, the loader, the checkpoint restored), optionally the training loop, then a dump
of the consolidated states, gathered with DeepSpeed's own API, for the test to compare across world sizes. One launch
runs each ZeRO stage asked for in turn, each in OUT/stage<S> with its dump OUT/stage<S>.pt (a launch's start-up costs
more than a tiny engine):

    torchrun --nproc_per_node N tests/e2e/elastic_worker.py OUT --stage 1 --stage 3 [--train] [--resume auto] \
        --set KEY=VALUE ...
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from config import load_config  # noqa: E402
from training.distributed import on_rank0, setup_distributed, single_process_env  # noqa: E402
from training.faults import Peers, StopSignal  # noqa: E402
from training.guard import Guard, claim_out_dir  # noqa: E402
from training.loop import Trainer, train  # noqa: E402
from training.plan import ResumeRequest, plan_run  # noqa: E402


def dump(run: Trainer) -> dict:
    """Every trainable parameter's fp32 master, AdamW moments and 16-bit module value, in full, on every rank
    (collectives under ZeRO-3), with the target encoder, the step and this rank's loader state."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    opt = run.engine.optimizer
    if getattr(opt, "_hp_optimizer_states_linked", False):
        # DeepSpeed 0.19.8, ZeRO-1/2: the first optimizer step links every group's moments to the parameters right
        # after stepping group 0, before group 1 has any, and never again; link them again now that all exist.
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()
    layout = run.plan.layout
    out = {"step": run.step, "world_size": layout.world_size, "batch_size": layout.batch_size,
           "grad_accum": layout.grad_accum, "target": {k: v.clone() for k, v in
                                                                     run.target.state_dict().items()},
           "loader": run.loader.state_dict(), "params": {}}
    for name, p in run.engine.module.named_parameters():
        if not p.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([p]):  # ZeRO-3: the whole 16-bit value; a no-op below stage 3
            module = p.detach().clone()
        out["params"][name] = {"fp32": safe_get_full_fp32_param(p).clone(), "module": module,
                               "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").clone(),
                               "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").clone()}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--stage", type=int, action="append", required=True)
    p.add_argument("--train", action="store_true")
    p.add_argument("--resume", default="")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(message)s")
    single_process_env()
    device, rank, world_size = setup_distributed("cpu")
    for stage in args.stage:
        logging.getLogger("elastic_worker").info(f"== ZeRO stage {stage}")
        cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[
            *args.set, f"deepspeed.zero_optimization={{stage: {stage}}}", f"run.out_dir={args.out / f'stage{stage}'}"])
        plan = plan_run(cfg, world_size, ResumeRequest(args.resume))
        torch.distributed.barrier()  # every rank planned (the plan refuses a folder another run holds) before the claim
        with contextlib.ExitStack() as held:
            on_rank0(claim_out_dir, held, cfg, plan)
            guard = Guard(cfg, device, rank, StopSignal(), Peers.collect(rank))  # its watchdog thread not started
            run = Trainer.build(cfg, plan, guard)
            if args.train:
                train(run)
            states = dump(run)
            if rank == 0:
                torch.save(states, args.out / f"stage{stage}.pt")
            torch.distributed.barrier()
        del run, states
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
