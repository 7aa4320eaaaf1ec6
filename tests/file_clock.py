"""Waiting until files are settled (``worker_runtime.digests.settled``): their ctime in
the past on the kernel's file clock, so that the digest cache keeps what it hashes of
them. A test that writes a file and expects its digest to be kept waits for this (a
tick, a few ms) first; the runtime itself never waits, it hashes such a file again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from worker_runtime.digests import file_clock_ns, settled


def wait_until_settled(*paths: Path) -> None:
    deadline = time.monotonic() + 10
    while not all(settled(os.stat(path), file_clock_ns()) for path in paths):
        assert time.monotonic() < deadline, f"{paths} still not settled after 10 s"
        time.sleep(0.001)
