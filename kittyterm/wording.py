"""Small helpers for the words both front ends show."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """'1 cat', '4 cats': `noun` is singular and takes an s."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def seed_span(seeds: list[int]) -> str:
    """'seed 7', 'seeds 7–22': the consecutive seeds of a batch."""
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
