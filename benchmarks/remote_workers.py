"""Benchmark: remote persistent workers on the embedded engine (BuildGrid + our executor).

- The Java example's 7 javac actions, sent by the runtime with routing `remote` (action
  cache off, so each is executed): on the executor's warm javac workers, against the same
  actions as plain one-shot `javac` on the same executor and engine.
- A trivial action: BuildGrid's own floor (a bare Execute of an action already in CAS)
  against the same action through the runtime and our client, sampled in alternating
  pairs; the client's own work on it (building, upload check, outputs), timed in
  process without the engine's time; and a cache hit.
- A warm remote action (the trivial action on the executor's warm worker), end to end
  through the runtime, against a bare Execute of the same action, sampled in alternation;
  and where the bare Execute's time goes, stage by stage, from the client's clock and the
  timestamps of the result's ExecutedActionMetadata (BuildGrid's and the executor's, all
  on this machine's clock).
- Warm-hit ratio: 4 executors for one instance, 3 worker keys, requests in rounds; a hit
  is a request served by a worker process that had already served its key.
Writes benchmarks/results/remote_workers.json.

Run: ``.venv/bin/python -m benchmarks.remote_workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from tests.clusters import private_cluster
from worker_runtime.cluster.buildgrid import ASSIGNER_INTERVAL_S
from worker_runtime.config import config_from_mapping
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import Envelope, read_envelope, write_envelope
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.remote.action import BuiltAction, build_action
from worker_runtime.remote.cancellation import Cancellation
from worker_runtime.remote.cas import Cas
from worker_runtime.remote.client import RemoteClient, RemoteSettings, affinity
from worker_runtime.remote.merkle import Blobs
from workers_dev.build_runner import build_java_package, javac_worker_config, make_project
from workers_dev.emulator import Buck2Worker, make_command

ROOT = Path(__file__).resolve().parent.parent
TEST_WORKER = ROOT / "tests" / "backends" / "remote_test_worker.py"
RUNTIME = [sys.executable, "-m", "worker_runtime"]
TARGET_JAVA_RATIO = 4.0
TARGET_OVERHEAD_MS = 10.0
TARGET_CACHE_HIT_MS = 25.0
TARGET_WARM_ACTION_MS = 60.0


def cluster(directory: Path, *args: str) -> None:
    subprocess.run(
        [*RUNTIME, "cluster", *args, "--dir", str(directory)], check=True, capture_output=True
    )


def serve(project: Path, config: dict[str, Any]) -> Buck2Worker:
    path = project / "buck-out" / "remote.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return Buck2Worker([*RUNTIME, "serve", "--config", str(path)], project_root=project)


def remote(engine: Path, **extra: Any) -> dict[str, Any]:
    return {"endpoint": f"unix://{engine}/run/buildgrid.sock", "instance_name": "main", **extra}


def java(engine: Path, tmp: Path, rounds: int) -> dict[str, Any]:
    warm_config = {**javac_worker_config(), "routing": "remote", "daemon": False,
                   "remote": remote(engine, cache=False)}  # fmt: skip
    oneshot_config = {"command": ["javac"], "routing": "remote", "daemon": False,
                      "remote": remote(engine, cache=False, persistent=False)}  # fmt: skip
    out: dict[str, Any] = {}
    for name, config, warmup in (("warm", warm_config, 2), ("oneshot", oneshot_config, 0)):
        (tmp / name).mkdir()
        project = make_project(tmp / name)
        samples = []
        with serve(project, config) as worker:
            for i in range(warmup + rounds):
                shutil.rmtree(project / "buck-out" / "v2", ignore_errors=True)
                result = build_java_package(project, "examples/java", worker=worker, jobs=2)
                if i >= warmup:
                    samples.append(result.seconds("javac"))
        out[name] = {"javac_actions_s": statistics.median(samples)}
    out["ratio"] = out["oneshot"]["javac_actions_s"] / out["warm"]["javac_actions_s"]
    return out


def trivial_project(tmp: Path) -> Path:
    project = tmp / "trivial"
    (project / "tools").mkdir(parents=True)
    shutil.copy(TEST_WORKER, project / "tools" / "worker.py")
    (project / "in.txt").write_text("x\n")
    (project / "t.args").write_text("--out\nout/t.txt\nin.txt\n")
    envelope = Envelope("t.args", ("in.txt",), ("out/t.txt",))
    write_envelope(project / "t.envelope.json", envelope)
    return project


TRIVIAL_CONFIG = {
    "command": ["python3", "tools/worker.py"], "protocol": "json",
    "tool_inputs": ["tools/worker.py"],
}  # fmt: skip


def routed(engine: Path, **remote_settings: Any) -> dict[str, Any]:
    """The runtime config of the trivial worker, routed to the engine."""
    return {
        **TRIVIAL_CONFIG, "daemon": False, "routing": "remote",
        "remote": remote(engine, **remote_settings),
    }  # fmt: skip


def trivial_action(
    project: Path, cache: DigestCache, blobs: Blobs, persistent: bool = False
) -> BuiltAction:
    """The trivial action exactly as the runtime builds it (one-shot unless
    ``persistent``, not cached)."""
    envelope = read_envelope(str(project / "t.envelope.json"), str(project))
    config = config_from_mapping(TRIVIAL_CONFIG).validated()
    return build_action(
        config, envelope, {}, project, cache, blobs, persistent=persistent, cacheable=False
    )


def floor_action(project: Path, cas: Cas) -> re_pb2.Digest:
    """The trivial action as the runtime would build it, uploaded once: its Execute
    alone is BuildGrid's floor."""
    blobs = Blobs()
    built = trivial_action(project, DigestCache(), blobs)
    cas.upload_missing(blobs)
    return built.digest


