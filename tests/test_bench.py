"""bench.py runs its CPU suites end to end and reports every field beside its reference (no speed is asserted)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench

ROOT = Path(__file__).resolve().parent.parent

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
    proc = subprocess.run([sys.executable, "bench.py", "--config", "configs/tiny_cpu.yaml", "--suite",
                           "step,loop,levers,masks", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=cpu_env(IJEPA_LEVERS="static shapes,Triton attention"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "results": json.loads(out.read_text()), "folder": folder}


@pytest.mark.slow
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


def test_unknown_suite_is_refused(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default --config is relative to the repository's root
    assert bench.main(["--suite", "speed"]) == 2 and "unknown suite(s) ['speed']" in capsys.readouterr().err


def test_comm_model_counts_the_real_step_and_prices_each_collective(clean_switch):
    import torch

    import kernels
    from benchmarks import comm_model
    from config import load_config
    from model.jepa import build_jepa, ijepa_loss
    from training.metrics import count_flops

    cfg = load_config(ROOT / "configs/tiny_cpu.yaml")
    kernels.configure(attention="reference", gather="reference", device="cpu")  # CPU SDPA's backward is not counted
    shape = comm_model.step_shape(cfg, ctx_tokens=40, tgt_tokens=10, masks=3)
    model, target = build_jepa(cfg.model, cfg.data.crop_size)  # the same step on real CPU tensors, counted the same way
    s, (rows, cols) = cfg.data.crop_size, (cfg.data.crop_size // cfg.model.patch_size,) * 2
    scale = rows * cols / 256
    ctx = torch.zeros(1, round(40 * scale), dtype=torch.long)
    tgt = torch.zeros(3, 1, round(10 * scale), dtype=torch.long)
    real = count_flops(lambda: ijepa_loss(model, target, torch.randn(1, 3, s, s), ctx, tgt).backward())
    assert shape.total_flops == real
    assert shape.trained_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0.2 < shape.backward_share < 0.6 and 0.1 < shape.forward_share < 0.4

    one_billion = comm_model.StepShape(10**9, target_flops=2.0, forward_flops=1.0, backward_flops=1.0)
    row = comm_model.efficiency(one_billion, step_s=0.01, n=8)  # NVLink 360 GB/s, 7/8 of each ring through a link
    assert abs(row["exposed_ms"]["param all-gather"] - 7 / 8 * 2e9 / 360e9 * 1e3) < 1e-9
    target_ms = 7 / 8 * 4e9 / 360e9 * 1e3  # 9.72 ms, of which the context forward (1/4 of 10 ms) hides 2.5
    assert abs(row["exposed_ms"]["target all-gather"] - (target_ms - 2.5)) < 1e-9
    reduce_ms, bucket_ms = 7 / 8 * 2e9 / 360e9 * 1e3, 7 / 8 * 1e8 / 360e9 * 1e3  # the backward (1/4) hides 2.5 ms
    assert abs(row["exposed_ms"]["grad reduce-scatter"] - (bucket_ms + reduce_ms - bucket_ms - 2.5)) < 1e-9
    assert abs(comm_model.efficiency(one_billion, step_s=1.0, n=8)["exposed_ms"]["grad reduce-scatter"]
               - bucket_ms) < 1e-9  # a long backward hides all but the last bucket
    exposed_s = (reduce_ms + target_ms - 2.5 + reduce_ms - 2.5) / 1e3
    assert abs(row["efficiency"] - 0.01 / (0.01 + exposed_s)) < 1e-12
    serial = comm_model.efficiency(one_billion, step_s=0.01, n=8, overlap_target=False)
    assert abs(serial["exposed_ms"]["target all-gather"] - target_ms) < 1e-9
    no_backward = comm_model.StepShape(10**9, 1.0, 1.0, 0.0)
    slow = comm_model.efficiency(no_backward, step_s=0.01, n=16)  # across nodes, no backward to hide in
    assert slow["link_GBps"] == comm_model.NIC_GBPS
    assert abs(slow["exposed_ms"]["grad reduce-scatter"] - 15 / 16 * 2e9 / 45e9 * 1e3) < 1e-9
    assert comm_model.efficiency(one_billion, step_s=1.0, n=1)["efficiency"] == 1.0


@pytest.mark.slow
def test_gpu_check_keeps_its_deadline_and_names_what_it_could_not_measure(tmp_path):
    """The GPU-host script's dry run under a 15 s budget: each part is capped by what is left, the summary still comes
    last and names the suites that left no JSON (on the GPU host the budget is 330 s, inside one 6-minute call)."""
    env = cpu_env(GPU_CHECK_BUDGET="15", PYTHON=sys.executable)
    started = time.monotonic()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert took < 15 + 15, took  # the deadline, plus the summary and one process's exit
    summary = proc.stdout.split("== gpu_check summary")[1]
    assert "gpu_check: no CUDA device: dry run" in proc.stdout and "| deepspeed 0.19.8" in summary
    assert "not measured (no JSON):" in summary or "no bench_*.json" in summary  # 15 s cannot hold every suite
    assert "stopped by its cap" in proc.stdout


def test_unknown_lever_is_refused_naming_the_levers(capsys, monkeypatch):
    """Refused before any step is built: a ConfigError, so the usage exit status 2."""
    import platform

    monkeypatch.setenv("IJEPA_LEVERS", "faster please")
    monkeypatch.setattr(platform, "processor", lambda: "")  # the device line's `uname -p` would start a process
    code = bench.main(["--config", str(ROOT / "configs/tiny_cpu.yaml"), "--suite", "levers"])
    assert code == 2 and "IJEPA_LEVERS: unknown lever(s) ['faster please']" in capsys.readouterr().err


def test_every_lever_can_be_chosen_by_name_and_applies_to_the_vith14_config(monkeypatch):
    from benchmarks import levers
    from config import load_config, with_overrides

    monkeypatch.setenv("IJEPA_LEVERS", ",".join(levers.LEVERS))  # a comma inside a name would split it
    assert levers.chosen_levers() == list(levers.LEVERS)
    cfg = load_config(ROOT / "configs/vith14_in1k.yaml")
    for name, sets in levers.LEVERS.items():
        changed = with_overrides(cfg, sets, source="levers")
        assert (changed == cfg) == (name == "the config"), name  # each lever changes the config; only the config not


@pytest.mark.slow
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


def test_a_data_backend_that_fails_is_a_row_that_says_why(tmp_path, caplog, capsys):
    import torch

    from benchmarks import data, summary
    from benchmarks.common import run_or_error

    def nvjpeg_fails():
        raise RuntimeError("nvjpeg: decode failed: NVJPEG_STATUS_EXECUTION_FAILED\nmore")

    row = run_or_error(lambda: data.images_per_s(nvjpeg_fails(), torch.device("cpu")))
    assert row == {"error": "RuntimeError: nvjpeg: decode failed: NVJPEG_STATUS_EXECUTION_FAILED"}
    assert "Traceback" in caplog.text
    rounds = [{"ref": {"images_per_s": 10.0}, "gpu": row},
              {"ref": {"images_per_s": 12.0}, "gpu": {"error": "failed in an earlier round"}}]
    assert data.best_round("ref", rounds) == {"images_per_s": 12.0, "rounds_images_per_s": [10.0, 12.0]}
    assert data.best_round("gpu", rounds) == row  # the first round's error, the one with the cause

    results = {"reference (wds + PIL + torchvision, 2 workers)": {"images_per_s": 480.0, "vs_reference": 1.0},
               "torch gpu decode (nvJPEG)": row}
    (tmp_path / "bench_data.json").write_text(json.dumps({"device": {}, "suites": {"data": {
        "results": results, "dali_stages": {"dali gpu (mixed)": {"error": "RuntimeError: no nvJPEG engine"}}}}}))
    assert summary.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torch gpu decode (nvJPEG)                        failed: RuntimeError: nvjpeg: decode failed" in out
    assert "data    dali gpu (mixed) cut after each stage: failed: RuntimeError: no nvJPEG engine" in out
    assert summary.main(["--markdown", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    failed = "failed (RuntimeError: nvjpeg: decode failed: NVJPEG_STATUS_EXECUTION)"
    assert f"| data: torch gpu decode (nvJPEG) | {failed} |" in table and "| data: dali gpu (mixed) | not measured |" in table
