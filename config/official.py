"""The official I-JEPA YAML schema (data / mask / meta / optimization / logging), mapped key by key onto ours.

Every official key is either mapped (OFFICIAL_KEYS), accepted only at the value our pipeline implements
(AUGMENTATION_KEYS: the released configs switch every extra augmentation off), or dropped with a logged note that says
what to set instead (DROPPED_KEYS). An unknown key is an error, as in our own schema.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from config.errors import ConfigError, plain, shown, suggest

logger = logging.getLogger(__name__)

# Official keys mapped onto ours: the same section and name unless RENAMED, the value as is unless TRANSFORMED.
RENAMED = {"mask.patch_size": "model.patch_size", "mask.num_enc_masks": "mask.nenc",
           "mask.num_pred_masks": "mask.npred", "meta.model_name": "model.arch", "meta.pred_depth": "model.pred_depth",
           "meta.pred_emb_dim": "model.pred_emb_dim", "meta.use_bfloat16": "optimization.precision",
           "optimization.ema": "ema.momentum", "optimization.warmup": "optimization.warmup_epochs",
           "logging.write_tag": "run.name", "logging.folder": "run.out_dir"}
TRANSFORMED = {  # a value of another type passes unchanged, for the schema to refuse naming the key
    "meta.use_bfloat16": lambda v: ("bf16" if v else "fp32") if isinstance(v, bool) else v,
    "logging.folder": lambda v: (v.rstrip("/") or v) if isinstance(v, str) else v}
# (official section, key) → (our section, key, value transform)
OFFICIAL_KEYS: dict[tuple[str, str], tuple[str, str, Callable[[Any], Any]]] = {
    tuple(key.split(".")): (*RENAMED.get(key, key).split("."), TRANSFORMED.get(key, lambda v: v)) for key in """
    data.batch_size data.crop_size data.crop_scale data.num_workers mask.patch_size mask.allow_overlap mask.aspect_ratio
    mask.enc_mask_scale mask.pred_mask_scale mask.min_keep mask.num_enc_masks mask.num_pred_masks meta.model_name
    meta.pred_depth meta.pred_emb_dim meta.use_bfloat16 optimization.ema optimization.epochs optimization.warmup
    optimization.ipe_scale optimization.start_lr optimization.lr optimization.final_lr optimization.weight_decay
    optimization.final_weight_decay logging.write_tag logging.folder""".split()}
# Augmentations the official code has but every released config turns off; only "off" is implemented here.
AUGMENTATION_KEYS = {("data", k) for k in ("color_jitter_strength", "use_color_distortion", "use_gaussian_blur",
                                           "use_horizontal_flip")}
# Keys with no meaning here: dropped, with what to do instead.
DROPPED_KEYS = {
    ("data", "root_path"): "images are read from shards: run shard_dataset.py on the image folder, then set "
                           "data.shards to its output folder",
    ("data", "image_folder"): "images are read from shards: set data.shards to the output of shard_dataset.py",
    ("data", "pin_mem"): "batches are always moved through pinned memory",
    ("meta", "copy_data"): "shards are read in place; nothing is copied",
}
# meta.load_checkpoint (+ meta.read_checkpoint) → a warm start that continues the file's epochs (official_start).
CHECKPOINT_KEYS = {("meta", "load_checkpoint"), ("meta", "read_checkpoint")}
OFFICIAL_SECTIONS = {"data", "mask", "meta", "optimization", "logging"}


def is_official(raw: dict) -> bool:
    """The official schema is the only one with a `meta` section."""
    return "meta" in raw


def map_official(raw: dict, source: str) -> tuple[dict, dict]:
    """Official YAML dict → (a dict in our schema, {(our section, key): where its value came from}); logs a note for
    each dropped key. The second names the official key in the messages of the schema's checks."""
    out: dict[str, dict] = {}
    sources: dict[tuple[str, str], str] = {}
    for section, values in raw.items():
        if section not in OFFICIAL_SECTIONS:
            raise ConfigError(f"{source}: unknown section {shown(section)} in an official-schema file"
                              f"{suggest(section, OFFICIAL_SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {shown(section)} must be a mapping of keys, got {shown(values)}")
        for key, value in values.items():
            where = f"{source}: {plain(section, 40)}.{plain(key, 40)} (official schema)"
            if (section, key) in OFFICIAL_KEYS:
                ours_section, ours_key, transform = OFFICIAL_KEYS[(section, key)]
                if isinstance(value, str) and value.startswith("$replace"):
                    logger.warning("note: %s is a placeholder (%s); the default is used: set %s.%s to change it",
                                   where, shown(value), ours_section, ours_key)
                    continue
                out.setdefault(ours_section, {})[ours_key] = transform(value)
                sources[(ours_section, ours_key)] = where
            elif (section, key) in AUGMENTATION_KEYS:
                if value:
                    raise ConfigError(f"{where} = {shown(value)}: this augmentation is not implemented (the I-JEPA "
                                      f"recipe uses RandomResizedCrop only); set it to false / 0.0")
            elif (section, key) in CHECKPOINT_KEYS:
                continue  # mapped below, together
            elif (section, key) in DROPPED_KEYS:
                if value not in (None, False, ""):
                    logger.warning("note: %s = %s is ignored: %s", where, shown(value), DROPPED_KEYS[(section, key)])
            else:
                known = [k for s, k in [*OFFICIAL_KEYS, *AUGMENTATION_KEYS, *DROPPED_KEYS, *CHECKPOINT_KEYS]
                         if s == section]
                raise ConfigError(f"{where}: unknown key{suggest(key, known)}")
    start = official_start(raw, source)
    if start:
        out["checkpoint"] = {**out.get("checkpoint", {}), **start}
        sources.update({("checkpoint", key): f"{source}: meta.load_checkpoint (official schema)" for key in start})
    return out, sources


