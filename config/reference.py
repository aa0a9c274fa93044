"""docs/config.md, the config reference, written from the schema so that it names every key: each section's table
(key, type and allowed values, default, meaning) comes from config/sections.py (the meaning is the docstring under
the field), the official keys' mapping from config/official.py; only the intro and the mask switches are fixed text.
No dates and no paths of this machine: the same schema gives the same page, which tests/unit/test_config_reference.py
compares with the file.

    python -m config.reference > docs/config.md
"""
from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import typing
from typing import Any

from config.official import AUGMENTATION_KEYS, CHECKPOINT_KEYS, DROPPED_KEYS, OFFICIAL_KEYS, RENAMED
from config.ranges import RANGE, TEXT, Range, Text, number_or_words
from config.sections import DERIVED_DEEPSPEED_KEYS, Config
from model.sizes import VIT_SIZES

REGENERATE = "python -m config.reference > docs/config.md"
# Strings whose allowed values another module holds (the load-time check reads the same list).
CHOICES = {("model", "arch"): list(VIT_SIZES)}

INTRO = f"""\
# Configuration reference

<!-- Generated from config/sections.py: edit it, then run `{REGENERATE}`. -->

One YAML file → one typed tree: the sections below, each key with its type, allowed values and default. Unknown
sections or keys and wrong types are one-line errors that name the file, the section and the key, and the closest
valid key (`cfg.yaml: optimization.lr is -0.001; allowed: >= 0`). A file without sections (empty, only comments) is
refused rather than read as the defaults; so are a key written twice (`cfg.yaml line 12: key optimization.lr appears
twice (first at line 9); keep one`), YAML aliases (`*name`) and merge keys (`<<`): write each value where it is used.
Values in messages are cut to 80 characters. Every value is checked when the config loads, `--print-config` too.

`--set section.key=value` overrides any key; the value is read as YAML (`--set mask.pred_mask_scale=[0.1,0.2]`).

Values that follow from others are computed, never written:

- global batch = `optimization.global_batch` when set (the per-GPU micro batch and `grad_accum` are then derived for
  the world size), else `data.batch_size × optimization.grad_accum × world size`;
- steps per epoch = manifest samples ÷ global batch (ImageNet-1K at 2048: 625), and from it the warmup and total
  steps;
- the patch grid = `data.crop_size ÷ model.patch_size` per side;
- DeepSpeed's batch and precision keys (the [deepspeed](#deepspeed) section).

`--print-config` prints the resolved config and these values (the steps from the shards' manifest).
"""

MASK_SWITCHES = """\
## Mask switches

Defaults are the official behaviour; each other value is the fix ([masks.md](masks.md#switches) has the details and
the token counts each gives).

| switch | official (default) | the fix |
|---|---|---|
| `tie_aspect_to_scale` | true: a target's aspect uses the same random draw as its scale | false: an independent draw |
| `exclude_edges` | true: the last patch row and column are never covered; the context is clamped to (H−1)×(W−1), so it always sits top-left | false: blocks may touch every edge; the context may be placed anywhere |
| `truncation` | raster: every context is cut to the batch minimum keeping its lowest indices (bias to the top) | random: a random subset (returned sorted) |
| `length_policy` | batch_min: K_enc = the batch's shortest context, K_pred = h·w | fixed: constant K_enc / K_pred (`fixed_enc_len`, `fixed_pred_len`; null = the 1% quantile of context lengths and the smallest target area) for static shapes |
"""


def cell(text: str) -> str:
    """`text` on one line of a Markdown table: whitespace joined, `|` escaped, `<name>` kept from reading as HTML."""
    return re.sub(r"<(?=[A-Za-z/])", r"\\<", " ".join(text.split()).replace("|", r"\|"))


def paragraph(text: str) -> str:
    """`text` as the page's prose: lines of at most 120 characters, never broken inside a word."""
    return textwrap.fill(" ".join(text.split()), width=120, break_long_words=False, break_on_hyphens=False)


