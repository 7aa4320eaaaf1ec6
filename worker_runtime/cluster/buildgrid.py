"""BuildGrid, the Remote Execution API server: its own virtualenv (made by
scripts/bootstrap.sh: buildgrid 0.9.x on Python 3.13, else 0.4.x on 3.11), a config tuned
for latency in the dialect of that version, its database migrated, the server started on
a Unix socket and known to be ready when it answers GetCapabilities."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from worker_runtime.cluster import postgres, processes
from worker_runtime.cluster.layout import DEFAULT_BUILDGRID_VENV, INSTANCE, INSTANCES, ClusterLayout
from worker_runtime.errors import ClusterError

#: Platform properties a job may carry without any bot advertising them (BuildGrid
#: rejects other unknown keys): the remote persistent worker convention's, ours for
#: multiplex workers, and the sandbox's `network`.
WILDCARD_PROPERTY_KEYS = (
    "persistentWorkerKey",
    "persistentWorkerProtocol",
    "persistentWorkerMultiplex",
    "network",
)
#: The assigner's poll for queued jobs, the one poll on an action's path (the other
#: intervals only bound how often BuildGrid's notification threads check for shutdown:
#: assignments and completions reach bots and clients through PostgreSQL's NOTIFY).
#: 20 ms: a queued job waits 10 ms on average; 10 ms measured no faster end to end
#: (the busier assigner slows the rest of the server) and doubles the idle CPU.
ASSIGNER_INTERVAL_S = 0.02


def venv() -> Path:
    return Path(os.environ.get("WORKER_RUNTIME_BUILDGRID_VENV", DEFAULT_BUILDGRID_VENV))


def bgd() -> Path:
    path = venv() / "bin" / "bgd"
    if not path.exists():
        raise ClusterError(
            f"BuildGrid is not installed ({path} is missing): run scripts/bootstrap.sh, which "
            "makes its virtualenv (buildgrid 0.9.x with Python 3.13)"
        )
    return path


@dataclass(frozen=True)
class Flavour:
    """What differs between the BuildGrid versions the engine runs on."""

    version: tuple[int, ...]

    @property
    def legacy(self) -> bool:
        """BuildGrid 0.4.x: psycopg2, no sampling weights, no max-concurrent-rpcs key,
        a database schema of its own."""
        return self.version < (0, 9)

    @property
    def driver(self) -> str:
        """SQLAlchemy's driver name: BuildGrid 0.9 uses psycopg 3, 0.4 psycopg2."""
        return "psycopg2" if self.legacy else "psycopg"

    @property
    def database(self) -> str:
        """0.4's migrations cannot run on a database 0.9 migrated, nor the reverse."""
        return "buildgrid_0_4" if self.legacy else "buildgrid"

    def describe(self) -> str:
        return ".".join(map(str, self.version))


def flavour() -> Flavour:
    """The BuildGrid version installed in the virtualenv."""
    bgd()
    found = sorted((venv() / "lib").glob("python3*/site-packages/buildgrid-*.dist-info"))
    if not found:
        raise ClusterError(f"cannot tell which BuildGrid version is installed in {venv()}")
    text = found[-1].name.removeprefix("buildgrid-").removesuffix(".dist-info")
    return Flavour(tuple(int(p) for p in text.split(".")[:3] if p.isdigit()))


def yaml_string(value: str) -> str:
    """``value`` as a YAML double-quoted scalar (a JSON string is one): a path may hold
    spaces, quotes or backslashes."""
    return json.dumps(value)


