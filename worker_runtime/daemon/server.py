"""The daemon: one per (user, project root, runtime version). It owns the backends, serves
each attached Buck2 socket directly (so a request makes no extra hop through the front),
and reclaims idle or oversized backends.

Only one daemon per identity can run: it holds an exclusive ``flock`` on its lock file
for its whole life, so a second one started by a racing front exits at once, and a lock
never goes stale (the kernel drops it with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from worker_runtime.atomic_files import write_atomically
from worker_runtime.backends.manager import BackendManager
from worker_runtime.buck2.requests import RequestHandler
from worker_runtime.buck2.server import SocketServer, socket_server
from worker_runtime.config import config_from_mapping, config_to_mapping
from worker_runtime.daemon.control import (
    MAX_LINE,
    close_all,
    encode,
    peer_uid,
    read_first_message,
)
from worker_runtime.daemon.handover import adopt
from worker_runtime.daemon.lock import still_named
from worker_runtime.daemon.paths import DaemonPaths, other_versions
from worker_runtime.daemon.processes import is_running
from worker_runtime.daemon.reclaim import Reclaimer
from worker_runtime.errors import ConfigError
from worker_runtime.logs import cap_logs
from worker_runtime.socket_paths import bind_private

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonSettings:
    """Daemon-wide settings, taken from the config of the front that started the daemon."""

    idle_timeout_s: float
    budget_bytes: int
    reclaim_interval_s: float
    shutdown_grace_s: float
    #: Each log file is cut back past this size (logs.py).
    log_cap_bytes: int = 16 << 20


@dataclass
class Attachment:
    """A Buck2 socket served for one front (one Buck2 command's worker)."""

    socket_path: str
    server: SocketServer
    front_pid: int
    #: The front's control connection: told why, when the daemon stops on purpose.
    control: asyncio.StreamWriter | None = None
    attached_at: float = field(default_factory=time.time)


#: How long a shutdown waits for attaches whose servers are still starting.
ATTACH_START_WAIT_S = 5.0

#: Environment variable set in every backend a daemon starts: "<daemon id>:<daemon pid>".
BACKEND_MARKER = "WORKER_RUNTIME_DAEMON"


def reap_orphans(daemon_id: str) -> int:
    """Kills what the backends of a dead daemon of this identity left running.

    A backend dies with its daemon (parent-death signal), but processes it started itself
    do not. They carry the marker in their environment; those whose daemon pid is no
    longer alive are killed. Returns how many were killed."""
    killed = 0
    uid = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            marker = proc.environ().get(BACKEND_MARKER, "")
            owner, _, pid_text = marker.partition(":")
            if owner != daemon_id or not pid_text.isdigit() or is_running(int(pid_text)):
                continue
            LOGGER.warning(
                "killing pid %d %s, left behind by a backend of dead daemon pid %s",
                proc.pid,
                proc.cmdline()[:3],
                pid_text,
            )
            proc.kill()
            killed += 1
        except psutil.Error:
            continue
    return killed


class Daemon:
    def __init__(
        self, paths: DaemonPaths, settings: DaemonSettings, log_dir: Path, lock: IO[str]
    ) -> None:
        self.paths = paths
        #: The project's daemon lock (daemon/lock.py), taken before this was made.
        self.lock = lock
        self.settings = settings
        self.log_dir = log_dir
        self.started = time.time()
        self.managers: dict[str, BackendManager] = {}
        self.attachments: dict[str, Attachment] = {}
        self.retiring_for: str | None = None
        self.reclaimer = Reclaimer(lambda: list(self.managers.values()), settings.budget_bytes)
        self._last_activity = time.monotonic()
        self._stop = asyncio.Event()
        #: Why the daemon stops, told to every attached front (which tells Buck2's user).
        self._stop_reason = ""
        #: The control connections being served (asyncio holds tasks only weakly).
        self._control_tasks: set[asyncio.Task[None]] = set()
        #: The files this daemon made (socket, state), by path: (device, inode).
        self._own_files: dict[str, tuple[int, int]] = {}
        #: Attaches past their first check and not yet answered (a server starting): the
        #: shutdown lets them end (each refuses itself once it sees the stop).
        self._attaching = 0
        self._no_attach_pending = asyncio.Event()
        self._no_attach_pending.set()
        #: Set once the lock's path names another file or none (``_check_displaced``).
        self.displaced = False

    # -- life ---------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            return await self._run_locked()
        finally:
            self.lock.close()  # the next daemon may start

    async def _run_locked(self) -> int:
        socket_path = str(self.paths.socket)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # we hold the lock: whatever is there is stale
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(control, socket_path)
            control.listen(socket.SOMAXCONN)
            self._own(socket_path)
        except OSError:
            control.close()
            raise
        control.setblocking(False)
        acceptor = asyncio.create_task(self._accept_forever(control))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_for, f"it received {signum.name}")
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self._write_state()
        LOGGER.info(
            "daemon %s (version %s) for %s started, pid %d, socket %s",
            self.paths.daemon_id,
            self.paths.version,
            self.paths.project_root,
            os.getpid(),
            socket_path,
        )
        await self._retire_other_versions()
        reaper = asyncio.create_task(asyncio.to_thread(reap_orphans, self.paths.daemon_id))
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._stop.wait()
        finally:
            # `status`, `stop` and fronts: stopping, not starting; and written before the
            # socket closes, so a connection it resets is known for a stopping daemon's.
            # (A disk that refuses it must not skip the shutdown.)
            try:
                self._write_state(stopping=True)
            except OSError as exc:
                LOGGER.warning("cannot write the state file %s: %s", self.paths.state_name, exc)
            sweeper.cancel()
            reaper.cancel()
            acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor  # its reader is off the socket before the socket closes
            control.close()
            await self._shutdown()
            self._remove_own(socket_path)
            self._remove_own(self.paths.state_name)
            LOGGER.info("daemon stopped")
        return 0

    def _stop_for(self, reason: str) -> None:
        """Stops the daemon, the first reason given being the one its fronts are told."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def _shutdown(self) -> None:
        LOGGER.info(
            "shutting down (%s): %d attached socket(s)", self._stop_reason, len(self.attachments)
        )
        attachments = list(self.attachments.values())
        self.attachments.clear()
        for attachment in attachments:
            # Before the drain, so that a front can tell a stop from a death (it keeps
            # waiting for the connection's end: the drain still answers its requests).
            if attachment.control is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    attachment.control.write(encode({"op": "closing", "reason": self._stop_reason}))
        await asyncio.gather(
            *(a.server.drain_and_stop(self.settings.shutdown_grace_s) for a in attachments)
        )
        # An attach whose server was starting as the stop came refuses itself and stops
        # that server once started: let it (a start takes milliseconds; 5 s at most).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_attach_pending.wait(), ATTACH_START_WAIT_S)
        await asyncio.gather(*(m.stop_all() for m in self.managers.values()))

    def _own(self, path: str) -> None:
        info = os.stat(path)
        self._own_files[path] = (info.st_dev, info.st_ino)

    def _remove_own(self, path: str) -> None:
        """Removes ``path`` if it is still the file this daemon made there. A displaced
        daemon removes nothing: its successor may have made its own since, and a freed
        inode number may come back for it (a socket's cannot: it stays bound)."""
        if self.displaced or not still_named(self.lock, self.paths):
            return
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        if self._own_files.get(path) == (info.st_dev, info.st_ino):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _write_state(self, stopping: bool = False) -> None:
        if self.displaced or not still_named(self.lock, self.paths):
            return  # the path is another daemon's to write (or nobody's)
        state = {
            "stopping": stopping,
            "pid": os.getpid(),
            "version": self.paths.version,
            "project_root": self.paths.project_root,
            "socket": str(self.paths.socket),
            "log_dir": str(self.log_dir),
            "started": self.started,
        }
        write_atomically(self.paths.state, json.dumps(state).encode(), 0o600)
        self._own(self.paths.state_name)

    async def _retire_other_versions(self) -> None:
        """Asks daemons of other runtime versions for this project to drain and exit."""
        for state in other_versions(self.paths):
            try:
                reader, writer = await asyncio.open_unix_connection(str(state["socket"]))
                writer.write(encode({"op": "retire", "by": self.paths.version}))
                await writer.drain()
                await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                LOGGER.info(
                    "asked daemon pid %s (version %s) to retire",
                    state.get("pid"),
                    state.get("version"),
                )
            except (OSError, TimeoutError, KeyError):
                continue

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reclaim_interval_s)
            try:
                await self.reclaimer.sweep()
                for manager in self.managers.values():
                    manager.forget_unused_pools()
                await self._drop_unused_managers()
                await asyncio.to_thread(cap_logs, self._backend_logs(), self.settings.log_cap_bytes)
            except Exception:
                LOGGER.exception("reclamation sweep failed")
            self._check_idle()

    def _backend_logs(self) -> list[Path]:
        """The stderr logs of every backend process still running."""
        return [
            proc.log_path
            for manager in self.managers.values()
            for pool in manager.all_pools()
            for proc in pool.processes
        ]

    async def _drop_unused_managers(self) -> None:
        """Forgets managers that no attached command uses and whose pools hold nothing.
        All are chosen and forgotten before any is awaited: an attach during the wait for
        one to stop (its backends' exits) takes a manager, which must then stay known."""
        in_use = {id(a.server.handler.manager) for a in self.attachments.values()}
        unused = [
            (identity, manager)
            for identity, manager in self.managers.items()
            if id(manager) not in in_use and all(p.unused for p in manager.all_pools())
        ]
        for identity, _ in unused:
            del self.managers[identity]
        await asyncio.gather(*(manager.stop_all() for _, manager in unused))

    def _busy(self) -> bool:
        return bool(self.attachments) or any(m.in_flight for m in self.managers.values())

    def _check_displaced(self) -> None:
        """Notices, once, that the lock's path no longer names this daemon's lock: its
        directory was removed or replaced. No front can find it any more (its socket went
        with the directory), and the next one starts a daemon of its own: this one
        serves the commands still attached to it, then exits."""
        if self.displaced or still_named(self.lock, self.paths):
            return
        self.displaced = True
        LOGGER.warning(
            "this daemon's lock file %s was removed or replaced (its directory %s was "
            "removed?): no new Buck2 command can reach this daemon, so it exits once the "
            "commands attached to it end; the next command starts a new daemon",
            self.paths.lock_name,
            self.paths.directory_name,
        )

    def _check_idle(self) -> None:
        self._check_displaced()
        if self._busy():
            self._last_activity = time.monotonic()
            return
        if self.displaced:
            self._stop_for("its directory was removed")
            return
        if self.retiring_for is not None:
            LOGGER.info("retired in favour of version %s and idle: exiting", self.retiring_for)
            self._stop_for(f"it retired in favour of version {self.retiring_for}")
            return
        idle = time.monotonic() - self._last_activity
        if idle > self.settings.idle_timeout_s:
            LOGGER.info(
                "no Buck2 command for %.0f s (idle timeout %g s): exiting",
                idle,
                self.settings.idle_timeout_s,
            )
            self._stop_for("it was idle")

    # -- control connections -------------------------------------------------------------
    async def _accept_forever(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(control)
            except OSError as exc:  # out of descriptors, say: the next try may do
                LOGGER.warning("cannot accept a control connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._control_connection(conn))
            self._control_tasks.add(task)
            task.add_done_callback(self._control_done)

    def _control_done(self, task: asyncio.Task[None]) -> None:
        self._control_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOGGER.error("a control connection failed", exc_info=task.exception())

    async def _control_connection(self, conn: socket.socket) -> None:
        """Reads the connection's first message with the descriptors it may carry (an
        attach's listening socket: daemon/handover.py), then serves it as a stream."""
        conn.setblocking(False)
        try:
            first, fds = await read_first_message(conn)
        except (OSError, ValueError) as exc:
            LOGGER.info("control connection ended: %s", exc)
            conn.close()
            return
        try:
            reader = asyncio.StreamReader(limit=MAX_LINE)
            reader.feed_data(first)
            protocol = asyncio.StreamReaderProtocol(reader)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        except OSError as exc:
            LOGGER.info("control connection ended: %s", exc)
            close_all(fds)
            conn.close()
            return
        await self._connection(reader, writer, fds)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fds: list[int]
    ) -> None:
        """Serves one control connection; ``fds`` came with its first message (those that
        message does not take are closed once it is answered)."""
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid != os.getuid():
            LOGGER.warning("refused a control connection from uid %d", uid)
            close_all(fds)
            writer.write(
                encode({"ok": False, "error": f"this daemon serves uid {os.getuid()} only"})
            )
            writer.close()
            return
        attachment: Attachment | None = None
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except (ValueError, RecursionError) as exc:
                    writer.write(encode({"ok": False, "error": f"bad control message: {exc}"}))
                    continue
                op = message.get("op")
                reply: dict[str, Any]
                if op == "attach":
                    reply, attachment = await self._attach(message, fds, writer)
                elif op == "detach":
                    if attachment is not None:
                        await self._detach(attachment)
                        attachment = None
                    reply = {"ok": True}
                elif op == "status":
                    reply = await self.status()
                elif op == "stop":
                    LOGGER.info("stop requested")
                    reply = {"ok": True, "pid": os.getpid()}
                    self._stop_for("`worker-runtime stop` asked it to")
                elif op == "retire":
                    self.retiring_for = str(message.get("by", "another version"))
                    LOGGER.info("asked to retire by version %s", self.retiring_for)
                    reply = {"ok": True}
                    self._check_idle()
                elif op == "ping":
                    reply = {"ok": True, "pid": os.getpid(), "version": self.paths.version}
                else:
                    reply = {"ok": False, "error": f"unknown control operation {op!r}"}
                close_all(fds)  # only the first message may carry descriptors
                fds.clear()
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, ValueError) as exc:
            LOGGER.info("control connection ended: %s", exc)
        finally:
            close_all(fds)
            if attachment is not None and attachment.socket_path in self.attachments:
                LOGGER.warning(
                    "front pid %d of %s went away without detaching: draining its socket",
                    attachment.front_pid,
                    attachment.socket_path,
                )
                await self._detach(attachment)
            writer.close()

    async def _attach(
        self,
        message: dict[str, Any],
        fds: list[int],
        control: asyncio.StreamWriter | None = None,
    ) -> tuple[dict[str, Any], Attachment | None]:
        """Serves the message's socket: the listening socket it carries in ``fds`` (taken
        from the list) if it says ``"listener": true``, else one bound here. ``control``
        is the front's connection, told why if the daemon stops while it is attached."""
        # A retiring daemon still serves fronts of its own version (a command of the old
        # install that is still running): it exits once none is attached.
        if self._stop.is_set():
            return {"ok": False, "retry": True, "error": "this daemon is stopping"}, None
        self._attaching += 1
        self._no_attach_pending.clear()
        try:
            return await self._attach_checked(message, fds, control)
        finally:
            self._attaching -= 1
            if not self._attaching:
                self._no_attach_pending.set()

    async def _attach_checked(
        self,
        message: dict[str, Any],
        fds: list[int],
        control: asyncio.StreamWriter | None,
    ) -> tuple[dict[str, Any], Attachment | None]:
        listener: socket.socket | None = None
        try:
            config = config_from_mapping(message.get("config"), "attach").validated()
            socket_path = message["socket"]
            env = message.get("env") or {}
            if not isinstance(socket_path, str) or not isinstance(env, dict):
                raise ConfigError("attach needs a socket path and an env object")
            if message.get("listener"):
                if len(fds) != 1:
                    raise ConfigError(
                        f"an attach with a listener carries one descriptor, not {len(fds)}"
                    )
                listener = adopt(fds.pop(), socket_path)
            if socket_path in self.attachments:
                raise ConfigError(f"{socket_path} is already served by this daemon")
            manager = self._manager_for(config_to_mapping(config), env)
            handler = RequestHandler(manager, self.log_dir)
            server = socket_server(handler, socket_path, listener)
            await server.start()
        except (ConfigError, KeyError, OSError, ValueError) as exc:
            if listener is not None:
                listener.close()
            LOGGER.warning("attach refused: %s", exc)
            return {"ok": False, "error": str(exc)}, None
        except RuntimeError as exc:  # grpcio's way of saying that it could not bind
            if listener is not None:
                listener.close()
            LOGGER.warning("cannot serve %s: %s", message.get("socket"), exc)
            return {"ok": False, "error": f"cannot serve {message.get('socket')}: {exc}"}, None
        if self._stop.is_set():
            # The daemon began to stop while this server started: its shutdown may have
            # taken the attachments to drain already, and nothing would stop this one.
            # A listener's path stays: it is the front's, which tries again elsewhere.
            await server.drain_and_stop(0.0, keep_path=listener is not None)
            LOGGER.info("attach of %s refused: the daemon began to stop", socket_path)
            return {"ok": False, "retry": True, "error": "this daemon is stopping"}, None
        attachment = Attachment(socket_path, server, int(message.get("front_pid", 0)), control)
        self.attachments[socket_path] = attachment
        self._last_activity = time.monotonic()
        LOGGER.info(
            "attached %s for front pid %d (%s; server %s)",
            socket_path,
            attachment.front_pid,
            list(config.command),
            config.server,
        )
        reply = {
            "ok": True,
            "pid": os.getpid(),
            "log_dir": str(self.log_dir),
            "version": self.paths.version,
        }
        return reply, attachment

    def _manager_for(self, config: dict[str, Any], env: dict[str, str]) -> BackendManager:
        """Fronts with the same config and environment share one manager, so its backends
        stay warm from one Buck2 command to the next."""
        identity = json.dumps([config, env], sort_keys=True)
        manager = self.managers.get(identity)
        if manager is None:
            # The marker lets a later daemon find what this one's backends leave behind
            # if this daemon is killed (see reap_orphans).
            marked = dict(env, **{BACKEND_MARKER: f"{self.paths.daemon_id}:{os.getpid()}"})
            manager = BackendManager(
                config_from_mapping(config), self.paths.project_root, self.log_dir, base_env=marked
            )
            self.managers[identity] = manager
        return manager

    async def _detach(self, attachment: Attachment) -> None:
        self.attachments.pop(attachment.socket_path, None)
        await attachment.server.drain_and_stop(self.settings.shutdown_grace_s)
        self._last_activity = time.monotonic()
        LOGGER.info("detached %s", attachment.socket_path)
        if self.retiring_for is not None:
            self._check_idle()

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        usages = await self.reclaimer.usage()
        now = time.monotonic()
        backends = []
        for usage in usages:
            proc = usage.proc
            backends.append(
                {
                    "key": proc.spec.key.short,
                    "tool": proc.spec.tool,
                    "pid": proc.pid,
                    "rss_bytes": usage.rss,
                    "requests_served": proc.requests_served,
                    "in_flight": proc.in_flight,
                    "idle_s": 0.0 if proc.in_flight else round(now - proc.last_used, 1),
                    "recycling": proc.recycle,
                }
            )
        return {
            "ok": True,
            "running": True,
            "pid": os.getpid(),
            "version": self.paths.version,
            "project_root": self.paths.project_root,
            "socket": str(self.paths.socket),
            "log_dir": str(self.log_dir),
            "uptime_s": round(time.time() - self.started, 1),
            "retiring_for": self.retiring_for,
            "memory_budget_bytes": self.settings.budget_bytes,
            "evictions": self.reclaimer.evictions,
            "attachments": [
                {
                    "socket": a.socket_path,
                    "front_pid": a.front_pid,
                    "attached_s": round(time.time() - a.attached_at, 1),
                    "in_flight": a.server.handler.in_flight,
                }
                for a in self.attachments.values()
            ],
            "backends": backends,
            "totals": {
                "backends": len(backends),
                "rss_bytes": sum(b["rss_bytes"] for b in backends),
                "requests_served": sum(b["requests_served"] for b in backends),
                "in_flight": sum(b["in_flight"] for b in backends),
            },
        }
