"""The front: what Buck2 launches as the worker when the daemon is on (the default).

It makes sure the project's daemon runs (starting it, detached in its own session, if
needed), asks it to serve Buck2's WORKER_SOCKET with this worker's config, and then only
waits: requests go from Buck2 straight to the daemon. On SIGTERM (the end of the Buck2
command) it asks the daemon to detach and exits 0 at once; the daemon drains the
socket's in-flight requests on its own. If the
daemon dies it says so on stderr (the file Buck2 points users to), naming the daemon's
log, and exits 1; the next Buck2 command starts a new daemon.

It never imports grpc, and with the plain form that worker_tool writes (`serve --config
FILE`) it does not even parse the config: it hands the file's JSON to the daemon, which
checks it, and reads it itself only to start a daemon or to explain a refusal. Buck2
polls the socket at 0, 50, 150 and 350 ms and waits for the server's answer; for the
plain form the ``worker-runtime`` command already listens on the socket (entry.py, handover.py),
and the front passes that listening socket to the daemon with the attach, so Buck2's
50 ms poll connects and the daemon answers as soon as it has taken the socket over.
"""

from __future__ import annotations

import os
import select
import sys
import time

from worker_runtime.daemon import lock
from worker_runtime.daemon.control import ControlClient, try_connect
from worker_runtime.daemon.handover import take_early, withdraw
from worker_runtime.daemon.paths import DaemonPaths, private_dir
from worker_runtime.errors import USAGE_EXIT_CODE, ConfigError, WorkerRuntimeError
from worker_runtime.socket_paths import check_socket_length

#: mypy takes it as true; typing itself is not imported (it costs a front's start).
TYPE_CHECKING = False
if TYPE_CHECKING:  # the config module costs a start more than all of the rest here
    import _socket
    import signal
    import subprocess
    from collections.abc import Callable
    from typing import Any

    from worker_runtime.config import RuntimeConfig
else:
    # The C module under ``signal``, which imports ``enum`` (and contextlib, socket and
    # collections.abc are not imported either): a front waits on nothing it can do without.
    import _signal as signal

#: Variables of the front's environment that differ from one Buck2 command to the next
#: and must not split the backends into new ones.
FRONT_ENV_IGNORED = frozenset({"WORKER_SOCKET", "PWD", "OLDPWD", "SHLVL", "_"})
DAEMON_START_TIMEOUT_S = 30.0
#: How long a front waits for the daemon's answer to its attach.
ATTACH_TIMEOUT_S = 30.0


