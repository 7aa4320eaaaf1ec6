"""What the CAS client takes from a server's reads: only the blobs asked for, each the
blob its digest names; and how long a ByteStream transfer may take."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.bytestream import bytestream_pb2
from worker_runtime.remote.cas import SLOWEST_TRANSFER_BYTES_PER_S, Cas, CasError
from worker_runtime.remote.merkle import digest_of


@dataclass
class Server:
    """Answers reads with what it holds under each hash, right or wrong."""

    blobs: dict[str, bytes]
    timeouts: list[float] = field(default_factory=list)

    def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, timeout: float
    ) -> re_pb2.BatchReadBlobsResponse:
        response = re_pb2.BatchReadBlobsResponse()
        for digest in request.digests:
            if digest.hash in self.blobs:
                response.responses.add(digest=digest, data=self.blobs[digest.hash])
        return response

    def Read(self, request: bytestream_pb2.ReadRequest, timeout: float) -> Iterator[object]:
        self.timeouts.append(timeout)
        blob_hash = request.resource_name.split("/")[-2]
        yield bytestream_pb2.ReadResponse(data=self.blobs[blob_hash])


def cas_of(server: Server, batch_limit: int = 4 << 20) -> Cas:
    cas = Cas(grpc.insecure_channel("unix:///nonexistent"), "main", batch_limit, timeout_s=5)
    cas._cas = server  # type: ignore[assignment]
    cas._bytestream = server  # type: ignore[assignment]
    return cas


def test_blobs_read_in_a_batch_are_taken_only_as_their_digests_name_them() -> None:
    good, wanted = b"real bytes", b"the blob asked for"
    server = Server({digest_of(good).hash: good, digest_of(wanted).hash: b"corrupt!"})
    assert cas_of(server).read_many([digest_of(good)]) == {(digest_of(good).hash, len(good)): good}
    with pytest.raises(CasError, match="came back as 8 bytes: the server sent a truncated"):
        cas_of(server).read_many([digest_of(good), digest_of(wanted)])
    server.blobs[digest_of(wanted).hash] = b"same size, not it"[: len(wanted)].ljust(len(wanted))
    with pytest.raises(CasError, match="came back with other contents"):
        cas_of(server).read(digest_of(wanted))


def test_a_batch_answer_that_leaves_a_blob_out_is_a_clear_error() -> None:
    present, absent = b"here", b"not answered at all"
    server = Server({digest_of(present).hash: present})
    with pytest.raises(
        CasError, match="left out 1 of the blobs asked for, " + digest_of(absent).hash
    ):
        cas_of(server).read_many([digest_of(present), digest_of(absent)])


def test_a_bytestream_read_is_checked_and_its_deadline_grows_with_the_blob() -> None:
    large = b"x" * 3000
    server = Server({digest_of(large).hash: large})
    cas = cas_of(server, batch_limit=1000)  # past the batch limit: ByteStream
    assert cas.read(digest_of(large)) == large
    assert server.timeouts == [5 + 3000 / SLOWEST_TRANSFER_BYTES_PER_S]
    server.blobs[digest_of(large).hash] = large[:-1]
    with pytest.raises(CasError, match="came back as 2999 bytes"):
        cas.read(digest_of(large))
