"""What a config is: one frozen pydantic dataclass per YAML section, each field with its type, default and allowed
range (config/ranges.py), what it means (the docstring under it, which docs/config.md is generated from:
config/reference.py), and `Config`, the tree of them. How a file becomes one (loading, overrides, the one-line
messages, the checks between keys) is config/load.py.
"""
from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal, Optional, Union

import pydantic
from pydantic_core import PydanticCustomError

from config.errors import shown
from config.ranges import INT64_MAX, at_least, between, section, text
from pipeline.shards.manifest import MANIFEST_NAME, scheme_problem


def known_scheme(value: str) -> str:
    """A shard folder's path or URL (data.shards, logging.probe_shards): a scheme this does not read (htps://) is
    refused here, where it would otherwise be read as a local path that does not exist. The folder's manifest.json
    named instead of the folder means the folder."""
    if problem := scheme_problem(value):
        raise PydanticCustomError("scheme", "{problem}", {"problem": problem})
    if value.rstrip("/").endswith("/" + MANIFEST_NAME):
        return value.rstrip("/")[: -len(MANIFEST_NAME)]
    return value


# Each numeric field declares its allowed range and each string its rule (config/ranges.py); pydantic checks them.
# The upper bounds of sizes and counts are resource limits: far beyond the recipes, short of what exhausts a machine.
# The docstring under a field says what it means (pydantic's use_attribute_docstrings: the field's description).
@section
class RunConfig:
    """Where a run writes, its seed and device, and how it stops."""

    name: str = text("ijepa", required=True, name=True)
    """the run's name: its logs go to run.out_dir/logs/<name>"""
    out_dir: str = text("runs/ijepa", required=True)
    """the run folder: logs, the resolved config and checkpoints go here"""
    seed: int = between(0, INT64_MAX, default=0)
    """seeds the initial weights, the masks and the data order and augmentation"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available"""
    # well under the libraries' 30 minutes, above a ViT-H checkpoint save
    timeout_s: float = between(5.0, 86400.0, default=600.0)
    """how long a rank waits for the others (a collective) and rank 0 for a step to finish (the watchdog) before the
    run stops naming the stalled step"""
    requeue_signal: Literal["USR1", "USR2", "none"] = "USR1"
    """the signal that checkpoints, stops and requeues the Slurm job (sbatch --signal=USR1@300: the time limit's
    warning); SIGTERM and SIGINT checkpoint and stop without a requeue"""


@section
class DataConfig:
    """The shards and the loader that reads them (docs/data-pipeline.md)."""

    shards: str = text("")
    """folder written by shard_dataset.py (holds manifest.json), or its http(s):// or s3:// URL"""
    backend: Literal["auto", "dali", "torch"] = "auto"
    """auto = DALI when importable"""
    batch_size: Union[int, Literal["auto"]] = between(1, 65536, default=128)
    """images per GPU per micro step; with optimization.global_batch set, the most per micro step (grad_accum makes up
    the rest); auto (needs optimization.global_batch) = the largest that fits the GPU's memory, found at the start of
    each launch: an out-of-memory error in the first step halves it on every rank and doubles the accumulation"""
    crop_size: int = between(1, 4096, default=224)
    """side of the square training crop in pixels; a multiple of model.patch_size"""
    crop_scale: tuple[float, float] = between(0.0, 1.0, default=(0.3, 1.0), low_open=True, ordered=True)
    """RandomResizedCrop's range of the crop's area, as a fraction of the image's"""
    # beyond 1:10 the crop of a small image is under one pixel wide
    crop_ratio: tuple[float, float] = between(0.1, 10.0, default=(3 / 4, 4 / 3), ordered=True)
    """RandomResizedCrop's range of the crop's aspect ratio (width / height)"""
    num_workers: int = between(0, 64, default=2)
    """DALI CPU threads / DataLoader workers per GPU (0: in process)"""
    prefetch: int = between(1, 16, default=2)
    """batches queued ahead of the training step"""
    shuffle_buffer: int = between(0, 65536, default=2048)
    """samples held for shuffling"""
    on_bad_sample: Literal["raise", "skip"] = "raise"
    """a corrupt sample at training time: raise = an error naming its shard and key; skip = drop and count it"""
    cache_dir: str = text("~/.cache/ijepa/shards")
    """shards from a URL: each node's verified cache of them, on local disk"""
    cache_gb: float = at_least(0.0, default=0.0)
    """shards from a URL: the cache's bound in GB (0: no bound, every shard)"""
    fetch_timeout_s: float = between(1.0, 86400.0, default=300.0)
    """shards from a URL: the most one file may take to arrive, retries and backoff included"""
    epoch_order: Literal["auto", "global", "cache_blocks"] = "auto"
    """global = each epoch one shuffle of every sample; cache_blocks = shards shuffled into blocks of half data.cache_gb,
    samples shuffled within a block, each epoch first reading the shards the cache still holds (a cache smaller than
    the data set then fetches about the part it cannot hold, not a shard per sample); auto = cache_blocks when
    data.shards is a URL and data.cache_gb cannot hold it, else global"""

    _shards_scheme = pydantic.field_validator("shards")(known_scheme)


