"""JSON read and written with the C scanner and encoder that ``json`` itself uses, without
importing the ``json`` package: its decoder and encoder import ``re`` (and ``re`` imports
``enum``), which on a slow VM cost a worker's start more than the rest of its way to
Buck2's socket (entry.py), and the front's way to the daemon after it (daemon/control.py).

``loads`` gives what ``json.loads`` gives for the same text: a document the scanner reads
whole is its value; anything else (the scanner reports its errors through ``json.decoder``,
which is not imported yet) is read again by ``json.loads``, which raises its own error.
``loads_unique`` is ``loads`` that refuses an object naming one key twice (a config file,
where ``json.loads`` would take the last value without a word), with ``DuplicateKeyError``.
``dumps`` gives what ``json.dumps(value, separators=(",", ":"))`` gives; a value the C
encoder refuses is handed to that call, which raises its own error
(tests/unit/test_quick_json.py compares both with ``json``).
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


class DuplicateKeyError(ValueError):
    """An object that names one key twice."""


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict (json's ``object_pairs_hook``); DuplicateKeyError if
    one key comes twice."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 80 else f"{key[:77]}..."
                raise DuplicateKeyError(f"key {shown!r} is set twice in one object")
            seen.add(key)
    return found


class _UniqueKeys(_Defaults):
    object_pairs_hook = unique_object  # type: ignore[assignment]


_scan = _json.make_scanner(_Defaults)  # type: ignore[arg-type]
_scan_unique = _json.make_scanner(_UniqueKeys)  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """The value of JSON document ``text``, as ``json.loads(text)`` gives it."""
    return _loads(text, _scan, None)


def loads_unique(text: str) -> Any:
    """``loads``, refusing an object that names a key twice (DuplicateKeyError)."""
    return _loads(text, _scan_unique, unique_object)


def _loads(text: str, scan: Any, hook: Any) -> Any:
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except DuplicateKeyError:
        raise
    except Exception:  # not JSON: json.loads raises the error a person can read
        return _loads_with_json(text, hook)
    if text[end:].strip(_WHITESPACE):
        return _loads_with_json(text, hook)
    return value


def _loads_with_json(text: str, hook: Any) -> Any:
    import json

    return json.loads(text, object_pairs_hook=hook)


class _NotPlainJson(Exception):
    """A value the C encoder cannot write by itself (``json.dumps`` says why)."""


def _refuse(value: object) -> object:
    raise _NotPlainJson


def dumps(value: Any) -> str:
    """``value`` as JSON text, as ``json.dumps(value, separators=(",", ":"))`` writes it."""
    try:
        # The arguments json.JSONEncoder gives the C encoder for those defaults: circular
        # references checked (in a dict of the ids being written, new for every call, as
        # an error leaves its entries behind), ASCII output, keys in their order, none
        # skipped, NaN and the infinities written as JavaScript's names.
        encode = _json.make_encoder(
            {}, _refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        return "".join(encode(value, 0))
    except Exception:  # not plain JSON, or another Python's encoder: json.dumps decides
        import json

        return json.dumps(value, separators=(",", ":"))
