"""The one memory-reclamation policy: idle workers, largest first, until within budget."""

from __future__ import annotations

from worker_runtime.eviction import largest_first

SIZES = {"small": 10, "large": 50, "medium": 30}


def test_nothing_goes_within_budget() -> None:
    assert largest_first(SIZES, SIZES.__getitem__, total=90, budget=90) == []


def test_the_largest_idle_ones_go_until_within_budget() -> None:
    assert largest_first(SIZES, SIZES.__getitem__, total=100, budget=60) == [("large", 50)]
    assert largest_first(SIZES, SIZES.__getitem__, total=100, budget=40) == [
        ("large", 50),
        ("medium", 30),
    ]


def test_all_idle_ones_go_when_that_is_not_enough() -> None:
    chosen = largest_first(SIZES, SIZES.__getitem__, total=500, budget=10)
    assert [name for name, _ in chosen] == ["large", "medium", "small"]
