"""Numbers in and out of UniqueIdGeneration's scripts: bounds on the way in, honest ratios out.

A number on the command line is refused with a one-line error (argparse's exit
status 2) when it is not a number, is nan, or lies outside its range, so no
script ever meets an OverflowError, a huge allocation or an endless loop. A
ratio printed beside a target is cut, never rounded up (`floored`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal


def bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse `type=`: `kind(text)`, required to lie in low..high."""

    def show(value: float) -> str:
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"

    def parse(text: str) -> float:
        shown = text if len(text) <= 40 else text[:37] + "..."  # echo a bounded text
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a {'whole number' if kind is int else 'number'}: {shown!r}"
            ) from None
        if not low <= value <= high:  # also refuses nan, which compares false
            raise argparse.ArgumentTypeError(f"must be in {show(low)}..{show(high)}, got {shown}")
        return value

    return parse


def floored(ratio: float, decimals: int = 2) -> str:
    """A ratio cut (not rounded) to `decimals`, as a target line shows it: 0.7993
    rounds to "0.80" and would read as meeting a 0.8x target it missed."""
    # Decimal(repr): 0.29 is cut to "0.29", where 0.29 * 100 would give 28.999...
    return str(Decimal(repr(ratio)).quantize(Decimal(10) ** -decimals, rounding=ROUND_FLOOR))
