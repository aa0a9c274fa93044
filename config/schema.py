"""One typed configuration tree: YAML file → frozen dataclasses, checked on load.

    cfg = load_config("configs/vith14_in1k.yaml", overrides=["optimization.lr=5e-4"])

Loading rejects unknown sections and keys (naming the closest valid key) and values of the wrong type, with the file,
section and key in the message. The official I-JEPA YAML files are recognised by their `meta` section and mapped key by
key (config/official.py). Values that follow from others are computed in config/derived.py, never written in YAML.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

import kernels
from config.errors import ConfigError, suggest
from config.official import is_official, map_official
from model.sizes import VIT_SIZES


@dataclass(frozen=True)
class RunConfig:
    name: str = "ijepa"
    out_dir: str = "runs/ijepa"  # logs, the resolved config and checkpoints go here
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available


@dataclass(frozen=True)
class DataConfig:
    shards: str = ""  # folder written by shard_dataset.py (holds manifest.json)
    backend: Literal["auto", "dali", "torch"] = "auto"  # auto = DALI when importable
    batch_size: int = 128  # per GPU, per micro step
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    num_workers: int = 2  # DALI CPU threads / DataLoader workers per GPU
    prefetch: int = 2  # batches queued ahead of the training step
    shuffle_buffer: int = 2048  # samples held for shuffling
    on_bad_sample: Literal["raise", "skip"] = "raise"  # skip = drop and count corrupt samples


@dataclass(frozen=True)
class MaskConfig:
    """Multiblock masking; keyword names of the official collator, plus a switch per official quirk."""

    enc_mask_scale: tuple[float, float] = (0.85, 1.0)
    pred_mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    nenc: int = 1
    npred: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    tie_aspect_to_scale: bool = True  # official: target aspect drawn with the same r as its scale
    exclude_edges: bool = True  # official: last patch row and column never covered; (H-1)x(W-1) context
    truncation: Literal["raster", "random"] = "raster"  # official: keep the lowest raster indices
    length_policy: Literal["batch_min", "fixed"] = "batch_min"  # fixed = static shapes
    fixed_enc_len: Optional[int] = None  # with length_policy fixed; None = derived by the sampler
    fixed_pred_len: Optional[int] = None


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vit_huge"  # one of model.sizes.VIT_SIZES
    patch_size: int = 14
    embed_dim: Optional[int] = None  # None = the arch's value; set to shrink or grow a preset
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    pred_depth: int = 12
    pred_emb_dim: int = 384
    pred_num_heads: Optional[int] = None  # None = the encoder's heads, as the official code does
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block, token dim dynamic (model/compile.py)


# One key per registered kernel group (kernels/registry.py): its implementations or "auto" (the one measured faster on
# the device class). A new kernel module adds its key here by itself.
KernelsConfig = dataclasses.make_dataclass(
    "KernelsConfig", [(name, Literal[("auto", *op.implementations)], field(default="auto"))
                      for name, op in kernels.REGISTRY.items()], frozen=True)
KernelsConfig.__doc__ = "Which implementation each kernel group uses (kernels.configure); auto = the group's choice."


@dataclass(frozen=True)
class OptimizationConfig:
    epochs: int = 300
    warmup_epochs: float = 40
    ipe_scale: float = 1.0  # schedules run over epochs * iterations_per_epoch * ipe_scale steps
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_accum: int = 1  # micro steps per optimizer step
    precision: Literal["bf16", "fp32"] = "bf16"
    max_steps: Optional[int] = None  # stop after this many optimizer steps (schedules keep their length)


@dataclass(frozen=True)
class EMAConfig:
    momentum: tuple[float, float] = (0.996, 1.0)  # linear from the first to the second over the schedule


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 3
    resume: str = ""  # "" = fresh start, "auto" = latest complete checkpoint in run.out_dir, or a path


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = True
    csv: bool = True
    diagnostics_every: int = 500  # collapse diagnostics of the target features; 0 = off
    probe_every: int = 0  # kNN probe of the target encoder on probe_shards every N steps (rank 0); 0 = off
    probe_shards: str = ""  # small labeled held-out shards: the first half fits the kNN, the second half scores it


@dataclass(frozen=True)
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
    deepspeed: dict = field(default_factory=lambda: {"zero_optimization": {"stage": 2}})


SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "deepspeed"}
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



# ---------------------------------------------------------------------------------------------------------- loading

def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML file (this project's schema or the official one), applies `section.key=value` overrides."""
    path = Path(path)
    raw = read_yaml(path)
    if is_official(raw):
        raw = map_official(raw, str(path))
    sources = {}
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping, got {raw[section]!r}")
        raw[section][key] = value
        sources[(section, key)] = f"--set {item}"
    return config_from_dict(raw, str(path), sources)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (give the path of a YAML file, e.g. configs/tiny_cpu.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, value parsed as YAML, so 1e-3, true, [1, 2] get their types)."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. --set optimization.lr=5e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item}: the value is not valid YAML: {err}") from err
    if section != "deepspeed":
        check_key(section, key, f"--set {item}")
    return section, key, value


