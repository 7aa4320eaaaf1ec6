"""The checked-in generated protobuf modules are what `python -m worker_runtime.proto.regenerate` makes."""

from __future__ import annotations

from pathlib import Path

from worker_runtime.proto import regenerate


def test_generated_code_is_current(tmp_path: Path) -> None:
    regenerate.generate(tmp_path)
    generated = sorted((tmp_path / "worker_runtime" / "proto").iterdir())
    assert generated, "protoc generated nothing"
    stale = []
    for path in generated:
        checked_in = regenerate.PROTO_DIR / path.name
        if not checked_in.exists() or checked_in.read_bytes() != path.read_bytes():
            stale.append(path.name)
    assert not stale, (
        f"stale generated code: {stale}; run `python -m worker_runtime.proto.regenerate` "
        "from the repository root and commit the result"
    )
