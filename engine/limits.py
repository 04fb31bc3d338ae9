"""Checks of untrusted numbers against explicit limits, and numbers written for people.

Configs read from a checkpoint come from JSON that anyone may have edited: a field may hold a
string, a list, `true`, NaN or a 300-digit integer. These checks accept exactly the type a field
needs (a bool is not an integer, 64.0 is not an image size) within stated bounds, and their
messages show every number the way a person reads it (1,024; about 10^300; 7.4 GiB).
"""

from __future__ import annotations

import math


def shown(value: object) -> str:
    """`value` as a one-line message should show it: integers with thousands separators (huge
    ones by their order of magnitude), strings quoted and cut short (long runs of digits by their
    length), short lists item by item, other containers by their kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10**15 else f"{'-' if value < 0 else ''}about 10^{math.log10(abs(value)):.0f}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if len(value) > 15 and value.isdigit():
            return f"a {len(value):,}-digit number"
        return repr(value if len(value) <= 24 else value[:23] + "…")
    if isinstance(value, (list, tuple)):
        if len(value) <= 8 and not any(isinstance(item, (list, tuple, dict)) for item in value):
            return f"[{', '.join(shown(item) for item in value)}]"
        return f"a list of {len(value):,} items"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def human_bytes(size: float) -> str:
    """A byte count in binary units with one decimal: 512 bytes, 12.0 MiB, 7.4 GiB."""
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:,.1f} EiB"


def check_int(name: str, value: object, low: int, high: int) -> int:
    """`value` if it is an integer (not a bool, not a float) with low ≤ value ≤ high."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, not {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low:,} to {high:,}, not {shown(value)}")
    return value


def check_float(name: str, value: object) -> float:
    """`value` as a float if it is a finite number (an integer is accepted, a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, not {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, not {shown(value)}")
    return number


def check_int_list(name: str, value: object, max_length: int, low: int, high: int) -> tuple[int, ...]:
    """`value` as a tuple if it is a list of at most `max_length` integers, each in [low, high]."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of whole numbers, not {shown(value)}")
    if len(value) > max_length:
        raise ValueError(f"{name} may list at most {max_length} values, not {len(value):,}")
    return tuple(check_int(f"each of {name}", item, low, high) for item in value)