def timed_trivial(worker: Buck2Worker, env: dict[str, str]) -> float:
    """Milliseconds for the trivial action through the runtime ``worker``."""
    start = time.perf_counter()
    response = worker.execute(make_command(["@t.args"], env=env))
    if response.exit_code != 0:
        raise RuntimeError(response.stderr)
    return (time.perf_counter() - start) * 1000


def overhead(engine: Path, tmp: Path, runs: int) -> dict[str, Any]:
    """The same one-shot trivial action: a bare Execute (BuildGrid's floor) vs. through
    the runtime and our client (digests, FindMissingBlobs, outputs written back). The
    two are sampled in alternation (which goes first alternates too), so that drift in
    the engine's latency falls on both; the overhead is the median of the paired
    differences."""
    project = trivial_project(tmp)
    config = routed(engine, cache=False, persistent=False)
    env = {"WORKER_RUNTIME_ENVELOPE": "t.envelope.json"}
    channel = grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock")
    execution = re_grpc.ExecutionStub(channel)
    action = floor_action(project, Cas(channel, "main", 4 << 20))

    def bare() -> float:
        start = time.perf_counter()
        request = re_pb2.ExecuteRequest(instance_name="main", action_digest=action)
        for operation in execution.Execute(request, timeout=60):
            if operation.done:
                break
        return (time.perf_counter() - start) * 1000

    floor: list[float] = []
    through: list[float] = []
    with serve(project, config) as worker:

        def runtime() -> float:
            return timed_trivial(worker, env)

        for i in range(runs + 2):
            if i % 2:
                sample_floor, sample_through = bare(), runtime()
            else:
                sample_through, sample_floor = runtime(), bare()
            if i >= 2:  # warm-up: the runtime's first requests, the channel
                floor.append(sample_floor)
                through.append(sample_through)
    channel.close()
    differences = sorted(t - f for t, f in zip(through, floor, strict=True))
    quartiles = statistics.quantiles(differences, n=4)
    return {
        "floor_ms": statistics.median(floor),
        "through_runtime_ms": statistics.median(through),
        "overhead_ms": statistics.median(differences),
        "overhead_quartiles_ms": [quartiles[0], quartiles[2]],
        "pairs": len(differences),
    }


