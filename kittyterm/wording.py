"""Small helpers for the words both front ends show."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """'1 cat', '4 cats': `noun` is singular and takes an s."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
