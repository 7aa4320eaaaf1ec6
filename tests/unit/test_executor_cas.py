"""The executor's CAS client keeps to what the server states and has: its batches to the
limit GetCapabilities gives for the instance (BuildGrid's is 1 KiB under 4 MiB; a batch
over it was refused whole, every time), and every upload of outputs asks the server what
it lacks (a memo of blobs seen present skipped outputs the server had since evicted, and
the result named blobs its client could never read). Against a stand-in server on a Unix
socket."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from worker_runtime.executor import bots
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.remote.channels import parse_endpoint
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of

BUILDGRID_LIMIT = (4 << 20) - 1024


class CasStandIn(re_grpc.ContentAddressableStorageServicer, re_grpc.CapabilitiesServicer):
    """Keeps blobs in a dict; ``evict()`` drops them all, as a server's LRU or restart
    would. ``capabilities`` False answers GetCapabilities UNIMPLEMENTED."""

    def __init__(self, capabilities: bool = True) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.capabilities = capabilities
        self.find_missing_calls = 0

    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        if not self.capabilities:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no capabilities here")
        answer = re_pb2.ServerCapabilities()
        answer.cache_capabilities.max_batch_total_size_bytes = BUILDGRID_LIMIT
        return answer

    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        self.find_missing_calls += 1
        missing = [d for d in request.blob_digests if digest_key(d) not in self.blobs]
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

    def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchUpdateBlobsResponse:
        answer = re_pb2.BatchUpdateBlobsResponse()
        for each in request.requests:
            self.blobs[digest_key(each.digest)] = each.data
            answer.responses.add(digest=each.digest)
        return answer

    def evict(self) -> None:
        self.blobs.clear()


@contextlib.contextmanager
def executor_against(stand_in: CasStandIn, directory: Path) -> Iterator[bots.Executor]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    re_grpc.add_ContentAddressableStorageServicer_to_server(stand_in, server)
    re_grpc.add_CapabilitiesServicer_to_server(stand_in, server)
    server.add_insecure_port(f"unix://{directory}/cas.sock")
    server.start()
    executor = bots.Executor(
        bots.ExecutorSettings(
            server=parse_endpoint(f"unix://{directory}/cas.sock"), instance="main",
            bot_id=f"cas-{uuid.uuid4().hex}", capacity=1, workdir=directory / "executor",
            max_workers=1, memory_limit_mb=None, worker_idle_s=60,
        )
    )  # fmt: skip
    try:
        yield executor
    finally:
        executor.channel.close()
        server.stop(grace=None)


def test_the_executors_batches_keep_to_the_limit_the_server_states(tmp_path: Path) -> None:
    with executor_against(CasStandIn(), tmp_path) as executor:
        assert executor._cas("main").batch_limit == BUILDGRID_LIMIT
    (tmp_path / "other").mkdir()
    with executor_against(CasStandIn(capabilities=False), tmp_path / "other") as executor:
        assert executor._cas("main").batch_limit == bots.FALLBACK_BATCH_LIMIT


def test_every_upload_of_outputs_asks_the_server_what_it_lacks(tmp_path: Path) -> None:
    stand_in = CasStandIn()
    output = b"a class file the action wrote" * 1000
    blobs = Blobs(data={digest_key(digest_of(output)): output})
    with executor_against(stand_in, tmp_path) as executor:
        cas = executor._cas("main")
        assert cas.upload_missing(blobs) == 1
        stand_in.evict()  # the server's LRU, or its restart with the CAS in memory
        assert cas.upload_missing(blobs) == 1, "an output the server lost was not sent again"
        assert cas.upload_missing(blobs) == 0
    assert stand_in.find_missing_calls == 3
    assert stand_in.blobs[digest_key(digest_of(output))] == output
