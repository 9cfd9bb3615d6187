"""Typed checks of config values, so that a bad value is a one-line error before any compute."""
from __future__ import annotations

from harness.errors import HarnessError


def as_int(value, name: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HarnessError(f"{name} must be an integer (got {value!r}): e.g. {name}=4")
    try:
        number = float(value)
    except ValueError:
        raise HarnessError(f"{name} must be an integer (got {value!r}): e.g. {name}=4") from None
    if number != int(number):
        raise HarnessError(f"{name} must be an integer (got {value!r}): e.g. {name}=4")
    if minimum is not None and number < minimum:
        raise HarnessError(f"{name} must be >= {minimum} (got {value!r})")
    return int(number)


def as_float(value, name: str, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{name} must be a number (got {value!r}): e.g. {name}=1e-4") from None
    if positive and not number > 0:
        raise HarnessError(f"{name} must be > 0 (got {value!r})")
    return number
