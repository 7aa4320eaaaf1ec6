"""worker_runtime/quick_json.py reads JSON as ``json.loads`` does and writes it as
``json.dumps`` does, without importing ``json`` on the way (a worker's start: entry.py,
daemon/control.py)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.imports import modules_loaded_by
from worker_runtime.quick_json import DuplicateKeyError, dumps, loads, loads_unique

VALID = [
    '{"command": ["java", "-jar", "w.jar"], "server": "h2", "routing": "local"}',
    "  \n\t{}\r\n ",
    "[]",
    '"text with \\u00e9 and \\ud83d\\ude00 and \\n"',
    "0",
    "-0",
    "1.5E-3",
    "1e999",
    "123456789012345678901234567890",
    "true",
    "null",
    '{"nested": {"list": [1, [2, [3, {"x": null}]]]}}',
    "NaN",
    "[-Infinity, Infinity]",
    '"\\ud800"',  # a lone surrogate: json.loads takes it
]

INVALID = [
    "",
    "   ",
    "{",
    "{} x",
    "[1,]",
    '{"a" 1}',
    "\ufeff{}",
    '{"a": "\\x"}',
    '"tab\tinside"',  # a control character in a string: strict, as json.loads is
    "tru",
    "[1] [2]",
    "01",
]


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included (NaN is not equal to itself)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


READERS = pytest.mark.parametrize("read", [loads, loads_unique], ids=["loads", "loads_unique"])


@READERS
@pytest.mark.parametrize("text", VALID)
def test_a_valid_document_reads_as_json_loads_reads_it(
    text: str, read: Callable[[str], Any]
) -> None:
    assert same(read(text), json.loads(text))


def test_loads_takes_the_last_of_a_key_set_twice_as_json_loads_does() -> None:
    assert loads('{"a": 1, "a": 2}') == json.loads('{"a": 1, "a": 2}') == {"a": 2}


@READERS
@pytest.mark.parametrize("text", INVALID)
def test_an_invalid_document_raises_what_json_loads_raises(
    text: str, read: Callable[[str], Any]
) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        read(text)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"x": [{"b": {}, "b": {}}]}',
    ],
)
def test_loads_unique_refuses_a_key_twice(text: str) -> None:
    with pytest.raises(DuplicateKeyError, match=r"key '[ab]' is set twice in one object"):
        loads_unique(text)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(8)))  # fmt: skip
    if kind in (4, 5):
        return {str(random_value(rng, 4)): random_value(rng, depth + 1) for _ in range(3)}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_documents_read_the_same() -> None:
    rng = random.Random(15)
    for _ in range(500):
        text = json.dumps(random_value(rng), indent=rng.choice([None, 2]))
        assert loads(text) == json.loads(text), text


def test_reading_a_document_imports_neither_json_nor_re() -> None:
    code = (
        "from worker_runtime.quick_json import loads, loads_unique; "
        """assert loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}; """
        """assert loads_unique('{"a": {"b": 1}}') == {"a": {"b": 1}}"""
    )
    assert modules_loaded_by(code, ["json", "re", "enum"]) == []


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


WRITABLE = [
    {"op": "attach", "config": {"command": ["java", "-jar", "w.jar"]}, "front_pid": 4},
    "text with \u00e9, \U0001f600, a lone \ud800, \n and \x00",
    [1.5e-3, 1e300, -0.0, 10**30, True, False, None],
    [math.nan, math.inf, -math.inf],
    {1: "int key", 2.5: "float key", None: "null key", False: "bool key"},
    {},
    [],
    0,
]


@pytest.mark.parametrize("value", WRITABLE)
def test_a_value_is_written_as_json_dumps_writes_it(value: Any) -> None:
    assert dumps(value) == compact(value)


def test_random_values_are_written_the_same() -> None:
    rng = random.Random(16)
    for _ in range(500):
        value = random_value(rng)
        assert dumps(value) == compact(value)


def circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value", [{"a": object()}, {(1, 2): "tuple key"}, circular(), [b"bytes"]], ids=repr
)
def test_what_json_dumps_refuses_raises_its_error(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as expected:
        compact(value)
    with pytest.raises(expected.type) as got:
        dumps(value)
    assert str(got.value) == str(expected.value)


def test_a_refused_value_leaves_nothing_behind() -> None:
    """The C encoder keeps the ids it is writing until it is done; a value it refused
    must not make a later one look circular."""
    inner = [1]
    with pytest.raises(TypeError):
        dumps([inner, object()])
    assert dumps([inner, inner]) == "[[1],[1]]"


def test_writing_imports_neither_json_nor_re() -> None:
    code = (
        "from worker_runtime.quick_json import dumps; "
        """assert dumps({"a": [1, 2.5, "x"]}) == '{"a":[1,2.5,"x"]}'"""
    )
    assert modules_loaded_by(code, ["json", "re", "enum"]) == []


def test_an_encoder_that_takes_other_arguments_leaves_it_to_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another Python's C encoder may take other arguments: json.dumps then writes."""
    import _json

    def other_signature(*args: object) -> object:
        raise TypeError("make_encoder() takes other arguments")

    monkeypatch.setattr(_json, "make_encoder", other_signature)
    value = {"op": "attach", "config": {"command": ["java"]}}
    assert dumps(value) == compact(value)
