"""report.py and the mask pictures, the pieces alone: each mask picture drawn as the sampler placed its patches, the
batch pictures, the step log, the curves' smoothing, the PCA colours, a run folder reported with what it has, and
what cannot be reported in one line. (A tiny real run, its report read back from the data each figure was drawn
from, and the TensorBoard mask images it wrote: e2e/test_run_report.py.)"""
from __future__ import annotations

import json
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
from reporting.curves import smooth
from reporting.pictures import pca_rgb
from reporting.steplog import read_series


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
    assert re.fullmatch(rf"report: {run}/report/index.html \(3 of 6 sections, \d+\.\d s\)", line), line
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert any("Masks on the run's images: left out: data.shards nowhere/shards" in m for m in left_out), left_out
    assert any("no complete checkpoint" in m for m in left_out) and any("probe.json: no such file" in m
                                                                         for m in left_out)
    page = (run / "report" / "index.html").read_text()
    assert "Left out: no complete checkpoint" in page and "not logged" not in page
    assert sorted(p.name for p in (run / "report").iterdir()) == ["diagnostics.png", "index.html", "throughput.png",
                                                                   "training.png"]


@pytest.mark.parametrize("case, message", [
    ("missing", "{run}: no such folder; give the run.out_dir of a train.py run"),
    ("no config", "{run}: not a run folder of train.py (no config.yaml in it)"),
    ("bad probe", "--probe {run}/p.json: not eval.py's --json output (KeyError: 'low_shot')"),
    ("missing probe", "--probe {run}/p.json: no such file"),
    ("bad log", "{run}/logs/tiny_cpu/Train_lr.csv:2: '2;0.0002' is not a 'step,value' row"),
    ("device", "--device cuda:7: no CUDA device is available here; use --device cpu"),
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
    if case == "bad log":
        (run / "logs" / "tiny_cpu" / "Train_lr.csv").write_text("step,lr\n2;0.0002\n")
    assert report_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(run=run)) and err.count("\n") == 1, err
