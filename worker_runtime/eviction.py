"""The one memory-reclamation policy of both worker pools (the daemon's backends and the
executor's workers): while the total is over the budget, stop idle workers, largest
first, since one large idle worker frees what many small warm ones would."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def largest_first(
    idle: Iterable[T], size_of: Callable[[T], int], total: int, budget: int
) -> list[tuple[T, int]]:
    """The idle workers to stop, each with its size, until ``total`` is within ``budget``
    (all of them, if that is not enough)."""
    chosen: list[tuple[T, int]] = []
    if total <= budget:
        return chosen
    for item, size in sorted(((i, size_of(i)) for i in idle), key=lambda pair: -pair[1]):
        if total <= budget:
            break
        chosen.append((item, size))
        total -= size
    return chosen
