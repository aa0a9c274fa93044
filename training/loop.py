"""The training loop: config → distributed set-up → engine, loader, EMA → steps, logging and checkpoints → summary.

What a run writes, what it logs, how it stops on a signal or a non-finite loss: docs/training.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

import kernels
from config import Config, ConfigError, config_to_yaml, grid_size, mask_sampler, training_dtype
from pipeline.loading.loader import Loader, build_loader
from pipeline.masks.pictures import batch_pictures
from training import TrainingError, slurm
from training.checkpoints import (checkpoint_bytes, checkpoint_dir, clean_crashed_saves, complete_tags, restore_saved,
                                  save_checkpoint)
from training.distributed import (agree, gather, on_rank0, release_shm_buffers, remove_dead_shm_buffers,
                                  setup_distributed, single_process_env)
from training.engine import build_engine, build_monitor, micro_step, set_schedules, write_image
from training.faults import Peers, StopSignal, Watchdog, exit_now, folder_id, is_comm_failure, quiet_threads_while
from training.metrics import IntervalTimer, collapse_diagnostics, count_flops, format_eta, peak_tflops
from training.plan import ResumeRequest, RunPlan, plan_run
from training.run_dir import SPACE_MARGIN, check_space, locked_out_dir
from training.sample_log import SampleLog
from training.target_ema import target_ema
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

MASK_IMAGES = 4  # images of the batch in each TensorBoard mask picture


def build_training_loader(cfg: Config, plan: RunPlan, rank: int, device: torch.device,
                          dtype: torch.dtype | None = None) -> Loader:
    """The loader of `rank` in the run `plan` (its batch layout, manifest and backend; pipeline/ receives these
    values and never reads the config); images in the training dtype unless `dtype` is given."""
    return build_loader(cfg.data, mask_sampler(cfg), seed=cfg.run.seed, rank=rank, layout=plan.layout,
                        steps_per_epoch=plan.steps_per_epoch, manifest=plan.manifest, backend=plan.backend,
                        device=device, dtype=dtype or training_dtype(cfg))


class LoopState:
    """Per-step losses and the non-finite flag, kept on the device until a check step reads them."""

    def __init__(self):
        self.losses, self.first_bad = [], None

    def add(self, step, loss):
        self.losses.append((step, loss))
        bad = torch.where(torch.isfinite(loss), torch.zeros_like(loss), torch.full_like(loss, step))
        self.first_bad = bad if self.first_bad is None else torch.where(self.first_bad > 0, self.first_bad, bad)

    def bad_step(self) -> int:
        return 0 if self.first_bad is None else int(self.first_bad.item())

    def pop_losses(self):
        values = torch.stack([v for _, v in self.losses]).float().tolist()
        out = [(s, v) for (s, _), v in zip(self.losses, values)]
        self.losses = []
        return out


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS of this process (KiB → GiB)


def log_interval(state, step, last, epoch, sched, batch, figures, monitor, skipped: int):
    losses = state.pop_losses()
    mean_loss = sum(v for _, v in losses) / len(losses)
    kc, kt = batch.ctx_idx.shape[1], batch.tgt_idx.shape[2]
    mfu = f"{figures['mfu'] * 100:.1f}%" if figures["mfu"] is not None else "n/a"
    logger.info(f"step {step}/{last} ep {epoch} | loss {mean_loss:.4f} | lr {sched['lr']:.2e} wd {sched['wd']:.3f} "
                f"m {sched['momentum']:.5f} | K {kc}/{kt} | {figures['images_per_s']:.1f} img/s/GPU | step "
                f"{figures['step_time_s']:.3f}s = data {figures['data_wait_s']:.3f} + compute "
                f"{figures['compute_s']:.3f} | mem {figures['peak_gb']:.2f} GiB | MFU {mfu} | "
                f"{figures['images_per_gpu_hour']:,.0f} img/GPU-h | "
                f"ETA {format_eta((last - step) * figures['step_time_s'])}"
                + (f" | skipped {skipped} bad samples so far" if skipped else ""))
    events = [("Train/loss", v, s) for s, v in losses]
    events += [(f"Train/{k}", v, step) for k, v in {**sched, "K_enc": kc, "K_pred": kt, "epoch": epoch}.items()]
    events += [(f"Perf/{k}", v, step) for k, v in figures.items() if v is not None]
    events.append(("Data/skipped_samples", skipped, step))
    monitor.write_events(events)


def fit(cfg: Config, request: ResumeRequest, make_probe: Optional[Callable[[], Callable]] = None) -> int:
    """Trains `cfg` from the checkpoint `request` names (training.plan.ResumeRequest) until its last step or a stop
    signal (SIGTERM, SIGINT); returns the exit code. The run plan comes first, before any process group, signal
    handler or file is touched, so a refused resume or unusable shards cost nothing. `make_probe` builds, on rank 0,
    the kNN probe logged every logging.probe_every steps (a callable (encoder, device) → top-1)."""
    plan = plan_run(cfg, int(os.environ.get("WORLD_SIZE", "1")), request)
    single_process_env()
    if os.environ.get("LOCAL_RANK", "0") == "0" and (dead := remove_dead_shm_buffers()):
        logger.info(f"removed {len(dead)} DeepSpeed shared-memory buffer(s) that dead runs left in /dev/shm: "
                    f"{', '.join(p.name for p in dead[:4])}{' …' if len(dead) > 4 else ''}")
    stop = StopSignal(None if cfg.run.requeue_signal == "none" else cfg.run.requeue_signal)
    try:
        device, rank, world_size = setup_distributed(cfg.run.device, cfg.run.timeout_s)
        if world_size != plan.world_size:
            raise TrainingError(f"the launcher set WORLD_SIZE {plan.world_size} but the process group has "
                                f"{world_size} ranks: launch with deepspeed, torchrun or plain python")
        peers, out_dir = Peers.gather(rank), Path(cfg.run.out_dir)
        watchdog = Watchdog(stop, cfg.run.timeout_s, rank,
                            on_stall=lambda step, waited: exit_now(stall_message(step, waited, cfg, peers)))
        logger.info(f"launcher: {launched_by(watchdog.launchers, os.environ)}: {peers.layout()}; rendezvous "
                    f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        if rank == 0 and (lone := slurm.lone_batch_shell(os.environ)):
            logger.warning(lone)
        out_id = None  # run.out_dir's identity once claimed: a folder made again at its path is not it
        gone = lambda: out_id is not None and folder_id(out_dir) != out_id  # noqa: E731
        with contextlib.ExitStack() as claim, watchdog, quiet_threads_while(gone):
            try:
                on_rank0(claim_out_dir, claim, cfg, plan)  # rank 0 holds run.out_dir's lock until the run ends
                out_id = folder_id(out_dir)
                run = prepare(cfg, plan, device, rank)
                code = train(run, stop, make_probe, watchdog)
            except (RuntimeError, OSError) as err:  # one line, not a collective's or a write's traceback
                raise run_failure(err, watchdog.step + 1, out_dir, gone(), peers) from None
        # Every rank is past the last collective: tear the group down before the interpreter exits, so that no
        # rank's communication threads are destroyed mid-flight ("terminate called without an active exception").
        torch.distributed.destroy_process_group()
        return code
    finally:
        release_shm_buffers()


def launched_by(launchers: list, env) -> str:
    """The start line's launcher: the nearest launcher process (torchrun, DeepSpeed's), srun, or none."""
    if launchers:
        return launchers[0][1]
    if slurm.in_srun_step(env):
        return slurm.describe_step(env)
    return "none (one process)" if env.get("WORLD_SIZE", "1") == "1" else "the environment (RANK, WORLD_SIZE set)"


def run_failure(err: BaseException, step: int, out_dir: Path, out_dir_gone: bool, peers: Peers) -> BaseException:
    """What ended the run at `step`, as one line: run.out_dir vanished (a write failed, or a peer stopped because of
    it), or a peer died or hung (a collective failed); any other error as it is."""
    if out_dir_gone:
        return TrainingError(vanished(out_dir, step))
    if isinstance(err, RuntimeError) and is_comm_failure(err):
        return TrainingError(f"{peers.lost() or 'a rank not responding'} at step {step}; {last_checkpoint(out_dir)}; "
                             f"resume with --resume auto (the collective said: {str(err).splitlines()[0][:200]})")
    return err


def vanished(out_dir: Path, step: int) -> str:
    return (f"run.out_dir {out_dir} vanished at step {step} (deleted or moved): nothing to log or checkpoint into, "
            f"the run stops; put the folder back and resume with --resume auto, or start again")


def last_checkpoint(out_dir: Path) -> str:
    tags = complete_tags(checkpoint_dir(out_dir))
    return f"last complete checkpoint {checkpoint_dir(out_dir) / tags[-1]}" if tags else "no complete checkpoint yet"


def stall_message(step: int, waited: float, cfg: Config, peers: Peers) -> str:
    """The watchdog's line: the step that did not finish, what this host can tell of why, where to resume from."""
    who = peers.lost() or "no rank on this host is gone or stopped: a rank elsewhere, a collective or the data hung"
    return (f"step {step} stalled: not finished after {waited:.0f} s (run.timeout_s {cfg.run.timeout_s:g}); {who}; "
            f"the run stops; {last_checkpoint(Path(cfg.run.out_dir))}; resume with --resume auto")


