"""eval.py through its real CLI: a checkpoint and its random init through one path on the official-format fixture
(both pools through main() in this process: README's quick start runs eval.py in a fresh interpreter,
e2e/test_quick_start.py), and the tiny limits still give figures. (The probes in process: unit/test_probe.py;
eval.py's refusals: unit/test_eval_hardening.py.)"""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoint_files import OFFICIAL

from evaluation.attentive import ATTENTIVE_GRID
from evaluation.sweep import LINEAR_GRID, Setting

ROOT = Path(__file__).resolve().parents[2]
eval_main = importlib.import_module("eval")  # the entry script (its name shadows the builtin, hence not `import eval`)


def eval_cli(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """eval.py's main() with `argv` in this process: (exit code, what it printed)."""
    code = eval_main.main(argv)
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, printed.out, printed.err)


@pytest.mark.parametrize("pool", ["avg", "last4"])
def test_eval_cli_on_an_official_checkpoint_prints_both_rows(digit_shards, tmp_path, capsys, pool):
    out = tmp_path / "probe.json"
    proc = eval_cli(["--checkpoint", str(OFFICIAL), "--train-shards", str(digit_shards["train"]),
                           "--val-shards", str(digit_shards["val"]), "--limit", "150", "--epochs", "2",
                           "--attentive-epochs", "1", "--pool", pool, "--json", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    rows = {line.split("  ")[0]: line for line in proc.stdout.splitlines()}
    for name in ("checkpoint", "random init"):
        r = results[name]
        figures = [r["knn"]["top1"], r["linear"]["top1"], r["attentive"]["top1"]]
        assert all(0.0 <= top1 <= 1.0 for top1 in figures)
        assert len(r["linear"]["grid"]) == len(LINEAR_GRID) and len(r["attentive"]["grid"]) == len(ATTENTIVE_GRID)
        for probe in ("linear", "attentive"):  # the reported head is the best of its grid, with its setting
            best = max(r[probe]["grid"], key=lambda head: head["top1"])
            assert r[probe]["top1"] == best["top1"] and Setting(r[probe]["lr"], r[probe]["weight_decay"]) in [
                Setting(h["lr"], h["weight_decay"]) for h in r[probe]["grid"] if h["top1"] == best["top1"]]
        shots = r["low_shot"]
        assert [run["labels"] for run in shots["runs"]] == [10, 10, 10]  # 1% of ~15 per class: at least 1 each
        assert shots["mean"] == pytest.approx(sum(run["top1"] for run in shots["runs"]) / 3)
        cells = [f"{100 * top1:.1f}%" for top1 in figures] + [f"{100 * shots['mean']:.1f} ± {100 * shots['std']:.1f}%"]
        assert rows[name].split() == [*name.split(), *cells[:3], *cells[3].split()], rows[name]
    assert "margin" in rows and "low-shot 1% top-1" in proc.stdout
    assert results["setup"]["train_images"] == 150 and results["setup"]["classes"] == 10
    assert results["setup"]["pool"] == pool and results["setup"]["attentive_tokens"] == "cached"


def test_tiny_limits_still_give_figures(digit_shards, tmp_path):
    """One image per split (the linear head cannot train: BatchNorm needs two) is a figure, not a crash; the same
    folder for both splits is allowed, with a warning."""
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(OFFICIAL), "--train-shards",
                           str(digit_shards["val"]), "--val-shards", str(digit_shards["val"]), "--limit", "1",
                           "--epochs", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "warning: --train-shards and --val-shards are the same folder" in proc.stderr
    assert json.loads(out.read_text())["setup"]["train_images"] == 1
