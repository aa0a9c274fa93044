"""The allowed values of every config key, declared with its field; pydantic checks them when a config loads.

    lr: float = at_least(0.0, default=1e-3)
    crop_scale: tuple[float, float] = between(0.0, 1.0, default=(0.3, 1.0), low_open=True, ordered=True)
    out_dir: str = text("runs/ijepa", required=True)

`section` makes a class of such fields a frozen pydantic dataclass that refuses unknown keys and takes a value only
strictly of its type (an int is not a float, a bool or a string), finite and within its field's rule.
config.schema.config_error words pydantic's error as one line: `cfg.yaml: optimization.lr is -0.001; allowed: >= 0`.
Rules that involve two keys (embed_dim divisible by num_heads, warmup within the epochs) are
config.schema.check_consistency's.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError

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

    def bounds(self, integer: bool) -> Any:
        """The range as pydantic's constraints; integers stay within 64 bits."""
        low = -INT64_MAX - 1 if integer and self.low is None else self.low
        high = INT64_MAX if integer and self.high is None else self.high
        return Field(gt=low if self.low_open else None, ge=None if self.low_open else low,
                     lt=high if self.high_open else None, le=None if self.high_open else high)

    def check_order(self, pair: tuple) -> tuple:
        if self.ordered and pair[0] > pair[1]:
            raise PydanticCustomError("unordered", "the first number is above the second")
        return pair

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

    def check(self, value: str) -> str:
        problem = None
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):  # a path cannot hold NUL or a lone surrogate
            problem = "text without control characters (newline, tab, NUL ...) or lone surrogates"
        elif self.required and not value.strip():
            problem = "a non-empty string"
        elif len(value.encode()) > (255 if self.name else 4096):  # the OS's NAME_MAX, PATH_MAX
            problem = f"at most {255 if self.name else 4096} bytes"
        elif self.name and ("/" in value or "\\" in value or value.strip() in (".", "..")):
            problem = "a plain name (it names a folder of the run's logs): no '/', '\\', '.' or '..'"
        if problem:
            raise PydanticCustomError("text", "{problem}", {"problem": problem})
        return value


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


def yaml_number(value: Any) -> Any:
    """A float's other YAML spellings as floats: 1e-3 without a dot (PyYAML reads a string) and an integer beyond
    float's range (inf, which pydantic then refuses as not finite). Anything else is pydantic's to refuse."""
    try:
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return float(value)
    except ValueError:  # not a number: pydantic refuses it
        return value
    except OverflowError:
        return math.inf
    return value


def typed(hint: Any, rule: Range | Text | None) -> Any:
    """`hint` as pydantic checks it: strictly (no int from a float, a bool or a string), floats finite, YAML's
    spellings accepted (a pair as a list, 1e-3 as PyYAML's string), each number within `rule`, a string by it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:  # compared with each choice: nothing to coerce
        return hint
    if origin in (typing.Union, types.UnionType):  # Optional[X]: null, or an X
        return Optional[typed(args[0], rule)]
    if origin is tuple:  # a pair, which YAML writes as a list
        return Annotated[tuple[tuple(typed(a, rule) for a in args)], Strict(), AfterValidator(rule.check_order),
                         BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
    checks = [rule.bounds(hint is int)] if isinstance(rule, Range) else [AfterValidator(rule.check)] if rule else []
    if hint is float:  # the constraints first: pydantic applies them in its float check, before which yaml_number runs
        checks += [Field(allow_inf_nan=False), BeforeValidator(yaml_number)]
    return Annotated[hint, Strict(), *checks]


def section(cls: type) -> type:
    """`cls` as the frozen pydantic dataclass of a YAML section: unknown keys refused, each field `typed`."""
    for name, hint in typing.get_type_hints(cls).items():
        spec = vars(cls).get(name)
        metadata = spec.metadata if isinstance(spec, dataclasses.Field) else {}
        cls.__annotations__[name] = typed(hint, metadata.get(RANGE) or metadata.get(TEXT))
    return pydantic.dataclasses.dataclass(cls, frozen=True, config=pydantic.ConfigDict(extra="forbid"))


def check_value(value: Any, spec: dataclasses.Field, where: str) -> None:
    """Raises ConfigError naming `where` when `value` is not what the section field `spec` admits."""
    try:
        pydantic.TypeAdapter(spec.type).validate_python(value)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{where} is {value!r}; allowed: {err.errors()[0]['msg']}") from None
