"""A bare gRPC server that answers every Execute at once, with no backend behind it.

The benchmark measures it beside the runtime so that the runtime's own share of the
added latency can be told apart from the cost of a gRPC call on this machine. It uses
the same grpcio tuning and event loop as the runtime.
"""

from __future__ import annotations

import os
import sys

import grpc

from worker_runtime.buck2 import grpc_tuning
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc


class EchoServicer(pb_grpc.WorkerServicer):
    async def Execute(self, request: pb.ExecuteCommand, context: object) -> pb.ExecuteResponse:
        return pb.ExecuteResponse(stderr="x")


async def serve() -> None:
    server = grpc.aio.server()
    pb_grpc.add_WorkerServicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"unix:{os.environ['WORKER_SOCKET']}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(grpc_tuning.run(serve()))
