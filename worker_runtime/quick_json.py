"""JSON text read with the C scanner that ``json.loads`` itself uses, without importing the
``json`` package: its decoder imports ``re`` (and ``re`` imports ``enum``), which on a slow
VM cost a worker's start more than the rest of its way to Buck2's socket (entry.py).

``loads`` gives what ``json.loads`` gives for the same text: a document the scanner reads
whole is its value; anything else (the scanner reports its errors through ``json.decoder``,
which is not imported yet) is read again by ``json.loads``, which raises its own error
(tests/unit/test_quick_json.py compares the two).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # mypy takes it as true; typing itself is not imported (it costs a start)
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Defaults:
    """What the scanner reads from a ``json.JSONDecoder()``: the defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Defaults)  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """The value of JSON document ``text``, as ``json.loads(text)`` gives it."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except Exception:  # not JSON: json.loads raises the error a person can read
        return _loads_with_json(text)
    if text[end:].strip(_WHITESPACE):
        return _loads_with_json(text)
    return value


def _loads_with_json(text: str) -> Any:
    import json

    return json.loads(text)
