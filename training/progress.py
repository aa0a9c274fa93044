"""What the loop tells: a line and the monitors' scalars every logging.every_steps; the collapse diagnostics of a fixed
set of images, which every rank takes part in, and the alarm they feed (training/collapse.py); rank 0's probe and mask
pictures on their steps; a progress bar on a terminal; summary.json (the whole run's figures and each launch's) when
a launch ends its steps or stops on a signal. What each figure means: docs/training.md, "Logging".

    progress = Progress(cfg, plan, guard, step, make_probe)
    progress.timer.add_wait(seconds); progress.read(trainer, batch); progress.losses.add(step, loss)  # micro step
    progress.step_done(trainer, batch)                         # per optimizer step, every rank (diagnostics)
    progress.log(trainer, sched, batch)                        # on a logging step, after the host sync
    progress.finish(trainer, stopped=False)                    # summary.json
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from config import grid_size
from pipeline.masks.pictures import batch_pictures
from training.collapse import CollapseRule, FixedSet, History, alarm_line
from training.distributed import gather, on_rank0
from training.monitors import build_monitor
from training.metrics import IntervalTimer, format_eta, peak_memory_gb, peak_tflops
from training.sample_log import SampleLog
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

MASK_IMAGES = 4  # images of the batch in each TensorBoard mask picture


class Losses:
    """Per-step losses and the first non-finite step, kept on the device until a logging step reads them: no host
    sync in between."""

    def __init__(self):
        self.losses, self.first_bad = [], None

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.losses.append((step, loss))
        bad = torch.where(torch.isfinite(loss), torch.zeros_like(loss), torch.full_like(loss, step))
        self.first_bad = bad if self.first_bad is None else torch.where(self.first_bad > 0, self.first_bad, bad)

    def bad_step(self) -> int:
        return 0 if self.first_bad is None else int(self.first_bad.item())

    def pop(self) -> list[tuple[int, float]]:
        values = torch.stack([v for _, v in self.losses]).float().tolist()
        out = [(s, v) for (s, _), v in zip(self.losses, values)]
        self.losses = []
        return out


class Progress:
    """The loop's log, its monitors (DeepSpeed's TensorBoard and CSV) and its figures, for one launch."""

    def __init__(self, cfg, plan, guard, step: int, make_probe: Optional[Callable[[], Callable]] = None):
        self.cfg, self.rank, self.device = cfg, guard.rank, guard.device
        self.every = cfg.logging.every_steps
        self.monitor = build_monitor(cfg, plan, guard.rank)
        self.losses, self.timer, self.peak = Losses(), IntervalTimer(), peak_tflops(guard.device)
        self.flops: Optional[float] = None  # per optimizer step, counted on the first
        self.skipped = 0  # bad samples skipped by all ranks (data.on_bad_sample: skip)
        self.alarm: Optional[str] = None  # rank 0: the line of a collapse alarm that stops the run (logging.collapse)
        self.probe = on_rank0(make_probe) if make_probe is not None and cfg.logging.probe_every else None
        self.fixed = FixedSet(cfg, guard.rank, plan.world_size) if cfg.logging.diagnostics_every else None
        self.rule = CollapseRule(cfg.logging.collapse_fraction, cfg.logging.collapse_patience)
        self.history = History(cfg.run.out_dir, step) if guard.rank == 0 else None
        if self.history is not None:
            self.history.replay(self.rule)  # the peaks of the steps before this launch's first
        self.samples = SampleLog(cfg.run.out_dir, guard.rank, plan.world_size) if cfg.logging.sample_log else None
        self.bar = progress_bar(guard.rank == 0 and sys.stderr.isatty(), total=plan.last_step, initial=step)
        self.started, self.first_step = time.perf_counter(), step + 1
        self.data_epochs: list[dict] = []  # rank 0: the shard caches' figures of each epoch of this launch

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def read(self, trainer, batch) -> None:
        """A micro batch came: its keys into the sample log."""
        if self.samples is not None:
            self.samples.write(trainer.step, trainer.loader.epoch, batch.keys)

    def step_done(self, trainer, batch) -> None:
        """Every rank, after each optimizer step: on a diagnostics step each encodes its share of the fixed set (a
        collective); then rank 0 the bar, the figures and the alarm, the probe and the pictures of their steps."""
        step, log = trainer.step, self.cfg.logging
        diagnostics = self.fixed is not None and step % log.diagnostics_every == 0
        probing = self.probe is not None and (step % log.probe_every == 0 or (
            self.cfg.checkpoint.keep_best and trainer.checkpointer.due(step)))  # a probe ranks each save
        if diagnostics or probing:
            trainer.ema.wait()
        figures = self.fixed.measure(trainer) if diagnostics else None
        if self.rank == 0:
            self.bar.update(1)
            self.diagnose(trainer, batch, figures, probing)
        self.count_epochs(trainer)

    def count_epochs(self, trainer) -> None:
        """Every rank, after each step: the shard caches' figures of each epoch the loaders ended (data.shards a URL;
        a collective, in the step after an epoch's last, which every rank reaches together); rank 0 logs them, writes
        them as Data/ scalars at that step and keeps them for summary.json."""
        loader = trainer.loader
        while loader.ended_epochs:
            epoch, counts = loader.ended_epochs.pop(0)
            self.add_epoch(epoch_figures(epoch, gather(counts), loader.backend.cache, True), trainer.step)

    def add_epoch(self, figures: dict, step: int) -> None:
        if self.rank != 0:
            return
        self.data_epochs.append(figures)
        self.monitor.write_events([("Data/network_MB", figures["network_bytes"] / 1e6, step),
                                   ("Data/network_x_dataset", figures["network_x_dataset"], step),
                                   ("Data/reads_waited", figures["reads_waited"], step)]
                                  + ([("Data/cache_hit_rate", figures["hit_rate"], step)]
                                     if figures["hit_rate"] is not None else []))
        logger.info(epoch_line(figures))

    def log(self, trainer, sched: dict, batch) -> None:
        """A logging step, after the host sync: the line and the scalars of the steps since the last one."""
        figures = {**self.timer.report(self.flops, self.peak), "peak_gb": peak_memory_gb(self.device)}
        losses, step, last = self.losses.pop(), trainer.step, trainer.plan.last_step
        mean_loss = sum(v for _, v in losses) / len(losses)
        kc, kt = batch.ctx_idx.shape[1], batch.tgt_idx.shape[2]
        mfu = f"{figures['mfu'] * 100:.1f}%" if figures["mfu"] is not None else "n/a"
        logger.info(f"step {step}/{last} ep {trainer.loader.epoch} | loss {mean_loss:.4f} | lr {sched['lr']:.2e} "
                    f"wd {sched['wd']:.3f} m {sched['momentum']:.5f} | K {kc}/{kt} | "
                    f"{figures['images_per_s']:.1f} img/s/GPU | step {figures['step_time_s']:.3f}s = data "
                    f"{figures['data_wait_s']:.3f} + compute {figures['compute_s']:.3f} | mem "
                    f"{figures['peak_gb']:.2f} GiB | MFU {mfu} | {figures['images_per_gpu_hour']:,.0f} img/GPU-h | "
                    f"ETA {format_eta((last - step) * figures['step_time_s'])}"
                    + (f" | skipped {self.skipped} bad samples so far" if self.skipped else ""))
        events = [("Train/loss", v, s) for s, v in losses]
        events += [(f"Train/{k}", v, step) for k, v in
                   {**sched, "K_enc": kc, "K_pred": kt, "epoch": trainer.loader.epoch}.items()]
        events += [(f"Perf/{k}", v, step) for k, v in figures.items() if v is not None]
        events.append(("Data/skipped_samples", self.skipped, step))
        self.monitor.write_events(events)

    def count_skipped(self, loader) -> None:
        """Samples skipped as unreadable by all ranks since the run began (resumes included); a collective, on
        logging steps, only when data.on_bad_sample is skip (else none can be)."""
        if self.cfg.data.on_bad_sample == "skip":
            self.skipped = sum(gather(loader.backend.skipped))

    def diagnose(self, trainer, batch, figures: Optional[dict], probing: bool) -> None:
        """Rank 0: the fixed set's `figures` (None off their steps) and the kNN probe (when `probing`), each logged
        and judged by the collapse rule; the probe's value to the checkpointer (checkpoint.keep_best); a TensorBoard
        image of the batch's first images with their masks."""
        step, events = trainer.step, []
        if figures is not None:
            events += [(f"Diagnostics/{k}", v, step) for k, v in figures.items() if k != "images"]
            logger.info(f"step {step} diagnostics on {figures['images']} fixed images of {self.fixed.source}: feature "
                        f"std {figures['feature_std']:.4f}, effective rank {figures['effective_rank']:.1f} of at most "
                        f"{figures['effective_rank_ceiling']:.0f}, of the patch tokens {figures['token_rank']:.1f} of "
                        f"at most {figures['token_rank_ceiling']:.0f}")
            self.judge(step, figures)
        if probing:
            top1 = self.probe(trainer.target, self.device)
            events.append(("Probe/knn_top1", top1, step))
            logger.info(f"step {step} probe: kNN top-1 {100 * top1:.1f}% (target encoder, held-out shards)")
            trainer.checkpointer.probed(step, top1)
            self.judge(step, {"knn_top1": top1})
        if events and self.cfg.logging.collapse != "off":
            events.append(("Diagnostics/collapse_alarm", float(self.rule.firing), step))  # 1 while a figure is down
        if events:
            self.monitor.write_events(events)
        every = self.cfg.logging.mask_images_every
        if every and (step == 1 or step % every == 0):
            self.monitor.write_image("Masks/first_images", batch_pictures(
                batch.images, batch.ctx_idx, batch.tgt_idx, grid_size(self.cfg), MASK_IMAGES), step)

    def judge(self, step: int, figures: dict) -> None:
        """Rank 0: a check's figures into collapse.json and, unless logging.collapse is off, through the rule: when
        it fires, warn = one line, stop = the line the loop stops with at its next check."""
        self.history.add(step, figures)
        mode = self.cfg.logging.collapse
        if mode == "off":
            return
        fired = self.rule.check(step, figures)
        if fired is not None:
            line = alarm_line(fired, self.cfg.logging.collapse_fraction, Path(self.cfg.run.out_dir))
            if mode == "stop":
                self.alarm = self.alarm or line
            else:
                logger.warning(line)

    def finish(self, trainer, stopped: bool = False) -> None:
        """The end of this launch's steps (the run's last step, or a stop signal: `stopped`), on every rank: the shard
        caches' totals (a collective), then rank 0's summary.json."""
        self.bar.close()
        self.monitor.close()
        steps = trainer.step - self.first_step + 1
        cache = trainer.loader.backend.cache
        cached = cache_totals(cache) if cache is not None else None
        if cache is not None:
            self.count_epochs(trainer)
            epoch, counts = trainer.loader.epoch_counts()  # the epoch this launch ends in, so far
            counts = gather(counts)
            if any(any(c) for c in counts):
                self.add_epoch(epoch_figures(epoch, counts, cache, False), trainer.step)
            cached = {**cached, "data_epochs": self.data_epochs}
        if self.rank == 0 and steps > 0:
            layout = trainer.plan.layout
            launch = {"first_step": self.first_step, "last_step": trainer.step, "world_size": layout.world_size,
                      "images": steps * layout.global_batch, "seconds": process_seconds(),
                      "loop_seconds": time.perf_counter() - self.started,
                      "ended": "stop signal" if stopped else "last step", **(cached or {})}
            write_summary(Path(self.cfg.run.out_dir), launch, self.skipped)


