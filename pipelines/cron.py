"""Validate cron expressions the way KFP's scheduler (robfig/cron, with seconds) reads them.

KFP wants six fields: ``second minute hour day-of-month month day-of-week``. A five-field
Unix expression is accepted and given ``0`` seconds, since that is what users almost
always mean; predefined schedules (``@daily`` ...) pass through.
"""

from __future__ import annotations

import re

from entropy_ft.errors import UserError

DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, low, high, names usable instead of numbers, first value the names map to)
FIELDS = [
    ("second", 0, 59, None, 0),
    ("minute", 0, 59, None, 0),
    ("hour", 0, 23, None, 0),
    ("day-of-month", 1, 31, None, 0),
    ("month", 1, 12, MONTHS, 1),
    ("day-of-week", 0, 6, DAYS, 0),
]
_ITEM = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


def normalize_cron(expr: str) -> str:
    """The six-field form of ``expr``, or a UserError that names the bad field."""
    text = " ".join(expr.split())
    if text in DESCRIPTORS:
        return text
    if text.startswith("@every "):
        if not re.fullmatch(r"@every (\d+(ns|us|ms|s|m|h))+", text):
            raise UserError(f"--cron {expr!r}: '@every' needs a duration like 1h30m")
        return text
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise UserError(
            f"--cron {expr!r}: expected 6 fields (second minute hour day-of-month month day-of-week), "
            f"e.g. '0 0 2 * * *' for 02:00 daily; got {len(parts)}"
        )
    for value, (name, low, high, names, base) in zip(parts, FIELDS):
        _check_field(expr, value, name, low, high, names, base)
    return " ".join(parts)


def _check_field(expr: str, value: str, name: str, low: int, high: int, names: list[str] | None, base: int) -> None:
    for item in value.split(","):
        match = _ITEM.match(item)
        if not match:
            raise UserError(f"--cron {expr!r}: {name} field {value!r} is not valid cron syntax")
        if match["step"] is not None and int(match["step"]) == 0:
            raise UserError(f"--cron {expr!r}: {name} step must be positive")
        rng = match["range"]
        if rng == "?" and name not in ("day-of-month", "day-of-week"):
            raise UserError(f"--cron {expr!r}: '?' is only allowed for day-of-month or day-of-week")
        if rng in ("*", "?"):
            continue
        bounds = [_value(expr, v, name, names, base) for v in rng.split("-")]
        for v in bounds:
            if not low <= v <= high:
                raise UserError(f"--cron {expr!r}: {name} value {v} outside {low}-{high}")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise UserError(f"--cron {expr!r}: {name} range {rng} runs backwards")


def _value(expr: str, token: str, name: str, names: list[str] | None, base: int) -> int:
    if token.isdigit():
        return int(token)
    if names and token.upper() in names:
        return names.index(token.upper()) + base
    alternatives = f" or one of {names}" if names else ""
    raise UserError(f"--cron {expr!r}: {name} value {token!r} is not a number{alternatives}")
