"""The remote client's plumbing: endpoints and credentials (channels.py), staged outputs
(outputs.py), cancellation (cancellation.py) and inlined blobs (client.py)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.longrunning import operations_pb2
from worker_runtime.remote.action import BuiltAction
from worker_runtime.remote.cancellation import Cancellation, RemoteCancelled
from worker_runtime.remote.cas import BlobMissing, Cas, resource_name
from worker_runtime.remote.channels import (
    MAX_MESSAGE_BYTES,
    ChannelConfigError,
    Endpoint,
    _TokenFile,
    open_channel,
    parse_endpoint,
)
from worker_runtime.remote.client import RemoteClient, RemoteError, RemoteSettings, _inlined
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of
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
    with pytest.raises(ChannelConfigError, match="names no server"):
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


def test_an_operation_named_after_another_was_abandoned_is_cancelled_in_its_turn() -> None:
    """The client abandons an operation the server lost, then executes the action again
    under a new name: that one was never cancelled (abandon() acted once per execution),
    so a lost race or an aborted build left it running on a bot."""
    cancelled: list[str] = []
    cancellation = Cancellation()
    cancellation.bind(cancelled.append)
    cancellation.named("main/op-1")
    cancellation.abandon()
    cancellation.named("main/op-2")
    cancellation.cancel()
    assert cancelled == ["main/op-1", "main/op-2"]


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
    # Pings every 5 minutes (what servers accept by default) on a silent call, the
    # keepalive ping unanswered for 20 s (any ping for 60 s) ending the connection
    # (test_remote_client_faults.py shows that a frozen server is found out so).
    assert seen["grpc.keepalive_time_ms"] == 300_000
    assert seen["grpc.keepalive_timeout_ms"] == 20_000
    assert seen["grpc.http2.ping_timeout_ms"] == 60_000
    assert seen["grpc.http2.max_pings_without_data"] == 0


class CountingCas:
    """A CAS client stand-in holding ``blobs``, counting its batch reads."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = {digest_key(digest_of(b)): b for b in blobs}
        self.batches: list[int] = []

    def read_many(self, digests: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        self.batches.append(len(digests))
        return {digest_key(d): self.blobs[digest_key(d)] for d in digests}

    def batched(self, digest: re_pb2.Digest) -> bool:
        return True

    def read_to(
        self, digest: re_pb2.Digest, target: Path, executable: bool, data: bytes | None
    ) -> None:
        assert data is not None, "a file of a Tree was read alone"
        target.write_bytes(data)


def test_an_output_directory_is_read_in_batches_and_an_incomplete_tree_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file of an output directory's Tree was read with a call of its own (500
    class files, 500 round trips); a Tree lacking a child failed with a bare KeyError."""
    classes = [f"class C{n}".encode() for n in range(500)]
    sub = re_pb2.Directory()
    for n, data in enumerate(classes):
        sub.files.add(name=f"C{n}.class", digest=digest_of(data))
    tree = re_pb2.Tree(children=[sub])
    tree.root.directories.add(name="p", digest=digest_of(sub.SerializeToString()))
    client = RemoteClient(RemoteSettings(f"unix://{tmp_path}/none.sock"))
    try:
        cas = CountingCas(classes)
        client._cas = cas  # type: ignore[assignment]
        client._capabilities = re_pb2.ServerCapabilities()
        monkeypatch.setattr("worker_runtime.remote.client.TREE_READ_CHUNK_BYTES", 2000)
        client._write_tree(tree, tmp_path / "out")
        assert (tmp_path / "out" / "p" / "C499.class").read_bytes() == b"class C499"
        assert len(cas.batches) < 10 and sum(cas.batches) == 500
        del tree.children[:]
        with pytest.raises(RemoteError, match=r"lacks its directory 'p' .*incomplete Tree"):
            client._write_tree(tree, tmp_path / "again")
    finally:
        client.close()


@pytest.mark.parametrize("name", ["../escape", "/abs"])
@pytest.mark.parametrize("kind", ["files", "directories"])
def test_a_tree_naming_an_entry_outside_its_directory_is_the_server_s_fault(
    tmp_path: Path, name: str, kind: str
) -> None:
    """An UnsafePathError, which the routing takes for a bad request (the envelope's
    fault): `fallback_local` did not run the request locally, and a race blamed the
    user. It is the server's answer that is wrong: a RemoteError."""
    tree = re_pb2.Tree()
    getattr(tree.root, kind).add(name=name, digest=digest_of(b""))
    client = RemoteClient(RemoteSettings(f"unix://{tmp_path}/none.sock"))
    try:
        client._cas = CountingCas([])  # type: ignore[assignment]
        client._capabilities = re_pb2.ServerCapabilities()
        with pytest.raises(RemoteError, match="from the server"):
            client._write_tree(tree, tmp_path / "out")
    finally:
        client.close()


