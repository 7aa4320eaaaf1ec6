"""`worker-runtime cluster up | status | down`: the embedded engine's lifecycle.

`up` is idempotent (a cluster that answers is left as it is; one half up is brought up
the rest of the way); `down` stops every process the cluster started, by PID (and start
time: a PID reused since is never signalled)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker_runtime.cluster import buildgrid, postgres, processes
from worker_runtime.cluster.layout import INSTANCE, INSTANCES, ClusterLayout, ClusterState
from worker_runtime.errors import ClusterError
from worker_runtime.executor.limits import Limits
from worker_runtime.executor.sandbox import Sandbox, SandboxError
from worker_runtime.socket_paths import MAX_SOCKET_PATH


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
        "postgres": {
            "pid": state.postgres_pid,
            "alive": _running(layout, state, state.postgres_pid),
            "answers": _postgres_answers(layout),
        },
        # Tenants under their own uids as root; the sandbox and limits as `up` was given.
        "executor_isolation": tenant_arguments(layout, state.executor_options),
        "buildgrid": {
            "version": version,
            "pid": state.buildgrid_pid,
            "alive": _running(layout, state, state.buildgrid_pid),
            "answers": buildgrid.answers(layout),
        },
        "executors": [
            {
                "pid": pid,
                "alive": _running(layout, state, pid),
                "metrics": f"http://127.0.0.1:{port}/metrics" if port else "",
            }
            for pid, port in itertools.zip_longest(
                state.executor_pids, state.executor_metrics_ports, fillvalue=0
            )
        ],
    }


def _postgres_answers(layout: ClusterLayout) -> bool:
    try:
        return postgres.answers(layout)
    except ClusterError:  # PostgreSQL is not installed
        return False


def _marker(layout: ClusterLayout) -> str:
    """What the command line of every process the cluster starts names: its directory."""
    return os.path.join(layout.root, "")


def _record(state: ClusterState, pid: int) -> None:
    """Notes ``pid``'s start time, which tells it from a later process given its PID."""
    started = processes.start_time(pid)
    if started is not None:
        state.start_times[str(pid)] = started


def _save(layout: ClusterLayout, state: ClusterState) -> None:
    """Writes state.json (with the start times of the PIDs it lists, no others)."""
    listed = {str(p) for p in (state.postgres_pid, state.buildgrid_pid, *state.executor_pids)}
    state.start_times = {k: v for k, v in state.start_times.items() if k in listed}
    layout.write_state(state)


def _running(layout: ClusterLayout, state: ClusterState, pid: int) -> bool:
    """Whether ``pid`` is still the process the cluster recorded and runs."""
    return processes.alive(pid, state.start_times.get(str(pid)), _marker(layout))


def _stop(layout: ClusterLayout, state: ClusterState, pid: int, grace_s: float = 10.0) -> None:
    """Stops ``pid``'s process group if it is still the process recorded (never one
    that has its PID now)."""
    processes.stop(pid, grace_s, state.start_times.get(str(pid)), _marker(layout))


#: How long the executors have to go once asked: past their own shutdown grace (in
#: which they finish their actions or hand them back) and the wait for the actions
#: they stop after it, so that none is SIGKILLed mid-report and no action outlives it.
EXECUTOR_STOP_S = 45.0


def _stop_executors(layout: ClusterLayout, state: ClusterState, pids: list[int]) -> None:
    """Stops the executors ``pids`` together (each recorded one still running)."""
    recorded = [(pid, state.start_times.get(str(pid))) for pid in pids]
    processes.stop_all(recorded, EXECUTOR_STOP_S, _marker(layout))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def engine_port(layout: ClusterLayout) -> int:
    """The engine's TCP port: the one it had last (a `[buck2_re_client]` section pasted
    once stays right across `down`, `up` and reboots) if it is free, else a new one,
    which is then kept."""
    try:
        last = int(layout.port_file.read_text())
    except (OSError, ValueError):
        last = 0
    if 0 < last < 65536:
        with socket.socket() as probe:
            # As the server binds it: a connection of the last server's lingering in
            # TIME_WAIT does not make the port taken; a process listening on it does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", last))
                return last
            except OSError:
                pass  # taken meanwhile: a new one
    port = free_port()
    layout.port_file.write_text(f"{port}\n")
    return port


