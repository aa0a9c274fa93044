"""report.py on a tiny real run (train.py, one process): its report read back from the data each figure was drawn
from, a run whose shards moved pointed at them with --shards, and the TensorBoard mask images the run wrote. (The
pieces alone, in process: unit/test_report.py.)"""
from __future__ import annotations

import csv
import html.parser
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from samplers import GRID, tiny_sampler

import report as report_cli
from config import load_config
from pipeline.masks.pictures import mask_picture, patch_sets
from training.sample_log import read_sample_log


class Sources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.names = []

    def handle_starttag(self, tag, attrs):
        self.names += [value for name, value in attrs if name in ("src", "href")]


def csv_series(path: Path) -> tuple[list[int], list[float]]:
    rows = [r for r in csv.reader(path.open()) if r and r[0] != "step"]
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows]


def line_data(fig, gid: str) -> tuple[list[int], list[float]]:
    lines = [line for ax in fig.axes for line in ax.lines if line.get_gid() == gid]
    assert len(lines) == 1, (gid, [line.get_gid() for ax in fig.axes for line in ax.lines])
    return [int(x) for x in lines[0].get_xdata()], [float(y) for y in lines[0].get_ydata()]


@pytest.fixture(scope="module")
def tiny_run(small_shards, tmp_path_factory):
    """12 steps of train.py alone (one process) in two launches, steps 1-6 and a resume for 7-12: logging every 2
    steps, diagnostics every 4, mask images at steps 1, 5 and 10, a checkpoint at 6 and 12, the sample log."""
    from launches import launch, ok, python, train_args

    out = tmp_path_factory.mktemp("tiny") / "run"
    sets = ("logging.every_steps=2", "logging.diagnostics_every=4", "logging.mask_images_every=5",
            "checkpoint.every_steps=6", "checkpoint.keep_last=1", "logging.sample_log=true")
    ok(launch(python(train_args(small_shards, out, *sets, "optimization.max_steps=6"))))
    ok(launch(python(train_args(small_shards, out, *sets, "optimization.max_steps=12") + ["--resume", "auto"])))
    return out


