"""I-JEPA training service: DeepSpeed ZeRO over the context encoder + predictor, an fp32 EMA target encoder.

    deepspeed train.py --config configs/vith14_in1k.yaml [--set section.key=value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 8 train.py --config ...
    python train.py --config configs/tiny_cpu.yaml                 # one process
    python train.py --config FILE --print-config                   # resolved config as YAML, then exit
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

from config import (ConfigError, config_to_yaml, deepspeed_config, global_batch_size, grid_size, load_config,
                    model_size)

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config: this project's schema or an official I-JEPA one")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set optimization.lr=5e-4")
    p.add_argument("--resume", default=None, help="'auto' (latest complete checkpoint), a checkpoint folder, or '' "
                                                  "for a fresh start; default: checkpoint.resume from the config")
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


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """`python train.py` without a launcher: a world of one (DeepSpeed would otherwise look for MPI)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


class StopSignal:
    """SIGTERM/SIGINT (preemption) set a flag; the loop checkpoints and exits at the next agreed check."""

    def __init__(self):
        self.received = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name



class TrainingError(RuntimeError):
    """Training cannot go on; the message says why (which step, which checkpoint, which setting)."""


# ------------------------------------------------------------------------------------------------------- building

def setup_distributed(cfg):
    """Initialises torch.distributed through DeepSpeed (NCCL on GPUs, gloo on the CPU); returns (device, rank, world)."""
    import deepspeed
    import torch

    use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run.device is cuda but no CUDA device is visible; set run.device: cpu or auto")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return device, torch.distributed.get_rank(), torch.distributed.get_world_size()


def build_engine(cfg, device, world_size, out_dir: Path):
    """(DeepSpeed engine over context encoder + predictor, the torch AdamW inside it, the fp32 target encoder; its
    EMA is target_ema.target_ema(engine, target))."""
    import deepspeed
    import torch

    from model.jepa import build_jepa
    from model.schedules import param_groups

    model, target = build_jepa(cfg)
    if cfg.model.compile:  # before DeepSpeed wraps the model; the blocks' token dim stays dynamic (model/compile.py)
        from model.compile import compile_blocks

        logger.info("torch.compile: %d blocks (context encoder + predictor), %d (target encoder)",
                    compile_blocks(model), compile_blocks(target))
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optimization.weight_decay), lr=cfg.optimization.lr,
                                  betas=cfg.optimization.betas, eps=cfg.optimization.eps, fused=fused)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(cfg, world_size))
    return engine, optimizer, target.to(device)


def build_monitor(cfg, out_dir: Path):
    """DeepSpeed's TensorBoard and CSV monitors, driven by train.py (the engine's own monitor would read the loss
    back to the host every step)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    where = {"output_path": str(out_dir / "logs"), "job_name": cfg.run.name}
    return MonitorMaster(get_monitor_config({"tensorboard": {"enabled": cfg.logging.tensorboard, **where},
                                             "csv_monitor": {"enabled": cfg.logging.csv, **where}}))


def set_schedules(optimizer, step: int, cfg, warmup: int, total: int) -> dict:
    """The step's lr and weight decay into every parameter group (no decay stays 0 on WD_exclude groups)."""
    from model.schedules import lr_at, momentum_at, wd_at

    opt = cfg.optimization
    values = {"lr": lr_at(step, warmup, total, opt.start_lr, opt.lr, opt.final_lr),
              "wd": wd_at(step, total, opt.weight_decay, opt.final_weight_decay),
              "momentum": momentum_at(step, total, *cfg.ema.momentum)}
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
        if not group.get("WD_exclude"):
            group["weight_decay"] = values["wd"]
    return values


