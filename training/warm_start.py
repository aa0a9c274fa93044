"""A warm start: a fresh run's weights from an earlier one (checkpoint.init_from, train.py --init-from): an official
I-JEPA .pth.tar, one of our checkpoint tag folders or an export folder (export.py). The optimizer and schedules start at
step 0 or, with checkpoint.init_continue and an official file, at the epoch it records (what the official
meta.load_checkpoint does). docs/training.md, "Warm start".

    init = plan_init(cfg, saved)            # the run plan, before any process group: None, or what to load (run.json)
    load_init(init, model, target)          # training.engine.build_engine, before DeepSpeed wraps the model
    step = init_step(plan, loader)          # training.loop.Trainer.build: 0, or epoch x steps per epoch

What each source gives (our parts ← the source's):
    official .pth.tar   context encoder ← encoder, predictor ← predictor, target encoder ← target_encoder (the encoder
                        where it has none); its 'epoch' for init_continue. Its 'opt' (a torch AdamW's moments) is not
                        carried: DeepSpeed ZeRO builds and partitions its own optimizer state at initialize.
    checkpoint folder   context encoder and predictor ← DeepSpeed's module states (its fp32 master weights when the
                        module was saved in bf16), target encoder ← the client state's target_encoder.
    export folder       context encoder and target encoder ← the exported encoder (timm/model.safetensors: our
                        names); the predictor starts fresh.

Every file loads weights-only (tensors and plain values: nothing read runs code), memory-mapped where torch can, so
the plan reads only the shapes and an official file's optimizer state is never read. Each rank checks the source
against the config's model before any process group exists (a bad path or another model costs nothing) and hashes
what it reads once: run.json records the sha256.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from config import ConfigError
from model.jepa import build_jepa
from model.official import check_state, load_strict, strip_prefix
from model.safe_load import CheckpointError, first_line, safe_load
from model.sizes import VIT_SIZES, encoder_size
from training.checkpoints import not_a_checkpoint, rank0_warning, tag_step
from training.integrity import COMPLETE, read_marker, timed_sha256, verify_checkpoint
from training.states import STATES_GLOB, load_states_file, saved_client, saved_config, zero_fp32_weights

logger = logging.getLogger(__name__)

PARTS = ("context_encoder", "predictor", "target_encoder")  # ours, in the order they load
EXPORT_RECORD, EXPORT_WEIGHTS = "export.json", "timm/model.safetensors"  # export.py's record and our-named weights
NOT_CARRIED = ("not carried from {path}: its AdamW moments ('opt', a torch AdamW's state: DeepSpeed ZeRO builds and "
               "partitions its own at the start and takes none from outside), so AdamW starts from zero moments at "
               "the continued learning rate; the weights, the step count, the schedules and the data's epoch are "
               "carried")
FIXED = ("pos_embed", "predictor_pos_embed")  # the fixed sin-cos positions: never trained, rebuilt by the model


class WarmStartError(CheckpointError):
    """A warm-start source that cannot be used; one line naming it, what is wrong and what to set."""


@dataclass
class Source:
    """A source as the plan reads it: its kind, the files read, and per part of ours the source's part it loads from
    (None: the part starts fresh) with that part's tensors (memory-mapped: the plan reads their shapes only)."""

    kind: str  # "official", "checkpoint" or "export"
    path: Path
    files: list[Path]  # what load_init reads, hashed once by the plan
    parts: dict[str, Optional[str]]  # ours → the source's part
    states: dict[str, dict]  # the source's part → {name: tensor}
    epoch: Optional[int] = None  # an official file's 'epoch': the epochs it trained
    heads: dict[str, int] = field(default_factory=dict)  # "encoder" / "predictor" heads, where the source records them
    digests: dict[str, str] = field(default_factory=dict)  # sha256 already verified (a checkpoint's COMPLETE marker)


# ------------------------------------------------------------------------------------------------ the plan

