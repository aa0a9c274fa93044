"""One typed configuration tree: YAML file → frozen pydantic dataclasses, checked on load.

    cfg = load_config("configs/vith14_in1k.yaml", overrides=["optimization.lr=5e-4"])

Each section is a frozen pydantic dataclass (config/ranges.py `section`): pydantic refuses unknown sections and keys,
values of the wrong type and values outside the range their field declares; config_error words the first of its errors
as one line naming the file, section and key (and the closest valid key). check_consistency then refuses combinations
that cannot run. The official I-JEPA YAML files are recognised by their `meta` section and mapped key by key
(config/official.py). Values that follow from others are computed in config/derived.py, never written in YAML.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pydantic
import yaml
from pydantic_core import PydanticCustomError

import kernels
from config.errors import ConfigError, plain, shown, suggest
from config.official import is_official, map_official
from config.ranges import INT64_MAX, RANGE, at_least, between, section, text, yaml_number
from config.yaml_text import read_yaml
from model.sizes import VIT_SIZES, encoder_size


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


@section
class MaskConfig:
    """Multiblock masking; keyword names of the official collator, plus a switch per official quirk."""

    enc_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.85, 1.0), low_open=True, ordered=True)
    pred_mask_scale: tuple[float, float] = between(0.0, 1.0, default=(0.15, 0.2), low_open=True, ordered=True)
    aspect_ratio: tuple[float, float] = between(0.01, 100.0, default=(0.75, 1.5), ordered=True)
    nenc: int = between(1, 1, default=1, why="the context encoder and predictor take one context block per image, as "
                                            "every released I-JEPA config; several are not implemented")
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


# One key per registered kernel group (kernels/registry.py): its implementations or "auto" (the one measured faster on
# the device class). A new kernel module adds its key here by itself.
KernelsConfig = section(type("KernelsConfig", (), {
    "__doc__": "Which implementation each kernel group uses (kernels.configure); auto = the group's choice.",
    "__annotations__": {name: Literal[("auto", *op.implementations)] for name, op in kernels.REGISTRY.items()},
    **dict.fromkeys(kernels.REGISTRY, "auto")}))


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


CONFIG = pydantic.TypeAdapter(Config)
SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "deepspeed"}
FP32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: AdamW's scalars become fp32
TRITON_MAX_HEAD_DIM = 256  # kernels/attention.py's Triton kernels
# The sampler's messages name its arguments (mask section keys): prefixed with the section, they name config keys.
MASK_NAMES = re.compile(r"(?<![\w.])(" + "|".join(f.name for f in dataclasses.fields(MaskConfig)) + r")\b")


# ---------------------------------------------------------------------------------------------------------- loading

def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML file (this project's schema or the official one), applies `section.key=value` overrides."""
    path, source = Path(path), plain(path)
    if not path.is_file():
        raise ConfigError(f"{source}: config file not found (give the path of a YAML file, e.g. configs/tiny_cpu.yaml)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot read the config file ({err}); give a readable UTF-8 YAML file") from err
    raw = read_yaml(text, source)
    if not raw or not isinstance(raw, dict):  # an empty file would otherwise load as the defaults: ViT-H, no data
        got = ("no settings (it is empty or only comments)" if raw is None else "no sections" if raw == {} else
               f"a {YAML_KINDS.get(type(raw), type(raw).__name__)} at the top level ({shown(raw, 40)})")
        raise ConfigError(f"{source}: the file holds {got}; a config is a mapping of sections (run:, data:, model: "
                          f"...): start from a copy of configs/tiny_cpu.yaml or configs/vith14_in1k.yaml")
    raw, sources = map_official(raw, source) if is_official(raw) else (raw, {})
    sources.update(apply_overrides(raw, overrides, source))
    return config_from_dict(raw, source, sources)


