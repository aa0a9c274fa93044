"""How a YAML file becomes a Config (config/sections.py), checked on load.

    cfg = load_config("configs/vith14_in1k.yaml", overrides=["optimization.lr=5e-4"])

pydantic refuses unknown sections and keys, values of the wrong type and values outside the range their field
declares; config_error words the first of its errors as one line naming the file, section and key (and the closest
valid key). check_consistency then refuses combinations that cannot run. The official I-JEPA YAML files are
recognised by their `meta` section and mapped key by key (config/official.py). Values that follow from others are
computed in config/derived.py, never written in YAML.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any, Optional

import pydantic
import yaml

import kernels
from config.derived import mask_sampler
from config.errors import ConfigError, plain, shown, suggest
from config.official import is_official, map_official
from config.ranges import RANGE, number_or_words, yaml_number
from config.sections import Config, MaskConfig
from config.yaml_text import read_yaml
from model.sizes import VIT_SIZES, encoder_size
from util.urls import redact_tree

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
    raw = copy.deepcopy(config_to_dict(cfg, secrets=True))  # the deepspeed section is cfg's own dict
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
    if words := number_or_words(hint):
        rule = cls.__dataclass_fields__[key].metadata[RANGE]  # a number or a word (data.batch_size: auto)
        return ConfigError(f"{where} is {shown(value)}; allowed: an integer {rule.describe(True, False)}, or "
                           f"{' or '.join(words)}")
    if kind in RANGE_ERRORS:
        integer, pair = int in (hint, *typing.get_args(hint)), typing.get_origin(hint) is tuple
        loaded = value if integer else [float(yaml_number(v)) for v in value] if pair else float(yaml_number(value))
        return ConfigError(f"{where} is {shown(loaded)}; allowed: "
                           f"{cls.__dataclass_fields__[key].metadata[RANGE].describe(integer, pair)}")
    if kind == "text":
        return ConfigError(f"{where} is {shown(value)}; allowed: {error['ctx']['problem']}")
    if kind == "scheme":  # its problem names the value
        return ConfigError(f"{where}: {error['ctx']['problem']}")
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
    try:  # ~1 ms; ~30 ms with length_policy fixed and no fixed_enc_len (the sampler estimates it)
        mask_sampler(cfg)
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
    if cfg.data.batch_size == "auto" and not opt.global_batch:
        return ("data.batch_size auto needs optimization.global_batch (the batch it keeps while it finds the per-GPU "
                "micro batch that fits): set it, e.g. --set optimization.global_batch=2048")
    if opt.global_batch and opt.grad_accum != 1:
        return (f"optimization.grad_accum {opt.grad_accum} is derived when optimization.global_batch is set "
                f"({opt.global_batch}): remove grad_accum (data.batch_size bounds the micro batch)")
    if cfg.checkpoint.keep_best and not cfg.logging.probe_every:
        return ("checkpoint.keep_best needs the in-training kNN probe that ranks the checkpoints: set "
                "logging.probe_every and logging.probe_shards, or remove keep_best")
    if cfg.checkpoint.init_continue and not cfg.checkpoint.init_from:
        return "checkpoint.init_continue is true but checkpoint.init_from is empty: give the file to start from"
    if opt.warmup_epochs > opt.epochs:
        return f"optimization.warmup_epochs {opt.warmup_epochs} exceeds optimization.epochs {opt.epochs}"
    return None


# ---------------------------------------------------------------------------------------------------------- dumping

def config_to_dict(cfg: Config, secrets: bool = False) -> dict:
    """Plain nested dict (lists for pairs) in section order: what YAML dumps and config_from_dict reads back. Every
    URL in it is redacted (util.urls.redact: a password or signed URL given in data.shards is shown and saved as ***),
    unless `secrets`: for this process's own use, as with_overrides."""
    def lists(v):
        return [lists(x) for x in v] if isinstance(v, tuple) else {k: lists(x) for k, x in v.items()} \
            if isinstance(v, dict) else v
    raw = lists(dataclasses.asdict(cfg))
    return raw if secrets else redact_tree(raw)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for pairs and lists: `crop_scale: [0.3, 1.0]`."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    """The config as it is shown and saved (config.yaml, a checkpoint's, --print-config): URLs redacted."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