#: The stages of a remote action, each between two timestamps: the client's (``sent``,
#: ``answered``), BuildGrid's (``queued``: the job created; ``assigned``: given to a bot;
#: ``completed``: the bot's report processed) and the executor's (the rest).
STAGES = (
    ("submit", "sent", "queued"),  # Execute until the job exists
    ("queue", "queued", "assigned"),  # the assigner's poll and its transaction
    ("dispatch", "assigned", "fetch_start"),  # the lease reaching the executor
    ("fetch", "fetch_start", "execution_start"),  # Command, inputs placed
    ("run", "execution_start", "execution_completed"),  # on the warm worker
    ("upload", "execution_completed", "upload_completed"),  # outputs, result built
    ("report", "upload_completed", "completed"),  # UpdateBotSession until BuildGrid has it
    ("notify", "completed", "answered"),  # BuildGrid telling the client (the Execute stream)
)


def _stamps(sent: float, answered: float, result: re_pb2.ActionResult) -> dict[str, float]:
    def seconds(name: str) -> float:
        stamp = getattr(result.execution_metadata, f"{name}_timestamp")
        return float(stamp.seconds + stamp.nanos / 1e9)

    return {
        "sent": sent, "answered": answered, "queued": seconds("queued"),
        "assigned": seconds("worker_start"), "fetch_start": seconds("input_fetch_start"),
        "execution_start": seconds("execution_start"),
        "execution_completed": seconds("execution_completed"),
        "upload_completed": seconds("output_upload_completed"),
        "completed": seconds("worker_completed"),
    }  # fmt: skip


def warm_action(engine: Path, tmp: Path, runs: int) -> dict[str, Any]:
    """A warm remote action: the trivial action on the executor's persistent worker, end
    to end through the runtime (routing remote, action cache off) against a bare Execute
    of the same action with the same locality hint, sampled in alternation, with a random
    pause of up to one assigner poll between samples so that they land anywhere in its
    cycle. Each bare Execute is split into stages (``STAGES``); the medians of the stages
    do not add up to the median of the whole exactly."""
    project = trivial_project(tmp)
    env = {"WORKER_RUNTIME_ENVELOPE": "t.envelope.json"}
    channel = grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock")
    execution = re_grpc.ExecutionStub(channel)
    blobs = Blobs()
    built = trivial_action(project, DigestCache(), blobs, persistent=True)
    Cas(channel, "main", 4 << 20).upload_missing(blobs)

    def bare() -> dict[str, float]:
        request = re_pb2.ExecuteRequest(
            instance_name="main", action_digest=built.digest, skip_cache_lookup=True
        )
        sent = time.time()
        for operation in execution.Execute(request, timeout=60, metadata=affinity(built.key)):
            if operation.done:
                answered = time.time()
                response = re_pb2.ExecuteResponse()
                operation.response.Unpack(response)
                if response.result.exit_code != 0:
                    raise RuntimeError(f"the warm action failed: {response}")
                return _stamps(sent, answered, response.result)
        raise RuntimeError("the Execute stream ended early")

    samples: list[dict[str, float]] = []
    through: list[float] = []
    with serve(project, routed(engine, cache=False)) as worker:

        def runtime() -> float:
            return timed_trivial(worker, env)

        for i in range(runs + 2):  # the first two start the warm worker and the channels
            if i % 2:
                sample, end_to_end = bare(), runtime()
            else:
                end_to_end, sample = runtime(), bare()
            if i >= 2:
                samples.append(sample)
                through.append(end_to_end)
            time.sleep(random.uniform(0, ASSIGNER_INTERVAL_S))
    channel.close()
    stages = {
        name: statistics.median((s[end] - s[start]) * 1000 for s in samples)
        for name, start, end in STAGES
    }
    bare_ms = statistics.median((s["answered"] - s["sent"]) * 1000 for s in samples)
    on_executor = ("fetch", "run", "upload")
    engine_ms = sum(ms for name, ms in stages.items() if name not in on_executor)
    return {
        "end_to_end_ms": statistics.median(through),
        "bare_execute_ms": bare_ms,
        "stages_ms": stages,
        "engine_ms": engine_ms,  # BuildGrid and the Bots exchange: every stage but three
        "executor_ms": sum(stages[name] for name in on_executor),
        "engine_share": engine_ms / bare_ms,
        "assigner_interval_ms": ASSIGNER_INTERVAL_S * 1000,
        "samples": len(samples),
    }