# ----------------------------------------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather(obj):
    """One object per rank → the list of all ranks' objects, on every rank."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_ranks_agree(target, step: int) -> str:
    """Every rank must hold the same target encoder; a digest of its bytes is compared across ranks."""
    import hashlib

    digest = hashlib.sha256()
    for p in target.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather(digest.hexdigest()[:16])
    if len(set(digests)) != 1:
        raise TrainingError(f"ranks disagree at step {step}: target encoder digests {digests}")
    return digests[0]


def save_checkpoint(engine, ema, target, loader, cfg, step: int, out_dir: Path) -> Path:
    import torch.distributed as dist

    from checkpoints import checkpoint_dir, mark_complete, prune, tag_for

    ema.wait()
    digest = check_ranks_agree(target, step)

    ckpt_dir, tag = checkpoint_dir(out_dir), tag_for(step)
    client = {"step": step, "config": config_to_yaml(cfg), "target_encoder": target.state_dict(),
              "loader": gather(loader.state_dict()), "rng": gather(rng_state()),
              "world_size": dist.get_world_size()}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
    dist.barrier()
    if dist.get_rank() == 0:
        mark_complete(ckpt_dir, tag, step)
        for old in prune(ckpt_dir, cfg.checkpoint.keep_last):
            logger.info("removed old checkpoint %s", old)
        logger.info("saved checkpoint %s (ranks agree: target encoder digest %s)", ckpt_dir / tag, digest)
    dist.barrier()
    return ckpt_dir / tag


def load_checkpoint(engine, target, loader, resume: str, out_dir: Path) -> int:
    """Restores everything a checkpoint holds; returns its step (0 for a fresh start)."""
    import torch.distributed as dist

    from checkpoints import CheckpointError, resolve_resume

    try:
        found = resolve_resume(resume, out_dir)
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    if found is None:
        logger.info("starting fresh (resume=%r found no checkpoint)", resume)
        return 0
    load_dir, tag = found
    try:
        path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    except Exception as err:  # DeepSpeed/torch raise many types for damaged files; re-raised naming the checkpoint
        raise TrainingError(f"checkpoint {load_dir / tag} cannot be loaded ({type(err).__name__}: {err}); it may be "
                            f"corrupt: choose another one") from err
    if path is None or not client or "step" not in client:
        raise TrainingError(f"checkpoint {load_dir / tag} cannot be loaded: DeepSpeed found no model states in it")
    if client["world_size"] != dist.get_world_size():
        raise TrainingError(f"checkpoint {load_dir / tag} was written by {client['world_size']} ranks, this run has "
                            f"{dist.get_world_size()}: resume with the same number of processes")
    target.load_state_dict(client["target_encoder"])
    loader.load_state_dict(client["loader"][dist.get_rank()])
    set_rng_state(client["rng"][dist.get_rank()])
    logger.info("resumed from %s at step %d", load_dir / tag, client["step"])
    return client["step"]


# ---------------------------------------------------------------------------------------------------------- the loop

def micro_step(engine, ema, target, batch, dtype):
    """Forward (context encoder + predictor, then the targets without grad) and backward of one micro batch; returns
    the loss. The targets come last so that the target encoder's all-gather (target_ema.py) overlaps the rest."""
    import torch

    from model.jepa import target_features

    def targets():
        ema.wait()
        with torch.autocast(batch.images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return target_features(target, batch.images, batch.tgt_idx)

    loss = engine(batch.images.to(dtype), batch.ctx_idx, batch.tgt_idx, targets)
    engine.backward(loss)
    engine.step()
    return loss.detach()


def agree(flag: bool, device) -> bool:
    """True on every rank when any rank says True (one small all-reduce, only on check steps)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def peak_memory_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS of this process (KiB → GiB)


def log_interval(state, step, last, epoch, sched, batch, figures, monitor):
    from metrics import format_eta

    losses = state.pop_losses()
    mean_loss = sum(v for _, v in losses) / len(losses)
    kc, kt = batch.ctx_idx.shape[1], batch.tgt_idx.shape[2]
    mfu = f"{figures['mfu'] * 100:.1f}%" if figures["mfu"] is not None else "n/a"
    logger.info(f"step {step}/{last} ep {epoch} | loss {mean_loss:.4f} | lr {sched['lr']:.2e} wd {sched['wd']:.3f} "
                f"m {sched['momentum']:.5f} | K {kc}/{kt} | {figures['images_per_s']:.1f} img/s/GPU | step "
                f"{figures['step_time_s']:.3f}s = data {figures['data_wait_s']:.3f} + compute "
                f"{figures['compute_s']:.3f} | mem {figures['peak_gb']:.2f} GiB | MFU {mfu} | "
                f"{figures['images_per_gpu_hour']:,.0f} img/GPU-h | ETA {format_eta((last - step) * figures['step_time_s'])}")
    events = [("Train/loss", v, s) for s, v in losses]
    events += [(f"Train/{k}", v, step) for k, v in {**sched, "K_enc": kc, "K_pred": kt, "epoch": epoch}.items()]
    events += [(f"Perf/{k}", v, step) for k, v in figures.items() if v is not None]
    monitor.write_events(events)


class LoopState:
    """Per-step losses and the non-finite flag, kept on the device until a check step reads them."""

    def __init__(self):
        self.losses, self.first_bad = [], None

    def add(self, step, loss):
        import torch

        self.losses.append((step, loss))
        bad = torch.where(torch.isfinite(loss), torch.zeros_like(loss), torch.full_like(loss, step))
        self.first_bad = bad if self.first_bad is None else torch.where(self.first_bad > 0, self.first_bad, bad)

    def bad_step(self) -> int:
        return 0 if self.first_bad is None else int(self.first_bad.item())

    def pop_losses(self):
        import torch

        values = torch.stack([v for _, v in self.losses]).float().tolist()
        out = [(s, v) for (s, _), v in zip(self.losses, values)]
        self.losses = []
        return out


def fit(cfg, resume: str, stop: StopSignal) -> int:
    import dataclasses

    import torch

    import kernels
    from config import iterations_per_epoch, schedule_steps, training_dtype
    from metrics import IntervalTimer, count_flops, peak_tflops
    from pipeline.loader import build_loader
    from probe import TrainingProbe
    from target_ema import target_ema

    device, rank, world_size = setup_distributed(cfg)
    kernels.configure(**dataclasses.asdict(cfg.kernels), device=device)  # decided once, for the whole run (logged)
    out_dir = Path(cfg.run.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(config_to_yaml(cfg))
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    engine, optimizer, target = build_engine(cfg, device, world_size, out_dir)
    dtype = training_dtype(cfg)
    loader = build_loader(cfg, rank=rank, world_size=world_size, device=device)
    ipe = iterations_per_epoch(cfg, world_size, loader.num_samples)
    warmup, total = schedule_steps(cfg, ipe)
    last = min(total, cfg.optimization.max_steps or total)
    ema = target_ema(engine, target)  # after deepspeed.initialize: it reads the optimizer's layout
    step = load_checkpoint(engine, target, loader, resume, out_dir)
    ema.loaded()
    monitor, state, timer = build_monitor(cfg, out_dir), LoopState(), IntervalTimer()
    flops, peak, batches = None, peak_tflops(device), iter(loader)
    probe = TrainingProbe(cfg.logging.probe_shards, cfg.data.crop_size) if cfg.logging.probe_every and rank == 0 else None
    bar = progress_bar(rank == 0 and sys.stderr.isatty(), total=last, initial=step)
    logger.info(f"training {cfg.run.name}: {world_size} rank(s) on {device.type}, global batch "
                f"{global_batch_size(cfg, world_size)}, {ipe} steps/epoch, steps {step + 1}..{last} of {total}")
    started, first_step = time.perf_counter(), step + 1
    with ema:  # nothing left in flight when the loop ends or raises: gloo aborts a process exiting with a gather
        while step < last:
            step += 1
            sched = set_schedules(optimizer, step, cfg, warmup, total)
            for _ in range(cfg.optimization.grad_accum):
                t0 = time.perf_counter()
                batch = next(batches)
                timer.add_wait(time.perf_counter() - t0)
                if flops is None:  # counted once, on the first micro step (same work as every other)
                    flops = count_flops(lambda: state.add(step, micro_step(engine, ema, target, batch, dtype)))
                    flops *= cfg.optimization.grad_accum
                else:
                    state.add(step, micro_step(engine, ema, target, batch, dtype))
            timer.add_step(cfg.data.batch_size * cfg.optimization.grad_accum)  # one optimizer step
            ema.update(sched["momentum"])  # its all-gather runs while the next batch is fetched and the context forward
            if rank == 0:
                bar.update(1)
                diagnose(cfg, step, ema, target, batch, monitor, probe, device, dtype)
            save_now = step % cfg.checkpoint.every_steps == 0 or step == last
            if step % cfg.logging.every_steps == 0 or save_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                bad = state.bad_step()
                if bad:
                    raise TrainingError(f"non-finite loss at step {bad}; stopped without saving, the last good "
                                        f"checkpoint is kept in {out_dir / 'checkpoints'}")
                figures = {**timer.report(flops, peak), "peak_gb": peak_memory_gb(device)}
                log_interval(state, step, last, loader.epoch, sched, batch, figures, monitor)
                if agree(stop.received is not None, device):
                    save_checkpoint(engine, ema, target, loader, cfg, step, out_dir)
                    logger.info(f"stopped by {stop.received or 'a signal on another rank'} at step {step}; "
                                f"resume with --resume auto")
                    return 0
            if save_now:
                save_checkpoint(engine, ema, target, loader, cfg, step, out_dir)
    bar.close()
    write_summary(cfg, out_dir, step - first_step + 1, time.perf_counter() - started, world_size, rank)
    return 0


def progress_bar(enabled: bool, total: int, initial: int):
    """A tqdm bar on rank 0 when stderr is a terminal; a no-op otherwise (logs stay line by line)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def diagnose(cfg, step, ema, target, batch, monitor, probe, device, dtype) -> None:
    """Rank 0, on their steps: collapse diagnostics of the target features, and the kNN probe."""
    import torch

    from metrics import collapse_diagnostics

    events = []
    diagnostics = cfg.logging.diagnostics_every and step % cfg.logging.diagnostics_every == 0
    if diagnostics or (probe is not None and step % cfg.logging.probe_every == 0):
        ema.wait()
    if diagnostics:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            diag = collapse_diagnostics(target(batch.images))
        events += [(f"Diagnostics/{k}", v, step) for k, v in diag.items()]
        logger.info(f"step {step} diagnostics: feature std {diag['feature_std']:.4f}, effective rank "
                    f"{diag['effective_rank']:.1f}")
    if probe is not None and step % cfg.logging.probe_every == 0:
        top1 = probe(target, device)
        events.append(("Probe/knn_top1", top1, step))
        logger.info(f"step {step} probe: kNN top-1 {100 * top1:.1f}% (target encoder, held-out shards)")
    if events:
        monitor.write_events(events)


def write_summary(cfg, out_dir: Path, steps: int, seconds: float, world_size: int, rank: int) -> None:
    """Run-level throughput: images/s per GPU and images per GPU-hour over this process's steps."""
    if rank != 0 or steps <= 0:
        return
    images = steps * global_batch_size(cfg, world_size)
    per_gpu = images / seconds / world_size
    summary = {"steps": steps, "seconds": seconds, "world_size": world_size, "images": images,
               "images_per_s_per_gpu": per_gpu, "images_per_gpu_hour": per_gpu * 3600}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(f"summary: {steps} steps, {images} images in {seconds:.1f} s on {world_size} rank(s): "
                f"{per_gpu:.1f} images/s per GPU, {per_gpu * 3600:,.0f} images per GPU-hour "
                f"(includes start-up, checkpoints and logging)")


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    try:
        cfg = load_config(args.config, overrides=args.set)
    except ConfigError as err:
        logger.error("config error: %s", err)
        return 2
    if args.print_config:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        sys.stdout.write(config_to_yaml(cfg) + derived_summary(cfg, world_size))
        return 0
    from tqdm.contrib.logging import logging_redirect_tqdm

    from pipeline.loader import DataError

    single_process_env()
    stop = StopSignal()
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bar instead of through it
            return fit(cfg, cfg.checkpoint.resume if args.resume is None else args.resume, stop)
    except (TrainingError, ConfigError, DataError) as err:
        logger.error("error: %s", err)
        return 1
    finally:
        release_shm_buffers()


def release_shm_buffers() -> None:
    """DeepSpeed's shared-memory all-reduce on the CPU leaves one buffer per rank in /dev/shm (66 MiB each, named
    after MASTER_ADDR, MASTER_PORT and the rank) when the process ends; unlink this rank's. Ranks that mapped it
    keep their mapping, so this is safe while others finish."""
    name = f"deepspeed_*_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{os.environ.get('RANK')}"
    for path in Path("/dev/shm").glob(name):
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