class DaemonStartError(WorkerRuntimeError):
    """The daemon could not be started or reached; the front exits with ``exit_code``
    (2 when the daemon refused its settings, as the front itself would)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def daemon_command(paths: DaemonPaths, config: RuntimeConfig) -> list[str]:
    # -P: never import from the current directory (a project may have a top-level
    # package or module named like ours or like one of our dependencies).
    command = [
        sys.executable, "-P", "-m", "worker_runtime", "daemon",
        "--project-root", paths.project_root,
        # The version this front looks for: worked out again from the source files, it
        # would differ if they changed in between (an edit, an upgrade), and the front
        # would wait for a daemon that listens under another name.
        "--daemon-version", paths.version,
        "--idle-timeout", str(config.daemon_idle_timeout_s),
        "--reclaim-interval", str(config.reclaim_interval_s),
        "--shutdown-grace", str(config.shutdown_grace_s),
        "--log-cap-mb", str(config.log_cap_mb),
    ]  # fmt: skip
    if config.memory_budget_mb is not None:
        command += ["--memory-budget-mb", str(config.memory_budget_mb)]
    if config.log_dir:
        command.append(f"--log-dir={config.log_dir}")  # one argument: it may start with `-`
    return command


#: The daemon's start-up output file is started afresh once it grows past this.
SPAWN_LOG_LIMIT = 1 << 20


def spawn_daemon(paths: DaemonPaths, config: RuntimeConfig) -> subprocess.Popen[bytes]:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "WORKER_SOCKET"}
    if env.get("WORKER_RUNTIME_DIR"):  # as this front took it: the daemon starts elsewhere
        env["WORKER_RUNTIME_DIR"] = paths.directory_name
    try:
        large = os.stat(paths.spawn_log_name).st_size > SPAWN_LOG_LIMIT
    except OSError:
        large = False
    with open(paths.spawn_log_name, "wb" if large else "ab") as out:
        return subprocess.Popen(
            daemon_command(paths, config),
            cwd=paths.directory_name,  # the daemon changes to the project root itself
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # out of Buck2's process group: its SIGTERM/SIGKILL never reach us
        )


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return "(empty)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def connect_or_start(
    paths: DaemonPaths, config_for_start: Callable[[], RuntimeConfig]
) -> ControlClient:
    """A control connection to the project's daemon, starting the daemon if none runs
    (with the settings of ``config_for_start()``, called only then).

    Fronts that race here may each spawn a daemon; exactly one gets the lock and serves,
    the others exit at once, and every front connects to the one that serves.
    """
    client = try_connect(paths.socket_name, ATTACH_TIMEOUT_S)
    if client is not None:
        return client
    config = config_for_start()
    spawned = spawn_daemon(paths, config)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    delay = 0.005
    while time.monotonic() < deadline:
        client = try_connect(paths.socket_name, ATTACH_TIMEOUT_S)
        if client is not None:
            return client
        code = spawned.poll()
        if code not in (None, 0):
            raise DaemonStartError(
                f"the worker-runtime daemon exited with code {spawned.returncode} at start; "
                f"its output ({paths.spawn_log_name}):\n{tail(paths.spawn_log_name)}",
                USAGE_EXIT_CODE if code == USAGE_EXIT_CODE else 1,
            )
        if code == 0 and not lock.held(paths):
            # It lost the lock to a daemon that has let it go since (one that was
            # stopping, or one that failed to start): start one again. While the lock is
            # held, the holder is starting (it will listen soon) or stopping (it lets go
            # once its requests are drained): wait for it, spawning nothing meanwhile.
            spawned = spawn_daemon(paths, config)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    pid, stopping = lock.holder(paths)
    if spawned.poll() == 0 and stopping and lock.held(paths):
        raise DaemonStartError(
            f"the worker-runtime daemon for this project{f' (pid {pid})' if pid else ''} "
            f"is still stopping after {DAEMON_START_TIMEOUT_S:g} s: it lets the requests it "
            "has finish (up to its shutdown_grace_s), and no new daemon can start until it "
            "has exited; run the command again then (`worker-runtime status` says when)"
        )
    raise DaemonStartError(
        f"the worker-runtime daemon did not come up within {DAEMON_START_TIMEOUT_S:g} s; "
        f"its output ({paths.spawn_log_name}):\n{tail(paths.spawn_log_name)}"
    )


def attach(
    paths: DaemonPaths,
    mapping: dict[str, Any],
    config_for_start: Callable[[], RuntimeConfig],
    socket_path: str,
    listener: _socket.socket | None = None,
) -> tuple[ControlClient, dict[str, Any]]:
    """Asks the daemon to serve ``socket_path`` with the config ``mapping`` (the JSON
    object of a config file, which the daemon checks), on ``listener`` if given (a socket
    already listening on it, sent along: daemon/handover.py)."""
    message = {
        "op": "attach",
        "socket": socket_path,
        "config": mapping,
        "env": {k: v for k, v in os.environ.items() if k not in FRONT_ENV_IGNORED},
        "front_pid": os.getpid(),
    }
    fds: tuple[int, ...] = ()
    if listener is not None:
        message["listener"] = True
        fds = (listener.fileno(),)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while True:
        client = connect_or_start(paths, config_for_start)
        try:
            reply = client.request(message, fds)
        except TimeoutError:
            # Connected, and no answer: a stuck or stopped daemon, which trying again
            # would only wait on once more.
            client.close()
            from pathlib import Path

            from worker_runtime.daemon.commands import NotAnswering

            stuck = NotAnswering(Path(paths.socket_name), ATTACH_TIMEOUT_S)
            raise DaemonStartError(str(stuck)) from None
        except (ConnectionError, OSError):
            # A daemon that is dying can still take a connection for an instant (its
            # listening socket is the last thing the kernel closes): try again.
            reply = {"ok": False, "retry": True, "error": "the daemon closed the connection"}
        if reply.get("ok") or not reply.get("retry") or time.monotonic() > deadline:
            break
        client.close()  # a daemon that is stopping: wait for it, then start a new one
        time.sleep(0.05)
    if not reply.get("ok"):
        client.close()
        raise ConfigError(str(reply.get("error")))
    client.sock.settimeout(None)
    return client, reply


def refuse(listener: _socket.socket, socket_path: str, reason: str, received: list[int]) -> None:
    """After a failed attach: Buck2's connections to the early socket get ``reason`` as
    their answer (daemon/refusal.py) until the end of the command; with none, the front
    exits at once and Buck2, which never connected, shows its stderr."""
    try:  # noqa: SIM105 - not contextlib (see the imports)
        os.unlink(socket_path)  # from here on Buck2 cannot connect, and sees the exit
    except FileNotFoundError:
        pass
    try:
        if received or not _has_waiting_connection(listener):
            return
        from worker_runtime.daemon.refusal import serve_refusal

        serve_refusal(listener, reason, received)
    finally:
        listener.close()


def _has_waiting_connection(listener: _socket.socket) -> bool:
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


def run_front(
    socket_path: str,
    mapping: dict[str, Any],
    config_for_start: Callable[[], RuntimeConfig],
) -> int:
    """Serves Buck2 through the daemon until SIGTERM/SIGINT; returns the exit code.

    ``mapping`` is the config as the daemon reads it; ``config_for_start()`` checks it
    here, which is needed only to start a daemon or to explain why the daemon refused it
    (a ConfigError, reported as a usage error)."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: received.append(number))
    # The socket the worker-runtime command already listens on (worker_runtime/entry.py, only
    # for a config that the daemon's own HTTP/2 server serves), which the daemon takes over.
    listener = take_early(socket_path)
    try:
        check_socket_length(socket_path)
        paths = DaemonPaths.for_project(os.getcwd())
        private_dir(paths.directory_name)
        try:
            client, reply = attach(paths, mapping, config_for_start, socket_path, listener)
        except ConfigError:
            config_for_start()  # the reason in the user's terms, if the config is at fault
            raise
    except (ConfigError, DaemonStartError, OSError) as exc:
        sys.stderr.write(f"worker-runtime: error: {exc}\n")
        sys.stderr.flush()
        if isinstance(exc, ConfigError):
            code = USAGE_EXIT_CODE
        else:
            code = exc.exit_code if isinstance(exc, DaemonStartError) else 1
        if listener is not None:
            refuse(listener, socket_path, str(exc), received)
        return code
    except BaseException:
        if listener is not None:
            withdraw(listener, socket_path)
        raise
    if listener is not None:
        listener.close()  # the daemon serves its own copy; this one would only keep it open
    sys.stderr.write(
        f"worker-runtime: serving {socket_path} through daemon pid {reply['pid']}; "
        f"daemon logs in {reply['log_dir']}\n"
    )
    sys.stderr.flush()
    closing = ""  # why the daemon stops, if it says so before it goes
    while not received:
        ready, _, _ = select.select([client.fileno(), wake_read], [], [])
        if received:
            break
        if wake_read in ready:
            os.read(wake_read, 64)
        if client.fileno() not in ready:
            continue
        message = client.receive()
        if message is not None:
            if message.get("op") == "closing":
                closing = str(message.get("reason") or "it was stopped")
            continue
        # Nothing serves this socket again in this command (Buck2 would dial it again,
        # but only this front's daemon served it): say what happened where Buck2 points
        # the user (this stderr) and exit, which Buck2 reports as "Worker exited". The
        # next command starts a new daemon.
        client.close()
        sys.stderr.write(
            f"worker-runtime: error: the daemon (pid {reply['pid']}) serving {socket_path} "
            + (
                f"was stopped ({closing}); the requests it had in flight were answered, or "
                f"cancelled after shutdown_grace_s"
                if closing
                else "died without saying it would stop (killed, or it crashed); the "
                "requests in flight on it failed"
            )
            + f", and this worker exits for the rest of this command. The next buck2 "
            f"command starts a new daemon. Daemon log: {reply['log_dir']}/runtime.log (its "
            f"start-up output: {paths.spawn_log_name})\n"
        )
        return 1
    # End of the Buck2 command: ask the daemon to detach, and go. The daemon drains this
    # socket's in-flight requests itself (for up to `shutdown_grace_s`, then cancels them
    # cleanly), so Buck2's SIGTERM-to-SIGKILL window is never spent here. At the normal
    # end of a command nothing is in flight; a request that is (an interrupted command)
    # fails for Buck2 as a worker exit does, and still finishes in the daemon.
    try:
        client.send({"op": "detach"})
    except OSError as exc:
        sys.stderr.write(f"worker-runtime: warning: detaching from the daemon failed: {exc}\n")
    client.close()
    return 0