#: The executor's isolation for the `isolated` figures: each tenant's uid (as root, as
#: always), the sandbox, and limits no trivial action comes near.
ISOLATION = ("--sandbox", "--limit-memory", "1024", "--limit-pids", "512")


def isolated(engine: Path, tmp: Path, runs: int, plain: dict[str, Any]) -> dict[str, Any]:
    """The one-shot floor and the warm action again on a fresh executor with ``ISOLATION``,
    beside the same figures without it (measured just before, on the same engine)."""
    cluster(engine, "up", "--executors", "1", *ISOLATION)  # a fresh executor with them
    oneshot = overhead(engine, tmp / "overhead-isolated", runs)
    warm = warm_action(engine, tmp / "warm-isolated", runs)
    return {
        "options": list(ISOLATION),
        "oneshot_floor_ms": oneshot["floor_ms"],
        "oneshot_added_ms": oneshot["floor_ms"] - plain["trivial"]["floor_ms"],
        "warm_end_to_end_ms": warm["end_to_end_ms"],
        "warm_bare_execute_ms": warm["bare_execute_ms"],
        "warm_added_ms": warm["bare_execute_ms"] - plain["warm"]["bare_execute_ms"],
        "warm_stages_ms": warm["stages_ms"],
    }


def client_work(engine: Path, tmp: Path, runs: int) -> dict[str, Any]:
    """What the client does besides waiting for the engine, timed inside one process with
    the real client on the same engine: building the Action (digests from the cache, the
    Merkle tree), the upload check, and fetching and placing the outputs. The engine's
    own time (the Execute stream) is left out, and with it the noise of its polls."""
    project = trivial_project(tmp)
    client = RemoteClient(RemoteSettings(f"unix://{engine}/run/buildgrid.sock", "main"))
    cache = DigestCache()
    phases: dict[str, list[float]] = {"build_ms": [], "upload_ms": [], "outputs_ms": []}
    try:
        for i in range(runs + 2):
            start = time.perf_counter()
            blobs = Blobs()
            built = trivial_action(project, cache, blobs)
            built_at = time.perf_counter()
            client.capabilities()
            client.cas.upload_missing(blobs)
            uploaded_at = time.perf_counter()
            response = client._execute(built, Cancellation(), 60.0)
            finished_at = time.perf_counter()
            client._finish(response.result, built, project, False, lambda: True)
            placed_at = time.perf_counter()
            if i >= 2:
                phases["build_ms"].append((built_at - start) * 1000)
                phases["upload_ms"].append((uploaded_at - built_at) * 1000)
                phases["outputs_ms"].append((placed_at - finished_at) * 1000)
    finally:
        client.close()
    result = {name: statistics.median(values) for name, values in phases.items()}
    result["client_work_ms"] = sum(result.values())
    return result