def with_overrides(cfg: Config, overrides: typing.Sequence[str], source: str = "<config>") -> Config:
    """`cfg` with `section.key=value` overrides applied and checked, as load_config applies them to a file."""
    raw = copy.deepcopy(config_to_dict(cfg))  # the deepspeed section is cfg's own dict
    return config_from_dict(raw, source, apply_overrides(raw, overrides, source))


def apply_overrides(raw: dict, overrides: typing.Sequence[str], source: str) -> dict:
    """Writes `section.key=value` items (each value parsed as YAML, so 1e-3, true, [1, 2] get their types) into the
    raw sections, nested keys into the deepspeed section; returns {(section, key): where it came from}."""
    sources = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        where = f"--set {plain(item, 120)}"
        if not sep or not dot or not section or not key:
            raise ConfigError(f"{where}: expected SECTION.KEY=VALUE, e.g. --set optimization.lr=5e-4")
        value = read_yaml(text, where, prefix=name.strip()) if text.strip() else ""
        problem = section != "deepspeed" and unknown_key(section, key)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        values = raw.setdefault(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {shown(section)} must be a mapping, got {shown(values)}")
        keys = key.split(".") if section == "deepspeed" else [key]  # --set deepspeed.zero_optimization.stage=3
        for k in keys[:-1]:
            values = values.setdefault(k, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: deepspeed.{'.'.join(keys[:-1])} is not a mapping, so it has no key "
                                  f"{shown(keys[-1])}")
        values[keys[-1]] = value
        sources[(section, key)] = where
    return sources


def unknown_key(section: Any, key: Any) -> Optional[str]:
    """Why `section.key` names no setting, with the closest valid name; None when it names one."""
    if section not in SECTIONS:
        return f"unknown section {shown(section)}{suggest(section, [*SECTIONS, 'deepspeed'])}"
    keys = [f.name for f in dataclasses.fields(SECTIONS[section])]
    return None if key in keys else f"section {section!r} has no key {shown(key)}{suggest(key, keys)}"


def config_from_dict(raw: dict, source: str = "<dict>", sources: dict | None = None) -> Config:
    """Builds and checks the typed tree: pydantic checks the keys, types and each value's declared range
    (config/ranges.py), then check_consistency the rules between keys; `sources` names where an overridden
    (section, key) came from."""
    try:
        cfg = CONFIG.validate_python(raw)
    except pydantic.ValidationError as err:
        raise config_error(err, raw, source, sources or {}) from None
    problem = check_consistency(cfg)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    return cfg


# what a file holds at its top level when that is no mapping, as load_config's message names it
YAML_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
# pydantic's error types, by what our message says
KEY_ERRORS = {"unexpected_keyword_argument", "invalid_key"}  # an unknown section or key
PAIR_ERRORS = {"tuple_type", "too_short", "too_long", "missing"}
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "unordered"}
EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
            "finite_number": "a finite number"}


def config_error(err: pydantic.ValidationError, raw: dict, source: str, sources: dict) -> ConfigError:
    """pydantic's error that comes first in the file, as our one line: the file (or the --set item), section.key, the
    value as written and what is allowed."""
    kind, loc, section, key, error = first_error(err, raw)
    if len(loc) == 1:  # the section itself
        return ConfigError(f"{source}: " + (unknown_key(section, None) if kind in KEY_ERRORS else
                                            error["ctx"]["message"] if kind == "deepspeed" else
                                            f"section {section!r} must be a mapping of keys, got "
                                            f"{shown(raw[section])}"))
    where = sources.get((section, key), source)
    if kind in KEY_ERRORS:
        return ConfigError(f"{where}: {unknown_key(section, key)}")
    where, value, cls = f"{where}: {section}.{key}", raw[section][key], SECTIONS[section]
    hint = typing.get_type_hints(cls)[key]
    if kind in RANGE_ERRORS:
        integer, pair = int in (hint, *typing.get_args(hint)), typing.get_origin(hint) is tuple
        loaded = value if integer else [float(yaml_number(v)) for v in value] if pair else float(yaml_number(value))
        return ConfigError(f"{where} is {shown(loaded)}; allowed: "
                           f"{cls.__dataclass_fields__[key].metadata[RANGE].describe(integer, pair)}")
    if kind == "text":
        return ConfigError(f"{where} is {shown(value)}; allowed: {error['ctx']['problem']}")
    if kind == "literal_error":
        return ConfigError(f"{where}: {shown(value)} is not one of {', '.join(map(repr, typing.get_args(hint)))}")
    if kind in PAIR_ERRORS:
        return ConfigError(f"{where}: expected a list of {len(typing.get_args(hint))} numbers, got {shown(value)}")
    if len(loc) > 2:  # one number of a pair
        where, value = f"{where}[{loc[2]}]", value[loc[2]]
    if kind not in EXPECTED:  # none that these types raise: pydantic's own words, on one line
        return ConfigError(f"{where}: {plain(error['msg'], 200)}, got {shown(value)}")
    return ConfigError(f"{where}: expected {EXPECTED[kind]}, got {shown(value)}"
                       + ("" if kind == "finite_number" else f" ({type(value).__name__})"))


