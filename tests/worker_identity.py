"""Which process a test worker was, as the host sees it. The test workers report
themselves as ``PID@NAMESPACE@START``: their pid, their PID namespace's inode and their
start time in clock ticks since boot. In the executor's sandbox every worker has a small
pid in a namespace of its own, so the pid alone tells nothing apart; the kernel reuses a
freed namespace's inode, so a restarted worker can have both of its predecessor's; the
start time tells them apart. A test that signals or waits for a worker needs its host
pid: ``host_pid`` finds it by the namespace, the ``NSpid`` line and the start time."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def reported(text: str) -> str:
    """The identity in a test worker's output (``...pid=PID@NAMESPACE@START``)."""
    return text.split("pid=")[1].strip()


def _start_time(stat: str) -> str:
    return stat.rsplit(")", 1)[1].split()[19]


def host_pid(identity: str) -> int:
    """The host pid of the live process ``identity`` names; LookupError if it is gone."""
    pid, namespace, start = identity.split("@")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != f"pid:[{namespace}]":
                continue
            status = (entry / "status").read_text()
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        nspids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if nspids.split()[-1] == pid and _start_time(stat) == start:
            return int(entry.name)
    raise LookupError(f"no live process {identity} (pid {pid} in PID namespace {namespace})")


def live_host_pids(identities: Iterable[str]) -> list[int]:
    """The host pids of those of ``identities`` still running (the others are gone)."""
    found = []
    for identity in identities:
        try:
            found.append(host_pid(identity))
        except LookupError:
            continue
    return found
