"""Forwards one Buck2 worker request to remote execution: reads worker_run's envelope,
builds the Action (remote/action.py) and runs it with the endpoint's client, one client
per runtime settings (GetCapabilities is asked once), on a thread pool of its own (the
client blocks for a whole remote execution; the event loop's default pool is small and
serves other work)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import read_envelope
from worker_runtime.errors import RequestError
from worker_runtime.remote.action import build_action
from worker_runtime.remote.cancellation import Cancellation
from worker_runtime.remote.client import RemoteClient, RemoteResult, RemoteSettings
from worker_runtime.remote.merkle import Blobs

_CLIENTS: dict[RemoteSettings, RemoteClient] = {}
_LOCK = threading.Lock()
#: Remote requests in flight at once (each holds a thread until its result is in).
REMOTE_THREAD_COUNT = 64
REMOTE_THREADS = ThreadPoolExecutor(max_workers=REMOTE_THREAD_COUNT, thread_name_prefix="remote")


def in_remote_thread(
    function: Callable[..., RemoteResult], *args: object
) -> asyncio.Future[RemoteResult]:
    return asyncio.get_running_loop().run_in_executor(
        REMOTE_THREADS, functools.partial(function, *args)
    )


def settings_of(manager: BackendManager) -> RemoteSettings:
    remote = manager.config.remote
    if not remote.endpoint:
        raise RequestError(
            "routing `remote` needs [persistent_workers] remote_endpoint (the REAPI server, "
            "e.g. grpcs://host:443 or unix:///path/to/socket)"
        )
    return RemoteSettings(
        endpoint=remote.endpoint,
        instance=remote.instance_name,
        tls=remote.tls,
        credentials_file=remote.credentials_file,
        tls_ca_file=remote.tls_ca_file,
    )


def client_for(settings: RemoteSettings) -> RemoteClient:
    with _LOCK:
        if settings not in _CLIENTS:
            _CLIENTS[settings] = RemoteClient(settings)
        return _CLIENTS[settings]


class QueuedPastTimeout(Exception):
    """The request's timeout passed while it waited for a remote thread: not sent."""


def forward(
    manager: BackendManager,
    envelope_path: str,
    key_env: dict[str, str],
    timeout_s: int,
    cancellation: Cancellation | None = None,
    may_write: Callable[[], bool] | None = None,
    on_cache_answer: Callable[[bool], None] | None = None,
    deadline: float | None = None,
) -> RemoteResult:
    """``timeout_s`` is the action's own (in its digest, so the same for every run);
    ``deadline`` (``time.monotonic()``) is when the request's timeout, counted from its
    arrival, runs out: the wait for a thread counts, and only what is left is waited for."""
    if cancellation is not None:
        cancellation.check()  # cancelled while it waited for a thread: nothing to do
    if deadline is not None and time.monotonic() >= deadline:
        raise QueuedPastTimeout(
            f"its timeout of {timeout_s} s passed while it waited for one of the "
            f"{REMOTE_THREAD_COUNT} remote threads (all busy with other remote "
            "requests); it was not sent"
        )
    root = Path(manager.cwd)
    envelope = read_envelope(envelope_path, str(root))
    environment = {**manager.config.env, **key_env}
    blobs = Blobs()
    remote = manager.config.remote
    built = build_action(
        manager.config, envelope, environment, root, manager.digests, blobs,
        extra_properties=remote.properties, timeout_s=timeout_s,
        persistent=remote.persistent, cacheable=remote.cache,
    )  # fmt: skip
    execution_timeout_s = float(timeout_s) if timeout_s > 0 else None  # None: the client's
    if deadline is not None:
        execution_timeout_s = max(0.001, deadline - time.monotonic())
    return client_for(settings_of(manager)).run(
        built, blobs, root, cancellation, may_write, execution_timeout_s, on_cache_answer
    )
