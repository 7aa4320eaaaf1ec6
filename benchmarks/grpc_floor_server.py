"""Bare gRPC servers of Buck2's worker protocol, the floors the runtime is measured against.

``python -m benchmarks.grpc_floor_server`` answers every ``Execute`` and every
``ExecuteStream`` message at once, with nothing behind it: the cost of a gRPC call on
this machine. ``... --backend -- CMD...`` first sends each request to one backend
process over its pipes (``CMD --persistent_worker``, length-prefixed protobuf) and waits
for its answer, one request at a time, with the least code that can: what any server
pays for waiting on a backend, with none of the runtime's work. Both use the same
grpcio tuning and event loop as the runtime.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence

# isort: off
from worker_runtime.buck2 import grpc_tuning  # settles grpcio's tuning before grpc loads
import grpc

# isort: on

from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from worker_runtime.protocol.framing import ProtoFraming
from worker_runtime.protocol.messages import WorkRequest, WorkResponse


class PipeBackend:
    """One backend process, one request at a time over its pipes."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = [*command, "--persistent_worker"]
        self.framing = ProtoFraming()
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

    async def call(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = WorkRequest(arguments=tuple(a.decode() for a in command.argv))
        async with self.lock:
            self.proc.stdin.write(self.framing.encode(request))
            responses: list[WorkResponse] = []
            while not responses:
                responses = self.framing.feed(await self.proc.stdout.read(65536))
        return pb.ExecuteResponse(exit_code=responses[0].exit_code, stderr=responses[0].output)


class FloorServicer(pb_grpc.WorkerServicer, pb_grpc.WorkerStreamingServicer):
    def __init__(self, backend: PipeBackend | None) -> None:
        self.backend = backend

    async def answer(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        if self.backend is None:
            return pb.ExecuteResponse(stderr="x")
        return await self.backend.call(command)

    async def Execute(self, request: pb.ExecuteCommand, context: object) -> pb.ExecuteResponse:
        return await self.answer(request)

    async def ExecuteStream(
        self, request_iterator: AsyncIterator[pb.ExecuteCommandStream], context: object
    ) -> AsyncIterator[pb.ExecuteResponseStream]:
        # As Buck2 expects: the response headers before the first request.
        await context.send_initial_metadata(())  # type: ignore[attr-defined]
        async for message in request_iterator:
            response = await self.answer(message.request)
            yield pb.ExecuteResponseStream(response=response, id=message.id)


async def serve(backend_command: Sequence[str]) -> None:
    backend = PipeBackend(backend_command) if backend_command else None
    if backend is not None:
        await backend.start()
    servicer = FloorServicer(backend)
    server = grpc.aio.server()
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    pb_grpc.add_WorkerStreamingServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{os.environ['WORKER_SOCKET']}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str]) -> int:
    backend: list[str] = []
    if argv[:1] == ["--backend"]:
        if argv[1:2] != ["--"] or len(argv) < 3:
            print("usage: grpc_floor_server [--backend -- CMD...]", file=sys.stderr)
            return 2
        backend = argv[2:]
    grpc_tuning.run(serve(backend))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