def start_executors(layout: ClusterLayout, state: ClusterState, count: int) -> None:
    """Starts ``count`` executors and returns once each serves its metrics, which it
    does once its bot session exists. ``state`` (and state.json) lists each as soon as
    it is started."""
    state.executor_pids, state.executor_metrics_ports = [], []
    for index in range(count):
        port = free_port()
        pid = start_executor(layout, index, port, state.executor_options)
        state.executor_pids.append(pid)
        state.executor_metrics_ports.append(port)
        _record(state, pid)
        _save(layout, state)
    deadline = time.monotonic() + 60
    for index, (pid, port) in enumerate(
        zip(state.executor_pids, state.executor_metrics_ports, strict=True)
    ):
        while not _answers(port):
            if not _running(layout, state, pid):
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
        # Never through a proxy (`http_proxy` set without 127.0.0.1 in `no_proxy`: every
        # start failed after 60 s as "did not start").
        with _DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=1) as page:
            return b"executor_leases_total" in page.read()
    except OSError:
        return False


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def up(layout: ClusterLayout, executors: int | None = None, options: Sequence[str] = ()) -> None:
    """Starts what is not running; ``options``: the executors' isolation flags. With
    ``executors`` None, the executors running are kept: as many, and with the options
    they were given unless ``options`` names others. One `up` or `down` at a time runs
    on a cluster directory (a second waits)."""
    _check_directory(layout)
    with layout.locked():
        _up(layout, executors, list(options))


def _check_directory(layout: ClusterLayout) -> None:
    """Fails clearly, before anything starts, on a directory the cluster cannot use."""
    for path in (layout.buildgrid_socket, layout.run_dir / ".s.PGSQL.5432"):
        length = len(os.fsencode(str(path)))
        if length > MAX_SOCKET_PATH:
            raise ClusterError(
                f"the cluster directory's path is too long: its Unix socket {path} would be "
                f"{length} bytes, and a socket path may have at most {MAX_SOCKET_PATH} "
                "(choose a shorter --dir)"
            )
    if layout.root.exists() and not layout.root.is_dir():
        raise ClusterError(f"the cluster directory {layout.root} is not a directory")
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClusterError(f"cannot make the cluster directory {layout.root}: {exc}") from exc
    if not os.access(layout.root, os.W_OK | os.X_OK):
        raise ClusterError(f"the cluster directory {layout.root} is not writable")


def _up(layout: ClusterLayout, executors: int | None, options: list[str]) -> None:
    state = layout.read_state()
    if executors is None:
        executors = len(state.executor_pids)
        options = options or state.executor_options
    if (
        _running(layout, state, state.buildgrid_pid)
        and buildgrid.answers(layout)
        and postgres.postmaster(layout)  # BuildGrid does not run without its database
        and postgres.answers(layout)
    ):
        alive = [p for p in state.executor_pids if _running(layout, state, p)]
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
            _stop_executors(layout, state, alive)
            try:
                start_executors(layout, state, executors)
            except BaseException:  # an error, or an interrupt: none of the new set is left
                _stop_executors(layout, state, state.executor_pids)
                state.executor_pids, state.executor_metrics_ports = [], []
                raise
            finally:
                _save(layout, state)  # down() finds every process started
        return
    # A server that no longer answers, or whose database is gone: all of it afresh.
    _stop(layout, state, state.buildgrid_pid)
    # Bots of that server: a fresh set comes with the new one.
    _stop_executors(layout, state, state.executor_pids)
    state.buildgrid_pid = 0
    state.executor_pids, state.executor_metrics_ports = [], []
    state.executor_options = options

    def server_started(pid: int) -> None:
        state.buildgrid_pid = pid
        _record(state, pid)
        _save(layout, state)

    try:
        state.postgres_pid = postgres.start(layout)
        _record(state, state.postgres_pid)
        state.tcp_port = engine_port(layout)
        _save(layout, state)
        buildgrid.start(layout, state.tcp_port, started=server_started)
        start_executors(layout, state, executors)
        _save(layout, state)
    except BaseException:  # an error, or an interrupt (Ctrl-C): nothing is left running
        _save(layout, state)  # down() finds every process started so far
        _down(layout)
        raise


def down(layout: ClusterLayout) -> None:
    """Stops every process the cluster started (after any `up` running on it)."""
    if not layout.root.exists():
        return  # never brought up
    if not layout.root.is_dir():
        raise ClusterError(f"the cluster directory {layout.root} is not a directory")
    with layout.locked():
        _down(layout)


def _down(layout: ClusterLayout) -> None:
    state = layout.read_state()
    # They finish or hand back their leases, then go.
    _stop_executors(layout, state, state.executor_pids)
    _stop(layout, state, state.buildgrid_pid)
    postgres.stop(layout)
    layout.state_file.unlink(missing_ok=True)