def claim_out_dir(claim: contextlib.ExitStack, cfg: Config, plan: RunPlan) -> None:
    """Rank 0: locks run.out_dir (one run at a time), removes folders of saves that crashed, writes config.yaml (the
    config, with the plan's values as comments)."""
    out_dir = Path(cfg.run.out_dir)
    claim.enter_context(locked_out_dir(out_dir))
    clean_crashed_saves(out_dir)
    write_file_atomic(out_dir / "config.yaml", (config_to_yaml(cfg) + plan_summary(plan)).encode())


def plan_summary(plan: RunPlan) -> str:
    """The plan's values as YAML comments (config.yaml, beside the config they follow from)."""
    layout, sched = plan.layout, plan.schedules
    lines = [f"world_size: {layout.world_size}", f"global_batch_size: {layout.global_batch} = {layout.batch_size} "
             f"per GPU x grad_accum {layout.grad_accum} x {layout.world_size}",
             f"data: {plan.manifest.total_samples} samples, {plan.backend} backend, {plan.steps_per_epoch} steps "
             f"per epoch", f"schedules: {sched.warmup_steps} warmup, lr and wd over {sched.t_max} steps, momentum "
             f"over {sched.momentum_denominator}, {sched.train_steps} training steps"
             + (f", shifted {plan.schedule_shift:+d}" if plan.schedule_shift else "")]
    return "".join(f"# plan: {line}\n" for line in lines)