def check_key(section: str, key: str, source: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section '{section}'{suggest(section, [*SECTIONS, 'deepspeed'])}")
    keys = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in keys:
        raise ConfigError(f"{source}: section '{section}' has no key '{key}'{suggest(key, keys)}")


def config_from_dict(raw: dict, source: str = "<dict>", sources: dict | None = None) -> Config:
    """Builds and checks the typed tree; `sources` names where an overridden (section, key) came from."""
    sources = sources or {}
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS and section != "deepspeed":
            raise ConfigError(f"{source}: unknown section '{section}'{suggest(section, [*SECTIONS, 'deepspeed'])}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, got {values!r}")
        if section == "deepspeed":
            sections[section] = check_deepspeed(values, source)
            continue
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            where = sources.get((section, key), source)
            check_key(section, key, where)
            kwargs[key] = coerce(value, hints[key], f"{where}: {section}.{key}")
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    check_consistency(cfg, source)
    return cfg


def check_deepspeed(values: dict, source: str) -> dict:
    for key in values:
        if key in DERIVED_DEEPSPEED_KEYS:
            raise ConfigError(f"{source}: deepspeed.{key} is derived from {DERIVED_DEEPSPEED_KEYS[key]}; "
                              f"set that instead and remove deepspeed.{key}")
    return dict(values)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Checks `value` against the annotation `hint`; returns it in canonical form (tuples for pairs, floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if hint is float:
        return coerce_float(value, where)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"config.coerce: unsupported annotation {hint!r} at {where}")


def coerce_float(value: Any, where: str) -> float:
    # PyYAML reads 1e-3 (no dot) as a string; accept such numbers but nothing else that is not a number.
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r} (bool)")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")


def check_consistency(cfg: Config, source: str) -> None:
    """Checks that involve more than one key."""
    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    if cfg.model.arch not in VIT_SIZES:
        fail(f"model.arch: unknown '{cfg.model.arch}'{suggest(cfg.model.arch, VIT_SIZES)}")
    if cfg.data.crop_size % cfg.model.patch_size:
        fail(f"data.crop_size {cfg.data.crop_size} is not a multiple of model.patch_size {cfg.model.patch_size}")
    for name, (lo, hi) in [("data.crop_scale", cfg.data.crop_scale), ("mask.enc_mask_scale", cfg.mask.enc_mask_scale),
                           ("mask.pred_mask_scale", cfg.mask.pred_mask_scale)]:
        if not 0 < lo <= hi <= 1:
            fail(f"{name} must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
    for name, (lo, hi) in [("data.crop_ratio", cfg.data.crop_ratio), ("mask.aspect_ratio", cfg.mask.aspect_ratio),
                           ("ema.momentum", cfg.ema.momentum), ("optimization.betas", cfg.optimization.betas)]:
        if not 0 <= lo <= hi:
            fail(f"{name} must satisfy 0 <= low <= high, got ({lo}, {hi})")
    positive = {"data.batch_size": cfg.data.batch_size, "data.crop_size": cfg.data.crop_size,
                "model.patch_size": cfg.model.patch_size, "optimization.epochs": cfg.optimization.epochs,
                "optimization.grad_accum": cfg.optimization.grad_accum, "mask.npred": cfg.mask.npred,
                "mask.nenc": cfg.mask.nenc, "checkpoint.every_steps": cfg.checkpoint.every_steps,
                "checkpoint.keep_last": cfg.checkpoint.keep_last, "logging.every_steps": cfg.logging.every_steps,
                "optimization.max_steps": cfg.optimization.max_steps or 1}
    for name, value in positive.items():
        if value < 1:
            fail(f"{name} must be at least 1, got {value}")
    if cfg.logging.probe_every and not cfg.logging.probe_shards:
        fail("logging.probe_every is set but logging.probe_shards is empty: give a small labeled shard folder")
    if cfg.optimization.warmup_epochs > cfg.optimization.epochs:
        fail(f"optimization.warmup_epochs {cfg.optimization.warmup_epochs} exceeds optimization.epochs "
             f"{cfg.optimization.epochs}")



# ---------------------------------------------------------------------------------------------------------- dumping

def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists for pairs) in section order: what YAML dumps and config_from_dict reads back."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {f.name: plain(dataclasses.asdict(getattr(cfg, f.name)) if f.name != "deepspeed" else cfg.deepspeed)
            for f in dataclasses.fields(cfg)}


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for pairs and lists: `crop_scale: [0.3, 1.0]`."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
