"""The run's curves from its step log: the loss and the schedules, throughput and MFU, the collapse diagnostics.

Each figure is a matplotlib Figure on the Agg canvas (no pyplot, no display). Every line drawn from the step log
carries the log's name as its gid ("Train_loss"), so what a figure shows can be read back from it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from reporting.steplog import StepLog

DPI = 100
PANEL = (5.0, 3.0)  # inches of one panel; a figure is a grid of them


class PlainLogFormatter(LogFormatter):
    """A log axis's tick labels as plain numbers (0.42, not 4.2 × 10⁻¹) on the ticks matplotlib would label."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:.3g}" if super().__call__(x, pos) else ""


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


def plot(ax, log: StepLog, name: str, label: str, scale: float = 1.0, **style) -> bool:
    """Draws the series `name` on `ax` (times `scale`); says so on the axis when the run did not log it."""
    series = log.get(name)
    if series is None or not len(series.steps):
        ax.text(0.5, 0.5, f"not logged ({name})", ha="center", va="center", transform=ax.transAxes, color="grey",
                fontsize=9)
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


def step_axes(axes: list, log: StepLog) -> None:
    """One step range on every panel (the log's first step to its last, so a curve logged only on logging steps
    lines up with the loss of every step), and a dotted line labelled "resumed" where each later launch began."""
    first = min((int(s.steps[0]) for s in log.series.values() if len(s.steps)), default=0)
    last = max(log.last_step, first + 1)
    pad = 0.02 * (last - first)
    for ax in axes:
        for step in log.resumed:
            ax.axvline(step, color="grey", ls=":", lw=1, gid="resumed")
            ax.text(step, 0.98, "resumed ", transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="top",
                    fontsize=7, color="grey")
        ax.set_xlim(first - pad, last + pad)


def training_figure(log: StepLog) -> Figure:
    """The loss (every step, and its running mean when there are enough steps to smooth) and the schedules applied
    at each logging step."""
    fig, (loss, lr, wd, momentum) = new_figure(2, 2, "loss and schedules")
    series = log.get("Train_loss")
    window = loss_window(len(series.values)) if series is not None else 1
    if plot(loss, log, "Train_loss", "loss", alpha=0.35 if window > 1 else 1.0, lw=0.8) and window > 1:
        loss.plot(series.steps, smooth(series.values, window), label=f"running mean of {window} steps",
                  gid="smoothed", lw=1.6)
    loss.set_yscale("log")
    loss.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=True))
    loss.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    label_axis(loss, "loss (smooth L1 to the target features), log scale")
    plot(lr, log, "Train_lr", "lr")
    label_axis(lr, "learning rate")
    plot(wd, log, "Train_wd", "weight decay")
    label_axis(wd, "weight decay")
    plot(momentum, log, "Train_momentum", "EMA momentum")
    momentum.ticklabel_format(axis="y", useOffset=False, style="plain")  # 0.9985, not 1e-5 + 9.98e-1
    label_axis(momentum, "target-encoder EMA momentum")
    step_axes([loss, lr, wd, momentum], log)
    return fig


def throughput_figure(log: StepLog, summary: Optional[dict]) -> Figure:
    """Images/s per GPU (beside the run's figure), MFU (or TFLOP/s where no GPU peak is known), the step time split
    into data wait and compute, and peak memory; each over the logging steps of rank 0."""
    title = "throughput"
    if summary:
        launches = len(summary.get("launches", [])) or 1
        title += (f": {summary['images_per_s_per_gpu']:.1f} images/s per GPU, {summary['images_per_gpu_hour']:,.0f} "
                  f"images per GPU-hour ({summary['steps']} steps in {launches} launch{'es' if launches > 1 else ''} "
                  f"on {summary['world_size']} rank(s))")
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
    split.set_ylim(bottom=0)
    label_axis(split, "time per step", "s")
    plot(memory, log, "Perf_peak_gb", "peak")
    memory.set_ylim(bottom=0)  # from zero: a change of a few MiB is not drawn as a cliff
    label_axis(memory, "peak memory (GPU, or the process's RSS on the CPU)", "GiB")
    step_axes([speed, mfu, split, memory], log)
    return fig


DIAGNOSTICS = (("Diagnostics_feature_std", "feature std", "mean per-dimension std (0 = collapsed)", ""),
               ("Diagnostics_effective_rank", "effective rank", "effective rank of the pooled features (1 = collapsed)",
                ""),
               ("Probe_knn_top1", "kNN top-1", "kNN top-1 on held-out shards", "%"))


def diagnostics_figure(log: StepLog, diagnostics_every: int, probe_every: int) -> tuple[Optional[Figure], list[str]]:
    """The collapse diagnostics of the target features (logging.diagnostics_every) and the in-training kNN probe
    (logging.probe_every): a panel for each the log holds, and why each other one is not drawn (an empty panel
    tells nothing). No figure when the log holds none of them."""
    drawn = [d for d in DIAGNOSTICS if d[0] in log and len(log.get(d[0]).steps)]
    missing = []
    if not any(d[0].startswith("Diagnostics_") for d in drawn):
        missing.append(not_yet("diagnostics", "logging.diagnostics_every", diagnostics_every, log))
    if not any(d[0].startswith("Probe_") for d in drawn):
        missing.append(not_yet("kNN probe during training", "logging.probe_every", probe_every, log))
    if not drawn:
        return None, missing
    fig, axes = new_figure(1, len(drawn), "collapse diagnostics of the target encoder's features")
    for ax, (name, label, title, unit) in zip(axes, drawn):
        plot(ax, log, name, label, scale=100.0 if unit == "%" else 1.0)
        if name != "Diagnostics_effective_rank":
            ax.set_ylim(bottom=0)  # from zero: a small change of the std is not drawn as a collapse
        label_axis(ax, title, unit)
    step_axes(axes, log)
    return fig, missing


def not_yet(what: str, key: str, every: int, log: StepLog) -> str:
    """Why the step log holds none of `what`, logged every `every` steps (`key`)."""
    if not every:
        return f"no {what}: {key} is 0 (off)"
    if log.last_step < every:
        return (f"no {what} yet: the step log ends at step {log.last_step}, before the first at step {every} "
                f"({key})")
    return f"no {what} in the step log {log.folder}, although {key} is {every}"
