"""report.py and the mask pictures, the pieces alone: each mask picture drawn as the sampler placed its patches, the
batch pictures, the step log, the curves' smoothing, the PCA colours, a run folder reported with what it has, and
what cannot be reported in one line. (A tiny real run, its report read back from the data each figure was drawn
from, and the TensorBoard mask images it wrote: e2e/test_run_report.py.)"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from samplers import GRID, tiny_sampler

import report as report_cli
from config import config_to_yaml, load_config
from pipeline.masks.pictures import DIM, TINT, batch_pictures, mask_picture, patch_sets, target_colour
from reporting import ReportError
from reporting.curves import diagnostics_figure, smooth, throughput_figure, training_figure
from reporting.page import run_facts
from reporting.pictures import masks_figure, pca_rgb
from reporting.report import MaskBatch, mask_title
from reporting.run_folder import open_run
from reporting.steplog import Series, StepLog, read_series, read_step_log


def test_each_patch_of_a_mask_picture_is_drawn_as_the_sampler_placed_it():
    """The centre pixel of every patch says which set the sampler put it in: the image (context), the image blended
    with target k's colour (target k alone), or the image dimmed (neither)."""
    ctx_idx, tgt_idx = tiny_sampler().sample(8, step=3, rank=1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    seen = {"context": 0, "target": 0, "neither": 0}
    for i in range(8):
        context, targets = set(ctx_idx[i].tolist()), [set(row[i].tolist()) for row in tgt_idx]
        picture = mask_picture(images[i], *patch_sets(ctx_idx[i], tgt_idx[:, i], GRID), scale=4)
        assert picture.shape == (128, 128, 3) and picture.dtype == np.uint8
        for p in range(64):
            r, c = divmod(p, 8)
            got = picture[r * 16 + 8, c * 16 + 8].astype(int)
            pixel = images[i, r * 4 + 2, c * 4 + 2].astype(np.float32)
            ks = [k for k, t in enumerate(targets) if p in t]
            if p in context and not ks:
                want, kind = pixel, "context"
            elif len(ks) == 1:  # the sampler keeps targets out of the context (allow_overlap false)
                want, kind = (1 - TINT) * pixel + TINT * target_colour(ks[0]), "target"
            elif not ks:
                want, kind = DIM * pixel, "neither"
            else:
                continue  # overlapping targets: blended in turn
            assert np.abs(got - np.round(want)).max() <= 1, (i, p, kind, got, want)
            seen[kind] += 1
    assert min(seen.values()) > 20, seen


def test_batch_pictures_unnormalise_and_lay_out_the_first_images():
    sampler = tiny_sampler()
    ctx_idx, tgt_idx = sampler.sample(5, step=0)
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    from model.inputs import imagenet_stats

    mean, std = imagenet_stats("cpu")
    row = batch_pictures(((pixels.float() - mean) / std).to(torch.bfloat16), ctx_idx, tgt_idx, GRID, count=3)
    assert row.shape == (128, 3 * 128 + 2 * 4, 3)
    first = mask_picture(pixels[0].permute(1, 2, 0).numpy(), *patch_sets(ctx_idx[0], tgt_idx[:, 0], GRID), scale=4)
    assert np.abs(row[:, :128].astype(int) - first).max() <= 3  # bf16 rounding of the normalised pixels
    assert (row[:, 128:132] == 255).all()


def test_the_step_log_keeps_the_last_row_of_a_step_and_skips_headers_and_a_cut_row(tmp_path):
    path = tmp_path / "Train_loss.csv"
    path.write_bytes(b"step,loss\r\n1,0.5\r\n2,0.4\r\n3,0.3\r\nstep,loss\r\n3,0.35\r\n4,0.2\r\n5,0.1")  # resumed at 2
    series = read_series(path)
    assert series.steps.tolist() == [1, 2, 3, 4] and series.values.tolist() == [0.5, 0.4, 0.35, 0.2]
    path.write_text("step,loss\n1,0.5\n2,oops\n3,0.3\n")
    with pytest.raises(ReportError, match=r"Train_loss.csv:3: '2,oops' is not a 'step,value' row"):
        read_series(path)


def test_smooth_is_the_mean_of_the_window_before_each_value():
    values = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    assert smooth(values, 2).tolist() == [4.0, 3.0, 4.0, 3.0, 4.0]
    assert smooth(values, 1).tolist() == values.tolist()


def test_pca_rgb_puts_the_strongest_directions_on_red_green_blue():
    torch.manual_seed(0)
    a, b, c = torch.randn(3, 2 * 64, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0][:, :3]  # 3 orthonormal directions in 16-d
    features = (torch.stack([9 * a, 3 * b, 1 * c], dim=1) @ basis.T).reshape(2, 64, 16)
    rgb, explained = pca_rgb(features.float(), GRID)
    assert rgb.shape == (2, 8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert explained == pytest.approx(1.0, abs=1e-5)
    for channel, source in enumerate((a, b, c)):  # each channel follows its direction (up to the sign PCA leaves)
        corr = np.corrcoef(rgb[..., channel].reshape(-1), source.numpy())[0, 1]
        assert abs(corr) > 0.97, (channel, corr)


def fake_run(folder: Path, shards: str = "nowhere/shards") -> Path:
    """A run folder as train.py leaves it after two logging steps, without checkpoints or summary."""
    cfg = load_config("configs/tiny_cpu.yaml", [f"data.shards={shards}", f"run.out_dir={folder}"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_to_yaml(cfg) + "# plan: world_size: 1\n")
    logs = folder / "logs" / "tiny_cpu"
    logs.mkdir(parents=True)
    (logs / "Train_loss.csv").write_text("step,loss\n1,0.5\n2,0.45\n")
    (logs / "Train_lr.csv").write_text("step,lr\n2,0.0002\n")
    return folder


def test_a_run_folder_without_shards_or_checkpoint_gets_the_sections_it_can(tmp_path, capsys, caplog):
    run = fake_run(tmp_path / "run")
    assert report_cli.main([str(run)]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"report: {run}/report/index.html \(2 of 6 sections, \d+\.\d s\)", line), line
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert any("Masks on the run's images: left out: data.shards nowhere/shards" in m for m in left_out), left_out
    assert any("no complete checkpoint" in m for m in left_out) and any("probe.json: no such file" in m
                                                                         for m in left_out)
    page = (run / "report" / "index.html").read_text()
    assert "Left out: no complete checkpoint" in page and "not logged" not in page
    assert ("Left out: no diagnostics yet: the step log ends at step 2, before the first at step 50 "
            "(logging.diagnostics_every); no kNN probe during training: logging.probe_every is 0 (off)") in page
    assert sorted(p.name for p in (run / "report").iterdir()) == ["index.html", "throughput.png", "training.png"]


@pytest.mark.parametrize("case, message", [
    ("missing", "{run}: no such folder; give the run.out_dir of a train.py run"),
    ("no config", "{run}: not a run folder of train.py (no config.yaml in it)"),
    ("bad probe", "--probe {run}/p.json: not eval.py's --json output (KeyError: 'low_shot')"),
    ("missing probe", "--probe {run}/p.json: no such file"),
    ("bad log", "{run}/logs/tiny_cpu/Train_lr.csv:2: '2;0.0002' is not a 'step,value' row"),
    ("huge step", "{run}/logs/tiny_cpu/Train_lr.csv:3: '100000000000000000000000,0.1' has a step outside 0 to "
                  "2^63-1; the step log is damaged: move the file away"),
    ("fifo log", "{run}/logs/tiny_cpu/Train_lr.csv: not a regular file (a FIFO); the report needs the run's step "
                 "log: move it away"),
    ("report link", "{run}/report is a link to {outside}, outside the run folder; the report is not written through "
                    "it: remove the link, or give the report a folder with --out"),
    ("report file", "{run}/report is a file, not a folder; move it away, or give the report another folder with "
                    "--out"),
    ("device", "--device cuda:7: no CUDA device is available here; use --device cpu"),
    ("scheme typo", "--val-shards: htps://host/val has the scheme 'htps', which is not one this reads"),
])
def test_what_cannot_be_reported_is_one_line(tmp_path, capsys, case, message):
    if case == "device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    run = tmp_path / "run"
    argv = [str(run)]
    if case == "no config":
        run.mkdir()
    elif case != "missing":
        fake_run(run)
    if case == "bad probe":
        (run / "p.json").write_text(json.dumps({"setup": {}}))
    if case in ("bad probe", "missing probe"):
        argv += ["--probe", str(run / "p.json")]
    if case == "device":
        argv += ["--device", "cuda:7"]
    if case == "scheme typo":
        argv += ["--val-shards", "htps://host/val"]
    log = run / "logs" / "tiny_cpu" / "Train_lr.csv"
    if case == "bad log":
        log.write_text("step,lr\n2;0.0002\n")
    if case == "huge step":  # beyond the int64 the steps are held in
        log.write_text("step,lr\n2,0.0002\n100000000000000000000000,0.1\n")
    if case == "fifo log":  # opening it would wait for a writer forever
        log.unlink()
        os.mkfifo(log)
    outside = tmp_path / "outside"
    if case == "report link":  # the report would be written into the folder the link points at
        outside.mkdir()
        (run / "report").symlink_to(outside)
    if case == "report file":
        (run / "report").write_text("notes\n")
    assert report_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(run=run, outside=outside)) and err.count("\n") == 1, err
    if case == "report link":
        assert list(outside.iterdir()) == []


def resumed_log(folder: Path, steps: int = 12, resume: int = 6, diagnostics: bool = True) -> StepLog:
    """The step log of a run of `steps` steps resumed once after step `resume`: the loss of every step, the schedules
    and figures every 2 steps, the diagnostics every 4; each launch writes its CSV headers again."""
    folder.mkdir(parents=True)
    logged = range(2, steps + 1, 2)
    series = {"Train_loss": (range(1, steps + 1), lambda s: 1.0 / s), "Train_lr": (logged, lambda s: 1e-4 * s),
              "Train_wd": (logged, lambda s: 0.04), "Train_momentum": (logged, lambda s: 0.998 + 1e-6 * s),
              "Perf_peak_gb": (logged, lambda s: 1.50 + 0.001 * s), "Perf_images_per_s": (logged, lambda s: 40.0),
              "Perf_tflops": (logged, lambda s: 0.02), "Perf_compute_s": (logged, lambda s: 0.3),
              "Perf_data_wait_s": (logged, lambda s: 0.01)}
    if diagnostics:
        series["Diagnostics_feature_std"] = (range(4, steps + 1, 4), lambda s: 0.31 + 0.001 * s)
        series["Diagnostics_effective_rank"] = (range(4, steps + 1, 4), lambda s: 20.0)
    for name, (where, value) in series.items():
        head = f"step,{name.split('_', 1)[1]}\n"
        rows = [f"{s},{value(s)}\n" for s in where]
        before = [r for s, r in zip(where, rows) if s <= resume]
        (folder / f"{name}.csv").write_text(head + "".join(before) + head + "".join(rows[len(before):]))
    return read_step_log(folder)


def lines(ax, gid: str) -> list:
    return [line for line in ax.lines if line.get_gid() == gid]


def test_every_panel_spans_the_run_and_marks_where_it_resumed(tmp_path):
    log = resumed_log(tmp_path / "logs")
    assert log.resumed == (7,)
    for fig in (training_figure(log), throughput_figure(log, None), diagnostics_figure(log, 4, 0)[0]):
        limits = {ax.get_xlim() for ax in fig.axes}
        assert len(limits) == 1, limits  # the loss from step 1, the schedules from step 2: one range
        (low, high), = limits
        assert low <= 1 and 12 <= high < 13
        for ax in fig.axes:
            (mark,) = lines(ax, "resumed")
            assert list(mark.get_xdata()) == [7, 7]
            assert [t.get_text().strip() for t in ax.texts] == ["resumed"]
    assert resumed_log(tmp_path / "once", resume=12).resumed == ()  # a header with no row after it


def test_the_running_mean_is_drawn_only_where_it_smooths_and_says_how_many_steps():
    short = training_figure(resumed_log_from({"Train_loss": [(s, 1.0 / s) for s in range(1, 13)]}))
    assert [line.get_gid() for line in short.axes[0].lines] == ["Train_loss"]
    assert short.axes[0].get_legend() is None and short.axes[0].lines[0].get_alpha() == 1.0
    long = training_figure(resumed_log_from({"Train_loss": [(s, 1.0 / s) for s in range(1, 201)]}))
    (smoothed,) = lines(long.axes[0], "smoothed")
    assert smoothed.get_label() == "running mean of 4 steps"
    assert [t.get_text() for t in long.axes[0].get_legend().get_texts()] == ["loss", "running mean of 4 steps"]


def resumed_log_from(series: dict) -> StepLog:
    """A StepLog of one launch from {name: [(step, value)]}, without files."""
    return StepLog(Path("logs"), {name: Series(np.array([s for s, _ in rows]), np.array([v for _, v in rows]))
                                  for name, rows in series.items()})


def test_the_momentum_and_loss_ticks_are_plain_numbers_and_memory_and_std_start_at_zero(tmp_path):
    log = resumed_log(tmp_path / "logs")
    training = training_figure(log)
    training.canvas.draw()
    momentum = training.axes[3]
    labels = [t.get_text() for t in momentum.get_yticklabels() if t.get_text()]
    assert momentum.yaxis.get_offset_text().get_text() == "" and labels, labels
    assert all(re.fullmatch(r"0\.99\d+|1\.0+", label.replace("−", "-")) for label in labels), labels
    loss = [t.get_text() for t in training.axes[0].get_yticklabels(which="both") if t.get_text()]
    assert "0.1" in loss and all(re.fullmatch(r"\d+(\.\d+)?", label) for label in loss), loss  # not 10⁻¹
    memory = throughput_figure(log, None).axes[3]
    assert memory.get_title().startswith("peak memory") and memory.get_ylim()[0] == 0
    std = diagnostics_figure(log, 4, 0)[0].axes[0]
    assert std.get_title().startswith("mean per-dimension std") and std.get_ylim()[0] == 0


def test_diagnostics_not_yet_due_and_a_probe_that_is_off_draw_no_empty_panel(tmp_path):
    short = resumed_log(tmp_path / "short", diagnostics=False)
    fig, missing = diagnostics_figure(short, diagnostics_every=500, probe_every=0)
    assert fig is None
    assert missing == ["no diagnostics yet: the step log ends at step 12, before the first at step 500 "
                       "(logging.diagnostics_every)", "no kNN probe during training: logging.probe_every is 0 (off)"]
    assert diagnostics_figure(short, 0, 20)[1] == [
        "no diagnostics: logging.diagnostics_every is 0 (off)",
        "no kNN probe during training yet: the step log ends at step 12, before the first at step 20 "
        "(logging.probe_every)"]
    fig, missing = diagnostics_figure(resumed_log(tmp_path / "long"), diagnostics_every=4, probe_every=0)
    assert [ax.get_title() for ax in fig.axes] == ["mean per-dimension std (0 = collapsed)",
                                                   "effective rank of the pooled features (1 = collapsed)"]
    assert all(len(lines(ax, "resumed")) == 1 and len(ax.lines) == 2 for ax in fig.axes)  # its series and the mark
    assert missing == ["no kNN probe during training: logging.probe_every is 0 (off)"]


def test_the_mask_pictures_say_which_image_class_and_patches_they_show():
    ctx_idx, tgt_idx = tiny_sampler().sample(3, step=0)
    masks = MaskBatch(np.zeros((3, 32, 32, 3), np.uint8), ctx_idx.numpy(), tgt_idx.numpy(), ["000123", "000007", "x"],
                      GRID, [3, 0, -1], [str(c) for c in range(10)])
    pictures = [np.zeros((128, 128, 3), np.uint8)] * 3
    fig = masks_figure(pictures, [mask_title(masks, i) for i in range(3)], 4, "masks")
    k, m, kt = ctx_idx.shape[1], tgt_idx.shape[0], tgt_idx.shape[2]
    assert [ax.get_title() for ax in fig.axes] == [
        f"image 1 · class 3\n{k} context, {m}×{kt} target patches\nkey 000123",
        f"image 2 · class 0\n{k} context, {m}×{kt} target patches\nkey 000007",
        f"image 3\n{k} context, {m}×{kt} target patches\nkey x"]  # unlabeled data: no class


def test_the_header_shows_the_whole_run_and_each_launch(tmp_path):
    from training.progress import write_summary

    run = fake_run(tmp_path / "run")
    write_summary(run, {"first_step": 1, "last_step": 6, "world_size": 1, "images": 192, "seconds": 74.0,
                        "loop_seconds": 2.1, "ended": "last step"}, skipped=0)
    write_summary(run, {"first_step": 7, "last_step": 12, "world_size": 1, "images": 192, "seconds": 26.0,
                        "loop_seconds": 6.0, "ended": "stop signal"}, skipped=0)
    facts = dict(run_facts(open_run(run)))
    assert facts["steps"] == "12 (steps 1–12) in 2 launches, 100.0 s from process start, on 1 rank(s)"
    assert facts["images/s per GPU"] == "3.8 (the whole run, start-up included)"
    assert facts["launch 1"] == ("steps 1–6 on 1 rank(s): 74.0 s, of it 71.9 s start-up; 2.6 images/s per GPU; "
                                 "ended at its last step")
    assert facts["launch 2"].endswith("ended at a stop signal")
