"""The remote client against a REAPI server that misbehaves (tests/fake_reapi_server.py,
a process of its own on a Unix socket): a server that lost the Action blob it refuses to
execute, one that lost the operation the client follows, a stream that keeps breaking,
and a server that freezes with the stream open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from worker_runtime.config import config_from_mapping
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import Envelope
from worker_runtime.remote import client as client_module
from worker_runtime.remote.action import BuiltAction, build_action
from worker_runtime.remote.client import RemoteClient, RemoteError, RemoteResult, RemoteSettings
from worker_runtime.remote.merkle import Blobs

pytestmark = pytest.mark.timeout(120)


class FakeServer:
    """The fake server's process, its endpoint and its call log."""

    def __init__(self, tmp_path: Path, script: str) -> None:
        self.log = tmp_path / "calls.log"
        self.log.touch()
        socket = tmp_path / "reapi.sock"
        self.endpoint = f"unix://{socket}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_reapi_server", str(socket), script, str(self.log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "listening\n"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def fake_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(tmp_path, request.param)
    try:
        yield server
    finally:
        server.stop()


def an_action(tmp_path: Path) -> tuple[BuiltAction, Blobs]:
    (tmp_path / "tool.py").write_text("print()\n")
    (tmp_path / "r.args").write_text("--out\no.txt\n")
    settings = config_from_mapping(
        {"command": ["python3", "tool.py"], "tool_inputs": ["tool.py"]}
    ).validated()
    blobs = Blobs()
    built = build_action(
        settings, Envelope("r.args", (), ("o.txt",)), {}, tmp_path, DigestCache(), blobs
    )
    return built, blobs


def run(tmp_path: Path, settings: RemoteSettings) -> RemoteResult:
    built, blobs = an_action(tmp_path)
    client = RemoteClient(settings)
    try:
        return client.run(built, blobs, tmp_path)
    finally:
        client.close()


@pytest.mark.parametrize("fake_server", ["lie-once"], indirect=True)
def test_an_execute_refused_for_want_of_the_action_blob_uploads_it_again(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """A server that lost the Action blob (restarted, its CAS in memory) refuses the
    Execute call itself. The client believed the blob present for 10 minutes and failed
    every request so long; now it checks every blob again and runs once more."""
    result = run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert (result.exit_code, result.stdout) == (0, b"ran")
    calls = fake_server.calls()
    assert calls.count("Execute") == 2
    # The first upload (which the server lies to), then every blob again.
    assert [c.split()[0] for c in calls].count("FindMissingBlobs") == 2
    assert any(c.startswith("BatchUpdateBlobs") for c in calls)


@pytest.mark.parametrize("fake_server", ["drop-then-lose"], indirect=True)
def test_an_operation_the_server_lost_is_executed_again(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """The stream broke off, and the server no longer knows the operation (WaitExecution:
    NOT_FOUND): the request failed; the same action executed again runs it."""
    result = run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert (result.exit_code, result.stdout) == (0, b"ran")
    calls = [c for c in fake_server.calls() if c != "GetCapabilities"]
    assert calls[-4:] == [
        "Execute", "WaitExecution op-1", "CancelOperation op-1", "Execute"
    ]  # fmt: skip


@pytest.mark.parametrize("fake_server", ["refuse"], indirect=True)
def test_an_execute_refused_with_its_blobs_present_is_not_run_again(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """FAILED_PRECONDITION for another reason than a lost blob (a platform property no
    bot has) fails at once, naming the server's reason: no second upload and run."""
    with pytest.raises(RemoteError) as caught:
        run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert str(caught.value) == "Execute failed: FAILED_PRECONDITION: no bot has the property"
    calls = fake_server.calls()
    assert calls.count("Execute") == 1
    assert not any(c.startswith("BatchUpdateBlobs") for c in calls[calls.index("Execute") :])


@pytest.mark.parametrize("fake_server", ["flap:25"], indirect=True)
def test_a_stream_that_breaks_again_and_again_but_delivers_is_followed_to_its_end(
    tmp_path: Path, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reattach got the operation and carried on before the next break (a proxy
    that cuts long streams): the client gave up after 20 breaks in all and cancelled the
    operation. (A stream counts as carrying on after 1 s; here 0.05, the fake's 0.1.)"""
    monkeypatch.setattr(client_module, "MIN_FOLLOWED_S", 0.05)
    result = run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert (result.exit_code, result.stdout) == (0, b"ran")
    calls = fake_server.calls()
    assert calls.count("WaitExecution op-1") == 25
    assert not any(c.startswith("CancelOperation") for c in calls)


@pytest.mark.parametrize("fake_server", ["flap-at-once:25"], indirect=True)
def test_a_server_that_breaks_every_stream_at_once_is_given_up(
    tmp_path: Path, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each WaitExecution sends the operation (as BuildGrid's does, here after 0.2 s)
    and breaks at once: that is no progress, however long the message took, and the
    client gives up after MAX_BREAKS_IN_A_ROW (here 3; a stream counts as carrying on
    0.1 s after its first message), the operation cancelled, instead of reattaching
    until the execution's deadline."""
    monkeypatch.setattr(client_module, "MAX_BREAKS_IN_A_ROW", 3)
    monkeypatch.setattr(client_module, "MIN_FOLLOWED_S", 0.1)
    with pytest.raises(RemoteError, match=r"operation op-1 could not be followed to its end"):
        run(tmp_path, RemoteSettings(fake_server.endpoint))
    calls = fake_server.calls()
    assert calls.count("WaitExecution op-1") == 2  # three breaks: Execute's and two
    assert "CancelOperation op-1" in calls


@pytest.mark.parametrize("fake_server", ["behind-a-proxy"], indirect=True)
def test_a_server_answering_unavailable_while_it_restarts_is_waited_for(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """A proxy in front of a restarting server answers UNAVAILABLE at once: that was
    taken for a server out of reach for the whole call deadline, and the request failed
    at the first such answer."""
    result = run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert (result.exit_code, result.stdout) == (0, b"ran")
    assert fake_server.calls().count("GetCapabilities") == 4
    assert "WaitExecution op-1" in fake_server.calls()


@pytest.mark.parametrize("fake_server", ["hang"], indirect=True)
def test_a_server_frozen_mid_operation_is_noticed_and_named(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """The server stops answering with the stream open (SIGSTOP: the socket stays
    connected). Keepalive pings find it out, and the client waits for it to come back for
    the call deadline, then says so; before, it waited for the execution's deadline."""
    settings = RemoteSettings(
        fake_server.endpoint, call_timeout_s=2.0, execution_timeout_s=100.0, keepalive_s=1.0
    )
    outcome: Future[RemoteResult] = Future()

    def go() -> None:
        try:
            outcome.set_result(run(tmp_path, settings))
        except BaseException as exc:
            outcome.set_exception(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    while "Named op-1" not in fake_server.calls():
        thread.join(0.05)
    os.kill(fake_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(
            RemoteError, match=r"was out of reach for 2 s while following operation op-1"
        ):
            outcome.result(timeout=60)
    finally:
        os.kill(fake_server.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("fake_server", ["symlink"], indirect=True)
def test_a_symlink_output_is_refused_by_name_not_dropped(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """A server may return an output as a symlink (BuildBuddy, Buildbarn); the client
    ignored those, and the request succeeded without its output."""
    with pytest.raises(RemoteError, match=r"output 'o.txt' as a symlink \(to '/etc/passwd'\)"):
        run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert not (tmp_path / "o.txt").exists()


@pytest.mark.parametrize("fake_server", ["read-fails"], indirect=True)
def test_a_failed_download_of_the_outputs_is_named_as_such(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    """A read of the outputs that failed reached the caller as a bare gRPC error, its
    message a multi-line repr."""
    with pytest.raises(RemoteError) as caught:
        run(tmp_path, RemoteSettings(fake_server.endpoint))
    assert str(caught.value) == (
        "downloading the action's outputs failed: RESOURCE_EXHAUSTED: too busy to read"
    )
    assert not (tmp_path / "o.txt").exists()