@dataclasses.dataclass
class Run:
    """What the loop trains, built and restored by prepare()."""

    cfg: Config
    plan: RunPlan
    device: torch.device
    rank: int
    engine: object  # DeepSpeed's, over the context encoder and predictor; engine.optimizer is its AdamW
    target: torch.nn.Module
    ema: object
    loader: object
    step: int  # the last step done (0 for a fresh start)


def prepare(cfg: Config, plan: RunPlan, device: torch.device, rank: int) -> Run:
    """On every rank, once rank 0 holds run.out_dir: the engine, the loader and the EMA, and the checkpoint the plan
    resumes restored into them."""
    try:  # decided once, for the whole run (logged)
        kernels.configure(**dataclasses.asdict(cfg.kernels), device=device)
    except ValueError as err:  # e.g. a Triton kernel asked for with run.device auto on a machine without CUDA
        raise ConfigError(f"kernels: {err}") from None
    out_dir = Path(cfg.run.out_dir)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    engine, _, target = build_engine(cfg, plan.layout, device, load_universal=plan.elastic)
    loader = build_training_loader(cfg, plan, rank, device)
    ema = target_ema(engine, target)  # after deepspeed.initialize: it reads the optimizer's layout
    step = restore_saved(engine, target, loader, plan, out_dir)
    ema.loaded()
    on_rank0(check_space, out_dir, int(checkpoint_bytes(engine, target, checkpoint_dir(out_dir)) * SPACE_MARGIN),
             "one checkpoint")  # now, rather than after hours of training
    return Run(cfg, plan, device, rank, engine, target, ema, loader, step)


