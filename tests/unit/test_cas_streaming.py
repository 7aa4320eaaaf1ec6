"""Blobs past the batch limit go from ByteStream to their file as they come, checked
against their digest before the file takes their name: one was joined whole in memory,
so an executor fetching a few large inputs at once (or a tenant naming many) could be
killed for its memory, with every tenant's leases. Against a ByteStream stand-in on a
Unix socket."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from worker_runtime.remote.cas import BlobMissing, Cas, CasError
from worker_runtime.remote.merkle import digest_of

BATCH_LIMIT = 64 << 10


class ByteStreamStandIn(bytestream_pb2_grpc.ByteStreamServicer):
    """Serves ``blobs`` by resource name in 16 KiB pieces; ``served`` replaces what it
    sends (a truncated or corrupt blob)."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.served: dict[str, bytes] = {}

    def Read(
        self, request: bytestream_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytestream_pb2.ReadResponse]:
        hash_ = request.resource_name.split("/")[-2]
        if hash_ not in self.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
        data = self.served.get(hash_, self.blobs[hash_])
        for start in range(0, len(data), 16 << 10):
            yield bytestream_pb2.ReadResponse(data=data[start : start + (16 << 10)])


@contextlib.contextmanager
def cas_against(stand_in: ByteStreamStandIn, directory: Path) -> Iterator[Cas]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(stand_in, server)
    server.add_insecure_port(f"unix://{directory}/cas.sock")
    server.start()
    channel = grpc.insecure_channel(f"unix://{directory}/cas.sock")
    try:
        yield Cas(channel, "main", BATCH_LIMIT)
    finally:
        channel.close()
        server.stop(grace=None)


def test_a_large_blob_is_streamed_to_its_file_and_a_bad_one_never_takes_its_name(
    tmp_path: Path,
) -> None:
    blob = bytes(range(256)) * 1024  # 256 KiB: four times the batch limit
    digest = digest_of(blob)
    stand_in = ByteStreamStandIn({digest.hash: blob})
    (tmp_path / "out").mkdir()
    with cas_against(stand_in, tmp_path) as cas:
        assert not cas.batched(digest)
        cas.read_file(digest, tmp_path / "out" / "big", 0o600)
        assert (tmp_path / "out" / "big").read_bytes() == blob
        assert (tmp_path / "out" / "big").stat().st_mode & 0o777 == 0o600
        for served, fault in ((blob[:-1], "came back as"), (blob[:-1] + b"!", "other contents")):
            stand_in.served[digest.hash] = served
            with pytest.raises(CasError, match=fault):
                cas.read_file(digest, tmp_path / "out" / "bad")
        absent = re_pb2.Digest(hash="0" * 64, size_bytes=1 << 20)
        with pytest.raises(BlobMissing):
            cas.read_file(absent, tmp_path / "out" / "absent")
    # Neither the bad reads nor their temporary files are left behind.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["big"]
