"""The daemon's event loop never waits on the file system: a request whose argument file
is a FIFO, or whose envelope names a huge input to hash, stalls only itself, while the
requests of another front and `worker-runtime status` go on."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import StartRuntime, fake_backend
from tests.integration.test_daemon import daemon_status
from worker_runtime.envelope import ENVELOPE_ENV, Envelope, write_envelope
from workers_dev.emulator import Buck2Worker, make_command

#: Long enough for the test to fail (not hang) if the loop were blocked.
DEADLINE_S = 60.0


def in_background(worker: Buck2Worker, command: Any) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(worker.execute(command, deadline_s=DEADLINE_S))
    )
    thread.start()
    return thread, answers


@contextlib.contextmanager
def fifo_released_at_exit(path: Path) -> Iterator[None]:
    """On leaving: opens the FIFO for writing and closes it, which ends the read that is
    blocked on it (the runtime's file thread gets an empty file)."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_argfile_stalls_only_its_own_request(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    fifo = tmp_path / "args.fifo"
    os.mkfifo(fifo)
    stuck = start_runtime(fake_backend(), cwd=tmp_path)
    other = start_runtime(fake_backend(), cwd=tmp_path)
    with fifo_released_at_exit(fifo):
        thread, answers = in_background(stuck, make_command(["echo", "@args.fifo"], timeout_s=2))
        # While that request waits on the FIFO: another front's requests, the same front's
        # next request and the daemon's status are all answered.
        for _ in range(3):
            reply = other.execute(make_command(["echo", "other"]), deadline_s=DEADLINE_S)
            assert reply.stderr == "other"
        reply = stuck.execute(make_command(["echo", "same"]), deadline_s=DEADLINE_S)
        assert reply.stderr == "same"
        assert daemon_status(tmp_path)["running"] is True
        assert not answers  # still waiting on its FIFO
        thread.join(DEADLINE_S)
    # Its own timeout ended it, as a timeout, saying why.
    (response,) = answers
    assert response.HasField("timed_out_after_s") and response.timed_out_after_s == 2
    assert "reading the request's argument files took longer than its timeout" in response.stderr
    assert "FIFO" in response.stderr


def test_hashing_a_huge_input_does_not_hold_up_other_requests(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as handle:
        handle.truncate(768 << 20)  # sparse: quick to make, slow to hash
    (tmp_path / "args").write_text("echo\nhashed\n")
    write_envelope(tmp_path / "envelope.json", Envelope("args", ("huge.bin",), ()))
    hashing = start_runtime(fake_backend(), cwd=tmp_path)
    other = start_runtime(fake_backend(), cwd=tmp_path)
    other.run("echo", "warm")
    command = make_command(["@args"], env={ENVELOPE_ENV: "envelope.json"})
    thread, answers = in_background(hashing, command)
    reply = other.execute(make_command(["echo", "other"]), deadline_s=DEADLINE_S)
    assert reply.stderr == "other"
    assert not answers  # the huge input is still being hashed
    thread.join(DEADLINE_S)
    (response,) = answers
    assert response.exit_code == 0 and response.stderr == "hashed", response
