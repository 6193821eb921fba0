"""Defaults scaled to the input size, for the attack sections (a private helper).

The attack sections' defaults were set on the digits data (8 x 8 = 64 input values),
where the models they train cost microseconds per sample. On larger inputs (a 28 x 28
image has 784 values) each training sample costs over ten times as much, so an option
left at 0 ("automatic") takes a smaller value there: fewer or shorter auxiliary
trainings (poisoned victims, surrogates) and fewer points to score them on. The attacks
themselves (steps, restarts, query budgets, radii, poison rates) never change. Every
section states the values it used in its ``details["settings"]``.
"""

from __future__ import annotations

import math

from dlsec.models import CardLike

LARGE_INPUT_VALUES = 256  # more input values than a 16 x 16 image: "large" inputs


def input_values(card: CardLike) -> int:
    """Values per input (``C x H x W``)."""
    return math.prod(int(v) for v in card.input_shape)


def is_large(card: CardLike) -> bool:
    return input_values(card) > LARGE_INPUT_VALUES


def auto(value: int, card: CardLike, *, small: int, large: int) -> int:
    """``value``, or when 0 (automatic) ``small`` / ``large`` by the card's input size."""
    if value > 0:
        return value
    return large if is_large(card) else small


def size_note(card: CardLike) -> str:
    """How the defaults were chosen, for the section's stated settings."""
    n = input_values(card)
    kind = "large" if is_large(card) else "small"
    return (f"defaults for {kind} inputs ({n} values per input; large: more than "
            f"{LARGE_INPUT_VALUES})")
