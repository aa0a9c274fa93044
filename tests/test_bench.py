"""bench.py runs its CPU suites end to end and reports every field beside its reference (no speed is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEP_FIELDS = {"step_time_s", "images_per_s", "flops_per_step", "tflops", "peak_memory_gib", "images_per_gpu_hour",
               "gpu_hours_for_epochs", "mfu", "kernels"}


def test_bench_step_and_masks_on_the_tiny_config(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "bench.py", "--config", "configs/tiny_cpu.yaml", "--suite", "step,masks",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("device: CPU") and "torch 2." in proc.stdout
    results = json.loads(out.read_text())
    assert results["device"]["device"].startswith("CPU") and results["device"]["deepspeed"]
    step = results["suites"]["step"]
    assert set(step) == {"reference (official-style)", "ours", "ours, static shapes (fixed lengths)"}
    for name, figures in step.items():
        assert STEP_FIELDS <= set(figures), (name, STEP_FIELDS - set(figures))
        assert figures["images_per_s"] > 0 and figures["flops_per_step"] > 0
    assert step["reference (official-style)"]["kernels"] == {"attention": "reference", "gather": "reference"}
    assert "× ref" in proc.stdout and "GPU-hours for 20 epochs" in proc.stdout
    assert results["suites"]["masks"]["timings_ms"]["16x16"]["reference_ms"] > 0


def test_unknown_suite_is_refused():
    proc = subprocess.run([sys.executable, "bench.py", "--suite", "speed"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown suite(s) ['speed']" in proc.stderr
