"""Regenerates the Python protobuf and gRPC modules from this folder's .proto files.

Run ``python -m worker_runtime.proto.regenerate`` from the repository root after
editing a .proto file; ``tests/unit/test_generated_protos.py`` fails while the
checked-in modules differ from what this produces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
#: Paths relative to this folder. Imports between them are written relative to the
#: repository root (protoc runs with -I<repo root>); google/protobuf/*.proto come
#: from grpcio-tools.
PROTO_FILES = (
    "buck2_worker.proto",
    "bazel_worker.proto",
    # The Remote Execution API and what it depends on.
    "semver.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/longrunning/operations.proto",
    "google/bytestream/bytestream.proto",
    "remote_execution.proto",
    # The Remote Workers API (BuildGrid's bots).
    "google/devtools/remoteworkers/v1test2/worker.proto",
    "google/devtools/remoteworkers/v1test2/bots.proto",
)


def generate(out_dir: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto file under out_dir
    (mirroring this folder's layout, e.g. worker_runtime/proto/google/rpc/status_pb2.py)."""
    from grpc_tools import protoc  # only needed by developers, not at run time

    # google/protobuf/*.proto (any, duration, timestamp, ...) ship inside grpcio-tools.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PROTO_FILES:
        rel = (PROTO_DIR / name).relative_to(REPO_ROOT)
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {rel}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root to write worker_runtime/proto/**/*_pb2*.py under (default: the repository root)",
    )
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