def yaml_value(value: Any) -> str:
    """A default as YAML writes it: null, true, [0.3, 1.0], {stage: 2}, "" for the empty string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 8 else f"{value:.6g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(yaml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return '""' if value == "" else str(value)


def allowed(section: str, spec: dataclasses.Field, hint: Any) -> str:
    """What a key takes: its choices, or its type and range (config/ranges.py's own words)."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
    rule = spec.metadata.get(RANGE) or spec.metadata.get(TEXT)
    if typing.get_origin(base) is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in typing.get_args(base))
    if base is bool:
        return "`true` \\| `false`"
    if (section, spec.name) in CHOICES:
        return " \\| ".join(f"`{choice}`" for choice in CHOICES[(section, spec.name)])
    if isinstance(rule, Range):
        pair = typing.get_origin(base) is tuple
        kind = "int" if base is int else "float" if base is float else "pair"
        # an int without an upper bound of its own is shown without the 64-bit one every int has
        return ((kind + ": " if not pair else "") + rule.describe(base is int and rule.high is not None, pair)
                + "".join(f", or `{w}`" for w in number_or_words(hint)))
    if isinstance(rule, Text):
        return "text" + (", not empty" if rule.required else "") + (", a plain name (no `/`)" if rule.name else "")
    raise ValueError(f"{section}.{spec.name}: no rule for its type {hint!r}; declare one (config/ranges.py)")


def described(owner: str, text: str | None) -> str:
    """A docstring or field description, required: a key without one would be a row without a meaning."""
    if not text or not text.strip():
        raise ValueError(f"{owner} has no docstring: write what it means under it in config/sections.py, then run "
                         f"`{REGENERATE}`")
    return text


def section_table(name: str, cls: type) -> str:
    """One section: its docstring's first sentence, then a row per key."""
    doc = described(f"section {name} ({cls.__name__})", cls.__doc__)
    hints, fields = typing.get_type_hints(cls, include_extras=False), cls.__pydantic_fields__
    rows = [f"| `{spec.name}` | {allowed(name, spec, hints[spec.name])} | `{yaml_value(spec.default)}` | "
            f"{cell(described(f'{name}.{spec.name}', fields[spec.name].description))} |"
            for spec in dataclasses.fields(cls)]
    intro = " ".join(doc.split("\n\n")[0].split()).split(". ")[0].rstrip(".") + "."
    return "\n".join([f"## {name}", "", paragraph(intro), "", "| key | type and allowed values | default | meaning |",
                      "|---|---|---|---|", *rows, ""])


def deepspeed_table() -> str:
    """The pass-through section: its default and the keys derived from ours, which it refuses."""
    spec = next(f for f in dataclasses.fields(Config) if f.name == "deepspeed")
    rows = [f"| `{key}` | {cell(source)} |" for key, source in DERIVED_DEEPSPEED_KEYS.items()]
    return "\n".join([
        "## deepspeed", "", paragraph(described("deepspeed", Config.__pydantic_fields__["deepspeed"].description)
                                      + f" Default: `{yaml_value(spec.default_factory())}`. The keys below are derived "
                                        "and refused here:"), "",
        "| DeepSpeed key | set instead |", "|---|---|", *rows, ""])


def official_table() -> str:
    """How an official I-JEPA YAML file maps onto these sections (config/official.py)."""
    same = [".".join(key) for key, (section, name, _) in OFFICIAL_KEYS.items() if key == (section, name)]
    rows = [f"| `{ours}` | `{official}` |" for official, ours in RENAMED.items()]
    rows.append(f"| `checkpoint.init_from`, `checkpoint.init_continue`, `checkpoint.resume` | "
                f"`{'` + `'.join('.'.join(k) for k in sorted(CHECKPOINT_KEYS))}` (when load_checkpoint is true: a "
                f"warm start from the file the official code reads, `logging.folder/read_checkpoint`, or "
                f"`logging.folder/{{write_tag}}-latest.pth.tar` without one, that goes on from the epoch it records "
                f"(init_continue true; its AdamW moments are not carried); resume `auto`, so a relaunch goes on from "
                f"the run's own checkpoints) |")
    dropped = [f"| `{'.'.join(key)}` | {cell(note)} |" for key, note in DROPPED_KEYS.items()]
    return "\n".join([
        "## Official I-JEPA configs", "",
        paragraph("A file with the official sections (`data / mask / meta / optimization / logging`, recognised by its "
                  "`meta` section) loads as it is. These keys keep their section and name: "
                  + ", ".join(f"`{key}`" for key in same) + ". These are renamed:"), "",
        "| key here | official key |", "|---|---|", *rows, "",
        paragraph("The augmentation switches (" + ", ".join(f"`{'.'.join(k)}`" for k in sorted(AUGMENTATION_KEYS))
                  + ") are accepted only when off, as every released config has them. These are ignored with a note "
                  "that says what to set instead:"), "", "| official key | instead |", "|---|---|", *dropped,
        "", "Any other key is an error, as in these sections.", ""])


def render() -> str:
    """The whole page."""
    sections = [section_table(f.name, f.default_factory) for f in dataclasses.fields(Config) if f.name != "deepspeed"]
    return "\n".join([INTRO, *sections, deepspeed_table(), official_table(), MASK_SWITCHES]).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
