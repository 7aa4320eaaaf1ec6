"""Benchmark: latency the runtime adds per request, and its streaming throughput.

Baseline (same run): the same no-op backend called directly over its pipes. Through the
runtime: unary ``Execute`` (Buck2's default) and one ``ExecuteStream`` (Buck2 with
``streaming = True``), one request at a time; then 64 requests in flight on one stream
to a no-op multiplex backend. Writes benchmarks/results/runtime_overhead.json.

Run: ``.venv/bin/python -m benchmarks.runtime_overhead [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

from benchmarks.results import add_output_argument, emit
from worker_runtime.buck2 import grpc_tuning
from worker_runtime.daemon.commands import private_daemon_dir
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from worker_runtime.protocol.framing import ProtoFraming
from worker_runtime.protocol.messages import WorkRequest
from workers_dev.emulator import Buck2Worker, StreamingSession, make_command

ROOT = Path(__file__).resolve().parent.parent
BACKEND = [sys.executable, str(ROOT / "tests" / "backends" / "fake_worker.py"), "--inline"]
RUNTIME = [sys.executable, "-m", "worker_runtime", "serve"]
TARGET_ADDED_MEDIAN_MS = 0.5
TARGET_THROUGHPUT = 2000


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"median_ms": statistics.median(ms), "p99_ms": percentile(ms, 0.99)}


def direct(n: int) -> list[float]:
    """The backend alone: requests written to its stdin, responses read from its stdout."""
    proc = subprocess.Popen(
        [*BACKEND, "--persistent_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    framing = ProtoFraming()
    payload = framing.encode(WorkRequest(arguments=("echo", "x")))
    samples = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            proc.stdin.write(payload)
            proc.stdin.flush()
            got: list[object] = []
            while not got:
                got = list(framing.feed(os.read(proc.stdout.fileno(), 65536)))
            samples.append(time.perf_counter() - start)
    finally:
        proc.kill()
        proc.wait()
    return samples


def unary(worker: Buck2Worker, n: int) -> list[float]:
    command = make_command(["echo", "x"])
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = worker.execute(command)
        samples.append(time.perf_counter() - start)
        assert response.stderr == "x"
    return samples


async def unary_async(target: str, n: int) -> list[float]:
    """Unary calls from an asyncio client (Buck2's own client is async: Rust tonic)."""
    command = make_command(["echo", "x"])
    samples = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerStub(channel)
        for _ in range(n):
            start = time.perf_counter()
            response = await stub.Execute(command)
            samples.append(time.perf_counter() - start)
            assert response.stderr == "x"
    return samples


async def streaming(worker: Buck2Worker, n: int) -> list[float]:
    command = make_command(["echo", "x"])
    samples = []
    async with StreamingSession(worker.target) as session:
        for _ in range(n):
            start = time.perf_counter()
            response = await session.execute(command)
            samples.append(time.perf_counter() - start)
            assert response.stderr == "x"
    return samples


async def throughput(worker: Buck2Worker, total: int, in_flight: int) -> float:
    command = make_command(["echo", "x"])
    async with StreamingSession(worker.target) as session:
        remaining = total

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await session.execute(command)

        await asyncio.gather(*(lane() for _ in range(in_flight)))  # warm-up lanes
        remaining = total
        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        return total / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests per series per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring every series")
    parser.add_argument("--throughput-requests", type=int, default=20000)
    add_output_argument(parser, "runtime_overhead")
    args = parser.parse_args(argv)
    n = args.requests
    series: dict[str, list[list[float]]] = {
        name: [] for name in ("direct", "floor", "unary", "floor_async", "unary_async", "stream")
    }

    floor_exe = [sys.executable, "-m", "benchmarks.grpc_floor_server"]
    with (
        private_daemon_dir("wro-"),
        Buck2Worker([*RUNTIME, "--", *BACKEND], project_root=ROOT) as worker,
        Buck2Worker(floor_exe, project_root=ROOT) as floor,
    ):
        # Warm-up of every path, then rounds that interleave the series so that a noisy
        # neighbour on this shared machine hurts them all alike.
        direct(200), unary(worker, 200), unary(floor, 200), asyncio.run(streaming(worker, 200))
        for _ in range(args.rounds):
            series["direct"].append(direct(n))
            series["floor"].append(unary(floor, n))
            series["unary"].append(unary(worker, n))
            series["floor_async"].append(grpc_tuning.run(unary_async(floor.target, n)))
            series["unary_async"].append(grpc_tuning.run(unary_async(worker.target, n)))
            series["stream"].append(asyncio.run(streaming(worker, n)))
    with (
        private_daemon_dir("wro-"),
        Buck2Worker(
            [*RUNTIME, "--multiplex", "--", *BACKEND, "--multiplex"], project_root=ROOT
        ) as worker,
    ):
        rate = asyncio.run(throughput(worker, args.throughput_requests, 64))

    def combined(name: str) -> dict[str, float]:
        medians = [statistics.median(r) * 1000 for r in series[name]]
        every = [s for r in series[name] for s in r]
        return {"median_ms": statistics.median(medians), "p99_ms": percentile(every, 0.99) * 1000}

    stats = {name: combined(name) for name in series}
    base = stats["direct"]
    added_unary = {k: stats["unary"][k] - base[k] for k in base}
    added_unary_async = {k: stats["unary_async"][k] - base[k] for k in base}
    added_stream = {k: stats["stream"][k] - base[k] for k in base}
    floor_share = {
        "unary_sync_client": stats["floor"]["median_ms"],
        "unary_async_client": stats["floor_async"]["median_ms"],
    }
    result = {
        "requests_per_series": n * args.rounds,
        "rounds": args.rounds,
        "direct_pipes": base,
        "grpc_floor_unary_sync_client": stats["floor"],
        "grpc_floor_unary_async_client": stats["floor_async"],
        "unary_execute_sync_client": stats["unary"],
        "unary_execute_async_client": stats["unary_async"],
        "execute_stream": stats["stream"],
        "added_unary_sync_client": added_unary,
        "added_unary_async_client": added_unary_async,
        "added_streaming": added_stream,
        # What the runtime itself adds beyond a bare gRPC call and the backend's own time.
        "runtime_share_ms": {
            "unary_sync_client": added_unary["median_ms"] - floor_share["unary_sync_client"],
            "unary_async_client": added_unary_async["median_ms"]
            - floor_share["unary_async_client"],
        },
        "throughput_64_in_flight_rps": rate,
        "targets": {"added_median_ms": TARGET_ADDED_MEDIAN_MS, "throughput_rps": TARGET_THROUGHPUT},
        "met": {
            "added_median_unary_sync_client": added_unary["median_ms"] <= TARGET_ADDED_MEDIAN_MS,
            "added_median_unary_async_client": added_unary_async["median_ms"]
            <= TARGET_ADDED_MEDIAN_MS,
            "added_median_streaming": added_stream["median_ms"] <= TARGET_ADDED_MEDIAN_MS,
            "throughput": rate >= TARGET_THROUGHPUT,
        },
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
