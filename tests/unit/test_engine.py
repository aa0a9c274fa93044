"""training/engine.py's DeepSpeed settings, derived in process: the official recipe neither clips nor scans gradients
unless the config's deepspeed section asks for clipping. (What one step of a one-rank engine does, in a subprocess:
e2e/test_engine_step.py.)"""
from pathlib import Path

from config import load_config
from training.engine import deepspeed_config
from training.plan import BatchLayout

ROOT = Path(__file__).resolve().parents[2]


def test_derived_deepspeed_config_neither_clips_nor_scans_gradients():
    cfg = load_config(ROOT / "configs" / "vith14_in1k.yaml")
    eight = BatchLayout(cfg.data.batch_size, cfg.optimization.grad_accum, world_size=8)
    ds = deepspeed_config(cfg, eight)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (eight.global_batch, eight.batch_size)
    assert ds["gradient_clipping"] == 0.0  # the official recipe; DeepSpeed's own default would clip at 1.0
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert ds["zero_optimization"]["compute_grad_norm"] is False
    clipped = load_config(ROOT / "configs" / "vith14_in1k.yaml", overrides=["deepspeed.gradient_clipping=1.0"])
    ds = deepspeed_config(clipped, eight)
    assert ds["gradient_clipping"] == 1.0 and "compute_grad_norm" not in ds["zero_optimization"]  # clipping needs it
    stage1 = load_config(ROOT / "configs" / "vith14_in1k.yaml", overrides=["deepspeed.zero_optimization.stage=1"])
    assert "compute_grad_norm" not in deepspeed_config(stage1, eight)["zero_optimization"]  # stage 2 only
