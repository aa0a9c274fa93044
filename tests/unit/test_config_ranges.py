"""Every config value is range-checked when the config loads (issue 15 item 2).

The walk goes over every field of every section (dataclasses.fields, so a new field is walked without a new line
here), with boundary values made from the range the field declares: the edges, one step beyond each, 0, -1, huge,
NaN/inf, reversed and misshapen pairs, odd strings, wrong types. Each value either loads, and then what it feeds works
(masks drawn, the model built and run forward, the schedules, AdamW and the crop evaluated), or is refused with one
ConfigError line that names `section.key`. Nothing else may escape. (The issue's examples through the real CLI:
e2e/test_train_hardening.py.)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from bad_overrides import ISSUE_EXAMPLES

import kernels
from config import ConfigError, config_from_dict, load_config, mask_sampler
from config.load import SECTIONS
from config.official import OFFICIAL_KEYS
from config.ranges import RANGE, TEXT, Range, check_value
from model.ema import ema_update
from model.jepa import build_jepa, ijepa_loss
from model.sizes import encoder_size
from pipeline.loading.torch_backend import crop_box
from pipeline.seeds import hashed_seed
from training.engine import deepspeed_config
from training.plan import BatchLayout, schedule_steps
from training.schedules import lr_at, momentum_at, wd_at

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
BASE = yaml.safe_load(TINY.read_text())
OFFICIAL = ROOT / "tests" / "fixtures" / "official_configs" / "in1k_vith14_ep300.yaml"
# Sizes the walk builds and runs on the CPU; beyond them (the upper edges of widths, depths and crops are resource
# limits, not correctness ones) only the masks and the schedules are exercised.
MAX_PARAMS, MAX_TOKENS = 10e6, 4096


def walked_fields() -> list[tuple[str, dataclasses.Field, Any]]:
    """(section, field, type hint) of every key of every section."""
    return [(section, f, typing.get_type_hints(cls)[f.name])
            for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside Optional, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def scalar_values(rng: Range, integer: bool) -> list:
    """The edges of `rng`, one step beyond each, and values every number must survive: 0, -1, huge, non-finite."""
    values = [0, -1, 10**30, -(10**30)] if integer else [0.0, -1.0, 1e-300, 1e37, 1e39, 1e308, -1e308, math.nan,
                                                         math.inf, -math.inf, "nan", "1e999"]  # fp32's max: 3.4e38
    for bound in (rng.low, rng.high):
        if bound is None:
            continue
        if integer:
            values += [bound - 1, bound, bound + 1]
        else:
            step = 1e-3 * (1 + abs(bound))
            values += [bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf), bound - step,
                       bound + step]
    return values


ODD_STRINGS = ["", " ", "a/b", ".", "..", "x\x00y", "line\nbreak", "tab\there", "\ud800", "é" * 200, "a" * 5000,
               "~/runs", "-rf", "auto", "vit_huge\n"]
WRONG_TYPES = [[], {}, "text", None]


def boundary_values(spec: dataclasses.Field, hint: Any) -> list:
    inner, nullable = unwrap(hint)
    origin = typing.get_origin(inner)
    values = [spec.default] + ([None] if nullable else [])
    if origin is Literal:
        return values + [*typing.get_args(inner), "AUTO", "", 0, None, True]
    if inner is bool:
        return values + [True, False, "yes", 0, 1, None]
    if inner is str:
        return values + ODD_STRINGS + [0, None, ["a"]]
    rng = spec.metadata[RANGE]
    if origin is tuple:
        low, high = spec.default
        scalars = scalar_values(rng, integer=False)
        return (values + [(v, high) for v in scalars] + [(low, v) for v in scalars]
                + [(high, low), (low, low), (high, high), (rng.low, rng.low), (rng.high, rng.high)]
                + [[low], [low, high, high], "0.5", True] + WRONG_TYPES)
    integer = inner is int
    return values + scalar_values(rng, integer) + ([1.5, True, "3"] if integer else ["1e-3", True]) + WRONG_TYPES


@lru_cache(maxsize=8)
def built_model(model_cfg, crop_size: int):
    return build_jepa(model_cfg, crop_size)


def model_is_small(cfg) -> bool:
    dim, depth, _, _ = encoder_size(cfg.model)
    params = 12 * (dim**2 * depth + cfg.model.pred_emb_dim**2 * cfg.model.pred_depth)
    tokens = (cfg.data.crop_size // cfg.model.patch_size) ** 2
    return params <= MAX_PARAMS and tokens <= MAX_TOKENS and tokens * max(dim, cfg.model.pred_emb_dim) <= 4e6


def exercise(cfg) -> None:
    """Runs, in-process and small, what the config's values feed; raises whatever they raise."""
    kernels.configure(device="cpu", **{name: impl for name, impl in dataclasses.asdict(cfg.kernels).items()
                                       if impl not in kernels.REGISTRY[name].cuda_only})  # CUDA ones: test_kernels
    batch = min(cfg.data.batch_size, 2)  # the masks' validity does not depend on the batch size
    ctx_idx, tgt_idx = mask_sampler(cfg).sample(batch, step=3, rank=1)
    assert ctx_idx.dim() == 2 and tgt_idx.shape[:2] == (cfg.mask.npred, batch)
    if model_is_small(cfg):
        model, target = built_model(cfg.model, cfg.data.crop_size)
        images = torch.randn(batch, 3, cfg.data.crop_size, cfg.data.crop_size)
        with torch.no_grad():
            loss = ijepa_loss(model, target, images, ctx_idx, tgt_idx)
        assert torch.isfinite(loss)
    s = schedule_steps(cfg.optimization, steps_per_epoch=5)
    opt, (m0, m1) = cfg.optimization, cfg.ema.momentum
    param = torch.zeros(3, requires_grad=True)
    adamw = torch.optim.AdamW([param], lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    for step in sorted({1, max(s.warmup_steps, 1), s.warmup_steps + 1, s.t_max, s.train_steps, s.t_max + 7}):
        lr = lr_at(step, s.warmup_steps, s.t_max, opt.start_lr, opt.lr, opt.final_lr)
        wd = wd_at(step, s.t_max, opt.weight_decay, opt.final_weight_decay)
        momentum = momentum_at(step, s.momentum_denominator, m0, m1)
        assert math.isfinite(lr) and math.isfinite(wd) and 0 <= momentum <= 1, (step, lr, wd, momentum)
        param.grad = torch.ones(3)
        adamw.param_groups[0].update(lr=lr, weight_decay=wd)
        adamw.step()
        ema_update([torch.zeros(3)], [param], momentum)
    for height, width in ((32, 32), (48, 64)):  # the digits' and a landscape image
        gen = torch.Generator().manual_seed(0)
        top, left, h, w = crop_box(gen, height, width, cfg.data.crop_scale, cfg.data.crop_ratio)
        assert 0 <= top and 0 <= left and 0 < h <= height and 0 < w <= width, (top, left, h, w)
    torch.Generator().manual_seed(cfg.run.seed)
    hashed_seed([cfg.run.seed, 0], (0xDA11, 0), bits=31)  # DALI's seeds (pipeline/loading/dali_backend.py)
    layout = BatchLayout(cfg.data.batch_size, cfg.optimization.grad_accum, world_size=1)
    assert deepspeed_config(cfg, layout)["train_micro_batch_size_per_gpu"] == cfg.data.batch_size


def assert_refused_naming(err: ConfigError, name: str, value: Any) -> None:
    message = str(err)
    assert name in message, f"{name}={value!r}: the error does not name the key: {message}"
    assert "\n" not in message, f"{name}={value!r}: not one line: {message!r}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards are ~10x faster on one thread than on threads that share two cores with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def plain_cpu(monkeypatch, clean_switch):
    """Loads as on a machine without a GPU outside the tests (Triton's interpreter off for the config's check)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("section, spec, hint", walked_fields(), ids=lambda x: getattr(x, "name", str(x)))
def test_every_value_loads_and_works_or_is_refused_naming_its_key(section, spec, hint, plain_cpu):
    name = f"{section}.{spec.name}"
    loaded = refused = 0
    for value in boundary_values(spec, hint):
        raw = copy.deepcopy(BASE)
        raw.setdefault(section, {})[spec.name] = value
        try:
            cfg = config_from_dict(raw, "tiny.yaml")
            exercise(cfg)
            loaded += 1
        except ConfigError as err:  # from the load, or from schedule_steps at the start of a run
            assert_refused_naming(err, name, value)
            refused += 1
    assert refused > 0 and loaded > 0, (name, loaded, refused)


@pytest.mark.parametrize("section, spec, hint", walked_fields(), ids=lambda x: getattr(x, "name", str(x)))
def test_every_numeric_field_declares_a_range_and_its_default_is_in_it(section, spec, hint):
    inner, _ = unwrap(hint)
    numeric = inner in (int, float) or typing.get_origin(inner) is tuple
    if numeric:
        assert isinstance(spec.metadata.get(RANGE), Range), f"{section}.{spec.name} declares no range"
    if spec.metadata.get(RANGE) or spec.metadata.get(TEXT):
        check_value(spec.default, spec, f"{section}.{spec.name}")  # raises if the default is out of range


@pytest.mark.parametrize("value, allowed", [
    (-0.001, ">= 0"), (math.nan, "finite"), (math.inf, "finite"), (10**400, "finite")])
def test_message_names_file_key_value_and_range(value, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"optimization": {"lr": value}}, "cfg.yaml")
    assert str(err.value).startswith("cfg.yaml: optimization.lr") and allowed in str(err.value)


def test_yaml_nan_inf_and_huge_ints_through_overrides():
    for item, key in [("optimization.lr=.nan", "optimization.lr"), ("optimization.eps=-.inf", "optimization.eps"),
                      ("optimization.ipe_scale=.inf", "optimization.ipe_scale"), ("ema.momentum=[.nan, 1]",
                      "ema.momentum"), ("run.seed=99999999999999999999999", "run.seed"),
                      ("data.crop_scale=[1e-400, 1]", "data.crop_scale")]:
        with pytest.raises(ConfigError) as err:
            load_config(TINY, overrides=[item])
        assert_refused_naming(err.value, key, item)
        assert f"--set {item}" in str(err.value)


@pytest.mark.parametrize("raw, key", [
    ({"deepspeed": {"zero_optimization": {"stage": 4}}}, "deepspeed.zero_optimization.stage"),
    ({"deepspeed": {"zero_optimization": {"stage": "2"}}}, "deepspeed.zero_optimization.stage"),
    ({"deepspeed": {"zero_optimization": {"stage": 2.0}}}, "deepspeed.zero_optimization.stage"),
    ({"deepspeed": {"zero_optimization": {"stage": True}}}, "deepspeed.zero_optimization.stage"),
    ({"deepspeed": {"zero_optimization": [2]}}, "deepspeed.zero_optimization"),
    ({"model": {"embed_dim": 98, "num_heads": 2}}, "model.embed_dim"),  # sin-cos positions need a multiple of 4
    ({"model": {"pred_emb_dim": 48, "pred_num_heads": 5}}, "model.pred_num_heads"),
    ({"model": {"embed_dim": 512, "num_heads": 1}, "kernels": {"attention": "triton"}, "run": {"device": "cuda"}},
     "model.num_heads"),  # the Triton attention's heads are at most 256 wide
    ({"mask": {"length_policy": "fixed", "fixed_enc_len": 10**6}}, "mask.fixed_enc_len"),
    ({"mask": {"fixed_pred_len": 3}}, "mask.fixed_pred_len"),  # without length_policy fixed
    ({"mask": {"min_keep": 40}}, "mask.min_keep"),
    ({"data": {"crop_size": 4}, "mask": {"exclude_edges": True}}, "data.crop_size"),
    ({"optimization": {"warmup_epochs": 21}}, "optimization.warmup_epochs"),
])
def test_rules_between_keys(raw, key, plain_cpu):
    merged = copy.deepcopy(BASE)
    for section, values in raw.items():
        merged.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as err:
        config_from_dict(merged, "tiny.yaml")
    assert_refused_naming(err.value, key, raw)


@pytest.mark.parametrize("raw", [{"data": {"a\nb": 1}}, {1: {}}, {"data": {2: 3}}, {"meta": {"x\ty": 1}},
                                 {"meta": {}, "mask": {"patch_size": -14}}, {"meta": {}, "meta_": {}}])
def test_odd_keys_give_one_line(raw, tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_unreadable_files_are_config_errors(tmp_path):
    binary, deep = tmp_path / "binary.yaml", tmp_path / "deep.yaml"
    binary.write_bytes(bytes(range(256)))
    deep.write_text("data: " + "[" * 50_000 + "]" * 50_000)
    for path in (binary, deep, tmp_path):
        with pytest.raises(ConfigError, match=str(path)) as err:
            load_config(path)
        assert "\n" not in str(err.value)


def test_nested_deepspeed_override_is_checked_and_merged():
    cfg = load_config(TINY, overrides=["deepspeed.zero_optimization.stage=1", "deepspeed.zero_optimization.x=3"])
    assert cfg.deepspeed["zero_optimization"] == {"stage": 1, "x": 3}
    with pytest.raises(ConfigError, match="deepspeed.zero_optimization.stage is 7"):
        load_config(TINY, overrides=["deepspeed.zero_optimization.stage=7"])


def test_a_run_with_no_schedule_steps_is_a_config_error():
    cfg = config_from_dict({"optimization": {"epochs": 1, "warmup_epochs": 0, "ipe_scale": 0.01}})
    with pytest.raises(ConfigError, match="optimization.ipe_scale"):
        schedule_steps(cfg.optimization, steps_per_epoch=5)  # 1 x 5 x 0.01 = 0 steps


def test_official_schema_gets_the_same_checks_naming_both_keys(tmp_path):
    text = OFFICIAL.read_text()
    cases = [("lr: 0.001", "lr: -0.001", "optimization.lr"), ("num_enc_masks: 1", "num_enc_masks: 2", "mask.nenc"),
             ("pred_depth: 12", "pred_depth: 0", "model.pred_depth"),
             ("ipe_scale: 1.0", "ipe_scale: .nan", "optimization.ipe_scale")]
    for old, new, ours in cases:
        assert old in text, old
        bad = tmp_path / "official.yaml"
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError) as err:
            load_config(bad)
        official_key = next(f"{s}.{k}" for (s, k), (os_, ok, _) in OFFICIAL_KEYS.items() if f"{os_}.{ok}" == ours)
        assert_refused_naming(err.value, ours, new)
        assert official_key in str(err.value) and "official.yaml" in str(err.value)


@pytest.mark.parametrize("item, key", ISSUE_EXAMPLES)
def test_the_issue_examples_are_refused_at_load(item, key):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides=[item])
    assert_refused_naming(err.value, key, item)


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A "billion laughs": `levels` anchored lists, each of `fanout` aliases of the one before (fanout**levels items
    once expanded: 9**9 = 387 million), in the pass-through deepspeed section that no schema key walks."""
    lines = ["deepspeed:", f"  x0: &x0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"  x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """The old loader read it in ms as shared lists, and the first thing to walk it (a message showing the value, the
    saved config.yaml) hung growing past 3 GiB. Aliases are refused as the parser meets the first one."""
    import time
    import tracemalloc

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as err:
            load_config(path)
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{path} line 3: the YAML alias *x0 is not accepted in a config; write the value out "
                              f"where it is used")
    assert peak < 2**20 and seconds < 1.0, (peak, seconds)  # measured: ~20 KiB, 1-6 ms


def test_values_in_messages_are_cut_to_80_characters():
    """A value is shown as its repr, cut: a huge or deeply shared one (a bomb built in Python: no YAML refuses it
    here) costs what its first 80 characters cost."""
    from config.errors import shown

    bomb, small = ["lol"] * 9, ["lol"] * 9
    for _ in range(8):
        bomb, small = [bomb] * 9, [small] * 2  # 9**9 items, shared; 2**8 lists that begin the same
    assert shown(bomb) == repr(small)[:80] + "…" and shown("x" * 10**6) == "'" + "x" * 79 + "…"
    assert shown({"a": (1, 2.5), "b": [None, True]}) == repr({"a": (1, 2.5), "b": [None, True]})
    assert shown((1,)) == "(1,)" and shown([]) == "[]" and shown(10**5000) == "<an integer of over 4000 digits>"
    medium = [list(range(100))] * 500  # ~250 KB as a repr: the message stays one short line
    for raw, key in [({"data": {"shards": bomb}}, "data.shards"), ({"data": {"crop_scale": medium}}, "data.crop_scale"),
                     ({"run": {"name": "n" * 10**6}}, "run.name"), ({"data": {"backend": bomb}}, "data.backend"),
                     ({"data": {"k" * 10**6: 1}}, "section 'data' has no key"), ({"data": bomb}, "section 'data'"),
                     ({"deepspeed": {"zero_optimization": {"stage": medium}}}, "deepspeed.zero_optimization.stage")]:
        with pytest.raises(ConfigError) as err:
            config_from_dict(raw, "x.yaml")
        assert key in str(err.value) and len(str(err.value)) < 300, (key, len(str(err.value)))
