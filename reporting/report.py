"""The report of a run folder: each section a PNG (or the reason it is left out) and one index.html that shows them
with the run's settings and figures.

    report = write_report("runs/demo/train", val_shards="runs/demo/shards-val", probe="runs/demo/probe.json")
    report.folder / "index.html"

Sections, in order: the masks on the run's first batch, loss and schedules, throughput, collapse diagnostics, the
patch features of the trained target encoder beside its random init, the probe table.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from config import grid_size, mask_sampler
from evaluation.encoders import load_encoder
from evaluation.features import first_images, normalize
from pipeline.loading.loader import build_loader, resolve_backend
from pipeline.masks.pictures import mask_pictures, to_uint8
from pipeline.shards.manifest import is_url, read_manifest, scheme_problem
from reporting import ReportError, kind
from reporting.curves import diagnostics_figure, throughput_figure, training_figure
from reporting.page import Section, probe_section, write_page
from reporting.pictures import features_figure, masks_figure, patch_features, pca_rgb
from reporting.run_folder import RunFolder, open_run
from training.plan import BatchLayout
from util.files import write_file_atomic

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MaskBatch:
    """What the mask picture is drawn from: rank 0's first batch of the run, its first images."""

    images: np.ndarray  # (n, S, S, 3) uint8, as the run's loader cropped them
    ctx_idx: np.ndarray  # (n, K_enc), or (nenc, n, K_enc)
    tgt_idx: np.ndarray  # (M, n, K_pred)
    keys: list[str]
    grid: tuple[int, int]
    labels: list[int]  # -1 for unlabeled data
    classes: Optional[list[str]]  # the shards' class names, when they have labels


@dataclasses.dataclass
class Report:
    folder: Path
    sections: list[Section]
    figures: dict  # section name → the matplotlib Figure its PNG was drawn from
    masks: Optional[MaskBatch]


def write_report(run_dir: str | Path, out: str | Path | None = None, val_shards: str | Path | None = None,
                 shards: str | Path | None = None, probe: str | Path | None = None, count: int = 6,
                 device: str = "cpu") -> Report:
    """Draws the report of `run_dir` into `out` (default run_dir/report): PNGs and index.html.

    Args:
        val_shards: the images of the feature picture (default: logging.probe_shards, else the training shards).
        shards: the training shards, where data.shards of the run's config.yaml no longer points at them.
        probe: eval.py's --json file (default: run_dir/probe.json when there is one).
        count: images in the mask and feature pictures.
    Raises:
        util.errors.UserError: one line naming the folder, file or option, for a run folder that is not one and for
            what the caller named; what the run folder lacks (a step log, a checkpoint) leaves its section out,
            saying why.
    """
    for option, given in (("--val-shards", val_shards), ("--shards", shards)):
        if given is not None and (problem := scheme_problem(str(given))):
            raise ReportError(f"{option}: {problem}")
    run = open_run(run_dir)
    folder = report_folder(run, out)
    report = Report(folder, [], {}, None)
    train_shards = str(shards or run.cfg.data.shards)  # a folder, or the URL of one
    report.masks = add_masks(report, run, train_shards, count)
    add_curves(report, run)
    add_features(report, run, train_shards, val_shards, count, device)
    probe_path = Path(probe) if probe else run.path / "probe.json"
    report.sections.append(probe_section(probe_path, explicit=probe is not None))
    write_page(folder / "index.html", run, report.sections)
    for section in report.sections:
        if section.note:
            logger.warning(f"report: {section.title}: left out: {section.note}")
    return report


def report_folder(run: RunFolder, out: str | Path | None) -> Path:
    """The folder the report goes to (`out`, else run/report), made if need be. A run/report that is a link out of
    the run folder is refused: the report would land where nobody named, e.g. in a folder the link was left pointing
    at. What is there and is not a folder, or cannot be made, is a ReportError naming it."""
    folder = Path(out) if out is not None else run.path / "report"
    name = f"--out {folder}" if out is not None else str(folder)
    if out is None and folder.is_symlink():
        target = Path(os.path.realpath(folder))
        if not target.is_relative_to(run.path.resolve()):
            raise ReportError(f"{folder} is a link to {os.readlink(folder)}, outside the run folder; the report is "
                              f"not written through it: remove the link, or give the report a folder with --out")
    try:
        if folder.exists() and not folder.is_dir():
            what = "a file" if folder.is_file() else kind(folder.stat().st_mode)
            raise ReportError(f"{name} is {what}, not a folder; move it away, or give the report another folder "
                              f"with --out")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"{name}: the report's folder cannot be made ({err.strerror}); give the report a folder "
                          f"you can write with --out") from None
    return folder


