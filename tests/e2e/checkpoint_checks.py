"""What a saved checkpoint must satisfy, checked from its files alone: the target encoder is the EMA of the fp32
master weights (test_train: no ZeRO; test_elastic: ZeRO 1-3, on the run its world-size changes load)."""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
STATES = "*mp_rank_00_model_states.pt"  # ZeRO-3 prefixes zero_pp_rank_0_; the client state is in rank 0's file


def fp32_masters(ckpt: Path, tag: str, stage: int, states: dict) -> dict:
    """{name: fp32 master} of a checkpoint: DeepSpeed's own consolidation under ZeRO; without ZeRO the optimizer's
    replicated fp32 groups, named through the AdamW groups of training.engine.param_groups."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from config import load_config
    from model.jepa import build_jepa
    from training.engine import param_groups

    if stage > 0:
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    model, _ = build_jepa(cfg.model, cfg.data.crop_size)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = zip(param_groups(model, 0.0), states["optimizer"]["fp32_groups"], strict=True)
    return {names[id(p)]: m for group, masters in groups for p, m in zip(group["params"], masters, strict=True)}


def assert_target_is_the_ema_of_the_fp32_weights(ckpt: Path, prev: str, last: str, step: int, stage: int,
                                                  steps_per_epoch: int, log: str) -> None:
    """The target encoder saved at `last` (step `step`) equals m · (the target at `prev`) + (1 − m) · (the fp32
    masters at `last`) within 1e-6 relative, m the momentum of `step` on the tiny config's schedule; the frozen
    pos_embed stays the fp32 sin-cos values; `log` (the run's output) names the EMA path of the ZeRO stage."""
    from config import load_config
    from model.vit import sincos_pos_embed_2d
    from training.plan import schedule_steps
    from training.schedules import momentum_at

    before = torch.load(min((ckpt / prev).glob(STATES)), weights_only=False)
    after = torch.load(min((ckpt / last).glob(STATES)), weights_only=False)
    fp32 = fp32_masters(ckpt, last, stage, after)
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    m = momentum_at(step, schedule_steps(cfg.optimization, steps_per_epoch).momentum_denominator, *cfg.ema.momentum)
    path = "on this rank's slice" if stage in (1, 2) else "full fp32 masters gathered per parameter"
    assert f"target EMA: {path}" in log
    worst = 0.0
    for name, t in after["target_encoder"].items():
        if name == "pos_embed":  # frozen: the target keeps the fp32 sin-cos values (not DeepSpeed's bf16 copy)
            assert torch.equal(t, before["target_encoder"][name]) and t.dtype == torch.float32
            assert torch.equal(t, sincos_pos_embed_2d(t.shape[-1], 8).float().reshape(t.shape))
            continue
        want = m * before["target_encoder"][name].double() + (1 - m) * fp32["context_encoder." + name].double()
        worst = max(worst, ((t.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item())
    assert worst <= 1e-6, (stage, worst)