class EvictingCas(CountingCas):
    """Holds only ``blobs``: a read of any other is NOT_FOUND, as after an eviction."""

    def read_many(self, digests: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        absent = [d for d in digests if digest_key(d) not in self.blobs]
        if absent:
            raise BlobMissing(*absent)
        return super().read_many(digests)

    def upload_missing(self, blobs: object) -> int:
        return 0


class CachedThenRun:
    """The action cache and the execution service of a server whose cache holds a result
    naming an output it has since evicted; Execute runs it afresh only past the cache."""

    def __init__(self, evicted: bytes, fresh: bytes) -> None:
        self.evicted, self.fresh = evicted, fresh
        self.skip_cache_lookups: list[bool] = []

    def GetActionResult(self, request: object, timeout: float) -> re_pb2.ActionResult:
        result = re_pb2.ActionResult()
        result.output_files.add(path="out", digest=digest_of(self.evicted))
        return result

    def Execute(
        self, request: re_pb2.ExecuteRequest, timeout: float, metadata: object
    ) -> list[operations_pb2.Operation]:
        self.skip_cache_lookups.append(request.skip_cache_lookup)
        output = self.fresh if request.skip_cache_lookup else self.evicted
        response = re_pb2.ExecuteResponse(cached_result=not request.skip_cache_lookup)
        response.result.output_files.add(path="out", digest=digest_of(output))
        operation = operations_pb2.Operation(name="main/op", done=True)
        operation.response.Pack(response)
        return [operation]


@pytest.mark.parametrize("asks_the_action_cache", [True, False])
def test_a_cached_result_whose_outputs_were_evicted_is_run_again_past_the_cache(
    tmp_path: Path, asks_the_action_cache: bool
) -> None:
    """A cached result (from GetActionResult, or Execute's own lookup) whose outputs the
    CAS no longer holds failed the request ("blob ... is not in the CAS"), the same on
    every try until the cache entry expired. It is run again with skip_cache_lookup."""
    server = CachedThenRun(evicted=b"evicted output", fresh=b"fresh output")
    client = RemoteClient(RemoteSettings(f"unix://{tmp_path}/none.sock"))
    try:
        client._capabilities = re_pb2.ServerCapabilities()
        client._cas = EvictingCas([b"fresh output"])  # type: ignore[assignment]
        client._action_cache = server  # type: ignore[assignment]
        client._execution = server  # type: ignore[assignment]
        command = re_pb2.Command(arguments=["true"], output_paths=["out"])
        action = re_pb2.Action(do_not_cache=not asks_the_action_cache)
        built = BuiltAction(action, digest_of(b"the action"), command, ("out",), "key")
        result = client.run(built, Blobs(), tmp_path)
    finally:
        client.close()
    assert result.exit_code == 0 and (tmp_path / "out").read_bytes() == b"fresh output"
    assert server.skip_cache_lookups == ([True] if asks_the_action_cache else [False, True])


class StreamingCas(EvictingCas):
    """Blobs of over 1 KiB are past its batch limit: read only with ``read_file``."""

    def __init__(self, blobs: list[bytes]) -> None:
        super().__init__(blobs)
        self.asked: list[tuple[str, int]] = []
        self.streamed: list[Path] = []

    def batched(self, digest: re_pb2.Digest) -> bool:
        return digest.size_bytes <= 1024

    def read_many(self, digests: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        self.asked += [digest_key(d) for d in digests]
        return super().read_many(digests)

    def read_file(self, digest: re_pb2.Digest, target: Path, mode: int = 0o644) -> None:
        self.streamed.append(target)
        target.write_bytes(self.blobs[digest_key(digest)])
        target.chmod(mode)


def test_a_large_output_file_is_streamed_to_its_place_not_held_in_memory(
    tmp_path: Path,
) -> None:
    big, small = b"b" * 5000, b"small output"
    cached = re_pb2.ActionResult()
    cached.output_files.add(path="big", digest=digest_of(big), is_executable=True)
    cached.output_files.add(path="small", digest=digest_of(small))

    class Cache:
        def GetActionResult(self, request: object, timeout: float) -> re_pb2.ActionResult:
            return cached

    client = RemoteClient(RemoteSettings(f"unix://{tmp_path}/none.sock"))
    try:
        client._capabilities = re_pb2.ServerCapabilities()
        cas = StreamingCas([big, small])
        client._cas = cas  # type: ignore[assignment]
        client._action_cache = Cache()  # type: ignore[assignment]
        command = re_pb2.Command(arguments=["true"], output_paths=["big", "small"])
        built = BuiltAction(re_pb2.Action(), digest_of(b"a"), command, ("big", "small"), "k")
        client.run(built, Blobs(), tmp_path / "out")
    finally:
        client.close()
    assert digest_key(digest_of(big)) not in cas.asked and len(cas.streamed) == 1
    assert (tmp_path / "out" / "big").read_bytes() == big
    assert os.access(tmp_path / "out" / "big", os.X_OK)
    assert (tmp_path / "out" / "small").read_bytes() == small


def test_bytestream_names_of_the_default_instance_have_no_leading_slash() -> None:
    assert resource_name("", "blobs/h/1") == "blobs/h/1"
    assert resource_name("main", "blobs/h/1") == "main/blobs/h/1"


def test_no_batch_is_larger_than_the_channel_carries(tmp_path: Path) -> None:
    """A server advertising a batch limit past the channel's message limit got batches
    the channel refused (RESOURCE_EXHAUSTED)."""
    with grpc.insecure_channel(f"unix://{tmp_path}/none.sock") as channel:
        assert Cas(channel, "", 128 << 20).batch_limit < MAX_MESSAGE_BYTES
        assert Cas(channel, "", 2 << 20).batch_limit == 2 << 20
