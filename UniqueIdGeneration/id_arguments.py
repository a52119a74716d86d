"""The argparse helper every UniqueIdGeneration script shares: numbers with bounds.

A number on the command line is refused with a one-line error (argparse's exit
status 2) when it is not a number, is nan, or lies outside its range, so no
script ever meets an OverflowError, a huge allocation or an endless loop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
