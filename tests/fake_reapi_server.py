"""A scripted Remote Execution API server, run as a process of its own for the remote
client's fault-path tests: ``python -m tests.fake_reapi_server SOCKET SCRIPT LOG``.

It serves Capabilities, the CAS (FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs), an
empty action cache, Execution and Operations on the Unix socket SOCKET, appends one line
per call to LOG (``Execute``, ``WaitExecution op-1``, ``CancelOperation op-1``, ...),
and, as BuildGrid does, refuses an Execute whose Action blob it lacks with
FAILED_PRECONDITION. SCRIPT says how it misbehaves:

- ``honest``: every execution ends at once with exit code 0 and stdout ``ran``;
- ``lie-once``: its first FindMissingBlobs answers that nothing is missing (a server
  that lost its blobs after the client saw them);
- ``drop-then-lose``: the first Execute names operation ``op-1`` and breaks off
  (UNAVAILABLE); WaitExecution answers NOT_FOUND (a server that forgot it);
- ``flap:N``: the first Execute names ``op-1`` and breaks off; each WaitExecution sends
  the operation, carries on for 0.1 s and breaks off again, until the Nth, which ends it;
- ``flap-at-once:N``: the same, each WaitExecution sending the operation after 0.2 s
  (a slow server) and breaking off as soon as it did;
- ``behind-a-proxy``: the first Execute names ``op-1`` and breaks off; the next two
  GetCapabilities answer UNAVAILABLE (a proxy whose server is restarting), and
  WaitExecution then ends the operation;
- ``hang``: the first Execute names ``op-1`` (and logs ``Named op-1`` once it is sent)
  and then sends nothing more;
- ``refuse``: every Execute is refused with FAILED_PRECONDITION, its blobs present (as
  BuildGrid refuses a platform property no bot has);
- ``symlink``: the result gives the output ``o.txt`` as a symlink;
- ``read-fails``: the result names the output ``o.txt``, and BatchReadBlobs fails
  (RESOURCE_EXHAUSTED).

It stops by itself when its stdin closes (the test that started it is gone) or after
120 seconds."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.google.longrunning import operations_pb2, operations_pb2_grpc
from worker_runtime.remote.merkle import digest_key, digest_of

LIFETIME_S = 120.0


class Script:
    """The server's state: its blobs, its call log and how far the script has gone."""

    def __init__(self, script: str, log: Path) -> None:
        self.name, _, count = script.partition(":")
        self.flaps = int(count or 0)
        self.log_path = log
        self.lock = threading.Lock()
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.calls: dict[str, int] = {}
        self.stop = threading.Event()

    def note(self, call: str, detail: str = "") -> int:
        """Logs the call; returns how many times it has been made, this one included."""
        with self.lock:
            self.calls[call] = self.calls.get(call, 0) + 1
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"{call} {detail}".rstrip() + "\n")
            return self.calls[call]


#: The content of ``o.txt`` in the ``read-fails`` script's result.
OUTPUT = b"output\n"


def operation(name: str, done: bool = False, script: str = "") -> operations_pb2.Operation:
    result = operations_pb2.Operation(name=name, done=done)
    if done:
        action_result = re_pb2.ActionResult(exit_code=0, stdout_raw=b"ran")
        if script == "symlink":
            action_result.output_symlinks.add(path="o.txt", target="/etc/passwd")
        if script == "read-fails":
            action_result.output_files.add(path="o.txt", digest=digest_of(OUTPUT))
        result.response.Pack(re_pb2.ExecuteResponse(result=action_result))
    return result


class Capabilities(re_grpc.CapabilitiesServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        count = self.script.note("GetCapabilities")
        if self.script.name == "behind-a-proxy" and count in (2, 3):
            context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
        capabilities = re_pb2.ServerCapabilities()
        capabilities.cache_capabilities.max_batch_total_size_bytes = 4 << 20
        return capabilities


class Cas(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        count = self.script.note("FindMissingBlobs", str(len(request.blob_digests)))
        if self.script.name == "lie-once" and count == 1:
            return re_pb2.FindMissingBlobsResponse()
        missing = [d for d in request.blob_digests if digest_key(d) not in self.script.blobs]
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

    def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchUpdateBlobsResponse:
        self.script.note("BatchUpdateBlobs", str(len(request.requests)))
        response = re_pb2.BatchUpdateBlobsResponse()
        for blob in request.requests:
            assert digest_key(digest_of(blob.data)) == digest_key(blob.digest)
            self.script.blobs[digest_key(blob.digest)] = blob.data
            response.responses.add(digest=blob.digest)
        return response

    def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchReadBlobsResponse:
        self.script.note("BatchReadBlobs", str(len(request.digests)))
        if self.script.name == "read-fails":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy to read")
        response = re_pb2.BatchReadBlobsResponse()
        for digest in request.digests:
            data = self.script.blobs.get(digest_key(digest))
            entry = response.responses.add(digest=digest, data=data or b"")
            entry.status.code = 0 if data is not None else grpc.StatusCode.NOT_FOUND.value[0]
        return response


class ActionCache(re_grpc.ActionCacheServicer):
    def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        context.abort(grpc.StatusCode.NOT_FOUND, "not cached")
        raise AssertionError("abort raises")


class Execution(re_grpc.ExecutionServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Execute(
        self, request: re_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> Iterator[operations_pb2.Operation]:
        count = self.script.note("Execute")
        if digest_key(request.action_digest) not in self.script.blobs:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the Action blob is missing")
        name = f"op-{count}"
        breaking = ("drop-then-lose", "flap", "flap-at-once", "behind-a-proxy")
        if count == 1 and self.script.name in breaking:
            yield operation(name)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke off")
        if self.script.name == "refuse":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no bot has the property")
        if count == 1 and self.script.name == "hang":
            yield operation(name)
            self.script.note("Named", name)  # resumed once it was sent
            self.script.stop.wait()
            return
        yield operation(name, done=True, script=self.script.name)

    def WaitExecution(
        self, request: re_pb2.WaitExecutionRequest, context: grpc.ServicerContext
    ) -> Iterator[operations_pb2.Operation]:
        count = self.script.note("WaitExecution", request.name)
        if self.script.name == "behind-a-proxy":
            yield operation(request.name, done=True)
            return
        if self.script.name not in ("flap", "flap-at-once"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no operation {request.name}")
        if self.script.name == "flap-at-once":
            time.sleep(0.2)
        yield operation(request.name, done=count >= self.script.flaps)
        if self.script.name == "flap":
            time.sleep(0.1)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke off again")


class Operations(operations_pb2_grpc.OperationsServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.ServicerContext
    ) -> object:
        self.script.note("CancelOperation", request.name)
        return empty_pb2.Empty()


def main(argv: list[str]) -> int:
    socket_path, script_name, log = argv
    script = Script(script_name, Path(log))
    # Pings as often as the tests' clients send them (a keepalive of 1 s): a default
    # server would answer the third with GOAWAY (too_many_pings).
    options = [
        ("grpc.http2.min_ping_interval_without_data_ms", 100),
        ("grpc.http2.max_ping_strikes", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    re_grpc.add_CapabilitiesServicer_to_server(Capabilities(script), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(script), server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCache(), server)
    re_grpc.add_ExecutionServicer_to_server(Execution(script), server)
    operations_pb2_grpc.add_OperationsServicer_to_server(Operations(script), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    print("listening", flush=True)

    def stop_at_end_of_input() -> None:
        sys.stdin.read()
        script.stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    script.stop.wait(LIFETIME_S)
    script.stop.set()
    server.stop(0).wait()
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
