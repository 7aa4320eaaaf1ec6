"""Buck2's side: the gRPC servicers on WORKER_SOCKET and the request translation.

Importing this package settles grpcio's process-wide tuning before anything in it loads
grpc (see ``grpc_tuning``).
"""

from worker_runtime.buck2 import grpc_tuning

grpc_tuning.apply()
