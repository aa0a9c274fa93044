"""kNN and linear probes can succeed and can fail; eval.py runs a checkpoint and its random init through one path."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.probes import knn_accuracy, linear_accuracy

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "official_tiny" / "checkpoint.pth.tar"


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 5
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=gen)
    return x, y


def test_probes_near_perfect_on_separable_features():
    x, y = blobs(60, 5, 16, spread=0.5, seed=0)
    vx, vy = blobs(20, 5, 16, spread=0.5, seed=0)  # same centers (same seed), fresh noise below
    vx = vx + 0.5 * torch.randn_like(vx)
    assert knn_accuracy(x, y, vx, vy) >= 0.98
    acc, lr = linear_accuracy(x, y, vx, vy, epochs=30)
    assert acc >= 0.98 and lr in (1e-3, 1e-2, 1e-1)


def test_probes_at_chance_on_noise():
    gen = torch.Generator().manual_seed(1)
    x, vx = torch.randn(500, 16, generator=gen), torch.randn(500, 16, generator=gen)
    y, vy = torch.randint(0, 5, (500,), generator=gen), torch.randint(0, 5, (500,), generator=gen)
    assert abs(knn_accuracy(x, y, vx, vy) - 0.2) < 0.07
    acc, _ = linear_accuracy(x, y, vx, vy, epochs=30)
    assert abs(acc - 0.2) < 0.07


@pytest.mark.parametrize("pool", ["avg", "last4"])
def test_eval_cli_on_an_official_checkpoint_prints_both_rows(digit_shards, tmp_path, pool):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(FIXTURE), "--train-shards",
                           str(digit_shards["train"]), "--val-shards", str(digit_shards["val"]), "--limit", "150",
                           "--epochs", "5", "--pool", pool, "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpoint" in proc.stdout and "random init" in proc.stdout and "margin" in proc.stdout
    results = json.loads(out.read_text())
    for name in ("checkpoint", "random init"):
        assert 0.0 <= results[name]["knn_top1"] <= 1.0 and 0.0 <= results[name]["linear_top1"] <= 1.0
    assert results["setup"]["train_images"] == 150 and results["setup"]["classes"] == 10
    assert results["setup"]["pool"] == pool


def test_eval_cli_names_a_missing_checkpoint(digit_shards, tmp_path):
    missing = tmp_path / "nope.pth"
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(missing), "--train-shards",
                           str(digit_shards["train"]), "--val-shards", str(digit_shards["val"])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "nope.pth" in proc.stderr
