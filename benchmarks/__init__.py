"""Benchmark suites for bench.py: one module per suite, each exposing `run(cfg) -> dict`.

Every suite measures the project's path AND a reference in the same run on the same device, prints both with their
ratio, and returns the figures for the JSON report.
"""