def cache_hit(engine: Path, tmp: Path, runs: int) -> dict[str, Any]:
    project = trivial_project(tmp / "cache")
    config = routed(engine)
    env = {"WORKER_RUNTIME_ENVELOPE": "t.envelope.json"}
    samples: list[float] = []
    with serve(project, config) as worker:
        for i in range(runs + 1):
            start = time.perf_counter()
            response = worker.execute(make_command(["@t.args"], env=env))
            if response.exit_code != 0:
                raise RuntimeError(response.stderr)
            if i >= 1:  # the first one executes and fills the cache
                samples.append((time.perf_counter() - start) * 1000)
    return {"cache_hit_ms": statistics.median(samples)}


def warm_hits(tmp: Path, rounds: int) -> dict[str, Any]:
    """4 executors of one instance, 3 worker keys (3 versions of the worker's script)."""
    with private_cluster("--executors", "7") as engine:  # 4 for main, 3 for tenant-b
        seen: dict[int, set[str]] = {k: set() for k in range(3)}
        hits = total = 0
        workers = []
        for key in range(3):
            project = trivial_project(tmp / f"key{key}")
            (project / "tools" / "worker.py").write_text(
                TEST_WORKER.read_text() + f"\n# key {key}\n"
            )
            workers.append((project, serve(project, routed(engine, cache=False)).start()))
        env = {"WORKER_RUNTIME_ENVELOPE": "t.envelope.json"}
        try:
            for round_ in range(rounds + 1):
                for key, (project, worker) in enumerate(workers):
                    response = worker.execute(make_command(["@t.args"], env=env))
                    if response.exit_code != 0:
                        raise RuntimeError(response.stderr)
                    served_by = (project / "out" / "t.txt").read_text().split("pid=")[1].strip()
                    if round_ >= 1:  # after warm-up
                        total += 1
                        hits += served_by in seen[key]
                    seen[key].add(served_by)
        finally:
            for _, worker in workers:
                worker.terminate()
                worker.cleanup()
        return {"executors": 4, "keys": 3, "requests": total, "warm_hit_ratio": hits / total,
                "worker_processes_per_key": [len(p) for p in seen.values()]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    add_output_argument(parser, "remote_workers")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "targets": {"java_ratio": TARGET_JAVA_RATIO, "overhead_ms": TARGET_OVERHEAD_MS,
                    "client_work_ms": TARGET_OVERHEAD_MS, "cache_hit_ms": TARGET_CACHE_HIT_MS,
                    "warm_action_ms": TARGET_WARM_ACTION_MS, "warm_hit_ratio": 0.9},
    }  # fmt: skip
    with scratch_dir("wr-bench-remote-") as tmp:
        # The baseline: tenant uids without the sandbox (as root the cluster sandboxes by
        # default); the sandbox's cost is the `isolated` section, on the same engine.
        with private_cluster("--executors", "1", "--no-sandbox") as engine:
            result["java"] = java(engine, tmp, args.rounds)
            result["trivial"] = overhead(engine, tmp / "overhead", args.runs)
            result["trivial"]["client"] = client_work(engine, tmp / "client", args.runs)
            result["trivial"].update(cache_hit(engine, tmp, args.runs))
            result["warm"] = warm_action(engine, tmp / "warm", args.runs)
            if os.geteuid() == 0 and shutil.which("bwrap"):
                result["isolated"] = isolated(engine, tmp, args.runs, result)
        result["affinity"] = warm_hits(tmp, args.rounds * 3)
    result["met"] = {
        "java_ratio": result["java"]["ratio"] >= TARGET_JAVA_RATIO,
        "overhead_ms": result["trivial"]["overhead_ms"] <= TARGET_OVERHEAD_MS,
        "client_work_ms": result["trivial"]["client"]["client_work_ms"] <= TARGET_OVERHEAD_MS,
        "cache_hit_ms": result["trivial"]["cache_hit_ms"] <= TARGET_CACHE_HIT_MS,
        "warm_action_ms": result["warm"]["end_to_end_ms"] <= TARGET_WARM_ACTION_MS,
        "warm_hit_ratio": result["affinity"]["warm_hit_ratio"] >= 0.9,
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
