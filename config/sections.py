"""What a config is: one frozen pydantic dataclass per YAML section, each field with its type, default and allowed
range (config/ranges.py), and `Config`, the tree of them. How a file becomes one (loading, overrides, the one-line
messages, the checks between keys) is config/load.py.
"""
from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal, Optional

import pydantic
from pydantic_core import PydanticCustomError

from config.errors import shown
from config.ranges import INT64_MAX, at_least, between, section, text
from pipeline.shards.manifest import scheme_problem


def known_scheme(value: str) -> str:
    """A shard folder's path or URL (data.shards, logging.probe_shards): a scheme this does not read (htps://) is
    refused here, where it would otherwise be read as a local path that does not exist."""
    if problem := scheme_problem(value):
        raise PydanticCustomError("scheme", "{problem}", {"problem": problem})
    return value


# Each numeric field declares its allowed range and each string its rule (config/ranges.py); pydantic checks them.
# The upper bounds of sizes and counts are resource limits: far beyond the recipes, short of what exhausts a machine.
@section
class RunConfig:
    name: str = text("ijepa", required=True, name=True)
    out_dir: str = text("runs/ijepa", required=True)  # logs, the resolved config and checkpoints go here
    seed: int = between(0, INT64_MAX, default=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    # how long a rank waits for the others (a collective) and rank 0 for a step to finish (the watchdog) before the
    # run stops naming the stalled step: well under the libraries' 30 minutes, above a ViT-H checkpoint save
    timeout_s: float = between(5.0, 86400.0, default=600.0)
    # the signal that checkpoints, stops and requeues the Slurm job (sbatch --signal=USR1@300: the time limit's
    # warning); SIGTERM and SIGINT checkpoint and stop without a requeue
    requeue_signal: Literal["USR1", "USR2", "none"] = "USR1"


@section
class DataConfig:
    # folder written by shard_dataset.py (holds manifest.json), or its http(s):// or s3:// URL (docs/data-pipeline.md)
    shards: str = text("")
    backend: Literal["auto", "dali", "torch"] = "auto"  # auto = DALI when importable
    batch_size: int = between(1, 65536, default=128)  # per GPU, per micro step
    crop_size: int = between(1, 4096, default=224)
    # RandomResizedCrop's area and aspect ranges; beyond 1:10 the crop of a small image is under one pixel wide
    crop_scale: tuple[float, float] = between(0.0, 1.0, default=(0.3, 1.0), low_open=True, ordered=True)
    crop_ratio: tuple[float, float] = between(0.1, 10.0, default=(3 / 4, 4 / 3), ordered=True)
    num_workers: int = between(0, 64, default=2)  # DALI CPU threads / DataLoader workers per GPU (0: in process)
    prefetch: int = between(1, 16, default=2)  # batches queued ahead of the training step
    shuffle_buffer: int = between(0, 65536, default=2048)  # samples held for shuffling
    on_bad_sample: Literal["raise", "skip"] = "raise"  # skip = drop and count corrupt samples
    # shards from a URL: each node's verified cache of them (local disk), its bound in GB (0: no bound, every shard),
    # and the most one file may take to arrive, retries and backoff included
    cache_dir: str = text("~/.cache/ijepa/shards")
    cache_gb: float = at_least(0.0, default=0.0)
    fetch_timeout_s: float = between(1.0, 86400.0, default=300.0)

    _shards_scheme = pydantic.field_validator("shards")(known_scheme)


@section
class MaskConfig:
    """Multiblock masking; keyword names of the official collator, plus a switch per official quirk."""

    enc_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.85, 1.0), low_open=True, ordered=True)
    pred_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.15, 0.2), low_open=True, ordered=True)
    aspect_ratio: tuple[float, float] = between(0.01, 100.0, default=(0.75, 1.5), ordered=True)
    nenc: int = between(1, 1, default=1,
                        why="the context encoder and predictor take one context block per image, as every released "
                            "I-JEPA config; several are not implemented")
    npred: int = between(1, 64, default=4)
    min_keep: int = at_least(0, default=10)  # below the smallest block: checked against the grid
    allow_overlap: bool = False
    tie_aspect_to_scale: bool = True  # official: target aspect drawn with the same r as its scale
    exclude_edges: bool = True  # official: last patch row and column never covered; (H-1)x(W-1) context
    truncation: Literal["raster", "random"] = "raster"  # official: keep the lowest raster indices
    length_policy: Literal["batch_min", "fixed"] = "batch_min"  # fixed = static shapes
    fixed_enc_len: Optional[int] = at_least(1, default=None, null="derived by the sampler")  # with length_policy fixed
    fixed_pred_len: Optional[int] = at_least(1, default=None, null="derived by the sampler")


@section
class ModelConfig:
    arch: str = "vit_huge"  # one of model.sizes.VIT_SIZES
    patch_size: int = between(1, 4096, default=14)
    # None = the arch's value; set to shrink or grow a preset
    embed_dim: Optional[int] = between(1, 16384, default=None, null="the arch's value")
    depth: Optional[int] = between(1, 256, default=None, null="the arch's value")
    num_heads: Optional[int] = between(1, 16384, default=None, null="the arch's value")
    pred_depth: int = between(1, 256, default=12)
    pred_emb_dim: int = between(1, 16384, default=384)
    # None = the encoder's heads, as the official code does
    pred_num_heads: Optional[int] = between(1, 16384, default=None, null="the encoder's heads")
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block, token dim dynamic (model/compile.py)
    # torch.compile's mode for the blocks; reduce-overhead = CUDA graphs (with mask.length_policy: fixed, one
    # graph per block shape)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"