def config_text(
    layout: ClusterLayout,
    flavour: Flavour,
    instances: tuple[str, ...] = INSTANCES,
    server: str = "",
    authorization: str = "method: none",
    tcp_port: int = 0,
) -> str:
    """The server config: CAS in memory, and for every instance (tenant) an action cache
    and a SQL scheduler of its own, so that no result, job or bot is shared between
    tenants; assignment tuned for latency (no jitter, a 20 ms assigner poll, 50 ms
    back-off), short bot keepalives (a bot silent for 10 s loses its leases to others).

    ``server`` (the YAML list items of `server:`) defaults to the plain Unix socket, and
    with ``tcp_port`` also 127.0.0.1:``tcp_port`` (Buck2's RE client speaks TCP only);
    ``authorization`` is the body of `authorization:`. The tests use both for a server
    behind TLS and JWT bearer tokens on the same database. BuildGrid 0.4 has no sampling
    weights: its assigner takes a bot that ran the hint before, else the one with most
    room."""
    if flavour.legacy:
        strategy = """        bot-assignment-strategy: !assign-by-locality
          sampling: !sampling-config
            sample-size: 64
            max-attempts: 3
          fallback: !assign-by-capacity
            sampling: !sampling-config
              sample-size: 64
              max-attempts: 3"""
    else:
        strategy = """        bot-assignment-strategy: !assign-by-capacity
          sampling: !sampling-config
            sample-size: 64
            max-attempts: 3
            weights: !sampling-weights
              priority: -10.0
              locality: 1000.0
              capacity: 1.0"""
    tcp = (
        f"""
  - !channel
    address: "127.0.0.1:{tcp_port}"
    insecure-mode: true"""
        if tcp_port
        else ""
    )
    server = (
        server
        or f"""  - !channel
    address: {yaml_string(layout.address)}
    insecure-mode: true{tcp}"""
    )
    # 0.4 has no maximum-concurrent-rpcs: its limit is the thread pool's size.
    limits = (
        "thread-pool-size: 256"
        if flavour.legacy
        else "thread-pool-size: 128\nmaximum-concurrent-rpcs: 256"
    )
    auth = "\n".join(f"  {line}" for line in authorization.splitlines())
    wildcard = "\n".join(f"        - {key}" for key in WILDCARD_PROPERTY_KEYS)
    caches = "".join(
        f"""  - !lru-action-cache &ac{i}
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
"""
        for i, _ in enumerate(instances)
    )
    schedulers = "".join(
        f"""  - !sql-scheduler &scheduler{i}
    sql: *sql
    action-cache: *ac{i}
    storage: *cas
    poll-interval: 0.05
    bot-poll-interval: 0.05
    bot-session-keepalive-timeout: 10
    max-job-attempts: 5
    property-set: !dynamic-property-set
      match-property-keys: []
      wildcard-property-keys:
{wildcard}
    assigners:
      - !priority-age-assigner
        count: 1
        # How often the assigner looks for queued jobs: BuildGrid has no notification
        # for a new job, so this poll is the queue's wait (half of it on average).
        interval: {ASSIGNER_INTERVAL_S}
        failure-backoff: 0.05
        jitter-factor: 0.0
        instance-names: ["{name}"]
        # Worker affinity: the client sends the worker key as the job's locality hint;
        # of the sampled bots with room, one that ran that key before scores highest.
{strategy}
"""
        for i, name in enumerate(instances)
    )
    sections = "".join(
        f"""  - name: {name}
    services:
      - !action-cache
        cache: *ac{i}
      - !execution
        scheduler: *scheduler{i}
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""
        for i, name in enumerate(instances)
    )
    return f"""\
description: worker-runtime's embedded engine (written by `worker-runtime cluster up`)
server:
{server}
authorization:
{auth}
connections:
  - !sql-connection &sql
    connection-string: {yaml_string(layout.database_url(flavour.driver, flavour.database))}
    pool-size: 20
    max-overflow: 20
storages:
  - !lru-storage &cas
    size: 1GB
caches:
{caches}schedulers:
{schedulers}instances:
{sections}{limits}
"""


def migrate(layout: ClusterLayout, flavour: Flavour) -> None:
    done = subprocess.run(
        [str(bgd()), "migrate", "apply", layout.database_url(flavour.driver, flavour.database)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise ClusterError(f"migrating BuildGrid's database failed: {done.stderr.strip()[-800:]}")


def answers(layout: ClusterLayout, timeout_s: float = 2.0) -> bool:
    """Whether the server answers GetCapabilities (sent as raw bytes: instance_name)."""
    if not layout.buildgrid_socket.exists():
        return False
    request = b"\x0a" + bytes([len(INSTANCE)]) + INSTANCE.encode()
    try:
        with grpc.insecure_channel(layout.address) as channel:
            call = channel.unary_unary(
                "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
                request_serializer=None,
                response_deserializer=None,
            )
            call(request, timeout=timeout_s)
    except grpc.RpcError:
        return False
    return True


def start(
    layout: ClusterLayout,
    tcp_port: int = 0,
    timeout_s: float = 60.0,
    started: Callable[[int], None] = lambda pid: None,
) -> int:
    """Writes the config, migrates, starts `bgd server start` detached and waits until it
    answers. Returns its PID. With ``tcp_port`` it also listens on 127.0.0.1:tcp_port.
    ``started`` is given the PID as soon as the process exists (to record it before the
    wait, which an interrupt may cut short)."""
    version = flavour()
    postgres.ensure_database(layout, version.database)
    layout.config.write_text(config_text(layout, version, tcp_port=tcp_port))
    migrate(layout, version)
    log = layout.logs / "buildgrid.log"
    layout.buildgrid_socket.unlink(missing_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(bgd()), "server", "start", str(layout.config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    started(process.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(
                f"BuildGrid exited with status {process.returncode} while starting; log: {log}"
            )
        if answers(layout, timeout_s=1.0):
            return process.pid
        time.sleep(0.1)
    stop(process.pid)
    raise ClusterError(f"BuildGrid did not answer within {timeout_s:.0f} s; log: {log}")


def stop(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM to the process group ``pid`` leads (a process of the caller's own, known
    to be what it was), SIGKILL after ``grace_s``."""
    processes.stop(pid, grace_s)
