"""`worker-runtime cluster up | status | down`: the embedded engine's lifecycle.

`up` is idempotent (a cluster that answers is left as it is; one half up is brought up
the rest of the way); `down` stops every process the cluster started, by PID."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from worker_runtime.cluster import buildgrid, postgres
from worker_runtime.cluster.layout import INSTANCE, INSTANCES, ClusterLayout, ClusterState
from worker_runtime.errors import ClusterError


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"worker-runtime cluster {command}")
    parser.add_argument(
        "--dir",
        help="the cluster's directory (default: $WORKER_RUNTIME_CLUSTER_DIR or .cache/cluster)",
    )
    return parser


def describe(layout: ClusterLayout) -> dict[str, object]:
    state = layout.read_state()
    try:
        version = buildgrid.flavour().describe()
    except ClusterError:
        version = "not installed"
    tcp = f"grpc://127.0.0.1:{state.tcp_port}" if state.tcp_port else ""
    return {
        "dir": str(layout.root),
        "address": layout.address,
        "tcp_address": tcp,
        "instance": INSTANCE,
        # What a Buck2 project puts in its .buckconfig to build on this engine.
        "buck2_re_client": {
            "engine_address": tcp,
            "action_cache_address": tcp,
            "cas_address": tcp,
            "instance_name": INSTANCE,
            "tls": "false",
        }
        if tcp
        else {},
        "postgres": {"pid": state.postgres_pid, "alive": buildgrid.alive(state.postgres_pid)},
        # Tenants under their own uids as root; the sandbox and limits as `up` was given.
        "executor_isolation": tenant_arguments(layout, state.executor_options),
        "buildgrid": {
            "version": version,
            "pid": state.buildgrid_pid,
            "alive": buildgrid.alive(state.buildgrid_pid),
            "answers": buildgrid.answers(layout),
        },
        "executors": [
            {
                "pid": pid,
                "alive": buildgrid.alive(pid),
                "metrics": f"http://127.0.0.1:{port}/metrics" if port else "",
            }
            for pid, port in itertools.zip_longest(
                state.executor_pids, state.executor_metrics_ports, fillvalue=0
            )
        ],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_executors(layout: ClusterLayout, state: ClusterState, count: int) -> None:
    """Starts ``count`` executors and returns once each serves its metrics, which it
    does once its bot session exists. ``state`` lists each as soon as it is started."""
    state.executor_pids, state.executor_metrics_ports = [], []
    for index in range(count):
        port = free_port()
        state.executor_pids.append(start_executor(layout, index, port, state.executor_options))
        state.executor_metrics_ports.append(port)
    deadline = time.monotonic() + 60
    for index, (pid, port) in enumerate(
        zip(state.executor_pids, state.executor_metrics_ports, strict=True)
    ):
        while not _answers(port):
            if not buildgrid.alive(pid):
                raise ClusterError(
                    f"executor {index} exited while starting; log: "
                    f"{layout.logs / f'{executor_name(index)}.log'}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"executor {index} did not start within 60 s")
            time.sleep(0.05)


def _answers(port: int) -> bool:
    """Whether an executor's metrics are on ``port`` (not just any listener)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as page:
            return b"executor_leases_total" in page.read()
    except OSError:
        return False


def executor_instance(index: int) -> str:
    """The instance (tenant) executor ``index`` serves: they take them in turn."""
    return INSTANCES[index % len(INSTANCES)]


def executor_name(index: int) -> str:
    """Its bot id, and the name of its work directory and log."""
    return f"executor-{index}-{executor_instance(index)}"


#: This checkout (the directory holding the worker_runtime package).
CHECKOUT = Path(__file__).resolve().parents[2]
#: The uids the executors give their tenants when the cluster runs as root.
TENANT_UID_RANGE = "200000-200999"


def tenant_arguments(layout: ClusterLayout, options: Sequence[str] = ()) -> list[str]:
    """As root, each tenant under its own uid from one map shared by every executor;
    otherwise none (each executor runs its one tenant as this user). Then ``options``
    (`--sandbox`, `--no-sandbox`, `--limit-*`). The sandbox is the executor's own default
    with tenants; in it, this checkout is seen read-only (the tests' workers and their
    interpreter's packages live in it)."""
    arguments = []
    if os.geteuid() == 0:
        uid_map = layout.root / "executors" / "tenant-uids.json"
        arguments += ["--uid-range", TENANT_UID_RANGE, "--uid-map", str(uid_map)]
    sandboxed = "--sandbox" in options or (os.geteuid() == 0 and "--no-sandbox" not in options)
    arguments += [option for option in options if option not in ("--sandbox", "--no-sandbox")]
    if sandboxed:  # said outright, so that the same choice reads the same
        arguments += ["--sandbox", "--sandbox-read-only", str(CHECKOUT)]
    elif os.geteuid() == 0:
        arguments.append("--no-sandbox")
    return arguments