@section
class KernelsConfig:
    """Which implementation each kernel group uses (kernels.configure); auto = the group's choice for the device. One
    field per group of kernels.REGISTRY, its values the group's implementations (a test checks they match)."""

    attention: Literal["auto", "triton", "sdpa", "sdpa-cudnn", "reference"] = "auto"
    gather: Literal["auto", "triton", "reference"] = "auto"


@section
class OptimizationConfig:
    epochs: int = between(1, 10**6, default=300)
    warmup_epochs: float = at_least(0.0, default=40)  # at most epochs
    # lr and wd run over int(ipe_scale * epochs * ipe) steps, momentum over ipe * epochs * ipe_scale (the official
    # arithmetic, training/schedules.py); training runs epochs * ipe steps
    ipe_scale: float = between(0.0, 1000.0, default=1.0, low_open=True)
    # A huge lr is allowed (it diverges, and the run stops naming the step) as long as AdamW can compute with it:
    # check_optimizer. Weight decay: decoupled, lr * wd per step.
    start_lr: float = at_least(0.0, default=2e-4)
    lr: float = at_least(0.0, default=1e-3)
    final_lr: float = at_least(0.0, default=1e-6)
    weight_decay: float = at_least(0.0, default=0.04)
    final_weight_decay: float = at_least(0.0, default=0.4)
    betas: tuple[float, float] = between(0.0, 1.0, default=(0.9, 0.999), high_open=True)  # AdamW's, in [0, 1)
    eps: float = between(0.0, 1.0, default=1e-8, low_open=True)
    grad_accum: int = between(1, 4096, default=1)  # micro steps per optimizer step
    precision: Literal["bf16", "fp32"] = "bf16"
    # stop after this many optimizer steps (schedules keep their length)
    max_steps: Optional[int] = at_least(1, default=None, null="the whole schedule")


@section
class EMAConfig:
    # linear from the first to the second over the schedule
    momentum: tuple[float, float] = between(0.0, 1.0, default=(0.996, 1.0), ordered=True)


@section
class CheckpointConfig:
    every_steps: int = at_least(1, default=1000)
    keep_last: int = at_least(1, default=3)
    resume: str = text("")  # "" = fresh start, "auto" = latest complete checkpoint in run.out_dir, or a path


@section
class LoggingConfig:
    every_steps: int = at_least(1, default=10)
    tensorboard: bool = True
    csv: bool = True
    diagnostics_every: int = at_least(0, default=500)  # collapse diagnostics of the target features; 0 = off
    # TensorBoard image of the first images of rank 0's batch with their masks at step 1 and every N steps; 0 = off
    mask_images_every: int = at_least(0, default=5000)
    # kNN probe of the target encoder on probe_shards every N steps (rank 0); 0 = off
    probe_every: int = at_least(0, default=0)
    # small labeled held-out shards: the first half fits the kNN, the second half scores it
    probe_shards: str = text("")
    # each rank appends the keys of every batch it reads to run.out_dir/samples/rank<r>.tsv (training/sample_log.py)
    sample_log: bool = False

    _probe_shards_scheme = pydantic.field_validator("probe_shards")(known_scheme)


# DeepSpeed keys derived from our sections: setting them in the deepspeed section would say the same thing twice.
DERIVED_DEEPSPEED_KEYS = {
    "train_batch_size": "data.batch_size and optimization.grad_accum (global batch = micro x accum x world size)",
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "optimization.grad_accum",
    "bf16": "optimization.precision",
    "fp16": "optimization.precision",
    "optimizer": "optimization.* (the optimizer is a torch AdamW built by train.py)",
    "scheduler": "optimization.* (schedules are functions of the step, applied by train.py)",
}


def check_deepspeed(values: dict) -> dict:
    """The pass-through section: no key that our sections derive, and a ZeRO stage DeepSpeed has."""
    derived = next((key for key in values if key in DERIVED_DEEPSPEED_KEYS), None)
    zero = values.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    message = (f"deepspeed.{derived} is derived from {DERIVED_DEEPSPEED_KEYS[derived]}; set that instead and remove "
               f"deepspeed.{derived}" if derived else
               f"deepspeed.zero_optimization is {shown(zero)}; allowed: a mapping, e.g. {{stage: 2}}"
               if not isinstance(zero, dict) else
               f"deepspeed.zero_optimization.stage is {shown(stage)}; allowed: 0, 1, 2 or 3 (the ZeRO stage, an "
               f"integer)"
               if type(stage) is not int or stage not in (0, 1, 2, 3) else None)
    if message:
        raise PydanticCustomError("deepspeed", "{message}", {"message": message})
    return values


@pydantic.dataclasses.dataclass(frozen=True, config=pydantic.ConfigDict(extra="forbid"))
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Passed through to DeepSpeed (zero_optimization, communication, monitors' extras ...), merged over the values
    # that deepspeed_config() derives from the sections above.
    deepspeed: Annotated[dict, pydantic.AfterValidator(check_deepspeed)] = field(
        default_factory=lambda: {"zero_optimization": {"stage": 2}})
