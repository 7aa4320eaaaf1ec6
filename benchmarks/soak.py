"""The standing soak: many requests through the daemon while backends and the daemon are
killed, counting every answer.

Two fronts of one daemon (as two worker tools of one Buck2 command): a pooled singleplex
backend (4 processes) served over unary ``Execute``, and a multiplex backend served over
one ``ExecuteStream``; ``--in-flight`` requests outstanding in all, split between them.
Each request is ``echo <its own token>``, so a wrong answer is seen. Backends are
SIGKILLed at several points, and the daemon once; after the daemon's death the fronts are
started again (Buck2's next command). Reported (benchmarks/results/soak.json):

- ``lost``: a stream ended without answering a request; ``hung``: no answer within
  ``--deadline``; ``duplicated``: a stream id answered twice; ``wrong``: a success whose
  output is not the request's token. All must be 0.
- ``ok_after_retry``: right answers whose backend was killed under them, run again on a
  fresh backend, with the runtime's note saying so;
- ``clear_errors``: requests that failed with the runtime's error (a retry that failed
  too, a stopped backend) or as a worker exit does under Buck2 (the daemon killed);
- p50/p99 latency of the successes; the daemon's RSS and open fds before and after.

Run: ``.venv/bin/python -m benchmarks.soak [--requests 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# isort: off
from worker_runtime.buck2 import grpc_tuning  # settles grpcio's tuning before grpc loads
import grpc

# isort: on

from benchmarks.results import add_output_argument, emit
from worker_runtime.daemon.commands import private_daemon_dir
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from workers_dev.emulator import Buck2Worker, make_command

ROOT = Path(__file__).resolve().parent.parent
BACKEND = [sys.executable, str(ROOT / "tests" / "backends" / "fake_worker.py")]
RUNTIME = [sys.executable, "-m", "worker_runtime", "serve"]
POOLED = [*RUNTIME, "--max-instances", "4", "--", *BACKEND]
MULTIPLEX = [*RUNTIME, "--multiplex", "--", *BACKEND, "--multiplex"]
#: When to kill (fraction of requests sent): a backend at each, the daemon at DAEMON_AT.
BACKEND_KILLS_AT = (0.15, 0.3, 0.45, 0.85, 0.95)
DAEMON_AT = 0.6


@dataclass
class Tally:
    ok: int = 0
    ok_after_retry: int = 0
    wrong: int = 0
    clear_errors: int = 0
    lost: int = 0
    hung: int = 0
    duplicated: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def answered(self, token: str, response: pb.ExecuteResponse, seconds: float) -> None:
        output = response.stderr
        notes = output[: -len(token)] if output.endswith(token) else None
        if response.exit_code == 0 and notes == "":
            self.ok += 1
            self.latencies.append(seconds)
        elif response.exit_code == 0 and notes and notes.startswith("worker-runtime: note:"):
            # Its backend was killed under it; the runtime retried it and says so.
            self.ok_after_retry += 1
            self.latencies.append(seconds)
        elif response.exit_code == RUNTIME_ERROR_EXIT_CODE and "worker-runtime: error" in (
            response.stderr
        ):
            self.clear_errors += 1
            self.errors[response.stderr.splitlines()[0][:120]] += 1
        else:
            self.wrong += 1
            self.errors[f"WRONG: exit {response.exit_code}: {response.stderr[:100]!r}"] += 1

    def worker_exit(self, why: str) -> None:
        """A failure Buck2 reports as its worker's exit (the daemon or front is gone)."""
        self.clear_errors += 1
        self.errors[f"worker exit: {why[:100]}"] += 1


def daemon_pid(runtime_dir: Path) -> int | None:
    for state in runtime_dir.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(state.read_text()).get("pid")
            if isinstance(pid, int) and Path(f"/proc/{pid}").exists():
                return pid
    return None


