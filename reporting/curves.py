"""The run's curves from its step log: the loss and the schedules, throughput and MFU, the collapse diagnostics.

Each figure is a matplotlib Figure on the Agg canvas (no pyplot, no display). Every line drawn from the step log
carries the log's name as its gid ("Train_loss"), so what a figure shows can be read back from it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reporting.steplog import StepLog

DPI = 100
PANEL = (5.0, 3.0)  # inches of one panel; a figure is a grid of them


def new_figure(rows: int, cols: int, title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.suptitle(title)
    return fig, axes


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the window − 1 before it (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def loss_window(count: int) -> int:
    return max(1, count // 50)


def plot(ax, log: StepLog, name: str, label: str, scale: float = 1.0, missing: str = "", **style) -> bool:
    """Draws the series `name` on `ax` (times `scale`); says so on the axis (and `missing`: how to get it) when the
    run did not log it."""
    series = log.get(name)
    if series is None or not len(series.steps):
        ax.text(0.5, 0.5, f"not logged ({name})" + (f"\n{missing}" if missing else ""), ha="center", va="center",
                transform=ax.transAxes, color="grey", fontsize=9)
        return False
    ax.plot(series.steps, series.values * scale, label=label, gid=name, **style)
    return True


def label_axis(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize=8)


def training_figure(log: StepLog) -> Figure:
    """The loss (every step, and its running mean) and the schedules applied at each logging step."""
    fig, (loss, lr, wd, momentum) = new_figure(2, 2, "loss and schedules")
    if plot(loss, log, "Train_loss", "loss", alpha=0.35, lw=0.8):
        series = log.get("Train_loss")
        window = loss_window(len(series.values))
        loss.plot(series.steps, smooth(series.values, window), label=f"mean of {window} steps", gid="smoothed", lw=1.6)
    loss.set_yscale("log")
    label_axis(loss, "loss (smooth L1 to the target features), log scale")
    plot(lr, log, "Train_lr", "lr")
    label_axis(lr, "learning rate")
    plot(wd, log, "Train_wd", "weight decay")
    label_axis(wd, "weight decay")
    plot(momentum, log, "Train_momentum", "EMA momentum")
    label_axis(momentum, "target-encoder EMA momentum")
    return fig


def throughput_figure(log: StepLog, summary: Optional[dict]) -> Figure:
    """Images/s per GPU (beside the run's figure), MFU (or TFLOP/s where no GPU peak is known), the step time split
    into data wait and compute, and peak memory; each over the logging steps of rank 0."""
    title = "throughput"
    if summary:
        title += (f": {summary['images_per_s_per_gpu']:.1f} images/s per GPU, {summary['images_per_gpu_hour']:,.0f} "
                  f"images per GPU-hour ({summary['steps']} steps on {summary['world_size']} rank(s))")
    fig, (speed, mfu, split, memory) = new_figure(2, 2, title)
    plot(speed, log, "Perf_images_per_s", "between logging steps")
    if summary:
        speed.axhline(summary["images_per_s_per_gpu"], color="black", ls="--", lw=1, label="over the run")
    speed.set_ylim(bottom=0)
    label_axis(speed, "images/s per GPU (rank 0)", "images/s")
    if "Perf_mfu" in log:
        plot(mfu, log, "Perf_mfu", "MFU", scale=100.0)
        mfu.set_ylim(bottom=0)
        label_axis(mfu, "model FLOPs utilisation", "% of the bf16 peak")
    else:
        plot(mfu, log, "Perf_tflops", "TFLOP/s")
        mfu.set_ylim(bottom=0)
        label_axis(mfu, "TFLOP/s per GPU (no MFU: not a GPU of known peak)", "TFLOP/s")
    plot(split, log, "Perf_compute_s", "compute")
    plot(split, log, "Perf_data_wait_s", "waiting for data")
    label_axis(split, "time per step", "s")
    plot(memory, log, "Perf_peak_gb", "peak")
    label_axis(memory, "peak memory (GPU, or the process's RSS on the CPU)", "GiB")
    return fig


def diagnostics_figure(log: StepLog) -> Figure:
    """The collapse diagnostics of the target features (logging.diagnostics_every) and the in-training kNN probe
    (logging.probe_every)."""
    fig, (std, rank, probe) = new_figure(1, 3, "collapse diagnostics of the target encoder's features")
    plot(std, log, "Diagnostics_feature_std", "feature std", missing="logging.diagnostics_every turns it on")
    label_axis(std, "mean per-dimension std (0 = collapsed)")
    plot(rank, log, "Diagnostics_effective_rank", "effective rank", missing="logging.diagnostics_every turns it on")
    label_axis(rank, "effective rank of the pooled features (1 = collapsed)")
    plot(probe, log, "Probe_knn_top1", "kNN top-1", scale=100.0,
         missing="logging.probe_every and logging.probe_shards turn it on")
    label_axis(probe, "kNN top-1 on held-out shards", "%")
    return fig
