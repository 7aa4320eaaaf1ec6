"""The daemon's own entry point and the user commands around it: status, stop, logs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from worker_runtime.daemon import lock
from worker_runtime.daemon.control import try_connect
from worker_runtime.daemon.paths import DaemonPaths, other_versions
from worker_runtime.daemon.processes import is_running
from worker_runtime.errors import USAGE_EXIT_CODE
from worker_runtime.logs import latest_lines, log_root

MIB = 1 << 20


def daemon_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="worker-runtime daemon",
        description="The per-project daemon that owns the backends (started by `serve`; not "
        "meant to be run by hand).",
    )
    parser.add_argument("--project-root", required=True)
    parser.add_argument(
        "--daemon-version", help="the version its front looks for (default: this code's)"
    )
    parser.add_argument("--idle-timeout", type=float, default=3 * 3600.0)
    parser.add_argument("--memory-budget-mb", type=int)
    parser.add_argument("--reclaim-interval", type=float, default=5.0)
    parser.add_argument("--shutdown-grace", type=float, default=5.0)
    parser.add_argument("--log-dir")
    parser.add_argument("--log-cap-mb", type=int, default=16)
    args = parser.parse_args(argv)
    paths = DaemonPaths.for_project(args.project_root, args.daemon_version)
    # The lock first, before anything is imported or made: a daemon that loses it (another
    # starting, or one still stopping) exits 0 at once, leaving no log directory behind.
    held = lock.take(paths)
    if held is None:
        return 0

    from worker_runtime.buck2 import grpc_tuning
    from worker_runtime.daemon.reclaim import default_budget_bytes
    from worker_runtime.daemon.server import Daemon, DaemonSettings
    from worker_runtime.logs import start_run_logging, unusable_log_dir

    os.chdir(args.project_root)
    budget = args.memory_budget_mb * MIB if args.memory_budget_mb else default_budget_bytes()
    cap = args.log_cap_mb * MIB
    settings = DaemonSettings(
        args.idle_timeout, budget, args.reclaim_interval, args.shutdown_grace, cap
    )
    try:
        log_dir = start_run_logging(args.log_dir, prefix="daemon-", cap_bytes=cap)
    except OSError as exc:  # the front that started it reports this, and exits 2 too
        sys.stderr.write(f"worker-runtime daemon: error: {unusable_log_dir(exc)}\n")
        return USAGE_EXIT_CODE
    return grpc_tuning.run(Daemon(paths, settings, log_dir, held).run())


def _common(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--project-root",
        default=os.getcwd(),
        help="the Buck2 project whose daemon to address (default: the current directory)",
    )
    return parser


def _seconds(text: str) -> float:
    """A --timeout: a finite number of seconds above 0 (a socket refuses the others)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not (value > 0 and value <= 1e6):  # NaN too
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (at most 1e6): {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text}")
    return value


class NotAnswering(TimeoutError):
    """The daemon accepted the connection but did not answer in time (stopped, stuck);
    or, ``accepted`` False, took no connection at all (its queue of them full)."""

    def __init__(self, socket: Path, timeout_s: float, accepted: bool = True) -> None:
        pid = _state_pid(socket.with_suffix(".json"))  # DaemonPaths.state beside its socket
        self.pid = pid
        who = f"daemon pid {pid}" if pid else f"the daemon on {socket}"
        kill = f"`kill {pid}`" if pid else "killing it"
        did = (
            "accepted the connection but did not answer"
            if accepted
            else "took no connection (its queue of them full)"
        )
        super().__init__(
            f"{who} {did} within {timeout_s:g} s: it is "
            f"stuck or stopped (a SIGSTOP, a debugger). Its log is in the newest daemon-* "
            f"directory of {log_root(None)}. `worker-runtime stop` asks it to stop and, if "
            f"it still does not answer, ends it; or end it with {kill}. The next Buck2 "
            "command starts a new daemon."
        )


def _read_state(state: Path) -> dict[str, Any]:
    """A daemon's state file as it wrote it, or {} if there is none (or it is unreadable)."""
    try:
        found = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _state_pid(state: Path) -> int | None:
    """The pid the daemon wrote in its state file, if it is readable."""
    pid = _read_state(state).get("pid")
    return pid if isinstance(pid, int) else None