CAPTIONS = {
    "training": "The loss of every step (faint, with its running mean on a longer run); the learning rate, weight "
                "decay and EMA momentum the schedules set, at each logging step. A dotted line marks where a launch "
                "resumed.",
    "throughput": "Rank 0's figures between logging steps. The dashed line and the title are the whole run's "
                  "figures (summary.json: every launch, each from its process start, so start-up, checkpoints and "
                  "logging are included).",
    "diagnostics": "The target encoder's features on rank 0's batch, pooled over patches: a collapsing encoder drives "
                   "both towards their floor (std 0, rank 1).",
}


def add_curves(report: Report, run: RunFolder) -> None:
    """The step log's sections: loss and schedules, throughput, and the diagnostics the log holds (the others named
    with why they are not drawn)."""
    titles = {"training": "Loss and schedules", "throughput": "Throughput", "diagnostics": "Collapse diagnostics"}
    if run.log is None:
        note = (f"no step log in {run.path / 'logs' / run.cfg.run.name} (logging.csv was off, or no logging step was "
                f"reached)")
        report.sections += [Section(name, title, note=note) for name, title in titles.items()]
        return
    add_figure(report, Section("training", titles["training"], caption=CAPTIONS["training"]), training_figure(run.log))
    add_figure(report, Section("throughput", titles["throughput"], caption=CAPTIONS["throughput"]),
               throughput_figure(run.log, run.summary))
    logs = run.cfg.logging
    fig, missing = diagnostics_figure(run.log, logs.diagnostics_every, logs.probe_every)
    if fig is None:
        report.sections.append(Section("diagnostics", titles["diagnostics"], note="; ".join(missing)))
        return
    caption = CAPTIONS["diagnostics"] + "".join(f" Not drawn: {m}." for m in missing)
    add_figure(report, Section("diagnostics", titles["diagnostics"], caption=caption), fig)


def add_figure(report: Report, section: Section, fig) -> None:
    """Saves `fig` as the section's PNG (whole or not at all) and adds the section."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    section.png = f"{section.name}.png"
    write_file_atomic(report.folder / section.png, buffer.getvalue(), sync=False)
    report.figures[section.name] = fig
    report.sections.append(section)


def add_masks(report: Report, run: RunFolder, shards: str, count: int) -> Optional[MaskBatch]:
    title = "Masks on the run's images"
    try:
        masks, caption = first_batch(run, shards, count)
    except ReportError as err:  # the shards moved: the other sections need none of them
        report.sections.append(Section("masks", title, note=str(err)))
        return None
    pictures = mask_pictures(masks.images, masks.ctx_idx, masks.tgt_idx, masks.grid)
    titles = [mask_title(masks, i) for i in range(len(pictures))]
    fig = masks_figure(pictures, titles, run.cfg.mask.npred, "the multiblock masks of rank 0's first batch")
    add_figure(report, Section("masks", title, caption=caption), fig)
    return masks


def mask_title(masks: MaskBatch, i: int) -> str:
    """What a picture shows, e.g. "image 1 · class 3 / 52 context, 4×6 target patches / key 000123"."""
    label = masks.labels[i]
    name = masks.classes[label] if masks.classes and 0 <= label < len(masks.classes) else str(label)
    blocks = masks.ctx_idx.shape[:-2]  # (nenc,) when there are several context blocks
    ctx = "×".join(str(n) for n in (*blocks, masks.ctx_idx.shape[-1]))
    targets = f"{masks.tgt_idx.shape[0]}×{masks.tgt_idx.shape[-1]}"
    return (f"image {i + 1}" + (f" · class {name}" if label >= 0 else "")
            + f"\n{ctx} context, {targets} target patches\nkey {masks.keys[i]}")


def first_batch(run: RunFolder, shards: str, count: int) -> tuple[MaskBatch, str]:
    """Rank 0's first batch of the run (its layout, backend, seed and sampler) from `shards`, on the CPU."""
    cfg = run.cfg
    check_shards(run, shards)
    identity = run.record.identity if run.record else {}
    layout = BatchLayout(int(identity.get("data.batch_size", cfg.data.batch_size)),
                         int(identity.get("optimization.grad_accum", cfg.optimization.grad_accum)), run.world_size)
    backend = run.backend or resolve_backend(cfg.data.backend)
    data = dataclasses.replace(cfg.data, shards=str(shards), num_workers=0)
    manifest = read_manifest(str(shards))
    loader = build_loader(data, mask_sampler(cfg), seed=cfg.run.seed, rank=0, layout=layout,
                          steps_per_epoch=layout.steps_per_epoch(manifest.total_samples, str(shards)),
                          manifest=manifest, backend=backend, device=torch.device("cpu"), dtype=torch.float32)
    batch = next(iter(loader))
    n = min(count, len(batch.keys))
    ctx = batch.ctx_idx[..., :n, :].numpy()
    grid = grid_size(cfg)
    masks = MaskBatch(to_uint8(batch.images[:n]), ctx, batch.tgt_idx[:, :n].numpy(), list(batch.keys[:n]), grid,
                      batch.labels[:n].tolist(), manifest.classes)
    m = cfg.mask
    caption = (f"Rank 0's first batch (step 1) of a run on {run.world_size} rank(s), cropped by the {backend} "
               f"backend as the run's loader does (seed {cfg.run.seed}). The sampler: {m.npred} target blocks of "
               f"{_range(m.pred_mask_scale)} of the image each, aspect {_range(m.aspect_ratio)}; {m.nenc} context "
               f"block of {_range(m.enc_mask_scale)} with the targets cut out (allow_overlap {m.allow_overlap}). "
               f"This batch keeps {batch.ctx_idx.shape[-1]} context and {batch.tgt_idx.shape[-1]} target patches per "
               f"block of the {grid[0] * grid[1]} of an image: each set is cut to the batch's shortest, as the "
               f"official collator does.")
    return masks, caption


