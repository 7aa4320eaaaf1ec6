"""worker_runtime/quick_json.py reads JSON as ``json.loads`` does, without importing ``json``
on the way (a worker's start: entry.py)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from tests.imports import modules_loaded_by
from worker_runtime.quick_json import loads

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
    '{"a": 1, "a": 2}',  # the last one wins, as in json.loads
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


@pytest.mark.parametrize("text", VALID)
def test_a_valid_document_reads_as_json_loads_reads_it(text: str) -> None:
    assert same(loads(text), json.loads(text))


@pytest.mark.parametrize("text", INVALID)
def test_an_invalid_document_raises_what_json_loads_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        loads(text)
    assert str(got.value) == str(expected.value)


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
        "from worker_runtime.quick_json import loads; "
        """assert loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}"""
    )
    assert modules_loaded_by(code, ["json", "re", "enum"]) == []