@section
class MaskConfig:
    """Multiblock masking; keyword names of the official collator, plus a switch per official quirk."""

    enc_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.85, 1.0), low_open=True, ordered=True)
    """the context block's area, as a fraction of the patch grid (min, max)"""
    pred_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.15, 0.2), low_open=True, ordered=True)
    """each target block's area, as a fraction of the patch grid (min, max)"""
    aspect_ratio: tuple[float, float] = between(0.01, 100.0, default=(0.75, 1.5), ordered=True)
    """each target block's aspect ratio (min, max)"""
    nenc: int = between(1, 1, default=1,
                        why="the context encoder and predictor take one context block per image, as every released "
                            "I-JEPA config; several are not implemented")
    """context blocks per image"""
    npred: int = between(1, 64, default=4)
    """target blocks per image"""
    min_keep: int = at_least(0, default=10)
    """the fewest patches a context or target keeps; below the smallest block: checked against the grid"""
    allow_overlap: bool = False
    """false: the context excludes every target's patches"""
    tie_aspect_to_scale: bool = True
    """official: a target's aspect drawn with the same random number as its scale (the mask switches below)"""
    exclude_edges: bool = True
    """official: the last patch row and column never covered; (H−1)×(W−1) context (the mask switches below)"""
    truncation: Literal["raster", "random"] = "raster"
    """official raster: contexts cut to the batch's shortest keep their lowest raster indices; random: a random
    subset (the mask switches below)"""
    length_policy: Literal["batch_min", "fixed"] = "batch_min"
    """official batch_min: the batch's shortest context and target set the lengths; fixed = static shapes (the mask
    switches below)"""
    fixed_enc_len: Optional[int] = at_least(1, default=None, null="derived by the sampler")
    """K_enc with length_policy fixed (null: the 1% quantile of context lengths)"""
    fixed_pred_len: Optional[int] = at_least(1, default=None, null="derived by the sampler")
    """K_pred with length_policy fixed (null: the smallest target area)"""


