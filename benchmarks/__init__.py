"""Benchmark suites for bench.py: one module per suite, each exposing `run(cfg) -> dict`; beside them the
multi-GPU model (comm_model), the sm_90 compile check (aot_compile_check) and the GPU-host script (gpu_check.sh).

Every suite measures the project's path AND a reference in the same run on the same device, prints both with their
ratio, and returns the figures for the JSON report.
"""