def official_start(raw: dict, source: str) -> dict:
    """Our checkpoint keys for the official meta.load_checkpoint / read_checkpoint: {} when load_checkpoint is false;
    else a warm start from the file the official code reads, os.path.join(logging.folder, read_checkpoint), or
    {logging.folder}/{logging.write_tag}-latest.pth.tar without one (checkpoint.init_from), going on from the epoch it
    records (init_continue), and resume auto: a relaunch goes on from the run's own checkpoints, not the file."""
    meta, logs = raw.get("meta") or {}, raw.get("logging") or {}
    load, read = meta.get("load_checkpoint", False), meta.get("read_checkpoint")
    if not isinstance(load, bool):
        raise ConfigError(f"{source}: meta.load_checkpoint (official schema) is {shown(load)}: expected true or false")
    if not load:
        return {}
    if read is not None and (not isinstance(read, str) or not read.strip()):
        raise ConfigError(f"{source}: meta.read_checkpoint (official schema) is {shown(read)}: expected the file's "
                          f"name in logging.folder, a path, or null")
    tag = logs.get("write_tag")
    if read is None and not (isinstance(tag, str) and tag and not tag.startswith("$replace")):
        raise ConfigError(f"{source}: meta.load_checkpoint is true without meta.read_checkpoint, so the official code "
                          f"reads {{logging.folder}}/{{logging.write_tag}}-latest.pth.tar, but logging.write_tag is "
                          f"{shown(tag)}: set meta.read_checkpoint to the file")
    name = read if read is not None else f"{tag}-latest.pth.tar"
    if not os.path.isabs(name):  # os.path.join(folder, name), as the official code reads it
        folder = logs.get("folder")
        if not isinstance(folder, str) or not folder or folder.startswith("$replace"):
            raise ConfigError(f"{source}: meta.load_checkpoint is true and the file ({name}) is read from "
                              f"logging.folder, which is {shown(folder)}: set logging.folder, or give "
                              f"meta.read_checkpoint as an absolute path")
        name = os.path.join(folder, name)
    return {"init_from": name, "init_continue": True, "resume": "auto"}
