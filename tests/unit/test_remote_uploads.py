"""The client's CAS calls against a stand-in REAPI server on a Unix socket: they take the
client's call deadline (`call_timeout_s`), and an upload that fails is reported as the
upload, not as the Execute that never came."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.fake_reapi_server import ActionCache
from tests.integration.test_remote_client_faults import an_action
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.remote.client import RemoteClient, RemoteError, RemoteSettings


class Capabilities(re_grpc.CapabilitiesServicer):
    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        return re_pb2.ServerCapabilities()


class RefusingCas(re_grpc.ContentAddressableStorageServicer):
    """Notes each call's deadline, then refuses it."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []

    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        self.deadlines.append(context.time_remaining() or 0.0)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "this stand-in refuses every upload")
        raise AssertionError("abort raises")


@pytest.fixture
def refusing_server(tmp_path: Path) -> Iterator[tuple[str, RefusingCas]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cas = RefusingCas()
    re_grpc.add_CapabilitiesServicer_to_server(Capabilities(), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(cas, server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCache(), server)
    endpoint = f"unix://{tmp_path}/reapi.sock"
    server.add_insecure_port(endpoint)
    server.start()
    try:
        yield endpoint, cas
    finally:
        server.stop(None).wait()


def test_a_refused_upload_is_named_as_the_upload_within_the_call_deadline(
    tmp_path: Path, refusing_server: tuple[str, RefusingCas]
) -> None:
    endpoint, cas = refusing_server
    built, blobs = an_action(tmp_path)
    client = RemoteClient(RemoteSettings(endpoint, call_timeout_s=7.0))
    try:
        with pytest.raises(RemoteError) as caught:
            client.run(built, blobs, tmp_path)
    finally:
        client.close()
    assert str(caught.value).startswith("uploading the action's inputs failed: ")
    assert "refuses every upload" in str(caught.value)
    assert len(cas.deadlines) == 1 and cas.deadlines[0] < 8.0  # not the CAS's own 60 s
