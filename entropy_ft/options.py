"""Each parameter written once: a step's ``Config`` field carries its flag, help text and check.

A step declares its settings as a frozen, keyword-only dataclass whose fields are made with
:func:`option`. From those fields alone come

* the command-line flags (:meth:`Options.add_arguments`),
* the config from parsed flags (:meth:`Options.from_args`, keyword-only),
* validation at construction, with a message that names the flag (a bad value is a
  :class:`~entropy_ft.errors.UserError`, exit 2),
* the pipeline parameters that expose a field (:mod:`entropy_ft.pipelines.definitions`
  reads default, help and check from here).

Checks are plain functions ``value -> problem or None`` so that one check serves every
field that needs it (an image size, a fraction, one of a set of names).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from entropy_ft.errors import UserError

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Option:
    """How one Config field meets the command line."""

    help: str
    flag: str | None = None  # None: --field-name; a positional argument when it does not start with "-"
    choices: Sequence[str] | None = None
    check: Check | None = None
    parse: Callable[[str], Any] | None = None  # the flag's text -> the field's value (argparse ``type``)
    nargs: str | None = None
    action: str | None = None  # "append": a repeatable flag, collected into a tuple
    metavar: str | None = None
    cli: bool = True  # False: set by code only (components, tests), no flag

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def validate(self, flag: str, value: Any) -> None:
        """A UserError naming ``flag`` when ``value`` is not acceptable."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{flag} {value}: expected one of {', '.join(self.choices)}")
        problem = self.check(value) if self.check else None
        if problem:
            shown = show(value)
            raise UserError(f"{flag} {shown}: {problem}" if shown else f"{flag}: {problem}")


def option(default: Any = MISSING, *, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its :class:`Option`; ``default`` MISSING makes it required."""
    return dataclasses.field(default=default, metadata={"option": Option(help=help, **kwargs)})


def option_of(cls: type, name: str) -> tuple[dataclasses.Field, Option]:
    """The field ``name`` of a Config class and its Option."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field, field.metadata["option"]


def _scalar(hint: Any) -> Callable[[str], Any]:
    """What parses one flag value for a field annotated ``hint``: int for ``int | None``, str for
    ``tuple[str, ...]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple, list) and args:
        return _scalar(args[0])
    return hint if hint in (int, float, str) else str


def show(value: Any) -> str:
    """A value as it is written on the command line: numbers short, lists comma-separated."""
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of every step's Config: validated at construction, flags and parsing derived from the fields."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            opt = field.metadata.get("option")
            if opt is not None:
                opt.validate(opt.flag_for(field.name), getattr(self, field.name))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One argument per field with an Option, in field order."""
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            opt = field.metadata.get("option")
            if opt is None or not opt.cli:
                continue
            flag = opt.flag_for(field.name)
            kwargs: dict[str, Any] = {"help": opt.help}
            if not flag.startswith("-"):
                kwargs.update(metavar=opt.metavar or flag, nargs=opt.nargs)
                parser.add_argument(field.name, **{k: v for k, v in kwargs.items() if v is not None})
                continue
            default = None if field.default is MISSING else field.default
            if field.type in ("bool", bool):
                kwargs["action"] = "store_false" if default else "store_true"
            else:
                kwargs.update(type=opt.parse or _scalar(hints[field.name]), choices=opt.choices, nargs=opt.nargs,
                              metavar=opt.metavar, action=opt.action)
                if opt.action == "append":  # argparse appends to its default: start from nothing
                    default = None
                if field.default is MISSING and field.default_factory is MISSING:
                    kwargs["required"] = True
                elif default is not None:
                    kwargs["help"] += f" (default: {show(default)})"
            parser.add_argument(flag, dest=field.name, default=default,
                                **{k: v for k, v in kwargs.items() if v is not None})

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any):
        """The Config from parsed flags (lists become tuples); ``overrides`` for fields without a flag."""
        values = {}
        for field in dataclasses.fields(cls):
            opt = field.metadata.get("option")
            if opt is not None and opt.cli and hasattr(args, field.name):
                value = getattr(args, field.name)
                if value is None and field.default is MISSING and field.default_factory is MISSING:
                    continue  # let the dataclass say that a required value is missing
                if value is None and opt.action == "append":
                    continue  # never given: the field's default
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values, **overrides)


# ---------------------------------------------------------------- shared checks


def between(low: float, high: float, unit: str = "") -> Check:
    """``low <= value <= high`` (NaN is refused)."""
    suffix = f" {unit}" if unit else ""

    def check(value: float) -> str | None:
        ok = isinstance(value, (int, float)) and not math.isnan(value) and low <= value <= high
        return None if ok else f"expected {low:g} to {high:g}{suffix}"

    return check


def below(low: float, high: float) -> Check:
    """``low <= value < high``."""

    def check(value: float) -> str | None:
        return None if low <= value < high else f"expected {low:g} to {high:g} ({high:g} excluded)"

    return check


def at_least(low: int, what: str = "") -> Check:
    def check(value: int) -> str | None:
        return None if value >= low else f"expected at least {low}{' ' + what if what else ''}"

    return check


def fraction(low: float = 0.0, high: float = 1.0) -> Check:
    """An open interval (``low``, ``high``)."""

    def check(value: float) -> str | None:
        return None if low < value < high else f"expected a fraction between {low:g} and {high:g}"

    return check


IMAGE_SIZE = between(16, 1024, "pixels")
"""The one check of every ``--image-size``: a square side the models and the loader handle."""


def csv(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: list values given as one comma-separated string."""
    return tuple(item.strip() for item in str(text).split(",") if item.strip())
