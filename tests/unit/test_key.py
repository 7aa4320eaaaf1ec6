"""Worker keys and the tool-input digest cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker_runtime.backends.key import ToolDigests, WorkerKey
from worker_runtime.digests import DigestCache
from worker_runtime.errors import RequestError
from worker_runtime.remote.convention import worker_key


def test_key_equality_and_family() -> None:
    a = WorkerKey(("t",), (("A", "1"),), "proto", False, (("t", "d1"),))
    b = WorkerKey(("t",), (("A", "1"),), "proto", False, (("t", "d1"),))
    c = WorkerKey(("t",), (("A", "1"),), "proto", False, (("t", "d2"),))
    d = WorkerKey(("t",), (("A", "2"),), "proto", False, (("t", "d1"),))
    assert a == b and a.short == b.short
    assert a != c and a.family == c.family
    assert a.family != d.family
    assert WorkerKey(("t",), (), "json", False, ()) != WorkerKey(("t",), (), "proto", False, ())


def test_the_tenant_and_multiplex_split_keys_but_not_the_convention_s_digest() -> None:
    """The digest is the persistentWorkerKey, which leaves both out: the executor keeps
    tenants apart by comparing whole keys."""
    local = WorkerKey(("t",), (), "proto", False, (("t", "d1"),))
    tenant = WorkerKey(("t",), (), "proto", False, (("t", "d1"),), instance="tenant-b")
    mux = WorkerKey(("t",), (), "proto", True, (("t", "d1"),))
    assert local != tenant and local != mux and local.family != tenant.family
    assert local.digest == tenant.digest == mux.digest
    assert len(local.digest) == 64 and local.short == local.digest[:12]


def test_the_digest_is_the_convention_s_key() -> None:
    key = WorkerKey(("python3", "t/w.py"), (("A", "1"),), "proto", False, (("t/w.py", "aa"),))
    assert key.digest == worker_key([("t/w.py", "aa")], ["python3", "t/w.py"], {"A": "1"}, "proto")
    # The flag is added once, whether or not the client's command carried it.
    assert key.digest == worker_key(
        [("t/w.py", "aa")], ["python3", "t/w.py", "--persistent_worker"], {"A": "1"}, "proto"
    )


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
