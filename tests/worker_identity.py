"""Which process a test worker was, as the host sees it. `remote_test_worker` reports
itself as ``PID@NAMESPACE`` (its pid and its PID namespace's inode): in the executor's
sandbox every worker has a small pid in a namespace of its own, so the pid alone tells
nothing apart, and a test that signals or waits for the worker needs its host pid."""

from __future__ import annotations

import os
from pathlib import Path


def reported(text: str) -> str:
    """The identity in a test worker's output (``...pid=PID@NAMESPACE``)."""
    return text.split("pid=")[1].strip()


def host_pid(identity: str) -> int:
    """The host pid of the live process ``identity`` names; LookupError if it is gone."""
    pid, _, namespace = identity.partition("@")
    if os.readlink("/proc/self/ns/pid") == f"pid:[{namespace}]":
        return int(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != f"pid:[{namespace}]":
                continue
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        nspids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if nspids.split()[-1] == pid:
            return int(entry.name)
    raise LookupError(f"no live process {identity} (pid {pid} in PID namespace {namespace})")