def process_seconds() -> float:
    """Wall seconds since this process started: the interpreter, the imports and DeepSpeed's set-up included. On
    Linux from the kernel's own clock (the start in ticks since boot, /proc/self/stat field 22, against
    /proc/uptime); psutil's start time elsewhere, which counts from a boot time rounded to the second."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return float(Path("/proc/uptime").read_text().split()[0]) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


def cache_totals(cache) -> dict:
    """What the shard caches of all ranks did (data.shards a URL): bytes from the network, bytes read from the
    cached files, and the hit rate (hit_rate); a collective."""
    network, read = (sum(col) for col in zip(*gather(cache.stats.as_tuple()[:2])))
    return {"data_network_bytes": network, "data_cache_read_bytes": read,
            "data_cache_hit_rate": hit_rate(network, read)}


def hit_rate(network: int, read: int) -> float | None:
    """The share of the bytes read that did not come from the network: 1 - network / read, at least 0 (a cache that
    fetches a whole shard for each image it reads scores 0, however often it finds a file); None when nothing was
    read."""
    return max(0.0, 1.0 - network / read) if read else None


def epoch_figures(epoch: int, counts: list[tuple[int, int, int]], cache, complete: bool) -> dict:
    """One epoch's figures from every rank's (network bytes, bytes read, reads that waited) `counts`."""
    network, read, waits = (sum(col) for col in zip(*counts))
    total = cache.total_tar_bytes()
    return {"epoch": epoch, "complete": complete, "network_bytes": network, "read_bytes": read,
            "network_x_dataset": network / total if total else 0.0, "hit_rate": hit_rate(network, read),
            "reads_waited": waits}


def epoch_line(figures: dict) -> str:
    rate = figures["hit_rate"]
    return (f"epoch {figures['epoch']}{'' if figures['complete'] else ' (so far)'} data: "
            f"{figures['network_bytes'] / 1e6:,.1f} MB from the network ({figures['network_x_dataset']:.2f} x the "
            f"shards), {figures['read_bytes'] / 1e6:,.1f} MB read, cache hit rate "
            + ("n/a" if rate is None else f"{100 * rate:.1f}%") + f", {figures['reads_waited']} read(s) waited for the "
            f"network")


def write_summary(out_dir: Path, launch: dict, skipped: int) -> None:
    """Rank 0: summary.json of the whole run, this `launch` (first_step, last_step, world_size, images, seconds from
    process start, loop_seconds, ended, the cache figures) appended to the launches the previous summary.json
    recorded before it; `skipped` counts since the run began."""
    path = out_dir / "summary.json"
    launches = [*earlier_launches(path, launch["first_step"]), per_gpu(launch)]
    summary = {**per_gpu(run_totals(launches)), "skipped_samples": skipped, "launches": launches}
    write_file_atomic(path, json.dumps(summary, indent=2).encode())
    logger.info(f"summary: {summary['steps']} steps of the run in {len(launches)} launch(es), {summary['images']} "
                f"images in {summary['seconds']:.1f} s (from each process's start): "
                f"{summary['images_per_s_per_gpu']:.1f} images/s per GPU, {summary['images_per_gpu_hour']:,.0f} "
                f"images per GPU-hour; this launch: steps {launch['first_step']}..{launch['last_step']} in "
                f"{launch['seconds']:.1f} s, {launch['seconds'] - launch['loop_seconds']:.1f} s of it start-up; "
                f"{skipped} bad samples skipped")
    if "data_network_bytes" in launch:
        rate = launch["data_cache_hit_rate"]
        logger.info(f"shard cache: {launch['data_network_bytes'] / 1e6:,.1f} MB from the network, "
                    f"{launch['data_cache_read_bytes'] / 1e6:,.1f} MB read from the cache, hit rate "
                    + ("n/a" if rate is None else f"{100 * rate:.1f}%"))


def earlier_launches(path: Path, first_step: int) -> list[dict]:
    """The launches the run's previous summary.json recorded that ended before `first_step`: each counted once. A
    launch resumed from an earlier checkpoint replaces those after it (their steps are done again); a summary that
    is not of this form starts the list anew, saying so."""
    if not path.is_file():
        return []
    try:
        launches = json.loads(path.read_text())["launches"]
        kept = [dict(x) for x in launches if int(x["last_step"]) < first_step]
        for x in kept:
            int(x["first_step"]), int(x["world_size"]), int(x["images"]), float(x["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning(f"{path}: not a summary of launches ({type(err).__name__}: {err}); summary.json counts this "
                       f"launch alone")
        return []
    if len(kept) < len(launches):
        logger.info(f"{path}: {len(launches) - len(kept)} launch(es) that went past step {first_step - 1}, where "
                    f"this launch resumed, are replaced by it")
    return kept


def run_totals(launches: list[dict]) -> dict:
    """The whole run's figures from its launches: steps, images and seconds summed; the world size of the last."""
    return {"first_step": launches[0]["first_step"], "last_step": launches[-1]["last_step"],
            "steps": sum(x["last_step"] - x["first_step"] + 1 for x in launches),
            "images": sum(x["images"] for x in launches), "seconds": sum(x["seconds"] for x in launches),
            "gpu_seconds": sum(x["seconds"] * x["world_size"] for x in launches),
            "world_size": launches[-1]["world_size"]}


def per_gpu(figures: dict) -> dict:
    """`figures` with images/s per GPU and images per GPU-hour over their wall seconds (start-up included)."""
    gpu_seconds = figures.get("gpu_seconds", figures["seconds"] * figures["world_size"])
    rate = figures["images"] / gpu_seconds if gpu_seconds > 0 else 0.0
    return {**figures, "images_per_s_per_gpu": rate, "images_per_gpu_hour": rate * 3600}


def progress_bar(enabled: bool, total: int, initial: int):
    """A tqdm bar on rank 0 when stderr is a terminal; a no-op otherwise (logs stay line by line)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