@section
class ModelConfig:
    """The encoder (an official ViT size, optionally resized) and the predictor."""

    arch: str = "vit_huge"
    """the encoder's size preset (model/sizes.py)"""
    patch_size: int = between(1, 4096, default=14)
    """patch side in pixels; the patch grid is data.crop_size / patch_size per side"""
    embed_dim: Optional[int] = between(1, 16384, default=None, null="the arch's value")
    """the encoder's width; set to shrink or grow a preset"""
    depth: Optional[int] = between(1, 256, default=None, null="the arch's value")
    """the encoder's blocks; set to shrink or grow a preset"""
    num_heads: Optional[int] = between(1, 16384, default=None, null="the arch's value")
    """the encoder's attention heads; set to shrink or grow a preset"""
    pred_depth: int = between(1, 256, default=12)
    """the predictor's blocks"""
    pred_emb_dim: int = between(1, 16384, default=384)
    """the predictor's width"""
    pred_num_heads: Optional[int] = between(1, 16384, default=None, null="the encoder's heads")
    """the predictor's attention heads (null: the encoder's, as the official code does)"""
    activation_checkpointing: bool = False
    """recompute every block in the backward pass: less memory, more compute"""
    compile: bool = False
    """torch.compile each transformer block, the token dimension dynamic: one graph per block type, no recompilation
    as K_enc / K_pred change (model/compile.py)"""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile's mode for the blocks; reduce-overhead = CUDA graphs (with mask.length_policy: fixed, one graph
    per block shape)"""


@section
class KernelsConfig:
    """Which implementation each kernel group uses (kernels.configure); auto = the group's choice for the device. One
    field per group of kernels.REGISTRY, its values the group's implementations (a test checks they match)."""

    attention: Literal["auto", "triton", "sdpa", "sdpa-cudnn", "reference"] = "auto"
    """the attention implementation, decided once (the IJEPA_ATTENTION variable overrides; docs/kernels.md)"""
    gather: Literal["auto", "triton", "reference"] = "auto"
    """the masked-gather implementation, decided once (the IJEPA_GATHER variable overrides; docs/kernels.md)"""


@section
class OptimizationConfig:
    """AdamW and its schedules, functions of the step (the official arithmetic: training/schedules.py)."""

    epochs: int = between(1, 10**6, default=300)
    """passes over the shards: training runs epochs × steps per epoch optimizer steps"""
    warmup_epochs: float = at_least(0.0, default=40)
    """the lr's linear warmup from start_lr to lr, in epochs; at most epochs"""
    ipe_scale: float = between(0.0, 1000.0, default=1.0, low_open=True)
    """stretches the schedules' horizon: lr and wd run over int(ipe_scale × epochs × steps per epoch) steps, momentum
    over steps per epoch × epochs × ipe_scale (not truncated); training still runs epochs × steps per epoch steps"""
    # A huge lr is allowed (it diverges, and the run stops naming the step) as long as AdamW can compute with it:
    # check_optimizer.
    start_lr: float = at_least(0.0, default=2e-4)
    """the lr at step 0, where the warmup starts"""
    lr: float = at_least(0.0, default=1e-3)
    """the peak lr, reached at the end of the warmup; cosine to final_lr after it"""
    final_lr: float = at_least(0.0, default=1e-6)
    """the lr at the end of the schedule"""
    weight_decay: float = at_least(0.0, default=0.04)
    """AdamW's decoupled weight decay (lr × wd per step) at step 0; cosine to final_weight_decay"""
    final_weight_decay: float = at_least(0.0, default=0.4)
    """the weight decay at the end of the schedule"""
    betas: tuple[float, float] = between(0.0, 1.0, default=(0.9, 0.999), high_open=True)
    """AdamW's betas"""
    eps: float = between(0.0, 1.0, default=1e-8, low_open=True)
    """AdamW's eps"""
    grad_accum: int = between(1, 4096, default=1)
    """micro steps per optimizer step (derived when global_batch is set: leave it 1)"""
    global_batch: int = between(0, 2**24, default=0)
    """images per optimizer step over all ranks, the recipe's batch (the paper: 2048), kept on any number of GPUs: the
    per-GPU micro batch (at most data.batch_size) and grad_accum are derived; 0 = data.batch_size × grad_accum ×
    ranks"""
    precision: Literal["bf16", "fp32"] = "bf16"
    """the dtype of the weights, activations and batches"""
    max_steps: Optional[int] = at_least(1, default=None, null="the whole schedule")
    """stop after this many optimizer steps (the schedules keep their length)"""


@section
class EMAConfig:
    """The target encoder, an exponential moving average of the context encoder."""

    momentum: tuple[float, float] = between(0.0, 1.0, default=(0.996, 1.0), ordered=True)
    """the EMA momentum, linear from the first to the second over the schedule"""


