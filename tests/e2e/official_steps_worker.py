"""Launched by tests/e2e/test_official_steps.py (one process, a world of one: the test sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): the eight fp32 CPU training steps of tests/fixtures/official_train_steps through
train.py's own step (build_engine's DeepSpeed engine and AdamW, set_schedules on the plan's Schedules, micro_step, the
target EMA), from the official initial weights; writes the per-step values and the largest differences from the
official ones as JSON:

    python tests/e2e/official_steps_worker.py OUT.json
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import kernels  # noqa: E402
import training.engine  # noqa: E402
from config import load_config  # noqa: E402
from model.official import load_strict, strip_prefix  # noqa: E402
from model.safe_load import safe_load  # noqa: E402
from pipeline.loading.loader import Batch  # noqa: E402
from training.distributed import setup_distributed  # noqa: E402
from training.engine import build_engine, micro_step, set_schedules  # noqa: E402
from training.plan import BatchLayout, schedule_steps  # noqa: E402
from training.target_ema import target_ema  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "official_train_steps"
STEPS_PER_EPOCH = 4  # the fixture's iterations per epoch (its steps have no loader)
# The fixture's config.yaml and model.json on the tiny config: fp32, its schedules and AdamW, its model.
SETS = ("optimization.precision=fp32", "optimization.epochs=2", "optimization.warmup_epochs=1",
        "optimization.ipe_scale=1.25", "optimization.start_lr=0.0002", "optimization.lr=0.001",
        "optimization.final_lr=1.0e-6", "optimization.weight_decay=0.04", "optimization.final_weight_decay=0.4",
        "optimization.betas=[0.9, 0.999]", "optimization.eps=1.0e-8", "ema.momentum=[0.9, 1.0]",
        "data.batch_size=8", "data.crop_size=32", "model.arch=vit_tiny", "model.patch_size=4", "model.embed_dim=72",
        "model.depth=2", "model.num_heads=3", "model.pred_emb_dim=36", "model.pred_depth=2", "model.pred_num_heads=3")
PARTS = ("encoder", "predictor", "target_encoder")


def with_official_weights(build_jepa):
    """build_jepa, then the fixture's initial weights loaded into what it built: strictly, so the config must build
    the official shapes."""
    initial = safe_load(FIXTURE / "checkpoint.pth.tar")

    def build(model_cfg, crop_size: int):
        model, target = build_jepa(model_cfg, crop_size)
        for part, module in zip(PARTS, (model.context_encoder, model.predictor, target)):
            load_strict(module, strip_prefix(initial[part]), f"checkpoint.pth.tar[{part}]")
        return model, target

    return build


def relative(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def norm(state: dict) -> float:
    """The L2 norm over all tensors of a state dict (the fixture's param_norm)."""
    return math.sqrt(sum(t.double().pow(2).sum().item() for t in state.values()))


def main(out: Path) -> None:
    device, _, world = setup_distributed("cpu")
    kernels.configure(device=device)
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=SETS)
    schedules = schedule_steps(cfg.optimization, STEPS_PER_EPOCH)
    training.engine.build_jepa = with_official_weights(training.engine.build_jepa)  # before deepspeed.initialize
    engine, _, target = build_engine(cfg, BatchLayout(cfg.data.batch_size, 1, world), device)
    ema = target_ema(engine, target)
    model = engine.module
    modules = dict(zip(PARTS, (model.context_encoder, model.predictor, target)))
    official = torch.load(FIXTURE / "steps.pt", map_location="cpu", weights_only=True)
    got = {key: [] for key in ("loss", "lr", "wd", "momentum")}
    got["param_norm"] = {part: [] for part in PARTS}
    for s in range(1, len(official["step"]) + 1):
        sched = set_schedules(engine.optimizer, s, cfg, schedules)
        images = (official["images_uint8"][s - 1].float() - 128.0) / 64.0  # (B, 3, 32, 32), exact in fp32
        ctx_idx = official["masks_enc"][s - 1][0]  # (B, Nc): the official list of one context mask
        tgt_idx = torch.stack(official["masks_pred"][s - 1])  # (M, B, Nt)
        batch = Batch(images, ctx_idx, tgt_idx, labels=torch.empty(0), keys=[])
        got["loss"].append(float(micro_step(engine, ema, target, batch, torch.float32)))
        ema.update(sched["momentum"])
        ema.wait()
        for key in ("lr", "wd", "momentum"):
            got[key].append(sched[key])
        for part, module in modules.items():
            got["param_norm"][part].append(norm(module.state_dict()))
    final = torch.load(FIXTURE / "final.pt", map_location="cpu", weights_only=True)
    worst = {f"{key}_rel": max(relative(g, w) for g, w in zip(got[key], official[key].tolist()))
             for key in ("loss", "lr", "wd", "momentum")}
    for part, module in modules.items():
        mine = module.state_dict()
        assert mine.keys() == final[part].keys(), (part, sorted(mine.keys() ^ final[part].keys()))
        worst[f"{part}_abs"] = max((mine[k].float() - v).abs().max().item() for k, v in final[part].items())
        worst[f"{part}_norm_rel"] = max(relative(g, w) for g, w in zip(got["param_norm"][part],
                                                                       official["param_norm"][part].tolist()))
    out.write_text(json.dumps({"got": got, "max": worst}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
