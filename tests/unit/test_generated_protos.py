"""The checked-in generated protobuf modules are what `python -m worker_runtime.proto.regenerate` makes."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from worker_runtime.proto import regenerate

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def checked_in_protos() -> list[str]:
    found = regenerate.PROTO_DIR.rglob("*.proto")
    return sorted(p.relative_to(regenerate.PROTO_DIR).as_posix() for p in found)


def test_every_proto_file_is_generated() -> None:
    assert sorted(regenerate.PROTO_FILES) == checked_in_protos()


def test_generated_code_is_current(tmp_path: Path) -> None:
    regenerate.generate(tmp_path)
    out = tmp_path / "worker_runtime" / "proto"
    generated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    expected = sorted(
        proto.removesuffix(".proto") + suffix
        for proto in regenerate.PROTO_FILES
        for suffix in GENERATED_SUFFIXES
    )
    assert generated == expected, "protoc generated a different set of files"
    stale = []
    for name in generated:
        checked_in = regenerate.PROTO_DIR / name
        if not checked_in.exists() or checked_in.read_bytes() != (out / name).read_bytes():
            stale.append(name)
    assert not stale, (
        f"stale generated code: {stale}; run `python -m worker_runtime.proto.regenerate` "
        "from the repository root and commit the result"
    )


@pytest.mark.parametrize("proto", regenerate.PROTO_FILES)
def test_generated_modules_import(proto: str) -> None:
    """Each module imports as a package module, and its descriptor is the proto it came from."""
    module = "worker_runtime.proto." + proto.removesuffix(".proto").replace("/", ".")
    pb2 = importlib.import_module(module + "_pb2")
    assert pb2.DESCRIPTOR.name == f"worker_runtime/proto/{proto}"
    importlib.import_module(module + "_pb2_grpc")
