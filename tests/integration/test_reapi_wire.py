"""Our own Remote Execution API protos (worker_runtime/proto) against a real BuildGrid:
the bytes they put on the wire are what the server expects, and what it answers parses
into the messages we expect. One private cluster (`worker-runtime cluster up`, no bots)
serves every test in this module. Needs what tests/integration/test_cluster.py needs."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from tests.clusters import private_cluster
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.google.bytestream import bytestream_pb2 as bs_pb2
from worker_runtime.proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from worker_runtime.proto.google.longrunning import operations_pb2
from worker_runtime.proto.google.rpc import status_pb2

INSTANCE = "main"
TIMEOUT_S = 30.0
SHA256 = re_pb2.DigestFunction.SHA256
MiB = 1024 * 1024

# Bringing PostgreSQL and BuildGrid up is part of the first test's time.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster_dir() -> Iterator[Path]:
    with private_cluster("--executors", "0") as directory:
        yield directory


@pytest.fixture(scope="module")
def channel(cluster_dir: Path) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{cluster_dir}/run/buildgrid.sock") as chan:
        yield chan


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def unique_blob(size: int = 64) -> bytes:
    """Bytes no other test (or earlier run) has stored."""
    return uuid.uuid4().bytes + os.urandom(max(0, size - 16))


def upload(channel: grpc.Channel, *blobs: bytes) -> list[re_pb2.Digest]:
    cas = re_grpc.ContentAddressableStorageStub(channel)
    digests = [digest_of(b) for b in blobs]
    request = re_pb2.BatchUpdateBlobsRequest(
        instance_name=INSTANCE,
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=b)
            for d, b in zip(digests, blobs, strict=True)
        ],
        digest_function=SHA256,
    )
    response = cas.BatchUpdateBlobs(request, timeout=TIMEOUT_S)
    assert [r.status.code for r in response.responses] == [0] * len(blobs)
    return digests


def missing(channel: grpc.Channel, digests: list[re_pb2.Digest]) -> list[re_pb2.Digest]:
    cas = re_grpc.ContentAddressableStorageStub(channel)
    request = re_pb2.FindMissingBlobsRequest(instance_name=INSTANCE, blob_digests=digests)
    return list(cas.FindMissingBlobs(request, timeout=TIMEOUT_S).missing_blob_digests)


def serialized(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def test_capabilities(channel: grpc.Channel) -> None:
    stub = re_grpc.CapabilitiesStub(channel)
    caps = stub.GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=INSTANCE), timeout=TIMEOUT_S
    )
    assert SHA256 in caps.cache_capabilities.digest_functions
    assert caps.cache_capabilities.max_batch_total_size_bytes > 0
    assert caps.cache_capabilities.action_cache_update_capabilities.update_enabled
    assert caps.execution_capabilities.exec_enabled
    assert caps.execution_capabilities.digest_function == SHA256
    assert caps.high_api_version.major == 2  # semver.proto, nested in another file's message


def test_find_missing_then_batch_update_then_batch_read(channel: grpc.Channel) -> None:
    blobs = [unique_blob(10), unique_blob(1000), b""]
    digests = [digest_of(b) for b in blobs]
    # The empty blob is always present (BuildGrid never reports it missing).
    assert sorted(map(serialized, missing(channel, digests))) == sorted(
        map(serialized, digests[:2])
    )
    upload(channel, *blobs[:2])
    assert missing(channel, digests) == []
    cas = re_grpc.ContentAddressableStorageStub(channel)
    read = cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(
            instance_name=INSTANCE, digests=digests[:2], digest_function=SHA256
        ),
        timeout=TIMEOUT_S,
    )
    assert [(r.digest, r.status.code, r.data) for r in read.responses] == [
        (d, 0, b) for d, b in zip(digests[:2], blobs[:2], strict=True)
    ]


def test_batch_read_of_a_missing_blob_is_a_per_blob_not_found(channel: grpc.Channel) -> None:
    absent = digest_of(unique_blob())
    cas = re_grpc.ContentAddressableStorageStub(channel)
    read = cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(instance_name=INSTANCE, digests=[absent]), timeout=TIMEOUT_S
    )
    assert [(r.digest, r.status.code) for r in read.responses] == [
        (absent, grpc.StatusCode.NOT_FOUND.value[0])
    ]


def test_bytestream_write_then_read_of_a_large_blob(channel: grpc.Channel) -> None:
    data = unique_blob(5 * MiB)
    digest = digest_of(data)
    upload_name = f"{INSTANCE}/uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MiB):
            chunk = data[offset : offset + MiB]
            yield bs_pb2.WriteRequest(
                resource_name=upload_name if offset == 0 else "",
                write_offset=offset,
                finish_write=offset + len(chunk) == len(data),
                data=chunk,
            )

    stub = bs_grpc.ByteStreamStub(channel)
    written = stub.Write(requests(), timeout=TIMEOUT_S)
    assert written.committed_size == len(data)
    assert missing(channel, [digest]) == []
    read_name = f"{INSTANCE}/blobs/{digest.hash}/{digest.size_bytes}"
    chunks = [
        r.data for r in stub.Read(bs_pb2.ReadRequest(resource_name=read_name), timeout=TIMEOUT_S)
    ]
    assert b"".join(chunks) == data
    assert len(chunks) > 1  # the server streamed it back in pieces
    # read_offset and read_limit are honoured.
    part = stub.Read(
        bs_pb2.ReadRequest(resource_name=read_name, read_offset=MiB + 3, read_limit=100),
        timeout=TIMEOUT_S,
    )
    assert b"".join(r.data for r in part) == data[MiB + 3 : MiB + 103]


def test_get_tree_streams_the_directories(channel: grpc.Channel) -> None:
    file_data = unique_blob()
    (file_digest,) = upload(channel, file_data)
    child = re_pb2.Directory(
        files=[re_pb2.FileNode(name="f.txt", digest=file_digest, is_executable=True)]
    )
    (child_digest,) = upload(channel, serialized(child))
    root = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="sub", digest=child_digest)])
    (root_digest,) = upload(channel, serialized(root))
    cas = re_grpc.ContentAddressableStorageStub(channel)
    pages = cas.GetTree(
        re_pb2.GetTreeRequest(instance_name=INSTANCE, root_digest=root_digest), timeout=TIMEOUT_S
    )
    directories = [d for page in pages for d in page.directories]
    assert sorted(map(serialized, directories)) == sorted(map(serialized, [root, child]))


def test_update_then_get_action_result(channel: grpc.Channel) -> None:
    output, stdout = unique_blob(), b"hello from stdout\n"
    output_digest, stdout_digest = upload(channel, output, stdout)
    action_digest = digest_of(unique_blob())  # never stored: BuildGrid does not ask for it
    result = re_pb2.ActionResult(
        # exit_code 0: the cluster does not cache failed actions (see the next test).
        exit_code=0,
        output_files=[
            re_pb2.OutputFile(path="out/lib.so", digest=output_digest, is_executable=True)
        ],
        output_symlinks=[re_pb2.OutputSymlink(path="out/link", target="lib.so")],
        stdout_digest=stdout_digest,
        execution_metadata=re_pb2.ExecutedActionMetadata(worker="wire-test"),
    )
    result.execution_metadata.worker_start_timestamp.FromSeconds(1_700_000_000)
    cache = re_grpc.ActionCacheStub(channel)
    echoed = cache.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name=INSTANCE,
            action_digest=action_digest,
            action_result=result,
            digest_function=SHA256,
        ),
        timeout=TIMEOUT_S,
    )
    assert echoed == result
    got = cache.GetActionResult(
        re_pb2.GetActionResultRequest(instance_name=INSTANCE, action_digest=action_digest),
        timeout=TIMEOUT_S,
    )
    assert got == result


def test_action_cache_surprises(channel: grpc.Channel) -> None:
    """What BuildGrid does that a client might not expect, as the cluster configures it."""
    cache = re_grpc.ActionCacheStub(channel)
    (output_digest,) = upload(channel, unique_blob())

    def update_then_get(result: re_pb2.ActionResult) -> grpc.StatusCode:
        action_digest = digest_of(unique_blob())
        echoed = cache.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(
                instance_name=INSTANCE, action_digest=action_digest, action_result=result
            ),
            timeout=TIMEOUT_S,
        )
        assert echoed == result  # always echoed back as if stored
        try:
            cache.GetActionResult(
                re_pb2.GetActionResultRequest(instance_name=INSTANCE, action_digest=action_digest),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    file = re_pb2.OutputFile(path="o", digest=output_digest)
    assert update_then_get(re_pb2.ActionResult(output_files=[file])) == grpc.StatusCode.OK
    # cache-failed-actions: false, so a non-zero exit code is accepted but not kept.
    assert (
        update_then_get(re_pb2.ActionResult(exit_code=1, output_files=[file]))
        == grpc.StatusCode.NOT_FOUND
    )
    # A result whose outputs are not all in CAS is treated as absent (and dropped).
    gone = re_pb2.OutputFile(path="o", digest=digest_of(unique_blob()))
    assert update_then_get(re_pb2.ActionResult(output_files=[gone])) == grpc.StatusCode.NOT_FOUND


def test_get_action_result_of_an_unknown_action_is_not_found(channel: grpc.Channel) -> None:
    cache = re_grpc.ActionCacheStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        cache.GetActionResult(
            re_pb2.GetActionResultRequest(
                instance_name=INSTANCE, action_digest=digest_of(unique_blob())
            ),
            timeout=TIMEOUT_S,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def store_action(channel: grpc.Channel, input_root: re_pb2.Digest) -> re_pb2.Digest:
    command = re_pb2.Command(
        arguments=["/bin/true", uuid.uuid4().hex],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/bin")],
        output_paths=["out"],
        working_directory="",
    )
    (command_digest,) = upload(channel, serialized(command))
    action = re_pb2.Action(command_digest=command_digest, input_root_digest=input_root)
    (action_digest,) = upload(channel, serialized(action))
    return action_digest


def first_operation(
    channel: grpc.Channel, action_digest: re_pb2.Digest
) -> operations_pb2.Operation:
    stub = re_grpc.ExecutionStub(channel)
    stream = stub.Execute(
        re_pb2.ExecuteRequest(
            instance_name=INSTANCE, action_digest=action_digest, digest_function=SHA256
        ),
        timeout=TIMEOUT_S,
    )
    try:
        operation: operations_pb2.Operation = next(stream)
    finally:
        stream.cancel()
    return operation


def test_execute_with_a_missing_input_root_is_queued(channel: grpc.Channel) -> None:
    """The REAPI says a server may answer FAILED_PRECONDITION with a PreconditionFailure
    MISSING violation in ExecuteResponse.status when inputs are not in CAS. BuildGrid
    0.9.1 does not look at the input root when it accepts the action: the job is queued
    (with no bots it stays QUEUED) and the missing input would only be noticed by the bot."""
    action_digest = store_action(channel, input_root=digest_of(unique_blob()))
    operation = first_operation(channel, action_digest)
    assert operation.name and not operation.done
    metadata = re_pb2.ExecuteOperationMetadata()
    assert operation.metadata.Unpack(metadata)
    assert metadata.stage == re_pb2.ExecutionStage.QUEUED
    assert metadata.action_digest == action_digest
    # WaitExecution finds the same operation by name.
    stream = re_grpc.ExecutionStub(channel).WaitExecution(
        re_pb2.WaitExecutionRequest(name=operation.name), timeout=TIMEOUT_S
    )
    try:
        waited = next(stream)
    finally:
        stream.cancel()
    assert waited.name == operation.name and not waited.done


def test_execute_of_an_action_missing_from_cas_is_failed_precondition(
    channel: grpc.Channel,
) -> None:
    """BuildGrid does check that the Action (and its Command) are in CAS, but says so as
    the RPC's own status, with no PreconditionFailure details, rather than in an
    Operation whose ExecuteResponse.status carries them."""
    stub = re_grpc.ExecutionStub(channel)
    stream = stub.Execute(
        re_pb2.ExecuteRequest(instance_name=INSTANCE, action_digest=digest_of(unique_blob())),
        timeout=TIMEOUT_S,
    )
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailers = dict(error.trailing_metadata() or ())
    assert "grpc-status-details-bin" not in trailers


def test_execute_of_a_cached_action_answers_with_an_execute_response(channel: grpc.Channel) -> None:
    empty_dir = serialized(re_pb2.Directory())
    (input_root,) = upload(channel, empty_dir)
    action_digest = store_action(channel, input_root=input_root)
    result = re_pb2.ActionResult(
        stdout_raw=b"inline", execution_metadata=re_pb2.ExecutedActionMetadata(worker="w")
    )
    re_grpc.ActionCacheStub(channel).UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name=INSTANCE, action_digest=action_digest, action_result=result
        ),
        timeout=TIMEOUT_S,
    )
    operation = first_operation(channel, action_digest)
    assert operation.done and operation.WhichOneof("result") == "response"
    response = re_pb2.ExecuteResponse()
    assert operation.response.Unpack(response)
    assert response.cached_result
    assert response.status == status_pb2.Status()  # OK
    assert response.result == result
