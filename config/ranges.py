"""The allowed values of every config key, declared with its field; pydantic checks them when a config loads.

    lr: float = at_least(0.0, default=1e-3)
    crop_scale: tuple[float, float] = between(0.0, 1.0, default=(0.3, 1.0), low_open=True, ordered=True)
    out_dir: str = text("runs/ijepa", required=True)

`section` makes a class of such fields a frozen pydantic dataclass that refuses unknown keys and takes a value only
strictly of its type (an int is not a float, a bool or a string), finite and within its field's rule;
config.load.config_error words pydantic's error as one line, and check_consistency checks the rules between keys.
"""
from __future__ import annotations

import dataclasses
import math
import typing
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError

from config.errors import ConfigError, shown

INT64_MAX = 2**63 - 1  # every integer lands in a numpy or torch int64 somewhere (seeds, steps, indices)
RANGE, TEXT = "range", "text"  # the field metadata keys
SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}  # pydantic's constraints, as the messages write them


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (None: unbounded, integers within 64 bits; `*_open`: the bound itself excluded).
    For a pair, both numbers must be in range, and `ordered` asks for first <= second. `null` says what null means
    where null is allowed; `why` why the range is what it is."""

    low: float
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    ordered: bool = False
    null: str = ""
    why: str = ""

    def bounds(self, integer: bool) -> dict[str, float]:
        """The range as pydantic's constraints (gt/ge, lt/le): what pydantic checks and the messages describe."""
        high = INT64_MAX if integer and self.high is None else self.high
        bounds = {"gt" if self.low_open else "ge": self.low}
        if high is not None:
            bounds["lt" if self.high_open else "le"] = high
        return bounds

    def check_order(self, pair: tuple) -> tuple:
        if self.ordered and pair[0] > pair[1]:
            raise PydanticCustomError("unordered", "the first number is above the second")
        return pair

    def describe(self, integer: bool, pair: bool) -> str:
        bounds = self.bounds(integer)
        numbers = ["2**63 - 1" if x == INT64_MAX else str(int(x)) if float(x).is_integer() and abs(x) < 1e15
                   else repr(x) for x in bounds.values()]
        text = (f"exactly {numbers[0]}" if len(numbers) == 2 and len(set(bounds.values())) == 1
                else " and ".join(f"{SIGNS[op]} {n}" for op, n in zip(bounds, numbers)))
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


def between(low: float, high: Optional[float], default: Any, **options: Any) -> Any:
    """A field whose numbers lie in [low, high] (`low_open` / `high_open` exclude a bound)."""
    return dataclasses.field(default=default, metadata={RANGE: Range(low, high, **options)})


def at_least(low: float, default: Any, **options: Any) -> Any:
    """A field whose numbers are >= low (`low_open`: > low); integers stay within 64 bits."""
    return between(low, None, default, **options)


def text(default: str, required: bool = False, name: bool = False) -> Any:
    """A string field: no control characters; `required`: not empty; `name`: a plain file name."""
    return dataclasses.field(default=default, metadata={TEXT: Text(required, name)})


def yaml_number(value: Any) -> Any:
    """A float's other YAML spellings as floats: 1e-3 without a dot (PyYAML reads a string) and an integer beyond
    float's range (inf, which pydantic then refuses as not finite). Anything else is pydantic's to refuse."""
    try:
        return float(value) if isinstance(value, str) or (isinstance(value, int) and type(value) is not bool) else value
    except ValueError:  # not a number: pydantic refuses it
        return value
    except OverflowError:
        return math.inf


def number_or_words(hint: Any) -> list[str]:
    """The words a key takes beside its number (Union[int, Literal["auto"]]: ["auto"]); [] for any other hint."""
    if typing.get_origin(hint) is not typing.Union:
        return []
    return [w for a in typing.get_args(hint) if typing.get_origin(a) is Literal for w in typing.get_args(a)]


def typed(hint: Any, rule: Range | Text | None) -> Any:
    """`hint` as pydantic checks it: strictly (no int from a float, a bool or a string), floats finite, YAML's
    spellings accepted (a pair as a list, 1e-3 as PyYAML's string), each number within `rule`, a string by it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:  # compared with each choice; YAML 1.1 reads a bare off / on as a boolean
        words = {False: "off", True: "on"}
        return Annotated[hint, BeforeValidator(lambda v: words[v] if type(v) is bool and words[v] in args else v)]
    if origin is typing.Union:  # Optional[X]: null, or an X; Union[X, Literal[...]]: an X or one of the words
        words = [a for a in args if typing.get_origin(a) is Literal]
        return Union[typed(args[0], rule), *words] if words else Optional[typed(args[0], rule)]
    if origin is tuple:  # a pair, which YAML writes as a list
        return Annotated[tuple[tuple(typed(a, rule) for a in args)], Strict(), AfterValidator(rule.check_order),
                         BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
    checks = [] if rule is None else [Field(**rule.bounds(hint is int)) if isinstance(rule, Range)
                                      else AfterValidator(rule.check)]
    if hint is float:  # the constraints first: pydantic applies them in its float check, before which yaml_number runs
        checks += [Field(allow_inf_nan=False), BeforeValidator(yaml_number)]
    return Annotated[hint, Strict(), *checks]


def section(cls: type) -> type:
    """`cls` as the frozen pydantic dataclass of a YAML section: unknown keys refused, each field `typed`, the
    docstring under a field its description (what docs/config.md says it means)."""
    for name, hint in typing.get_type_hints(cls).items():
        metadata = getattr(vars(cls).get(name), "metadata", {})
        cls.__annotations__[name] = typed(hint, metadata.get(RANGE) or metadata.get(TEXT))
    return pydantic.dataclasses.dataclass(cls, frozen=True, config=pydantic.ConfigDict(extra="forbid",
                                                                                       use_attribute_docstrings=True))


def check_value(value: Any, spec: dataclasses.Field, where: str) -> None:
    """Raises ConfigError naming `where` when `value` is not what the section field `spec` admits."""
    try:
        pydantic.TypeAdapter(spec.type).validate_python(value)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{where} is {shown(value)}; allowed: {err.errors()[0]['msg']}") from None