def test_a_tiny_run_and_its_report(tiny_run, small_shards, tmp_path):
    from reporting.report import write_report

    probe = {"setup": {"checkpoint": "c", "encoder": "target", "pool": "avg", "train_images": 10, "val_images": 10,
                       "classes": 10, "low_shot": "1%", "selection": "the best head"}}
    for name, top1 in (("checkpoint", 0.625), ("random init", 0.5)):
        probe[name] = {k: {"top1": top1} for k in ("knn", "linear", "attentive")}
        probe[name]["low_shot"] = {"mean": top1 / 2, "std": 0.01}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    report = write_report(tiny_run, tmp_path / "report", val_shards=small_shards, probe=tmp_path / "probe.json",
                          count=5)

    # every section drawn; each PNG decodes at the size of the figure it was drawn from
    assert [s.name for s in report.sections if s.note is None] == ["masks", "training", "throughput", "diagnostics",
                                                                   "features", "probe"]
    for name, fig in report.figures.items():
        with Image.open(report.folder / f"{name}.png") as png:
            assert png.format == "PNG" and png.size == tuple(round(v * fig.dpi) for v in fig.get_size_inches())
            png.load()

    # the curves are the step log's values
    logs = tiny_run / "logs" / "tiny_cpu"
    for figure, gids in (("training", ("Train_loss", "Train_lr", "Train_wd", "Train_momentum")),
                         ("throughput", ("Perf_images_per_s", "Perf_compute_s", "Perf_data_wait_s", "Perf_peak_gb",
                                         "Perf_tflops")),
                         ("diagnostics", ("Diagnostics_feature_std", "Diagnostics_effective_rank"))):
        for gid in gids:
            assert line_data(report.figures[figure], gid) == pytest.approx(csv_series(logs / f"{gid}.csv")), gid
    assert line_data(report.figures["training"], "Train_loss")[0] == list(range(1, 13))
    assert line_data(report.figures["diagnostics"], "Diagnostics_effective_rank")[0] == [4, 8, 12]
    # the resume is marked on every panel, and every panel of a figure spans the same steps
    for name in ("training", "throughput", "diagnostics"):
        axes = report.figures[name].axes
        assert len({ax.get_xlim() for ax in axes}) == 1, name
        assert [int(line.get_xdata()[0]) for ax in axes for line in ax.lines if line.get_gid() == "resumed"] == \
            [7] * len(axes), name
    assert len(report.figures["diagnostics"].axes) == 2  # no empty kNN panel: logging.probe_every is 0
    assert "Not drawn: no kNN probe during training: logging.probe_every is 0 (off)." in \
        next(sec for sec in report.sections if sec.name == "diagnostics").caption

    # summary.json: the whole run in its two launches, each timed from its process's start
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert (summary["steps"], summary["first_step"], summary["last_step"]) == (12, 1, 12)
    assert [(x["first_step"], x["last_step"], x["ended"]) for x in summary["launches"]] == [
        (1, 6, "last step"), (7, 12, "last step")]
    assert all(x["seconds"] > x["loop_seconds"] + 1.0 for x in summary["launches"])  # the imports, DeepSpeed's set-up
    assert summary["seconds"] == pytest.approx(sum(x["seconds"] for x in summary["launches"]))

    # the masks are the sampler's for rank 0's first batch, and the picture is drawn from them
    cfg = load_config(tiny_run / "config.yaml")
    ctx_idx, tgt_idx = tiny_sampler(cfg.run.seed).sample(cfg.data.batch_size, step=0, rank=0)
    assert np.array_equal(report.masks.ctx_idx, ctx_idx[:5].numpy())
    assert np.array_equal(report.masks.tgt_idx, tgt_idx[:, :5].numpy())
    drawn = [ax.images[0].get_array() for ax in report.figures["masks"].axes if ax.images]
    assert len(drawn) == 5
    for i, picture in enumerate(drawn):
        want = mask_picture(report.masks.images[i], *patch_sets(ctx_idx[i], tgt_idx[:, i], GRID), scale=4)
        assert np.array_equal(np.asarray(picture), want), i
    first = next(row for row in read_sample_log(tiny_run) if row["step"] == 1 and row["rank"] == 0)
    assert report.masks.keys == first["keys"][:5]  # the images are the run's own first batch
    titles = [ax.get_title() for ax in report.figures["masks"].axes if ax.images]
    label = report.masks.classes[report.masks.labels[0]]
    assert titles[0] == (f"image 1 · class {label}\n{ctx_idx.shape[1]} context, "
                         f"{tgt_idx.shape[0]}×{tgt_idx.shape[2]} target patches\nkey {report.masks.keys[0]}")

    # the page names only files that exist, and shows every picture and the probe figures
    page = (report.folder / "index.html").read_text()
    parser = Sources()
    parser.feed(page)
    assert sorted(parser.names) == sorted(f"{name}.png" for name in report.figures)
    assert all((report.folder / name).is_file() for name in parser.names)
    assert "62.5%" in page and "+12.5" in page and "31.2 ± 1.0%" in page


def test_a_run_whose_shards_moved_is_pointed_at_them_with_shards(tiny_run, small_shards, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(f"shards: {small_shards}", f"shards: {tmp_path / 'gone'}"))
    assert report_cli.main([str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    assert page.count(f"Left out: data.shards {tmp_path / 'gone'} (from {config}) holds no manifest.json") == 2
    assert "(3 of 6 sections" in capsys.readouterr().out  # the curves; no masks, features or probe
    assert report_cli.main([str(run), "--shards", str(small_shards)]) == 0
    assert "(5 of 6 sections" in capsys.readouterr().out  # the masks and the features from the shards given


def test_the_run_wrote_its_masks_to_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(tiny_run / "logs" / "tiny_cpu"), size_guidance={IMAGES: 0})
    events.Reload()
    images = events.Images("Masks/first_images")
    assert [e.step for e in images] == [1, 5, 10]
    for event in images:
        with Image.open(io.BytesIO(event.encoded_image_string)) as png:
            assert png.format == "PNG" and png.size == (4 * 128 + 3 * 4, 128) == (event.width, event.height)