def plan_init(cfg, saved) -> Optional[dict]:
    """What the run starts from: None when checkpoint.init_from is empty or the run resumes a checkpoint of its own
    (`saved`); else a dict recorded in run.json: source, kind, sha256 of each file read, loaded (our part → the
    source's part, None: fresh), epoch (official files), continue (checkpoint.init_continue), precision. Raises a
    CheckpointError in one line for a source that cannot be a warm start of this config."""
    if not cfg.checkpoint.init_from or saved is not None:
        return None
    source = open_source(Path(cfg.checkpoint.init_from))
    check_fits(source, cfg)
    check_continue(source, cfg)
    init = {"source": str(source.path.resolve()), "kind": source.kind, "sha256": source_digests(source),
            "loaded": source.parts, "continue": cfg.checkpoint.init_continue,
            "precision": cfg.optimization.precision}
    if source.epoch is not None:
        init["epoch"] = source.epoch
    return init


def open_source(path: Path) -> Source:
    """The source `path` names, by what it is: a file (official), a folder with COMPLETE (a checkpoint of ours) or
    with export.json (an export); anything else is one line saying what to give."""
    if path.is_file():
        return official_source(path)
    if not path.is_dir():
        raise WarmStartError(f"checkpoint.init_from {path}: no such file or folder: give an official .pth.tar, a "
                             f"checkpoint tag folder (<run.out_dir>/checkpoints/stepNNNNNNNN) or an export folder")
    if (path / COMPLETE).is_file():
        return checkpoint_source(path)
    if (path / EXPORT_RECORD).is_file():
        return export_source(path)
    other = ", an official .pth.tar or an export folder (export.py: it holds export.json)"
    raise WarmStartError(f"checkpoint.init_from: {not_a_checkpoint(path, '--init-from', other)}")


def official_source(path: Path) -> Source:
    """An official-format .pth.tar: 'encoder' (needed), 'predictor' and 'target_encoder' where it has them, 'epoch'."""
    ckpt = safe_load(path, mmap=True)
    if not isinstance(ckpt, dict) or "encoder" not in ckpt:
        raise WarmStartError(f"checkpoint.init_from {path}: not in the official I-JEPA format (a dict with 'encoder' "
                             f"and, where it has them, 'predictor' and 'target_encoder'); nor a folder: give an "
                             f"official .pth.tar, a checkpoint tag folder or an export folder")
    states = {part: strip_prefix(check_state(ckpt[part], f"{path}[{part}]"))
              for part in ("encoder", "predictor", "target_encoder") if ckpt.get(part) is not None}
    parts = {"context_encoder": "encoder", "predictor": "predictor" if "predictor" in states else None,
             "target_encoder": "target_encoder" if "target_encoder" in states else "encoder"}
    epoch = ckpt.get("epoch")
    width = states["encoder"].get("patch_embed.proj.weight")
    heads = {"encoder": size.num_heads for size in VIT_SIZES.values()
             if width is not None and width.ndim == 4 and size.embed_dim == width.shape[0]}  # a guess: see check_fits
    return Source("official", path, [path], parts, states, epoch if type(epoch) is int else None, heads)


def checkpoint_source(folder: Path) -> Source:
    """One of our checkpoint tag folders, verified against its COMPLETE marker (each file's sha256, once)."""
    problems = verify_checkpoint(folder, tag_step(folder.name))
    if problems:
        raise WarmStartError(f"checkpoint.init_from: checkpoint {folder} is damaged: {problems[0]}; choose another "
                             f"checkpoint")
    path, client = saved_client(folder, WarmStartError, "checkpoint.init_from: ", "choose another checkpoint",
                                mmap=True)
    shapes = {}  # the full shapes whatever the ZeRO stage (ZeRO-3 leaves the module's tensors empty)
    for group in [*client.get("param_shapes", []), client.get("frozen_param_shapes") or {}]:
        shapes.update({name: torch.empty(size, device="meta") for name, size in group.items()})
    states = {part: {k[len(part) + 1:]: v for k, v in shapes.items() if k.startswith(part + ".")}
              for part in ("context_encoder", "predictor")}
    states["target_encoder"] = check_state(client["target_encoder"], f"{path}[target_encoder]")
    _, digests = read_marker(folder)
    return Source("checkpoint", folder, [folder / name for name in digests], {part: part for part in PARTS}, states,
                  heads=saved_heads(client, path),
                  digests={name: entry["sha256"] for name, entry in digests.items()})


