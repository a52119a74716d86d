"""Argument types the Threading scripts share: each refuses a bad value with a
one-line message that says what it accepts (argparse turns it into exit code 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

Value = TypeVar("Value", int, float)

MAX_DELAY = 10.0  # seconds: the longest wait a script accepts for one answer


def bounded_int(upper: int, lower: int = 1) -> Callable[[str], int]:
    """A whole number from `lower` to `upper`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lower <= value <= upper:
            raise argparse.ArgumentTypeError(f"must be between {lower} and {upper}, got {value}")
        return value

    return parse


def bounded_seconds(lower: float, upper: float) -> Callable[[str], float]:
    """Seconds from `lower` to `upper` (nan and inf refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not lower <= value <= upper:  # also refuses nan, which compares false
            raise argparse.ArgumentTypeError(
                f"must be between {lower:g} and {upper:g} seconds, got {text}"
            )
        return value

    return parse


delay_seconds = bounded_seconds(0, MAX_DELAY)
port_number = bounded_int(65535, lower=0)


def comma_list(
    parse_one: Callable[[str], Value], most: int = 8
) -> Callable[[str], tuple[Value, ...]]:
    """Up to `most` comma-separated values, each checked by `parse_one`; sorted, no duplicates."""

    def parse(text: str) -> tuple[Value, ...]:
        try:
            values = {parse_one(part.strip()) for part in text.split(",")}
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"in {text!r}: {error}") from None
        if len(values) > most:
            raise argparse.ArgumentTypeError(f"at most {most} values, got {len(values)}")
        return tuple(sorted(values))

    return parse
