"""The allowed values of every config key, declared with its field and checked when a config loads.

    lr: float = at_least(0.0, default=1e-3)
    crop_scale: tuple[float, float] = between(0.0, 1.0, default=(0.3, 1.0), low_open=True, ordered=True)
    out_dir: str = text("runs/ijepa", required=True)

A number outside its range or a string that cannot be used is refused with one line naming the key, the value and
what is allowed: `cfg.yaml: optimization.lr is -0.001; allowed: >= 0`. Floats that are not finite are
refused before (config.schema.coerce_float) and here. Rules that involve two keys (embed_dim divisible by num_heads, warmup within the
epochs) are config.schema.check_consistency's.
"""
from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional

from config.errors import ConfigError

INT64_MAX = 2**63 - 1  # every integer lands in a numpy or torch int64 somewhere (seeds, steps, indices)
RANGE, TEXT = "range", "text"  # the field metadata keys


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (None: unbounded; `*_open`: the bound itself excluded). For a pair, both numbers
    must be in range, and `ordered` asks for first <= second. `null` says what null means where null is allowed."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    ordered: bool = False
    null: str = ""
    why: str = ""

    def admits(self, x: float) -> bool:
        if isinstance(x, int) and not -INT64_MAX - 1 <= x <= INT64_MAX:
            return False
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def describe(self, integer: bool, pair: bool) -> str:
        high = INT64_MAX if integer and self.high is None else self.high
        if self.low is not None and self.low == high:
            text = f"exactly {_number(high)}"
        else:
            parts = [f"{'>' if self.low_open else '>='} {_number(self.low)}" if self.low is not None else "",
                     f"{'<' if self.high_open else '<='} {_number(high)}" if high is not None else ""]
            text = " and ".join(p for p in parts if p)
        if pair:
            text = f"two numbers, each {text}" + (", the first <= the second" if self.ordered else "")
        return text + (f", or null ({self.null})" if self.null else "") + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class Text:
    """A string without control characters; `required`: not empty; `name`: one file name (no folder separator)."""

    required: bool = False
    name: bool = False

    def problem(self, value: str) -> Optional[str]:
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):  # a path cannot hold NUL or a lone surrogate
            return "text without control characters (newline, tab, NUL ...) or lone surrogates"
        if self.required and not value.strip():
            return "a non-empty string"
        if len(value.encode()) > (255 if self.name else 4096):  # the OS's NAME_MAX, PATH_MAX
            return f"at most {255 if self.name else 4096} bytes"
        if self.name and ("/" in value or "\\" in value or value.strip() in (".", "..")):
            return "a plain name (it names a folder of the run's logs): no '/', '\\', '.' or '..'"
        return None


def _number(x: float) -> str:
    if x == INT64_MAX:
        return "2**63 - 1"
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _field(default: Any, rule: Range | Text) -> Any:
    return dataclasses.field(default=default, metadata={RANGE if isinstance(rule, Range) else TEXT: rule})


def between(low: float, high: float, default: Any, **options: Any) -> Any:
    """A field whose numbers lie in [low, high] (`low_open` / `high_open` exclude a bound)."""
    return _field(default, Range(low, high, **options))


def at_least(low: float, default: Any, **options: Any) -> Any:
    """A field whose numbers are >= low (`low_open`: > low); integers stay within 64 bits."""
    return _field(default, Range(low, None, **options))


def text(default: str, required: bool = False, name: bool = False) -> Any:
    """A string field: no control characters; `required`: not empty; `name`: a plain file name."""
    return _field(default, Text(required, name))


def _shown(value: Any) -> str:
    """The value as the user wrote it: pairs as YAML lists."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def check_value(value: Any, spec: dataclasses.Field, where: str) -> None:
    """Raises ConfigError naming `where` (file: section.key) when `value` (already coerced) is outside its field's
    declared range or text rule."""
    rule = spec.metadata.get(RANGE) or spec.metadata.get(TEXT)
    if value is None or rule is None:
        return
    if isinstance(rule, Text):
        problem = rule.problem(value)
        if problem:
            raise ConfigError(f"{where} is {value!r}; allowed: {problem}")
        return
    items = value if isinstance(value, tuple) else (value,)
    if not all(rule.admits(x) for x in items) or (rule.ordered and items[0] > items[-1]):
        integer = all(isinstance(x, int) for x in items)
        raise ConfigError(f"{where} is {_shown(value)}; allowed: {rule.describe(integer, isinstance(value, tuple))}")