def saved_heads(client: dict, path: Path) -> dict[str, int]:
    """The encoder's and predictor's heads of a checkpoint's saved config (they are not in the weights); `client`: its
    client state, from the file `path`."""
    try:
        model = saved_config(client, path, WarmStartError, "checkpoint.init_from: ").model
    except ConfigError as err:
        raise WarmStartError(f"checkpoint.init_from: {path}: its saved config cannot be read "
                             f"({first_line(err)})") from None
    heads = encoder_size(model).num_heads
    return {"encoder": heads, "predictor": model.pred_num_heads or heads}


def export_source(folder: Path) -> Source:
    """An export folder of export.py: the encoder it exported (timm/model.safetensors holds our names)."""
    from safetensors import SafetensorError, safe_open

    record_path, weights = folder / EXPORT_RECORD, folder / EXPORT_WEIGHTS
    try:
        record = json.loads(record_path.read_text())
        which, heads = str(record["encoder"]), int(record["architecture"]["num_heads"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WarmStartError(f"checkpoint.init_from: {record_path} cannot be read ({type(err).__name__}: {err}): "
                             f"not an export of export.py; export the checkpoint again") from None
    try:
        with safe_open(str(weights), "pt") as f:  # the shapes only; load_init reads the tensors
            state = {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}
    except (OSError, SafetensorError) as err:
        raise WarmStartError(f"checkpoint.init_from: {weights} cannot be read ({first_line(err)}); export the "
                             f"checkpoint again") from None
    where = f"{EXPORT_WEIGHTS} ({which} encoder)"
    return Source("export", folder, [record_path, weights], {"context_encoder": where, "predictor": None,
                                                             "target_encoder": where}, {where: state},
                  heads={"encoder": heads})


def source_digests(source: Source) -> dict[str, str]:
    """{file name relative to the source: sha256}: the COMPLETE marker's, verified, for a checkpoint; else hashed
    here (streamed in 16 MiB reads, the files in parallel threads)."""
    if source.digests:
        return source.digests
    root = source.path if source.path.is_dir() else source.path.parent
    digests, hashed = timed_sha256(source.files, sum(p.stat().st_size for p in source.files))
    logger.info("warm start %s: %s", source.path, hashed)
    return {p.relative_to(root).as_posix(): d for p, d in zip(source.files, digests)}


# ------------------------------------------------------------------------------------------------ the checks

def check_fits(source: Source, cfg) -> None:
    """Every part the source gives has the shapes of the config's model; else one line naming the first tensor that
    differs, both shapes, and the keys to set. Heads are not in the weights: where the source records them (our
    checkpoint's saved config, export.json) they must match; for an official file they are guessed from the width
    (the official sizes) and a difference is a warning."""
    with torch.device("meta"):  # shapes only: no memory, no init
        model, target = build_jepa(cfg.model, cfg.data.crop_size)
    modules = {"context_encoder": model.context_encoder, "predictor": model.predictor, "target_encoder": target}
    for ours, theirs in source.parts.items():
        if theirs is None:
            continue
        differs = first_difference(modules[ours].state_dict(), source.states[theirs])
        if differs:
            raise WarmStartError(f"checkpoint.init_from {source.path}: its {theirs} does not fit the config's model: "
                                 f"{differs}; {what_to_set(source, cfg)}")
    dim, _, heads, _ = encoder_size(cfg.model)
    want = {"encoder": heads, "predictor": cfg.model.pred_num_heads or heads}
    for part, have in source.heads.items():
        key = "model.num_heads" if part == "encoder" else "model.pred_num_heads"
        if have != want[part] and source.kind != "official":
            raise WarmStartError(f"checkpoint.init_from {source.path}: its {part} has {have} attention heads, the "
                                 f"config's model {want[part]}: set {key}={have}")
        if have != want[part]:
            rank0_warning("warm start from %s: its encoder's width %d is an official size with %d heads, the config's "
                          "model has %d (model.num_heads): the weights load, but attention splits them otherwise than "
                          "the run that trained them", source.path, dim, have, want[part])


def first_difference(want: dict, have: dict) -> Optional[str]:
    """The first tensor of `want` (the config's module) that `have` (the source's) lacks or shapes otherwise, then
    the first one `have` holds beyond it; None when they fit."""
    for key, tensor in want.items():
        if key not in have:
            return f"it has no {key} (the config's model has {tuple(tensor.shape)})"
        if tuple(have[key].shape) != tuple(tensor.shape):
            return f"{key} is {tuple(have[key].shape)} in it, {tuple(tensor.shape)} in the config's model"
    extra = [key for key in have if key not in want]
    return f"it holds {extra[0]} {tuple(have[extra[0]].shape)}, which the config's model has not" if extra else None


def what_to_set(source: Source, cfg) -> str:
    """The config keys whose values differ from the source's architecture (read from its shapes), as --set items."""
    dim, depth, _, mlp_ratio = encoder_size(cfg.model)
    have = source_architecture(source)
    want = {"model.embed_dim": dim, "model.depth": depth, "model.patch_size": cfg.model.patch_size,
            "data.crop_size": cfg.data.crop_size, "model.pred_emb_dim": cfg.model.pred_emb_dim,
            "model.pred_depth": cfg.model.pred_depth}
    keys = [f"{key}={value}" for key, value in have.items() if key in want and want[key] != value]
    ratio = have.get("mlp_ratio")
    if ratio is not None and not math.isclose(ratio, mlp_ratio, rel_tol=1e-6):
        archs = [name for name, size in VIT_SIZES.items() if math.isclose(size.mlp_ratio, ratio, rel_tol=1e-6)]
        keys.append(f"model.arch={archs[0]}" if archs else f"an MLP ratio of {ratio:g} (no model.arch has it)")
    return (f"set {', '.join(keys)} (the source's)" if keys else
            "the source's architecture differs in a way the config cannot express: start from a source of this model")


def source_architecture(source: Source) -> dict:
    """The sizes a source's shapes give: {config key: value} and its encoder's MLP ratio."""
    encoder = source.states[source.parts["context_encoder"]]
    out = {}
    proj, pos, fc1 = (encoder.get(k) for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"))
    if proj is not None and proj.ndim == 4:
        out.update({"model.embed_dim": proj.shape[0], "model.patch_size": proj.shape[2]})
        if pos is not None and pos.ndim == 3:
            out["data.crop_size"] = math.isqrt(pos.shape[1]) * proj.shape[2]
        if fc1 is not None and fc1.ndim == 2:
            out["mlp_ratio"] = fc1.shape[0] / proj.shape[0]
    out["model.depth"] = count_blocks(encoder, "blocks")
    if source.parts["predictor"] is not None:
        predictor = source.states[source.parts["predictor"]]
        embed = predictor.get("predictor_embed.weight")
        if embed is not None and embed.ndim == 2:
            out["model.pred_emb_dim"] = embed.shape[0]
        out["model.pred_depth"] = count_blocks(predictor, "predictor_blocks")
    return out


def count_blocks(state: dict, prefix: str) -> int:
    return len({m.group(1) for key in state for m in [re.match(rf"{prefix}\.(\d+)\.", key)] if m})


def check_continue(source: Source, cfg) -> None:
    """checkpoint.init_continue needs an official file that records its epoch, short of optimization.epochs."""
    if not cfg.checkpoint.init_continue:
        return
    if source.kind != "official":
        todo = ("resume it (--resume PATH) to go on with its step, optimizer and data" if source.kind == "checkpoint"
                else "it records no epoch")
        raise WarmStartError(f"checkpoint.init_continue goes on from the epoch an official .pth.tar records; "
                             f"{source.path} is {'a checkpoint of ours' if source.kind == 'checkpoint' else 'an export'}"
                             f": {todo}, or set checkpoint.init_continue=false for a warm start at step 0")
    if source.epoch is None or source.epoch < 0:
        raise WarmStartError(f"checkpoint.init_from {source.path}: records no epoch (a whole number in 'epoch'), so "
                             f"checkpoint.init_continue has nowhere to go on from: set checkpoint.init_continue=false")
    if source.epoch >= cfg.optimization.epochs:
        raise WarmStartError(f"nothing to do: {source.path} is at epoch {source.epoch}, and optimization.epochs is "
                             f"{cfg.optimization.epochs}: raise optimization.epochs to train on, or set "
                             f"checkpoint.init_continue=false to start its schedules afresh")


# ------------------------------------------------------------------------------------------------ the load

def load_init(init: Optional[dict], model, target) -> None:
    """Loads `init` (plan_init's) into the context encoder + predictor `model` and the `target` encoder, every key
    used and every shape checked; logs one line saying what came from where."""
    if init is None:
        return
    path = Path(init["source"])
    states = source_states(init)
    modules = {"context_encoder": model.context_encoder, "predictor": model.predictor, "target_encoder": target}
    for ours, theirs in init["loaded"].items():
        if theirs is None:
            continue
        module = modules[ours]
        own = {n: p.detach() for n, p in module.named_parameters() if n in FIXED and n not in states[theirs]}
        load_strict(module, {**states[theirs], **own}, f"{path}[{theirs}]", against="the config's model")
    loaded = ", ".join(f"{ours.replace('_', ' ')} ← {theirs}" for ours, theirs in init["loaded"].items() if theirs)
    fresh = [ours.replace("_", " ") for ours, theirs in init["loaded"].items() if theirs is None]
    bf16 = init.get("precision") == "bf16"
    logger.info("warm start from %s %s%s: %s%s%s", init["kind"], path,
                f" (epoch {init['epoch']})" if "epoch" in init else "", loaded,
                f"; {' and '.join(fresh)} fresh" if fresh else "",
                "; the context encoder and predictor enter DeepSpeed's fp32 masters rounded to bf16 (it builds them "
                "from the bf16 module), the target encoder stays exact fp32" if bf16 else "")


def source_states(init: dict) -> dict[str, dict]:
    """The source's parts as {name: tensor} (fp32 where the source holds it), read again now for their values."""
    path = Path(init["source"])
    if init["kind"] == "official":
        ckpt = safe_load(path, mmap=True)
        return {part: strip_prefix(ckpt[part]) for part in set(init["loaded"].values()) if part}
    if init["kind"] == "export":
        from safetensors.torch import load_file

        state = load_file(str(path / EXPORT_WEIGHTS))
        return {part: state for part in init["loaded"].values() if part}
    return checkpoint_states(path)


def checkpoint_states(folder: Path) -> dict[str, dict]:
    """A checkpoint's context encoder, predictor and target encoder: the module as saved when it is whole fp32, else
    (a bf16 module, or ZeRO-3's empty placeholders) DeepSpeed's fp32 master weights from its ZeRO partitions; the
    fixed positions then come from the model itself (load_init), not rounded to bf16."""
    client = load_states_file(sorted(folder.glob(STATES_GLOB))[0], mmap=True)
    module, shapes = client["module"], {}
    for group in client.get("param_shapes", []):
        shapes.update(group)
    if any(module.get(name) is None or module[name].dtype != torch.float32 or module[name].shape != size
           for name, size in shapes.items()):
        masters = zero_fp32_weights(folder, WarmStartError, f"checkpoint.init_from {folder}",
                                    "choose another checkpoint")
        module = {k: v for k, v in masters.items() if k.rsplit(".", 1)[-1] not in FIXED}
    states = {part: {k[len(part) + 1:]: v.float() for k, v in module.items() if k.startswith(part + ".")}
              for part in ("context_encoder", "predictor")}
    return {**states, "target_encoder": client["target_encoder"]}


# ------------------------------------------------------------------------------------------------ the step

def init_step(plan, loader) -> int:
    """The step a fresh run starts from: 0, or with checkpoint.init_continue the official file's epoch × the run's
    steps per epoch (the schedules are functions of the step), the loader placed at that epoch's start; logs where it
    goes on from and what is not carried. `plan`: training.plan.RunPlan (a fresh one: plan.saved is None)."""
    init = plan.init
    if init is None or not init.get("continue"):
        return 0
    epoch = init["epoch"]
    step = loader.start_at_epoch(epoch)
    if step >= plan.last_step:  # optimization.max_steps at or before it (the epochs are checked by plan_init)
        raise WarmStartError(f"nothing to do: the warm start goes on from step {step} (epoch {epoch} of "
                             f"{init['source']}) and optimization.max_steps is {plan.last_step}: raise it")
    logger.info("warm start: the step count and schedules go on from epoch %d of %s: step %d = %d × %d steps per "
                "epoch, the data at the start of epoch %d", epoch, init["source"], step, epoch, plan.steps_per_epoch,
                epoch)
    logger.warning(NOT_CARRIED.format(path=init["source"]))
    return step
