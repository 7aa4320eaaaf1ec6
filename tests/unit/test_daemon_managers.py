"""The daemon's sweep forgets managers no command uses: it chose them once, then awaited
each one's stop, and a command that attached meanwhile could take one it forgot next
(its backends then unseen by `status`, reclamation and shutdown). Against the real
Daemon, its attach included, with a backend slow to exit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.conftest import fake_backend
from worker_runtime.config import config_from_mapping, config_to_mapping
from worker_runtime.daemon.paths import DaemonPaths
from worker_runtime.daemon.server import Daemon, DaemonSettings


def test_a_command_attaching_during_the_sweep_keeps_its_manager_known(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    paths = DaemonPaths(str(tmp_path), str(tmp_path / "project"), "test")
    config = {"command": fake_backend()}
    full = config_to_mapping(config_from_mapping(config).validated())

    lock = open(tmp_path / "lock", "a+")  # noqa: SIM115 - closed below

    async def scenario() -> tuple[bool, list[int], list[int]]:
        daemon = Daemon(paths, DaemonSettings(3600, 1 << 40, 5, 1), tmp_path, lock)
        env_a = {"WHO": "A", "PATH": os.environ["PATH"]}
        env_b = {"WHO": "B", "PATH": os.environ["PATH"]}
        a = daemon._manager_for(full, env_a)
        daemon._manager_for(full, env_b)
        pool = a.pool_for(a.key_for(()))
        proc = await pool._spawn()
        stop = proc.stop

        async def slow_stop(*args: object, **kwargs: object) -> None:
            await asyncio.sleep(0.5)  # a JVM taking a moment to exit on SIGTERM
            await stop(*args, **kwargs)  # type: ignore[arg-type]

        proc.stop = slow_stop  # type: ignore[method-assign]
        pool.stop_if_idle(proc, "idle")

        async def attach_b() -> object:
            await asyncio.sleep(0.1)  # a Buck2 command starts while A's backend exits
            message = {
                "op": "attach", "socket": str(tmp_path / "w.sock"), "config": config,
                "env": env_b, "front_pid": os.getpid(),
            }  # fmt: skip
            _, attachment = await daemon._attach(message, [])
            return attachment

        attachment, _ = await asyncio.gather(attach_b(), daemon._drop_unused_managers())
        used = attachment.server.handler.manager  # type: ignore[attr-defined]
        known = any(m is used for m in daemon.managers.values())
        await used.pool_for(used.key_for(()))._spawn()
        started = [p.pid for pl in used.all_pools() for p in pl.processes]
        seen = [b["pid"] for b in (await daemon.status())["backends"]]
        await used.stop_all()
        await attachment.server.drain_and_stop(0.1)  # type: ignore[attr-defined]
        return known, started, seen

    try:
        known, started, seen = asyncio.run(scenario())
    finally:
        lock.close()
    assert known, "the attached command's manager was forgotten by the sweep"
    assert started and set(started) <= set(seen)