def check_shards(run: RunFolder, shards: str | Path) -> None:
    """The run's training shards are where its config.yaml (or --shards) says; else a ReportError saying how to
    point at them."""
    if is_url(str(shards)):
        raise ReportError(f"data.shards {shards} is a URL and the report reads a local shard folder: give --shards "
                          f"a local copy (the shard cache of a node that trained holds one, in data.cache_dir)")
    if not (Path(shards) / "manifest.json").is_file():
        raise ReportError(f"data.shards {shards} (from {run.path / 'config.yaml'}) holds no manifest.json: run "
                          f"report.py from the folder train.py ran in, or give the shards with --shards")


def _range(pair) -> str:
    return f"{pair[0]:g}–{pair[1]:g}"


def add_features(report: Report, run: RunFolder, train_shards: str, val_shards, count: int, device: str) -> None:
    """The PCA picture of the newest checkpoint's target encoder beside its random init, on `val_shards` (else
    logging.probe_shards, else the training shards: a note when those moved)."""
    title = "What the encoder learned"
    if run.checkpoint is None:
        report.sections.append(Section("features", title, note=f"no complete checkpoint in "
                                                               f"{run.path / 'checkpoints'} yet"))
        return
    if val_shards is not None:
        source, what = Path(val_shards), "--val-shards"
    elif run.cfg.logging.probe_shards:
        source, what = Path(run.cfg.logging.probe_shards), "logging.probe_shards"
    else:
        source, what = train_shards, "the training shards (no --val-shards given)"
        try:
            check_shards(run, source)
        except ReportError as err:  # the shards moved, as for the masks
            report.sections.append(Section("features", title, note=f"{err}, or give --val-shards"))
            return
    encoder, random_init = load_encoder(run.checkpoint, "target")
    encoder, random_init = encoder.to(device), random_init.to(device)
    images, keys = first_images(source, encoder.patch_embed.img_size[0], count)
    x, grid = normalize(images), encoder.grid
    rows = [(f"trained target encoder, {run.checkpoint.name}", *pca_rgb(patch_features(encoder, x), grid)),
            ("the run's random init (step 0)", *pca_rgb(patch_features(random_init, x), grid))]
    fig = features_figure(images.permute(0, 2, 3, 1).numpy(), rows, keys)
    caption = (f"The first images of {source} ({what}), centre-cropped. Each row below maps the first three "
               f"principal components of an encoder's output patch tokens, fitted over these images together, onto "
               f"red, green and blue: patches that look alike to the encoder share a colour.")
    add_figure(report, Section("features", title, caption=caption), fig)