def train(run: Run, stop: StopSignal, make_probe, watchdog: Optional[Watchdog] = None) -> int:
    """The loop, on every rank: steps, logging, checkpoints; a summary at the end. `watchdog` hears of every step
    (rank 0's ends the run when one stalls)."""
    cfg, plan, device, step = run.cfg, run.plan, run.device, run.step
    engine, target, ema, loader = run.engine, run.target, run.ema, run.loader
    out_dir, dtype, shift, last = Path(cfg.run.out_dir), training_dtype(cfg), plan.schedule_shift, plan.last_step
    accum = plan.layout.grad_accum
    monitor, state, timer = build_monitor(cfg, out_dir), LoopState(), IntervalTimer()
    flops, peak, batches = None, peak_tflops(device), iter(loader)
    probe = on_rank0(make_probe) if make_probe is not None and cfg.logging.probe_every else None
    samples = SampleLog(out_dir, run.rank, plan.world_size) if cfg.logging.sample_log else None
    bar = progress_bar(run.rank == 0 and sys.stderr.isatty(), total=last, initial=step)
    logger.info(f"training {cfg.run.name}: {plan.world_size} rank(s) on {device.type}, global batch "
                f"{plan.layout.global_batch}, {plan.steps_per_epoch} steps/epoch, steps {step + 1}..{last} of "
                f"{plan.schedules.train_steps - shift}"
                + (f" (the schedules run {shift:+d} steps from the count)" if shift else ""))
    started, first_step, skipped = time.perf_counter(), step + 1, 0
    save = lambda: save_checkpoint(engine, ema, target, loader, cfg, plan, step, out_dir)  # noqa: E731
    beat = watchdog.beat if watchdog is not None else lambda _: None
    beat(step)
    out_id = folder_id(out_dir)
    with ema:  # nothing left in flight when the loop ends or raises: gloo aborts a process exiting with a gather
        while step < last:
            step += 1
            sched = set_schedules(engine.optimizer, step + shift, cfg, plan.schedules)
            for _ in range(accum):
                t0 = time.perf_counter()
                batch = next(batches)
                timer.add_wait(time.perf_counter() - t0)
                if samples is not None:
                    samples.write(step, loader.epoch, batch.keys)
                if flops is None:  # counted once, on the first micro step (same work as every other)
                    flops = count_flops(lambda: state.add(step, micro_step(engine, ema, target, batch, dtype)))
                    flops *= accum
                else:
                    state.add(step, micro_step(engine, ema, target, batch, dtype))
            timer.add_step(plan.layout.batch_size * accum)  # one optimizer step
            ema.update(sched["momentum"])  # its all-gather runs while the next batch is fetched and the context forward
            if run.rank == 0:
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
                if cfg.data.on_bad_sample == "skip":  # else none can be skipped: no collective for a constant 0
                    skipped = skipped_samples(loader)  # the last step always logs: summary.json takes it from here
                stopping, gone, requeue = agree((stop.received is not None, folder_id(out_dir) != out_id,
                                                 stop.requeue), device)
                if gone:  # before anything writes: the monitors would raise mid-write
                    raise TrainingError(vanished(out_dir, step))
                log_interval(state, step, last, loader.epoch, sched, batch, figures, monitor, skipped)
                if stopping:
                    save()
                    stop.ignore_further()
                    mixed = " (the requeue signal reached another rank)" if requeue and not stop.requeue else ""
                    logger.info(f"stopped by {stop.received or 'a signal on another rank'} at step {step}{mixed}; "
                                f"resume with --resume auto")
                    if requeue and run.rank == 0:  # the checkpoint is complete: every rank's part is written
                        logger.info(slurm.requeue(os.environ))
                    return 0
            if save_now:
                save()
            beat(step)
    if watchdog is not None:
        watchdog.disarm()
    bar.close()
    seconds = time.perf_counter() - started
    cached = cache_totals(loader) if loader.backend.cache is not None else None  # a collective: every rank calls it
    if run.rank == 0:
        write_summary(out_dir, step - first_step + 1, seconds, plan.layout, skipped, cached)
    return 0