def process_figures(pid: int | None) -> dict[str, Any]:
    if pid is None:
        return {}
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {"pid": pid, "rss_mb": rss_kib / 1024, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def backend_pids(runtime_dir: Path, daemon: int) -> list[int]:
    """The daemon's backend processes (children of the daemon, their setpriv exec'd)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == daemon:
                found.append(int(entry.name))
    return found


class Soak:
    def __init__(self, runtime_dir: Path, total: int, in_flight: int, deadline_s: float) -> None:
        self.runtime_dir = runtime_dir
        self.total = total
        self.in_flight = in_flight
        self.deadline_s = deadline_s
        self.sent = 0
        self.tally = Tally()
        self.tokens = (f"t{n}" for n in itertools.count())
        self.kills: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self._pending_kills = sorted(
            [(at, "backend") for at in BACKEND_KILLS_AT] + [(DAEMON_AT, "daemon")]
        )
        self.daemon_down = asyncio.Event()

    def next_request(self) -> str | None:
        if self.sent >= self.total:
            return None
        self.sent += 1
        return next(self.tokens)

    def maybe_kill(self) -> None:
        while self._pending_kills and self.sent >= self._pending_kills[0][0] * self.total:
            _, what = self._pending_kills.pop(0)
            daemon = daemon_pid(self.runtime_dir)
            if daemon is None:
                continue
            if what == "daemon":
                self.figures["first_daemon_before_kill"] = process_figures(daemon)
                os.kill(daemon, signal.SIGKILL)
                self.daemon_down.set()
            else:
                backends = backend_pids(self.runtime_dir, daemon)
                if not backends:
                    continue
                os.kill(backends[self.sent % len(backends)], signal.SIGKILL)
            self.kills.append({"what": what, "after_requests": self.sent})

    async def unary_lane(self, target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.WorkerStub(channel)
            while not self.daemon_down.is_set() and (token := self.next_request()):
                self.maybe_kill()
                start = time.perf_counter()
                try:
                    response = await stub.Execute(
                        make_command(["echo", token]), timeout=self.deadline_s
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        self.tally.hung += 1
                    else:
                        self.tally.worker_exit(f"{exc.code().name}")
                    continue
                self.tally.answered(token, response, time.perf_counter() - start)

    async def stream_lanes(self, target: str, lanes: int) -> None:
        """``lanes`` requests outstanding on one stream, as Buck2 keeps them."""
        ids = itertools.count()
        waiting: dict[int, tuple[str, float, asyncio.Future[None]]] = {}
        outgoing: asyncio.Queue[pb.ExecuteCommandStream | None] = asyncio.Queue()
        seen: set[int] = set()

        async def requests() -> AsyncIterator[pb.ExecuteCommandStream]:
            while (item := await outgoing.get()) is not None:
                yield item

        async with grpc.aio.insecure_channel(target) as channel:
            call = pb_grpc.WorkerStreamingStub(channel).ExecuteStream(requests())

            async def read() -> None:
                try:
                    async for message in call:
                        if message.id in seen:
                            self.tally.duplicated += 1
                            continue
                        seen.add(message.id)
                        entry = waiting.pop(message.id, None)
                        if entry is None:
                            self.tally.wrong += 1  # an id never sent
                            continue
                        token, start, done = entry
                        self.tally.answered(token, message.response, time.perf_counter() - start)
                        done.set_result(None)
                except grpc.aio.AioRpcError as exc:
                    for _token, _start, done in waiting.values():
                        self.tally.worker_exit(f"stream {exc.code().name}")
                        done.set_result(None)
                    waiting.clear()
                    return
                for _token, _start, done in waiting.values():  # ended with OK, unanswered
                    self.tally.lost += 1
                    done.set_result(None)
                waiting.clear()

            reader = asyncio.create_task(read())

            async def lane() -> None:
                while not self.daemon_down.is_set() and (token := self.next_request()):
                    if reader.done():
                        self.tally.worker_exit("the stream had ended")
                        continue
                    self.maybe_kill()
                    request_id = next(ids)
                    done = asyncio.get_running_loop().create_future()
                    waiting[request_id] = (token, time.perf_counter(), done)
                    outgoing.put_nowait(
                        pb.ExecuteCommandStream(
                            request=make_command(["echo", token]), id=request_id
                        )
                    )
                    try:
                        await asyncio.wait_for(asyncio.shield(done), self.deadline_s)
                    except TimeoutError:
                        waiting.pop(request_id, None)
                        self.tally.hung += 1

            await asyncio.gather(*(lane() for _ in range(lanes)))
            outgoing.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, self.deadline_s)

    async def command(self, unary_target: str, stream_target: str) -> None:
        """One Buck2 command's requests: until all are sent or the daemon is killed."""
        half = max(1, self.in_flight // 2)
        await asyncio.gather(
            *(self.unary_lane(unary_target) for _ in range(half)),
            self.stream_lanes(stream_target, half),
        )


@contextlib.contextmanager
def fronts() -> Iterator[tuple[Buck2Worker, Buck2Worker]]:
    with (
        Buck2Worker(POOLED, project_root=ROOT) as pooled,
        Buck2Worker(MULTIPLEX, project_root=ROOT) as multiplex,
    ):
        yield pooled, multiplex


def measure(total: int, in_flight: int, deadline_s: float) -> dict[str, Any]:
    with private_daemon_dir("wrsoak-") as runtime_dir:
        soak = Soak(runtime_dir, total, in_flight, deadline_s)
        started = time.perf_counter()
        with fronts() as (pooled, multiplex):
            soak.figures["first_daemon_before"] = process_figures(daemon_pid(runtime_dir))
            grpc_tuning.run(soak.command(pooled.target, multiplex.target))
        if soak.sent < total:  # the daemon was killed: Buck2's next command
            soak.daemon_down.clear()
            with fronts() as (pooled, multiplex):
                soak.figures["second_daemon_before"] = process_figures(daemon_pid(runtime_dir))
                grpc_tuning.run(soak.command(pooled.target, multiplex.target))
                soak.figures["second_daemon_after"] = process_figures(daemon_pid(runtime_dir))
        elapsed = time.perf_counter() - started
    tally = soak.tally
    latencies = sorted(s * 1000 for s in tally.latencies)
    answered = tally.ok + tally.ok_after_retry + tally.wrong + tally.clear_errors
    return {
        "requests": total,
        "in_flight": in_flight,
        "seconds": elapsed,
        "answered": answered,
        "ok": tally.ok,
        "ok_after_retry": tally.ok_after_retry,
        "clear_errors": tally.clear_errors,
        "lost": tally.lost,
        "hung": tally.hung,
        "duplicated": tally.duplicated,
        "wrong": tally.wrong,
        "errors_seen": dict(tally.errors.most_common(12)),
        "latency_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            if latencies
            else None,
        },
        "kills": soak.kills,
        "daemons": soak.figures,
        "met": tally.lost == tally.hung == tally.duplicated == tally.wrong == 0
        and answered == total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before 'hung'")
    add_output_argument(parser, "soak")
    args = parser.parse_args(argv)
    emit(measure(args.requests, args.in_flight, args.deadline), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
