"""Argument checks the bus's constructors share, so each says what is wrong the same way."""

from __future__ import annotations


def at_least(owner: str, minimum: float, **values: float) -> None:
    """Raise ValueError naming the first of ``values`` below ``minimum``.

    ``at_least("Broker", 1, hwm=hwm)`` -> ``Broker: hwm must be >= 1, got 0``.
    """
    for name, value in values.items():
        if value < minimum:
            raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