def first_error(err: pydantic.ValidationError, raw: dict) -> tuple:
    """(type, location, section, key, error) of pydantic's error that comes first in the file (it lists them in the
    schema's order), the section and key as the file writes them; within a key, its type (each number of a pair in
    turn) before its range."""
    placed = []
    for error in err.errors():
        kind, loc = error["type"], error["loc"]
        if kind == "string_unicode":  # a str with a lone surrogate: as a key, pydantic names its mapping, not it
            kind, loc = ("invalid_key", (*loc, error["input"])) if len(loc) < 2 else ("literal_error", loc)
        section_at, section = find_key(raw, loc[0])
        key_at, key = find_key(raw.get(section), loc[1]) if len(loc) > 1 else (-1, None)
        placed.append(((section_at, key_at, kind in RANGE_ERRORS, loc[2] if len(loc) > 2 else -1),
                       (kind, loc, section, key, error)))
    return min(placed, key=lambda p: p[0])[1]


def find_key(mapping: Any, item: Any) -> tuple[int, Any]:
    """(position, key) of the key of `mapping` that pydantic's location `item` names (a key that is neither a str nor
    an int it names by its repr); (the end, item) when none does."""
    keys = list(mapping) if isinstance(mapping, dict) else []
    return next(((at, key) for at, key in enumerate(keys) if item == key or (not isinstance(key, str) and
                                                                           item == repr(key))), (len(keys), item))


