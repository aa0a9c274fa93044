"""bench.py runs its CPU suites end to end and reports every field beside its reference (no speed is asserted); the
GPU host's script keeps its deadline in a dry run. (bench.py's refusals and the pieces in this process:
unit/test_benchmarks.py.)"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


STEP_FIELDS = {"step_time_s", "images_per_s", "flops_per_step", "tflops", "peak_memory_gib", "images_per_gpu_hour",
               "gpu_hours_for_epochs", "mfu", "kernels", "host_syncs_per_step"}


def cpu_env(**extra: str) -> dict:
    """This environment without the test session's TRITON_INTERPRET: as on a CPU machine, Triton is refused."""
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **extra}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> dict:
    """The one bench.py launch of this file, as a user runs it on a CPU machine: the step, loop, levers and masks
    suites on the tiny config, the levers' Triton row refused. {"proc": its process, "results": its JSON, "folder":
    where the JSON is}; the tests below share it (the failing-path test borrows its reference row)."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "bench_step.json"  # the name gpu_check.sh gives it, so the summary reads it
    # a batch of 8: what is checked is the figures' form and the references beside them, not their size
    argv = ["bench.py", "--config", "configs/tiny_cpu.yaml", "--set", "data.batch_size=8", "--suite",
            "step,loop,levers,masks", "--out", str(out)]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=cpu_env(IJEPA_LEVERS="static shapes,Triton attention"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "results": json.loads(out.read_text()), "folder": folder}


def test_bench_step_levers_and_masks_on_the_tiny_config(bench_run, capsys):
    from benchmarks import summary

    proc, results = bench_run["proc"], bench_run["results"]
    assert proc.stdout.startswith("device: CPU") and "torch 2." in proc.stdout
    assert results["device"]["device"].startswith("CPU") and results["device"]["deepspeed"]
    step = results["suites"]["step"]
    assert set(step) == {"reference (official-style)", "ours", "ours, static shapes (fixed lengths)"}
    for name, figures in step.items():
        assert STEP_FIELDS <= set(figures), (name, STEP_FIELDS - set(figures))
        assert figures["images_per_s"] > 0 and figures["flops_per_step"] > 0
    assert step["reference (official-style)"]["kernels"] == {"attention": "reference", "gather": "reference"}
    assert "× ref" in proc.stdout and "GPU-hours for 20 epochs" in proc.stdout
    assert results["suites"]["masks"]["timings_ms"]["16x16"]["reference_ms"] > 0
    assert results["device"]["date"][:2] == "20" and results["device"]["date"].endswith(" UTC")

    # the summary in this process (summary.py's own command line runs in the gpu_check test below)
    assert summary.main([str(bench_run["folder"])]) == 0
    summary_out = capsys.readouterr().out
    for name, figures in step.items():  # each row's figures, as the JSON has them
        ratio = figures["images_per_s"] / step["reference (official-style)"]["images_per_s"]
        assert f"{name:<38} {figures['images_per_s']:8.1f} img/s/GPU  MFU    n/a  {ratio:.2f}x ref" in summary_out
    assert "not measured (no JSON): kernels, data" in summary_out
    assert summary.main(["--markdown", str(bench_run["folder"])]) == 0
    table = capsys.readouterr().out
    ours, ref = step["ours"]["images_per_s"], step["reference (official-style)"]["images_per_s"]
    assert f"| training step: ours | {ours:.0f} img/s, {ours / ref:.2f}× ref |" in table
    assert "| data: torch gpu decode (nvJPEG) | not measured |" in table

    loop = results["suites"]["loop"]  # train.py through the launcher, its CSV monitor beside the step suite's "ours"
    assert loop["bench"]["images_per_s"] == step["ours"]["images_per_s"]
    assert loop["train_log"]["images_per_s"] > 0 and loop["train_log"]["data_wait_s"] >= 0
    assert loop["log_vs_bench"] == loop["train_log"]["images_per_s"] / step["ours"]["images_per_s"]
    assert "step 12/12 ep 0 | loss" in proc.stdout  # train.py's interval lines, in the suite's output
    assert f"loop    train.py step log {loop['train_log']['images_per_s']:8.1f} img/s/GPU  MFU n/a" in summary_out

    levers = results["suites"]["levers"]
    rows, ref = levers["levers"], levers["reference (official-style)"]["images_per_s"]
    assert list(rows) == ["the config", "static shapes", "Triton attention"]  # the config first, then the round's
    for name in ("the config", "static shapes"):
        r = rows[name]
        assert r["images_per_s"] > 0 and r["vs_reference"] == r["images_per_s"] / ref
        assert r["vs_config"] == r["images_per_s"] / rows["the config"]["images_per_s"]
        assert r["won"] == (name != "the config" and r["vs_config"] >= 1.02)
    assert rows["static shapes"]["sets"] == ["mask.length_policy=fixed"]
    assert "needs a CUDA device" in rows["Triton attention"]["error"]  # a row that says why, not a lost round
    assert "lever   static shapes" in summary_out
    refused = "n/a: ConfigError: levers: kernels.attention triton needs a CUDA device"
    assert f"lever   {'Triton attention':<44} {refused}" in summary_out


def test_gpu_check_keeps_its_deadline_and_names_what_it_could_not_measure(tmp_path):
    """The GPU-host script's dry run under an 8 s budget: each part is capped by what is left, the summary still comes
    last and names the suites that left no JSON (on the GPU host the budget is 330 s, inside one 6-minute call)."""
    env = cpu_env(GPU_CHECK_BUDGET="8", PYTHON=sys.executable)
    started = time.monotonic()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert took < 8 + 15, took  # the deadline, plus the summary and one process's exit
    summary = proc.stdout.split("== gpu_check summary")[1]
    assert "gpu_check: no CUDA device: dry run" in proc.stdout and "| deepspeed 0.19.8" in summary
    assert "not measured (no JSON):" in summary or "no bench_*.json" in summary  # 8 s cannot hold every suite
    assert "stopped by its cap" in proc.stdout


def test_a_step_path_that_fails_is_a_row_that_says_why(bench_run, tmp_path, caplog, capsys, clean_switch):
    """On first contact with a GPU a path may run out of memory or hit a CUDA error: that path's row says so, the
    traceback is logged for the fix, and the other rows, the summary and README's table still come out (beside the
    reference row the bench launch measured through the same try_path)."""
    import torch

    from benchmarks import step, summary
    from config import load_config

    cfg, cpu = load_config(ROOT / "configs/tiny_cpu.yaml"), torch.device("cpu")

    def broken(cfg, device, world_size):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")

    def refused(cfg, device, world_size):
        raise ValueError("kernels: triton needs a CUDA device")

    row = step.try_path(lambda: step.time_path(broken, cfg, cpu, 1, step.reference_kernels()), cpu)
    assert row == {"error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert "Traceback" in caplog.text and "illegal memory access" in caplog.text  # logged, for the fix
    caplog.clear()
    assert step.try_path(lambda: step.time_path(refused, cfg, cpu, 1, {}), cpu)["error"] == \
        "ValueError: kernels: triton needs a CUDA device"
    assert "Traceback" not in caplog.text  # a setting this device cannot take: one line, no traceback
    ref = bench_run["results"]["suites"]["step"][step.REFERENCE]
    assert ref["images_per_s"] > 0 and "error" not in ref
    step.print_row(cfg, "ours", row, ref)
    assert "ours" in capsys.readouterr().out.split("failed: RuntimeError: CUDA error: an illegal memory access")[0]

    (tmp_path / "bench_step.json").write_text(json.dumps({"device": {"device": "CPU"}, "suites": {
        "step": {step.REFERENCE: ref, "ours": row}}}))
    assert summary.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"step    {'ours':<38} failed: RuntimeError: CUDA error: an illegal memory access" in out
    assert f"step    {step.REFERENCE:<38} {ref['images_per_s']:8.1f} img/s/GPU" in out
    assert summary.main(["--markdown", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| training step: ours | failed (RuntimeError: CUDA error: an illegal memory access was encou) |" in table
    assert "| training step: ours, static shapes (fixed lengths) | not measured |" in table
