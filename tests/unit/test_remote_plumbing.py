"""The remote client's plumbing: endpoints and credentials (channels.py), staged outputs
(outputs.py), cancellation (cancellation.py) and inlined blobs (client.py)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.cancellation import Cancellation, RemoteCancelled
from worker_runtime.remote.channels import (
    ChannelConfigError,
    Endpoint,
    _TokenFile,
    open_channel,
    parse_endpoint,
)
from worker_runtime.remote.client import RemoteClient, RemoteSettings, _inlined
from worker_runtime.remote.merkle import digest_key, digest_of
from worker_runtime.remote.outputs import StagedOutputs


def test_endpoints_are_plain_unless_grpcs_or_tls() -> None:
    assert parse_endpoint("unix:///run/bg.sock") == Endpoint("unix:///run/bg.sock")
    assert parse_endpoint("grpc://h:1") == Endpoint("h:1")
    assert parse_endpoint("grpcs://h:443") == Endpoint("h:443", tls=True)
    assert parse_endpoint("h:443", tls=True) == Endpoint("h:443", tls=True)
    assert parse_endpoint("grpcs://h:443", tls=False).tls  # the scheme wins over a default


def test_a_token_or_ca_over_a_plain_channel_is_refused() -> None:
    with pytest.raises(ChannelConfigError, match=r"`credentials_file` is set .* grpcs://"):
        parse_endpoint("grpc://h:1", credentials_file="/tmp/t")
    with pytest.raises(ChannelConfigError, match="`tls_ca_file`"):
        parse_endpoint("unix:///s", ca_file="/tmp/ca.pem")
    with pytest.raises(ChannelConfigError, match="empty"):
        parse_endpoint("grpcs://")


def test_missing_ca_and_credentials_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ChannelConfigError, match=r"TLS CA file .*nope\.pem"):
        open_channel(parse_endpoint("grpcs://h:1", ca_file=str(tmp_path / "nope.pem")))
    with pytest.raises(ChannelConfigError, match=r"credentials file .*tok"):
        open_channel(parse_endpoint("grpcs://h:1", credentials_file=str(tmp_path / "tok")))


def test_the_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    plugin = _TokenFile(str(path))
    assert plugin.token() == "first-token"
    path.write_text("other-token\n")  # the same size: only the mtime tells
    os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
    assert plugin.token() == "other-token"
    path.write_text("Bearer third-token\n")
    assert plugin.token() == "third-token"


def test_staged_outputs_replace_what_was_there_only_on_commit(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f.txt").write_text("old")
    (tmp_path / "out" / "d").mkdir()
    (tmp_path / "out" / "d" / "stale.txt").write_text("stale")
    staged = StagedOutputs()
    staged.file(tmp_path / "out" / "f.txt", b"new", executable=True)
    directory = staged.directory(tmp_path / "out" / "d")
    (directory / "fresh.txt").write_text("fresh")
    assert (tmp_path / "out" / "f.txt").read_text() == "old"  # nothing in place yet
    staged.commit()
    assert (tmp_path / "out" / "f.txt").read_text() == "new"
    assert os.access(tmp_path / "out" / "f.txt", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "out" / "d").iterdir()) == ["fresh.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d", "f.txt"]


def test_discarded_outputs_leave_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("winner's")
    staged = StagedOutputs()
    staged.file(tmp_path / "f.txt", b"loser's", executable=False)
    (staged.directory(tmp_path / "d") / "x").write_text("x")
    staged.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "winner's"


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> bool:
        self.cancelled += 1
        return True


def test_a_cancel_before_the_operation_is_named_cancels_it_once_named() -> None:
    cancelled: list[str] = []
    cancellation = Cancellation()
    cancellation.bind(cancelled.append)
    call = FakeCall()
    cancellation.follow(call)
    cancellation.cancel()
    assert call.cancelled == 1 and cancelled == []
    cancellation.named("main/op-1")
    cancellation.cancel()  # once only
    assert cancelled == ["main/op-1"]
    with pytest.raises(RemoteCancelled):
        cancellation.check()
    late = FakeCall()
    cancellation.follow(late)  # a stream opened after the cancel is cancelled at once
    assert late.cancelled == 1


def test_a_failing_cancel_operation_is_only_logged() -> None:
    def refuse(name: str) -> None:
        raise RuntimeError("server gone")

    cancellation = Cancellation()
    cancellation.bind(refuse)
    cancellation.named("main/op-2")
    cancellation.cancel()  # no exception: the operation dies with its server
    assert cancellation.cancelled


def test_inlined_blobs_are_used_only_when_they_match_their_digest() -> None:
    good, forged = b"class bytes", b"not what the digest says"
    result = re_pb2.ActionResult(stdout_raw=b"out", stdout_digest=digest_of(b"out"))
    result.output_files.add(path="a", digest=digest_of(good), contents=good)
    result.output_files.add(path="b", digest=digest_of(b"real"), contents=forged)
    result.output_files.add(path="c", digest=digest_of(b"fetched"))  # not inlined
    found = _inlined(result)
    assert found == {digest_key(digest_of(good)): good, digest_key(digest_of(b"out")): b"out"}


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class FlakyOperations:
    """Answers CancelOperation as BuildGrid does while the bot's row is locked."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def CancelOperation(self, request: object, timeout: float) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable()


def test_cancel_operation_is_tried_again_while_the_server_is_busy(tmp_path: Path) -> None:
    client = RemoteClient(RemoteSettings(f"unix://{tmp_path}/none.sock"))
    try:
        client._operations = FlakyOperations(failures=2)  # type: ignore[assignment]
        client._cancel_operation("main/op")
        assert client._operations.calls == 3  # type: ignore[attr-defined]
        client._operations = FlakyOperations(failures=10)  # type: ignore[assignment]
        with pytest.raises(grpc.RpcError):
            client._cancel_operation("main/op")  # it gives up; abandon() logs it
    finally:
        client.close()


def test_a_channel_tries_a_server_out_of_reach_again_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not after gRPC's own longest wait (120 s): an executor whose server restarted
    registers again, and a client's requests go through, moments after it is back."""
    seen: dict[str, object] = {}

    def insecure_channel(target: str, options: list[tuple[str, object]]) -> str:
        seen.update(options)
        return target

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    open_channel(parse_endpoint("unix:///nowhere.sock"))
    assert seen["grpc.max_reconnect_backoff_ms"] == 5_000