def check_consistency(cfg: Config) -> Optional[str]:
    """The checks that involve more than one key: what makes the combination unable to run, first found; else None."""
    model, opt, crop, patch = cfg.model, cfg.optimization, cfg.data.crop_size, cfg.model.patch_size
    if model.arch not in VIT_SIZES:
        return f"model.arch: unknown {shown(model.arch)}{suggest(model.arch, VIT_SIZES)}"
    # The crop is a whole number of patches, enough for a block to fit.
    if crop % patch:
        return f"data.crop_size {crop} is not a multiple of model.patch_size {patch}"
    side, smallest = crop // patch, 2 if cfg.mask.exclude_edges else 1  # excluded edges: last row and column out
    if side < smallest:
        return (f"data.crop_size {crop} / model.patch_size {patch} gives a {side}x{side} patch grid; at least "
                f"{smallest}x{smallest} is needed (mask.exclude_edges {cfg.mask.exclude_edges})")
    # What the multiblock sampler refuses at construction (blocks smaller than min_keep, fixed lengths that do not fit
    # the smallest blocks or without length_policy fixed), refused here with its message in config keys.
    from pipeline.masks.sampler import MultiBlockMaskSampler

    try:  # ~1 ms; ~30 ms with length_policy fixed and no fixed_enc_len (the sampler estimates it)
        MultiBlockMaskSampler(input_size=crop, patch_size=patch, **dataclasses.asdict(cfg.mask))
    except ValueError as err:
        grid = f"the {side}x{side} grid of data.crop_size {crop} / model.patch_size {patch}"
        message = MASK_NAMES.sub(lambda m: f"mask.{m[1]}", str(err))
        return message.replace(f"a {side}x{side} grid", grid).replace("this grid", grid)
    # Widths split into whole heads, divisible by 4 (the 2-D sin-cos positions), head dims the attention runs.
    dim, _, heads, _ = encoder_size(model)
    arch = f" ({model.arch}'s)"
    pred_heads = "model.pred_num_heads" + ("" if model.pred_num_heads else " (the encoder's)")
    for width_key, width, heads_key, n in (
            ("model.embed_dim" + ("" if model.embed_dim else arch), dim,
             "model.num_heads" + ("" if model.num_heads else arch), heads),
            ("model.pred_emb_dim", model.pred_emb_dim, pred_heads, model.pred_num_heads or heads)):
        if width % 4:
            return f"{width_key} {width} is not divisible by 4, which the 2-D sin-cos positions need"
        if width % n:
            return f"{width_key} {width} is not divisible by {heads_key} {n}"
        if cfg.kernels.attention == "triton" and width // n > TRITON_MAX_HEAD_DIM:
            return (f"{width_key} {width} / {heads_key} {n} gives heads of {width // n}; kernels.attention triton runs "
                    f"heads of at most {TRITON_MAX_HEAD_DIM}: use more heads or kernels.attention sdpa")
    # A CUDA-only implementation asked for a CPU run (Triton's interpreter, for tests, runs them on the CPU).
    if cfg.run.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        for name, op in kernels.REGISTRY.items():
            if getattr(cfg.kernels, name) in op.cuda_only:
                return (f"kernels.{name} {getattr(cfg.kernels, name)} needs a CUDA device but run.device is cpu: "
                        f"choose one of {', '.join(i for i in op.implementations if i not in op.cuda_only)} or auto")
    # AdamW's step size lr / (1 - beta1^step) and its decay factor 1 - lr * wd become fp32 scalars of the optimizer
    # state: beyond fp32's range torch raises instead of stepping.
    lr_key, peak_lr = max([("start_lr", opt.start_lr), ("lr", opt.lr), ("final_lr", opt.final_lr)], key=lambda x: x[1])
    wd_key, peak_wd = max([("weight_decay", opt.weight_decay), ("final_weight_decay", opt.final_weight_decay)],
                          key=lambda x: x[1])
    if peak_lr / (1 - opt.betas[0]) > FP32_MAX:
        return (f"optimization.{lr_key} {peak_lr} / (1 - optimization.betas[0] {opt.betas[0]}), AdamW's first step, "
                f"exceeds fp32's range ({FP32_MAX:.3g}): lower optimization.{lr_key}")
    if peak_lr * peak_wd > FP32_MAX:
        return (f"optimization.{lr_key} {peak_lr} x optimization.{wd_key} {peak_wd}, AdamW's decay per step, exceeds "
                f"fp32's range ({FP32_MAX:.3g}): lower one of them")
    if cfg.logging.probe_every and not cfg.logging.probe_shards:
        return "logging.probe_every is set but logging.probe_shards is empty: give a small labeled shard folder"
    if opt.warmup_epochs > opt.epochs:
        return f"optimization.warmup_epochs {opt.warmup_epochs} exceeds optimization.epochs {opt.epochs}"
    return None


# ---------------------------------------------------------------------------------------------------------- dumping

def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists for pairs) in section order: what YAML dumps and config_from_dict reads back."""
    def lists(v):
        return [lists(x) for x in v] if isinstance(v, tuple) else {k: lists(x) for k, x in v.items()} \
            if isinstance(v, dict) else v
    return lists(dataclasses.asdict(cfg))


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for pairs and lists: `crop_scale: [0.3, 1.0]`."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
