"""bench.py and the benchmarks' pieces in this process: unknown suites and levers refused, every lever applies to the
ViT-H/14 config, the communication model counts the real step and prices each collective, a data backend that fails
is a row that says why. (bench.py's CPU suites end to end and the GPU host's dry run: e2e/test_bench.py.)"""
import json
from pathlib import Path

import bench

ROOT = Path(__file__).resolve().parents[2]


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
    assert f"| data: torch gpu decode (nvJPEG) | {failed} |" in table
    assert "| data: dali gpu (mixed) | not measured |" in table