def isolation_arguments(pid: int) -> list[str] | None:
    """The tenant and isolation arguments a running executor was started with (those
    after its ``--metrics-port N``, as ``start_executor`` gives them); None if unknown."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        return argv[argv.index("--metrics-port") + 2 :]
    except (OSError, ValueError):
        return None


def start_executor(
    layout: ClusterLayout, index: int, metrics_port: int, options: Sequence[str]
) -> int:
    """Executor number ``index``, detached, logging to logs/, serving its metrics on
    127.0.0.1:``metrics_port``: they take the instances (tenants) in turn, each serving
    one."""
    instance = executor_instance(index)
    name = executor_name(index)
    workdir = layout.root / "executors" / name
    workdir.mkdir(parents=True, exist_ok=True)
    log = layout.logs / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker_runtime", "executor", "--server", layout.address,
             "--instance", instance, "--bot-id", name, "--workdir", str(workdir),
             "--metrics-port", str(metrics_port), *tenant_arguments(layout, options)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return process.pid


def up(layout: ClusterLayout, executors: int, options: Sequence[str] = ()) -> dict[str, object]:
    """Starts what is not running; ``options``: the executors' isolation flags."""
    options = list(options)
    state = layout.read_state()
    if buildgrid.alive(state.buildgrid_pid) and buildgrid.answers(layout):
        alive = [p for p in state.executor_pids if buildgrid.alive(p)]
        # Compared with what the running executors were given (as root, no option and
        # --sandbox are one; an older checkout gave them --no-sandbox by default).
        wanted = tenant_arguments(layout, options)
        changed = len(alive) != len(state.executor_pids) or any(
            isolation_arguments(pid) != wanted for pid in alive
        )
        if changed or len(alive) != executors:
            # Executors died, or another count or options are wanted: a fresh set (bot ids
            # stay unique).
            state.executor_options = options
            for pid in alive:
                buildgrid.stop(pid, grace_s=30.0)
            try:
                start_executors(layout, state, executors)
            finally:
                layout.write_state(state)  # down() finds every process started
        return describe(layout)
    buildgrid.stop(state.buildgrid_pid)  # a server that no longer answers
    for pid in state.executor_pids:  # bots of that server: a fresh set comes with the new one
        buildgrid.stop(pid, grace_s=30.0)
    state.executor_pids, state.executor_metrics_ports = [], []
    state.executor_options = options
    try:
        if not buildgrid.alive(postgres.pid(layout)):
            state.postgres_pid = postgres.start(layout)
        else:
            state.postgres_pid = postgres.pid(layout)
        state.tcp_port = free_port()
        layout.write_state(state)
        state.buildgrid_pid = buildgrid.start(layout, state.tcp_port)
        layout.write_state(state)
        start_executors(layout, state, executors)
        layout.write_state(state)
    except ClusterError:
        layout.write_state(state)  # down() finds every process started so far
        down(layout)
        raise
    return describe(layout)


def down(layout: ClusterLayout) -> None:
    state = layout.read_state()
    for pid in state.executor_pids:  # they finish or hand back their leases, then go
        buildgrid.stop(pid, grace_s=30.0)
    buildgrid.stop(state.buildgrid_pid)
    postgres.stop(layout)
    layout.state_file.unlink(missing_ok=True)


def up_main(argv: Sequence[str]) -> int:
    parser = _parser("up")
    parser.add_argument(
        "--executors", type=int, default=0, metavar="N",
        help="bots to start, taking the instances in turn (main, tenant-b, main, ...)",
    )  # fmt: skip
    sandbox = parser.add_mutually_exclusive_group()
    sandbox.add_argument(
        "--sandbox", action="store_const", const=True, dest="sandbox",
        help="executors run each action and worker in namespaces of its own (bubblewrap); "
        "the default as root, where each tenant has its own uid",
    )  # fmt: skip
    sandbox.add_argument(
        "--no-sandbox", action="store_const", const=False, dest="sandbox",
        help="executors run actions and workers without the sandbox (their own uids still)",
    )  # fmt: skip
    for name, kind in (("--limit-memory", int), ("--limit-cpus", float), ("--limit-pids", int)):
        parser.add_argument(
            name, type=kind, metavar="N", help=f"the executors' {name} (as `executor` says)"
        )
    args = parser.parse_args(argv)
    options = {True: ["--sandbox"], False: ["--no-sandbox"], None: []}[args.sandbox]
    for name in ("limit_memory", "limit_cpus", "limit_pids"):
        if getattr(args, name) is not None:
            options += [f"--{name.replace('_', '-')}", f"{getattr(args, name):g}"]
    layout = ClusterLayout.from_dir(args.dir)
    try:
        info = up(layout, args.executors, options)
    except ClusterError as exc:
        sys.stderr.write(f"worker-runtime cluster up: error: {exc}\n")
        return 1
    version = info["buildgrid"]["version"]  # type: ignore[index]
    print(
        f"cluster up: {info['address']} (instance {INSTANCE}, BuildGrid {version}); "
        f"logs in {layout.logs}"
    )
    settings = info["buck2_re_client"]
    if isinstance(settings, dict) and settings:
        print(f"\nFor Buck2's RE client, in .buckconfig:\n{buckconfig_section(settings)}")
    return 0


def buckconfig_section(settings: dict[str, str]) -> str:
    """The [buck2_re_client] section that points Buck2 at this engine."""
    lines = ["[buck2_re_client]", *(f"{key} = {value}" for key, value in settings.items())]
    return "\n".join(lines) + "\n"


def status_main(argv: Sequence[str]) -> int:
    parser = _parser("status")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)
    info = describe(ClusterLayout.from_dir(args.dir))
    running = bool(info["buildgrid"]["answers"])  # type: ignore[index]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"cluster in {info['dir']}: {'up' if running else 'down'}")
        for name in ("postgres", "buildgrid"):
            print(f"  {name}: {info[name]}")
        print(f"  address: {info['address']} (instance {info['instance']})")
        if info["tcp_address"]:
            print(f"  tcp address (Buck2's RE client): {info['tcp_address']}")
    return 0 if running else 3


def down_main(argv: Sequence[str]) -> int:
    args = _parser("down").parse_args(argv)
    down(ClusterLayout.from_dir(args.dir))
    print("cluster down")
    return 0


def main(argv: Sequence[str]) -> int:
    commands = {"up": up_main, "status": status_main, "down": down_main}
    if not argv or argv[0] not in commands:
        sys.stderr.write(
            "usage: worker-runtime cluster {up [--executors N],status [--json],down} [--dir DIR]\n"
        )
        return 2
    return commands[argv[0]](argv[1:])
