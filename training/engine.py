"""The DeepSpeed engine and one training step: AdamW's parameter groups, the engine over the context encoder and
predictor (the one place the model is wrapped), the schedules applied to the optimizer, a micro step."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional

import torch

from config import Config, ConfigError
from model.compile import compile_blocks
from model.jepa import build_jepa, target_features
from training.plan import BatchLayout
from training.schedules import Schedules, lr_at, momentum_at, wd_at
from training.states import deepspeed_safe_types, load_states_file
from training.warm_start import load_init

logger = logging.getLogger(__name__)


def param_groups(module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (weights, mask_token) and not decayed (biases and other 1-D parameters)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "WD_exclude": True}]


def deepspeed_config(cfg: Config, layout: BatchLayout) -> dict:
    """The DeepSpeed config dict: batch keys from the run's `layout`, precision from the config, the deepspeed section
    merged over them.

    Three DeepSpeed defaults are replaced, each costing every step and none asked for by the recipe:
    - gradient_clipping 0: the official recipe does not clip; DeepSpeed's default (1.0) clips at global norm 1.
    - bf16.check_grad_overflow false: the per-gradient inf/NaN scan ends in a host sync every step and only skips
      a step silently; train.py stops on a non-finite loss instead and never saves non-finite weights.
    - zero_optimization.compute_grad_norm false (ZeRO-2 without clipping): nothing reads the norm, yet it costs a
      norm per gradient and two collectives per step.
    gradient_clipping and zero_optimization.compute_grad_norm set in the deepspeed section win.
    """
    derived = {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.batch_size,
        "gradient_accumulation_steps": layout.grad_accum,
        "bf16": {"enabled": cfg.optimization.precision == "bf16", "check_grad_overflow": False},
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,  # train.py logs; DeepSpeed's own per-step print would duplicate it
    }
    out = _merge(derived, cfg.deepspeed)
    zero = out.get("zero_optimization", {})
    if zero.get("stage", 0) == 2 and not out["gradient_clipping"] and "compute_grad_norm" not in zero:
        out["zero_optimization"] = {**zero, "compute_grad_norm": False}  # DeepSpeed allows it at stage 2 only here
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_engine(cfg: Config, layout: BatchLayout, device: torch.device, load_universal: bool = False,
                 init: Optional[dict] = None):
    """(DeepSpeed engine over context encoder + predictor, the torch AdamW inside it, the fp32 target encoder on
    `device`; its EMA is training.target_ema.target_ema(engine, target)). The one place the model is wrapped:
    torch.compile of the blocks when asked, then DeepSpeed. `layout`: the run's batch (training.plan.RunPlan);
    `load_universal`: the checkpoint to load is a universal conversion (a resume on another world size); `init`: the
    warm start to load before DeepSpeed copies the weights into its optimizer (training/warm_start.py)."""
    import deepspeed

    import_muon_uncompiled()
    with torch.device(device):  # initialised where it trains: ViT-H's 650 M parameters take ~10 s on a host CPU
        model, target = build_jepa(cfg.model, cfg.data.crop_size)
    load_init(init, model, target)
    if cfg.model.compile:  # before DeepSpeed wraps the model; the blocks' token dim stays dynamic (model/compile.py)
        mode = cfg.model.compile_mode
        logger.info("torch.compile (mode %s): %d blocks (context encoder + predictor), %d (target encoder)", mode,
                    compile_blocks(model, mode=mode), compile_blocks(target, mode=mode))
        if mode == "reduce-overhead":  # CUDA graph trees: each micro step (its forward) starts a new generation
            model.register_forward_pre_hook(mark_cuda_graph_step)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optimization.weight_decay), lr=cfg.optimization.lr,
                                  betas=cfg.optimization.betas, eps=cfg.optimization.eps, fused=fused)
    ds_config = deepspeed_config(cfg, layout)
    if load_universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    # the device this rank was given (training.distributed.cuda_index), not DeepSpeed's LOCAL_RANK-th: under
    # `srun --gpus-per-task=1` each rank sees one GPU, device 0, whatever its local rank
    args = argparse.Namespace(device_rank=device.index if device.type == "cuda" else 0)
    engine, optimizer, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer, config=ds_config)
    engine.checkpoint_engine = safe_checkpoint_engine(engine.checkpoint_engine)
    return engine, optimizer, target.to(device)


def import_muon_uncompiled() -> None:
    """deepspeed.initialize imports DeepSpeed's Muon optimizer to recognise it among ZeRO's optimizers, and that
    module decorates its functions with torch.compile, which loads TorchInductor as it decorates: most of a second
    of every rank's start, for an optimizer this project never builds. Imported here first with torch's own
    switch TORCHDYNAMO_DISABLE=1, read when a function is decorated, those functions stay plain; the switch is put
    back at once, so model.compile and everything after are as before."""
    ours = "TORCHDYNAMO_DISABLE" not in os.environ  # else the user's own setting decides
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    try:
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    finally:
        if ours:
            del os.environ["TORCHDYNAMO_DISABLE"]


def mark_cuda_graph_step(*_) -> None:
    """Tells CUDA graph trees that a new training step begins, so they may reuse the last step's graph outputs: the
    target encoder's no-grad forward inside the step would otherwise confuse their own guess of step boundaries."""
    torch.compiler.cudagraph_mark_step_begin()


def safe_checkpoint_engine(engine):
    """DeepSpeed's torch checkpoint engine, its load replaced by one that unpickles with weights_only=True (tensors,
    plain values and deepspeed_safe_types only): a file planted in a checkpoint folder cannot run code via --resume."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if type(engine) is not TorchCheckpointEngine:
        raise ConfigError(f"deepspeed: checkpoint engine {type(engine).__name__} is not supported (its loader "
                          f"unpickles without weights_only); remove the deepspeed section's checkpoint engine keys")
    allowed = deepspeed_safe_types()
    engine.load = lambda path, map_location=None: load_states_file(path, map_location, allowed)
    return engine


def set_schedules(optimizer, step: int, cfg, schedules: Schedules) -> dict:
    """The step's lr and weight decay into every parameter group (no decay stays 0 on WD_exclude groups); returns
    them with the EMA momentum of the step. `schedules`: the run's lengths (training.plan.RunPlan.schedules)."""
    opt, s = cfg.optimization, schedules
    values = {"lr": lr_at(step, s.warmup_steps, s.t_max, opt.start_lr, opt.lr, opt.final_lr),
              "wd": wd_at(step, s.t_max, opt.weight_decay, opt.final_weight_decay),
              "momentum": momentum_at(step, s.momentum_denominator, *cfg.ema.momentum)}
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
        if not group.get("WD_exclude"):
            group["weight_decay"] = values["wd"]
    return values


def forward(engine, ema, target, batch, dtype) -> torch.Tensor:
    """The loss of one micro batch: the context encoder and predictor, then the targets without grad. The targets
    come last so that the target encoder's all-gather (target_ema.py) overlaps the rest."""
    def targets():
        ema.wait()
        with torch.autocast(batch.images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return target_features(target, batch.images, batch.tgt_idx)

    return engine(batch.images.to(dtype), batch.ctx_idx, batch.tgt_idx, targets)


def micro_step(engine, ema, target, batch, dtype):
    """Forward, backward and DeepSpeed's step (the optimizer's on the last micro step) of one micro batch; returns
    the loss."""
    loss = forward(engine, ema, target, batch, dtype)
    engine.backward(loss)
    engine.step()
    return loss.detach()
