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
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_runtime.backends.manager import BackendManager
from worker_runtime.buck2.requests import RequestHandler
from worker_runtime.buck2.server import Buck2SocketServer
from worker_runtime.config import config_from_mapping, config_to_mapping
from worker_runtime.daemon.control import MAX_LINE, encode, peer_uid
from worker_runtime.daemon.paths import DaemonPaths
from worker_runtime.daemon.reclaim import Reclaimer
from worker_runtime.errors import ConfigError

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonSettings:
    """Daemon-wide settings, taken from the config of the front that started the daemon."""

    idle_timeout_s: float
    budget_bytes: int
    reclaim_interval_s: float
    shutdown_grace_s: float


@dataclass
class Attachment:
    """A Buck2 socket served for one front (one Buck2 command's worker)."""

    socket_path: str
    server: Buck2SocketServer
    front_pid: int
    attached_at: float = field(default_factory=time.time)


class Daemon:
    def __init__(self, paths: DaemonPaths, settings: DaemonSettings, log_dir: Path) -> None:
        self.paths = paths
        self.settings = settings
        self.log_dir = log_dir
        self.started = time.time()
        self.managers: dict[str, BackendManager] = {}
        self.attachments: dict[str, Attachment] = {}
        self.retiring_for: str | None = None
        self.reclaimer = Reclaimer(lambda: list(self.managers.values()), settings.budget_bytes)
        self._last_activity = time.monotonic()
        self._stop = asyncio.Event()

    # -- life ---------------------------------------------------------------------------
    async def run(self) -> int:
        lock = open(self.paths.lock, "a+")  # noqa: SIM115, ASYNC230 - held for the daemon's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOGGER.info("another daemon holds %s; exiting", self.paths.lock)
            lock.close()
            return 0
        try:
            return await self._run_locked()
        finally:
            lock.close()

    async def _run_locked(self) -> int:
        socket_path = str(self.paths.socket)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # we hold the lock: whatever is there is stale
        old_umask = os.umask(0o177)
        try:
            control = await asyncio.start_unix_server(
                self._connection, path=socket_path, limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
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
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            control.close()
            await self._shutdown()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.state)
            LOGGER.info("daemon stopped")
        return 0

    async def _shutdown(self) -> None:
        LOGGER.info("shutting down: %d attached socket(s)", len(self.attachments))
        attachments = list(self.attachments.values())
        self.attachments.clear()
        await asyncio.gather(
            *(a.server.drain_and_stop(self.settings.shutdown_grace_s) for a in attachments)
        )
        await asyncio.gather(*(m.stop_all() for m in self.managers.values()))

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "version": self.paths.version,
            "project_root": self.paths.project_root,
            "socket": str(self.paths.socket),
            "log_dir": str(self.log_dir),
            "started": self.started,
        }
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.paths.state)

    async def _retire_other_versions(self) -> None:
        """Asks daemons of other runtime versions for this project to drain and exit."""
        for state_file in self.paths.directory.glob("*.json"):
            if state_file == self.paths.state:
                continue
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            if (
                state.get("project_root") != self.paths.project_root
                or state.get("version") == self.paths.version
            ):
                continue
            try:
                reader, writer = await asyncio.open_unix_connection(state["socket"])
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
                self.reclaimer.sweep()
            except Exception:
                LOGGER.exception("reclamation sweep failed")
            self._check_idle()

    def _busy(self) -> bool:
        return bool(self.attachments) or any(m.in_flight for m in self.managers.values())

    def _check_idle(self) -> None:
        if self._busy():
            self._last_activity = time.monotonic()
            return
        if self.retiring_for is not None:
            LOGGER.info("retired in favour of version %s and idle: exiting", self.retiring_for)
            self._stop.set()
            return
        idle = time.monotonic() - self._last_activity
        if idle > self.settings.idle_timeout_s:
            LOGGER.info(
                "no Buck2 command for %.0f s (idle timeout %g s): exiting",
                idle,
                self.settings.idle_timeout_s,
            )
            self._stop.set()

    # -- control connections -------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid != os.getuid():
            LOGGER.warning("refused a control connection from uid %d", uid)
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
                except ValueError as exc:
                    writer.write(encode({"ok": False, "error": f"bad control message: {exc}"}))
                    continue
                op = message.get("op")
                reply: dict[str, Any]
                if op == "attach":
                    reply, attachment = await self._attach(message)
                elif op == "detach":
                    if attachment is not None:
                        await self._detach(attachment)
                        attachment = None
                    reply = {"ok": True}
                elif op == "status":
                    reply = self.status()
                elif op == "stop":
                    LOGGER.info("stop requested")
                    reply = {"ok": True, "pid": os.getpid()}
                    self._stop.set()
                elif op == "retire":
                    self.retiring_for = str(message.get("by", "another version"))
                    LOGGER.info("asked to retire by version %s", self.retiring_for)
                    reply = {"ok": True}
                    self._check_idle()
                elif op == "ping":
                    reply = {"ok": True, "pid": os.getpid(), "version": self.paths.version}
                else:
                    reply = {"ok": False, "error": f"unknown control operation {op!r}"}
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, ValueError) as exc:
            LOGGER.info("control connection ended: %s", exc)
        finally:
            if attachment is not None and attachment.socket_path in self.attachments:
                LOGGER.warning(
                    "front pid %d of %s went away without detaching: draining its socket",
                    attachment.front_pid,
                    attachment.socket_path,
                )
                await self._detach(attachment)
            writer.close()

    async def _attach(self, message: dict[str, Any]) -> tuple[dict[str, Any], Attachment | None]:
        if self.retiring_for is not None:
            return {
                "ok": False,
                "error": f"this daemon (version {self.paths.version}) is being replaced by version "
                f"{self.retiring_for}; run the new version's worker-runtime",
            }, None
        try:
            config = config_from_mapping(message.get("config"), "attach").validated()
            socket_path = message["socket"]
            env = message.get("env") or {}
            if not isinstance(socket_path, str) or not isinstance(env, dict):
                raise ConfigError("attach needs a socket path and an env object")
            if socket_path in self.attachments:
                raise ConfigError(f"{socket_path} is already served by this daemon")
            manager = self._manager_for(config_to_mapping(config), env)
            server = Buck2SocketServer(RequestHandler(manager, self.log_dir), socket_path)
            await server.start()
        except (ConfigError, KeyError, OSError) as exc:
            LOGGER.warning("attach refused: %s", exc)
            return {"ok": False, "error": str(exc)}, None
        attachment = Attachment(socket_path, server, int(message.get("front_pid", 0)))
        self.attachments[socket_path] = attachment
        self._last_activity = time.monotonic()
        LOGGER.info(
            "attached %s for front pid %d (%s)",
            socket_path,
            attachment.front_pid,
            list(config.command),
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
            manager = BackendManager(
                config_from_mapping(config), self.paths.project_root, self.log_dir, base_env=env
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
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        backends = []
        for usage in self.reclaimer.usage():
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