def cache_totals(loader) -> dict:
    """What the shard caches of all ranks did (data.shards a URL): bytes from the network, bytes read from the
    cached files, and the share of lookups that found their file cached; a collective."""
    network, read, lookups, hits = (sum(col) for col in zip(*gather(loader.backend.cache.stats.as_tuple())))
    return {"data_network_bytes": network, "data_cache_read_bytes": read,
            "data_cache_hit_rate": hits / lookups if lookups else None}


def skipped_samples(loader) -> int:
    """Samples skipped as unreadable (data.on_bad_sample: skip) by all ranks since the run began (resumes included);
    a collective: every rank calls it."""
    return sum(gather(loader.backend.skipped))


def progress_bar(enabled: bool, total: int, initial: int):
    """A tqdm bar on rank 0 when stderr is a terminal; a no-op otherwise (logs stay line by line)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def diagnose(cfg, step, ema, target, batch, monitor, probe, device, dtype) -> None:
    """Rank 0, on their steps: collapse diagnostics of the target features, the kNN probe, and a TensorBoard image of
    the batch's first images with their masks."""
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
    every = cfg.logging.mask_images_every
    if every and (step == 1 or step % every == 0):
        write_image(monitor, "Masks/first_images", batch_pictures(batch.images, batch.ctx_idx, batch.tgt_idx,
                                                                   grid_size(cfg), MASK_IMAGES), step)


def write_summary(out_dir: Path, steps: int, seconds: float, layout, skipped: int,
                  cached: Optional[dict] = None) -> None:
    """Rank 0: run-level throughput, images/s per GPU and images per GPU-hour over this process's steps."""
    if steps <= 0:
        return
    images, world_size = steps * layout.global_batch, layout.world_size
    per_gpu = images / seconds / world_size
    summary = {"steps": steps, "seconds": seconds, "world_size": world_size, "images": images,
               "images_per_s_per_gpu": per_gpu, "images_per_gpu_hour": per_gpu * 3600, "skipped_samples": skipped,
               **(cached or {})}
    write_file_atomic(out_dir / "summary.json", json.dumps(summary, indent=2).encode())
    logger.info(f"summary: {steps} steps, {images} images in {seconds:.1f} s on {world_size} rank(s): "
                f"{per_gpu:.1f} images/s per GPU, {per_gpu * 3600:,.0f} images per GPU-hour "
                f"(includes start-up, checkpoints and logging); {skipped} bad samples skipped")
    if cached:
        rate = cached["data_cache_hit_rate"]
        logger.info(f"shard cache: {cached['data_network_bytes'] / 1e6:,.1f} MB from the network, "
                    f"{cached['data_cache_read_bytes'] / 1e6:,.1f} MB read from the cache, hit rate "
                    + ("n/a" if rate is None else f"{100 * rate:.1f}%"))