def _status(paths: DaemonPaths, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The daemon's status, None if no daemon listens, NotAnswering if it does not answer."""
    try:
        client = try_connect(paths.socket, timeout_s=timeout_s)
    except TimeoutError:  # it takes no connection: its queue full
        raise NotAnswering(paths.socket, timeout_s, accepted=False) from None
    if client is None:
        return None
    try:
        return client.request({"op": "status"})
    except (TimeoutError, ConnectionError, ValueError):
        raise NotAnswering(paths.socket, timeout_s) from None
    finally:
        client.close()


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"daemon pid {status['pid']}, version {status['version']}, up {_age(status['uptime_s'])}",
        f"  project: {status['project_root']}",
        f"  socket:  {status['socket']}",
        f"  logs:    {status['log_dir']}",
        f"  memory budget: {status['memory_budget_bytes'] / MIB:.0f} MiB, evictions: {status['evictions']}",
    ]
    if status.get("retiring_for"):
        lines.append(f"  retiring: replaced by version {status['retiring_for']}")
    lines.append(f"  attached Buck2 commands: {len(status['attachments'])}")
    header = f"{'key':<12} {'tool':<16} {'pid':>7} {'RSS MiB':>8} {'served':>7} {'in flight':>9} {'idle':>6}"
    lines += ["", header]
    for b in status["backends"]:
        lines.append(
            f"{b['key']:<12} {b['tool'][:16]:<16} {b['pid']:>7} {b['rss_bytes'] / MIB:>8.1f} "
            f"{b['requests_served']:>7} {b['in_flight']:>9} {_age(b['idle_s']):>6}"
        )
    t = status["totals"]
    lines.append(
        f"{'total':<12} {str(t['backends']) + ' backend(s)':<16} {'':>7} {t['rss_bytes'] / MIB:>8.1f} "
        f"{t['requests_served']:>7} {t['in_flight']:>9}"
    )
    return "\n".join(lines)


def status_main(argv: Sequence[str]) -> int:
    parser = _common("worker-runtime status", "Show the project's daemon and its backends.")
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    parser.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds to wait for an answer (default: 10)"
    )
    args = parser.parse_args(argv)
    paths = DaemonPaths.for_project(args.project_root)
    try:
        status = _status(paths, args.timeout)
    except NotAnswering as exc:
        if args.json:
            print(
                json.dumps({"running": True, "answering": False, "pid": exc.pid, "error": str(exc)})
            )
        else:
            sys.stderr.write(f"worker-runtime: error: {exc}\n")
        return 2
    if status is None:
        if lock.held(paths):  # no socket, the lock held: stopping, or not listening yet
            pid, stopping = lock.holder(paths)
            if args.json:
                print(json.dumps({"running": True, "stopping": stopping, "pid": pid}))
            elif stopping:
                print(
                    f"the worker-runtime daemon for {paths.project_root}"
                    f"{f' (pid {pid})' if pid else ''} is stopping: it takes no new command, "
                    "and a new one starts once it has exited"
                )
            else:
                print(
                    f"the worker-runtime daemon for {paths.project_root} is starting: it "
                    "holds its lock and does not listen yet; ask again in a moment"
                )
            return 1
        if args.json:
            print(json.dumps({"running": False, "socket": str(paths.socket)}))
        else:
            print(f"no worker-runtime daemon runs for {paths.project_root} (socket {paths.socket})")
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def stop_main(argv: Sequence[str]) -> int:
    parser = _common("worker-runtime stop", "Drain and stop the project's daemon.")
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds to wait (default: 30)"
    )
    args = parser.parse_args(argv)
    paths = DaemonPaths.for_project(args.project_root)
    try:
        pid = stop_daemon_at(paths.socket, args.timeout)
    except NotAnswering as exc:
        if exc.pid is None or not is_running(exc.pid):
            sys.stderr.write(f"worker-runtime: error: {exc}\n")
            return 1
        if lock.holder(paths)[1]:  # it closed its socket as it began to stop: wait for it
            pid = None
        else:  # it cannot drain if it does not answer: end it (its backends die with it)
            os.kill(exc.pid, signal.SIGKILL)
            print(f"daemon pid {exc.pid} did not answer; it was killed (SIGKILL)")
            return 0
    except TimeoutError as exc:
        sys.stderr.write(f"worker-runtime: error: {exc}\n")
        return 1
    if pid is None and lock.held(paths):  # stopping already, or not listening yet
        deadline = time.monotonic() + args.timeout
        while lock.held(paths):
            holder, stopping = lock.holder(paths)
            if not stopping:  # starting: once it listens, it is asked like any other
                try:
                    pid = stop_daemon_at(paths.socket, max(0.1, deadline - time.monotonic()))
                except NotAnswering:
                    pass
                except TimeoutError as exc:  # asked, and still running at the deadline
                    sys.stderr.write(f"worker-runtime: error: {exc}\n")
                    return 1
                if pid is not None:
                    print(f"stopped daemon pid {pid} (it was starting)")
                    return 0
            if time.monotonic() > deadline:
                kill = f"; if it is stuck, end it with `kill -9 {holder}`" if holder else ""
                sys.stderr.write(
                    f"worker-runtime: error: the daemon{f' (pid {holder})' if holder else ''} "
                    f"holds its lock and has neither answered nor exited within "
                    f"{args.timeout:g} s{kill}\n"
                )
                return 1
            time.sleep(0.05)
        print("the daemon that was stopping (or starting) has exited")
        return 0
    others = _stop_other_versions(paths, args.timeout)
    if pid is None and not others:
        print(f"no worker-runtime daemon runs for {paths.project_root}")
    elif pid is not None:
        print(f"stopped daemon pid {pid}")
    for other, version in others:
        print(f"stopped daemon pid {other} (runtime version {version}, an earlier install)")
    return 0