def _executor_option_problem(
    layout: ClusterLayout, executors: int | None, options: list[str]
) -> str | None:
    """The executors' own checks of the options `up` would start them with, made before
    anything stops: a running cluster's executors were stopped for a set that then could
    not start (a bad limit, no root, no bubblewrap), and it was left with none."""
    state = layout.read_state() if layout.state_file.exists() else None
    if executors is None:
        executors = len(state.executor_pids) if state else 0
        options = options or (state.executor_options if state else [])
    if executors == 0:
        return None
    value = {
        o: float(options[i + 1]) for i, o in enumerate(options[:-1]) if o.startswith("--limit-")
    }
    limits = Limits(
        None if "--limit-memory" not in value else int(value["--limit-memory"]),
        value.get("--limit-cpus"),
        None if "--limit-pids" not in value else int(value["--limit-pids"]),
    )
    if (problem := limits.problem()) is not None:
        return problem
    if value.get("--limit-disk", 1) <= 0:
        return f"--limit-disk must be more than 0, not {value['--limit-disk']:g}"
    sandboxed = "--sandbox" in options or ("--no-sandbox" not in options and os.geteuid() == 0)
    if sandboxed:
        try:
            Sandbox.find()
        except SandboxError as exc:
            return f"{exc} (pass --no-sandbox to run executors without it)"
    return None


def executor_options(sandbox: bool | None, limits: dict[str, int | float | None]) -> list[str]:
    """The options `up` starts each executor with, each number as the executor reads it
    back (an int never as ``1e+06``, which its int option refuses: a running set was
    stopped for one that could not start)."""
    options = {True: ["--sandbox"], False: ["--no-sandbox"], None: []}[sandbox]
    for name, value in limits.items():
        if value is not None:
            options += [name, str(value) if isinstance(value, int) else repr(float(value))]
    return options


def _count(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return number


def up_main(argv: Sequence[str]) -> int:
    parser = _parser("up")
    parser.add_argument(
        "--executors", type=_count, metavar="N",
        help="bots to start, taking the instances in turn (main, tenant-b, main, ...); "
        "default: as many as the cluster last had (none on a new one), as state.json "
        "records them, even after an unclean stop",
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
    for name, kind in (("--limit-memory", int), ("--limit-cpus", float), ("--limit-pids", int),
                       ("--limit-disk", int)):  # fmt: skip
        parser.add_argument(
            name, type=kind, metavar="N", help=f"the executors' {name} (as `executor` says)"
        )
    args = parser.parse_args(argv)
    limits = ("limit_memory", "limit_cpus", "limit_pids", "limit_disk")
    options = executor_options(
        args.sandbox, {f"--{n.replace('_', '-')}": getattr(args, n) for n in limits}
    )
    layout = ClusterLayout.from_dir(args.dir)
    if (problem := _executor_option_problem(layout, args.executors, options)) is not None:
        parser.error(problem)
    # SIGTERM and SIGHUP (a CI step's timeout, a closed terminal) end it as Ctrl-C does,
    # stopping what it started: by their default action they left it all running. The
    # first one only: a second (a terminal's SIGHUP often comes twice) must not cut that
    # cleanup short. One ignored already (`nohup`) stays ignored.
    stopped_by: list[int] = []

    def interrupted(signum: int, frame: object) -> None:
        if stopped_by:
            return
        stopped_by.append(signum)
        raise KeyboardInterrupt

    taken = [
        number
        for number, untouched in (
            (signal.SIGTERM, signal.SIG_DFL),
            (signal.SIGHUP, signal.SIG_DFL),
            (signal.SIGINT, signal.default_int_handler),
        )
        if signal.getsignal(number) is untouched
    ]
    previous = {number: signal.signal(number, interrupted) for number in taken}
    started = False
    try:
        up(layout, args.executors, options)
        started = True
    except (ClusterError, OSError) as exc:
        sys.stderr.write(f"worker-runtime cluster up: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        if not started:  # one that came after the start stops nothing: it is up
            sys.stderr.write("worker-runtime cluster up: interrupted; what it started is stopped\n")
            return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    try:
        info = describe(layout)
    except (ClusterError, OSError) as exc:
        sys.stderr.write(f"worker-runtime cluster up: it is up, but cannot be described: {exc}\n")
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
    server: Any = info["buildgrid"]
    database: Any = info["postgres"]
    # Up only when both answer: BuildGrid without its database fails every request.
    if not server["answers"]:
        info["state"], code, note = "down", 3, ""
    elif database["answers"]:
        info["state"], code, note = "up", 0, ""
    else:
        info["state"], code = "degraded", 1
        note = " (PostgreSQL does not answer: `cluster up` restarts it)"
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"cluster in {info['dir']}: {info['state']}{note}")
        for name in ("postgres", "buildgrid"):
            print(f"  {name}: {info[name]}")
        print(f"  address: {info['address']} (instance {info['instance']})")
        if info["tcp_address"]:
            print(f"  tcp address (Buck2's RE client): {info['tcp_address']}")
    return code


def down_main(argv: Sequence[str]) -> int:
    args = _parser("down").parse_args(argv)
    try:
        down(ClusterLayout.from_dir(args.dir))
    except (ClusterError, OSError) as exc:
        sys.stderr.write(f"worker-runtime cluster down: error: {exc}\n")
        return 1
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
