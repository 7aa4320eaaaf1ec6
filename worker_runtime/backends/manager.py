"""The backend manager: one pool per worker key, retiring pools whose tool files changed."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from worker_runtime.backends.key import ToolDigests, WorkerKey
from worker_runtime.backends.pool import BackendPool, MultiplexPool, SingleplexPool
from worker_runtime.backends.process import BackendSpec
from worker_runtime.config import RuntimeConfig
from worker_runtime.digests import DigestCache

LOGGER = logging.getLogger(__name__)

#: Variables of the runtime's own environment that a backend must not inherit:
#: a Buck2-aware backend would otherwise try to serve Buck2's socket itself.
HIDDEN_ENV = ("WORKER_SOCKET",)


class BackendManager:
    """Owns every backend pool of one runtime and finds the pool for a request's key."""

    def __init__(
        self,
        config: RuntimeConfig,
        cwd: str,
        log_dir: Path,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cwd = cwd
        #: Digests of files: request inputs (sent to backends in WorkRequest.inputs), tool
        #: inputs (part of the worker key) and remote inputs.
        self.digests = DigestCache()
        self.log_dir = log_dir
        self.tools = ToolDigests(config.tool_inputs, cwd, self.digests)
        self.pools: dict[WorkerKey, BackendPool] = {}
        self._keys: dict[tuple[object, ...], WorkerKey] = {}
        #: Pools replaced by a newer key whose processes are still finishing requests.
        self._retired: set[BackendPool] = set()
        source = os.environ if base_env is None else base_env
        base = {k: v for k, v in source.items() if k not in HIDDEN_ENV}
        base.update(config.env)
        self._base_env = base

    def key_for(
        self,
        key_env: tuple[tuple[str, str], ...],
        digests: tuple[tuple[str, str], ...] | None = None,
    ) -> WorkerKey:
        """The key of a request with these key_env values and tool file ``digests`` (by
        default: read now, which may wait on the file system)."""
        if digests is None:
            digests = self.tools.current() if self.config.tool_inputs else ()
        memo = (key_env, digests)
        key = self._keys.get(memo)
        if key is None:
            key = WorkerKey(
                self.config.command, key_env, self.config.protocol, self.config.multiplex, digests
            )
            self._keys[memo] = key
        return key

    def pool_for(self, key: WorkerKey) -> BackendPool:
        existing = self.pools.get(key)
        if existing is not None:
            return existing
        for old_key, old in list(self.pools.items()):
            if old_key.family == key.family:
                LOGGER.info(
                    "tool inputs changed (key %s -> %s): retiring the old backends when idle",
                    old_key.short,
                    key.short,
                )
                old.retire()
                del self.pools[old_key]
                self._retired.add(old)
        env = dict(self._base_env)
        env.update(key.env)
        spec = BackendSpec(
            key=key,
            env=env,
            cwd=self.cwd,
            cancellable=self.config.cancellable,
            frame_stall_timeout_s=self.config.frame_stall_timeout_s,
            cancel_grace_s=self.config.cancel_grace_s,
            log_dir=self.log_dir,
            max_response_bytes=self.config.max_response_mb << 20,
        )
        pool: BackendPool
        if key.multiplex:
            pool = MultiplexPool(spec, self.config.max_instances)
        else:
            pool = SingleplexPool(spec, self.config.max_instances)
        self.pools[key] = pool
        return pool

    def forget_unused_pools(self) -> int:
        """Forgets the current pools that hold nothing (``BackendPool.unused``), and the
        keys no pool has: a ``key_env`` value that changes from action to action, or a tool
        rebuilt again and again, would otherwise grow them for the daemon's life. A later
        request of a forgotten key makes its pool anew. Returns how many were forgotten."""
        unused = [key for key, pool in self.pools.items() if pool.unused]
        for key in unused:
            del self.pools[key]
        if len(self._keys) > len(self.pools):
            self._keys = {memo: key for memo, key in self._keys.items() if key in self.pools}
        return len(unused)

    def all_pools(self) -> list[BackendPool]:
        """Current pools and retired ones that still hold something (``unused``: a
        process, one stopping, or a request whose backend is still starting)."""
        self._retired = {p for p in self._retired if not p.unused}
        return [*self.pools.values(), *self._retired]

    @property
    def in_flight(self) -> int:
        return sum(pool.in_flight for pool in self.all_pools())

    async def stop_all(self) -> None:
        pools = [*self.pools.values(), *self._retired]
        self.pools.clear()
        await asyncio.gather(*(pool.stop() for pool in pools))