def _stop_other_versions(paths: DaemonPaths, timeout_s: float) -> list[tuple[int, str]]:
    """Stops this project's daemons of other runtime versions (an install since upgraded
    or edited: this command's own version names another daemon, and `stop` found none);
    their pids and versions."""
    stopped = []
    for state in other_versions(paths):
        try:
            pid = stop_daemon_at(Path(str(state["socket"])), timeout_s)
        except (OSError, ValueError, KeyError, TimeoutError):
            continue
        if pid is not None:
            stopped.append((pid, str(state.get("version"))))
    return stopped


def stop_daemon_at(socket: Path, timeout_s: float = 30.0) -> int | None:
    """Asks the daemon listening on ``socket`` to drain and stop, and waits until it has
    exited. Returns its pid, or None if no daemon listens there; raises TimeoutError if
    it is still running after ``timeout_s``."""
    answer_s = min(10.0, timeout_s)
    try:
        client = try_connect(socket, timeout_s=answer_s)
    except TimeoutError:  # it takes no connection: its queue full
        raise NotAnswering(socket, answer_s, accepted=False) from None
    if client is None:
        return None
    try:
        reply = client.request({"op": "stop"})
    except (TimeoutError, ConnectionError, ValueError):
        raise NotAnswering(socket, answer_s) from None
    finally:
        client.close()
    pid = int(reply["pid"])
    deadline = time.monotonic() + timeout_s
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_running(pid):
        raise TimeoutError(f"daemon pid {pid} still runs after {timeout_s:g} s")
    return pid


@contextlib.contextmanager
def private_daemon_dir(prefix: str = "wrp-") -> Iterator[Path]:
    """Points WORKER_RUNTIME_DIR at a fresh private directory for the block; on leaving it,
    stops every daemon started there and removes it. The demo and the benchmarks use it so
    that they leave nothing running and never touch the user's own daemons."""
    previous = os.environ.get("WORKER_RUNTIME_DIR")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.environ["WORKER_RUNTIME_DIR"] = str(path)
    try:
        yield path
    finally:
        for socket in path.glob("*.sock"):
            with contextlib.suppress(OSError, ConnectionError, TimeoutError, ValueError):
                stop_daemon_at(socket)
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop("WORKER_RUNTIME_DIR", None)
        else:
            os.environ["WORKER_RUNTIME_DIR"] = previous


def newest_daemon_log_dir(root: Path) -> Path | None:
    try:
        runs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("daemon-")]
    except OSError:
        return None
    return max(runs, key=lambda p: p.stat().st_mtime, default=None)


def logs_main(argv: Sequence[str]) -> int:
    parser = _common("worker-runtime logs", "Show where the daemon's logs are and tail them.")
    parser.add_argument(
        "-n", "--lines", type=_count, default=40, help="lines to show (default: 40)"
    )
    parser.add_argument("--log-dir", help="the log root, if the config set one")
    args = parser.parse_args(argv)
    paths = DaemonPaths.for_project(args.project_root)
    answering = True
    try:
        status = _status(paths)
    except NotAnswering as exc:
        sys.stderr.write(f"worker-runtime: warning: {exc}\n")
        status, answering = None, False
    # The project's daemon says where its logs are; one that does not answer, or one that
    # died, in the state file it left. Otherwise the newest under the log root, which
    # every project shares.
    recorded = status["log_dir"] if status else _read_state(paths.state).get("log_dir")
    if isinstance(recorded, str):
        directory: Path | None = Path(recorded)
        if status:
            note = ""
        elif answering:
            note = " (the project's last daemon, which no longer runs)"
        else:
            note = " (the project's daemon, which does not answer)"
    else:
        directory = newest_daemon_log_dir(log_root(args.log_dir))
        note = (
            " (no daemon runs for this project now: the newest under the log root, which "
            "all projects share, so maybe another project's)"
        )
    if directory is None:
        print(f"no daemon logs under {log_root(args.log_dir)}")
        return 1
    print(f"daemon logs: {directory}{note}")
    try:
        paths_in = sorted(directory.iterdir())
    except FileNotFoundError:
        print("  (the directory is gone: removed since the daemon made it)")
        return 1
    for path in paths_in:
        with contextlib.suppress(FileNotFoundError):  # a log rotated away meanwhile
            print(f"  {path.name}  {path.stat().st_size} bytes")
    runtime_log = directory / "runtime.log"
    if runtime_log.exists():
        print(f"\n--- last {args.lines} lines of {runtime_log}")
        print("\n".join(latest_lines(runtime_log, args.lines)))
    return 0
