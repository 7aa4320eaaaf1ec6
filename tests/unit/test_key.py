"""Worker keys and the tool-input digest cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker_runtime.backends.key import ToolDigests, make_key
from worker_runtime.digests import DigestCache
from worker_runtime.errors import RequestError


def test_key_equality_and_family() -> None:
    a = make_key(("t",), (("A", "1"),), "proto", False, (("t", "d1"),))
    b = make_key(("t",), (("A", "1"),), "proto", False, (("t", "d1"),))
    c = make_key(("t",), (("A", "1"),), "proto", False, (("t", "d2"),))
    d = make_key(("t",), (("A", "2"),), "proto", False, (("t", "d1"),))
    assert a == b and a.short == b.short
    assert a != c and a.family == c.family
    assert a.family != d.family
    assert make_key(("t",), (), "json", False, ()) != make_key(("t",), (), "proto", False, ())


def test_tool_digests_follow_content(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(b"v1")
    digests = ToolDigests(("tool",), str(tmp_path), DigestCache())
    first = digests.current()
    assert digests.current() == first
    tool.write_bytes(b"v2 longer")
    second = digests.current()
    assert second != first
    # Same size and mtime but new inode (replaced file): re-hashed too.
    replacement = tmp_path / "tool.new"
    replacement.write_bytes(b"v3 longer")
    stat = tool.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(tool)
    assert digests.current() != second


def test_missing_tool_input(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="tool input 'nope' cannot be read"):
        ToolDigests(("nope",), str(tmp_path), DigestCache()).current()
