"""Options: dataclass fields that carry their own help, limits and choices.

One declaration serves every place an option shows up — validation when the dataclass is
made, the settings table the language server merges, command-line flags, the daemon's argv:

    @dataclass(frozen=True)
    class RuntimeConfig:
        threads: int = option(0, "PyTorch CPU threads; 0 picks by model size", min=0)
        def __post_init__(self): check(self)

`check` raises `OptionError` (one sentence naming the option) for a value of the wrong type,
a non-finite number, a value outside [min, max] or not among the choices. `coerce` turns a
raw value (a TOML / JSON value, an environment or command-line string) into the field's type.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

_HELP, _CHOICES, _MIN, _MAX, _KEEP_CASE = "help", "choices", "min", "max", "keep_case"


class OptionError(ValueError):
    """A value that does not fit its option; str(error) is one sentence."""


def option(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, keep_case: bool = False) -> Any:
    """A dataclass field that documents and bounds itself (tuples and frozensets as defaults)."""
    metadata = {_HELP: help, _CHOICES: choices, _MIN: min, _MAX: max, _KEEP_CASE: keep_case}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one option is: its name, type (as written: "int", "str | None", …) and limits."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    keep_case: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join("none" if c is None else str(c) for c in self.choices)
        words = {"bool": "true or false", "int": "a whole number", "float": "a number", "Path": "a path"}
        text = words.get(self.base_kind, "a list of names" if self.is_list else "a string")
        if self.min is not None and self.max is not None:
            return f"{text} from {self.min} to {self.max}"
        if self.min is not None:
            return f"{text} of at least {self.min}"
        return text

    @property
    def base_kind(self) -> str:
        return self.kind.replace(" | None", "")

    @property
    def optional(self) -> bool:
        return self.kind.endswith("| None")

    @property
    def is_list(self) -> bool:
        return self.base_kind.startswith(("tuple", "frozenset"))


def specs(cls) -> Iterator[Spec]:
    """The options of a dataclass (fields declared with `option`)."""
    for f in dataclasses.fields(cls):
        if _HELP in f.metadata:
            m = f.metadata
            yield Spec(f.name, str(f.type), f.default, m[_HELP], m[_CHOICES], m[_MIN], m[_MAX], m[_KEEP_CASE])


def check(obj) -> None:
    """Validate every option of a dataclass instance; normalises lists to tuples."""
    for spec in specs(type(obj)):
        value = getattr(obj, spec.name)
        fixed = _check_value(spec, value)
        if fixed is not value:
            object.__setattr__(obj, spec.name, fixed)


def coerce(spec: Spec, raw: Any) -> Any:
    """`raw` as the option's type, checked; OptionError when it does not fit."""
    try:
        value = _convert(spec, raw)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"Setting {spec.name!r} cannot be {raw!r}; it takes {spec.describe()}.") from None
    return _check_value(spec, value, raw)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *, skip: tuple[str, ...] = (),
                  switches: bool = False) -> None:
    """A --flag per option of `cls` (values stay strings; `coerce` reads them). With `switches`
    a true-or-false option is --flag / --no-flag instead of --flag VALUE."""
    for spec in specs(cls):
        if spec.name in skip:
            continue
        if switches and spec.base_kind == "bool":
            default = "" if spec.default is None else f" (default {_shown(spec.default)})"
            parser.add_argument(spec.flag, dest=spec.name, default=None, action=argparse.BooleanOptionalAction,
                                help=spec.help + default)
            continue
        extra = f" ({spec.describe()}; default {_shown(spec.default)})"
        parser.add_argument(spec.flag, dest=spec.name, default=None, metavar=spec.name.upper(),
                            help=spec.help + extra)


def from_arguments(cls, namespace: argparse.Namespace) -> dict:
    """The options given on a command line made by `add_arguments`, as {name: raw string}."""
    return {s.name: getattr(namespace, s.name) for s in specs(cls)
            if getattr(namespace, s.name, None) is not None}


def to_argv(obj) -> list[str]:
    """Flags that rebuild `obj` from defaults: only the options that differ from them."""
    argv = []
    for spec in specs(type(obj)):
        value = getattr(obj, spec.name)
        if value != spec.default:
            argv += [spec.flag, _shown(value)]
    return argv


def build(cls, raw: dict):
    """An instance of `cls` from {name: raw value}; OptionError for the first bad one."""
    known = {s.name: s for s in specs(cls)}
    values = {}
    for name, value in raw.items():
        if name not in known:
            raise OptionError(f"Unknown option {name!r}.")
        values[name] = coerce(known[name], value)
    return cls(**values)


# ---------------------------------------------------------------------------------------------

def _convert(spec: Spec, raw: Any) -> Any:
    kind = spec.base_kind
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null")
                       and kind not in ("bool",)):
        if spec.optional:
            return None
        raise ValueError(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind == "int":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(raw)
        return int(raw.strip()) if isinstance(raw, str) else int(raw)
    if kind == "float":
        if isinstance(raw, bool):
            raise ValueError(raw)
        return float(raw)
    if kind == "Path":
        if not isinstance(raw, (str, Path)) or not str(raw).strip():
            raise TypeError(raw)
        return Path(str(raw).strip()).expanduser()
    if spec.is_list:
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, (list, tuple, set, frozenset)) or not all(isinstance(x, str) for x in raw):
            raise TypeError(raw)
        return tuple(x.strip().lower() for x in raw if x.strip())
    if not isinstance(raw, str) or not raw.strip():
        raise TypeError(raw)
    return raw.strip() if spec.keep_case else raw.strip().lower()


def _check_value(spec: Spec, value: Any, raw: Any = None) -> Any:
    shown = value if raw is None else raw

    def fail() -> OptionError:
        return OptionError(f"Setting {spec.name!r} cannot be {shown!r}; it takes {spec.describe()}.")

    kind = spec.base_kind
    if value is None:
        if spec.optional:
            return value
        raise fail()
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise fail()
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail()
    if kind == "bool" and not isinstance(value, bool):
        raise fail()
    if kind == "Path" and not isinstance(value, Path):
        raise fail()
    if spec.is_list:
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise fail()
        if kind.startswith("tuple") and not isinstance(value, tuple):
            value = tuple(value)
    if spec.choices is not None and value not in spec.choices:
        raise fail()
    if spec.min is not None or spec.max is not None:
        assert isinstance(value, (int, float)), f"option {spec.name!r}: min and max bound numbers only"
        if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
            raise fail()
    return value


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list, frozenset, set)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)