@section
class CheckpointConfig:
    """When a run saves, how many saves it keeps, and where it resumes from."""

    every_steps: int = at_least(1, default=1000)
    """save every N optimizer steps and at the run's last step (a stopping signal saves too: run.requeue_signal)"""
    keep_last: int = at_least(1, default=3)
    """complete checkpoints kept in run.out_dir; older ones are removed"""
    resume: str = text("")
    """empty = a fresh start; auto = the latest complete checkpoint in run.out_dir; or a checkpoint's path"""
    init_from: str = text("")
    """a warm start (train.py --init-from): the weights of an official .pth.tar, a checkpoint tag folder or an export
    folder, then a fresh optimizer and schedules from step 0; ignored once the run has a checkpoint of its own (a
    resume goes on from it)"""
    init_continue: bool = False
    """with init_from an official .pth.tar: the step count and schedules go on from the epoch the file records, as the
    official meta.load_checkpoint does (the AdamW moments cannot be carried)"""
    keep_best: bool = False
    """keep the checkpoint with the best in-training kNN probe (logging.probe_every) as checkpoints/best, never
    pruned by keep_last"""


@section
class LoggingConfig:
    """What a run logs, how often, and the probes it runs as it trains."""

    every_steps: int = at_least(1, default=10)
    """a log line and the monitors' scalars (loss, schedules, throughput, memory) every N optimizer steps"""
    tensorboard: bool = True
    """write TensorBoard event files"""
    csv: bool = True
    """write the CSV step log (what report.py reads)"""
    diagnostics_every: int = at_least(0, default=500)
    """collapse diagnostics of the target features on a fixed set of images (logging.probe_shards, else data.shards)
    every N steps; 0 = off"""
    mask_images_every: int = at_least(0, default=5000)
    """TensorBoard image of the first images of rank 0's batch with their masks, at step 1 and every N steps; 0 = off"""
    probe_every: int = at_least(0, default=0)
    """kNN probe of the target encoder on probe_shards every N steps (and at every save with checkpoint.keep_best), on
    rank 0, logged beside the loss; 0 = off"""
    probe_shards: str = text("")
    """small labeled held-out shards: the first half fits the kNN, the second half scores it"""
    collapse: Literal["warn", "stop", "off"] = "warn"
    """the collapse alarm on the diagnostics (docs/training.md, "Collapse"): warn = one line and a TensorBoard event;
    stop = a checkpoint, then a non-zero exit with one line"""
    collapse_fraction: float = between(0.0, 1.0, default=0.5, low_open=True, high_open=True)
    """the collapse alarm fires when the effective rank of the target features (diagnostics_every: of the patch tokens
    or of the pooled features) or the kNN top-1 (probe_every) stays under this fraction of its own peak so far for
    collapse_patience checks in a row"""
    collapse_patience: int = between(1, 1000, default=3)
    """consecutive checks under collapse_fraction of the peak that fire the collapse alarm"""
    wandb: Literal["off", "offline", "online"] = "off"
    """Weights & Biases logging from rank 0 (the TensorBoard scalars and mask pictures); offline writes under
    run.out_dir/wandb; the run id lives in the checkpoints, so a resume continues the same W&B run"""
    wandb_project: str = text("ijepa")
    """the W&B project"""
    wandb_entity: str = text("")
    """the W&B entity (team or user); empty = the account's default"""
    wandb_name: str = text("")
    """the W&B run's display name; empty = run.name"""
    sample_log: bool = False
    """each rank appends the keys of every batch it reads to run.out_dir/samples/rank<r>.tsv (training/sample_log.py)"""

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


@pydantic.dataclasses.dataclass(frozen=True, config=pydantic.ConfigDict(extra="forbid", use_attribute_docstrings=True))
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
    deepspeed: Annotated[dict, pydantic.AfterValidator(check_deepspeed)] = field(
        default_factory=lambda: {"zero_optimization": {"stage": 2}})
    """Passed through to DeepSpeed (zero_optimization, communication, monitors' extras ...), merged over the values
    that deepspeed_config() derives from the sections above."""
