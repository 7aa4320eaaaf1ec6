"""Composes the executor for the config's ``routing`` (as the execution platform says)
from the local and remote executors and the policy wrappers:

- local, native:  Timeout(Retry(Local)) (under `native` Buck2 sends remote actions
  itself; the runtime only sees the ones it runs locally)
- remote: Remote, or LocalFallback(Remote, local) with ``remote.fallback_local``
- auto:   Auto(local, remote), where ``remote`` is as above
- race:   Timeout(Race(Retry(Local), Remote))

A remote run is not wrapped in Timeout: the request's timeout goes to the remote client,
which bounds the execution on the server and cancels the operation there.
"""

from __future__ import annotations

from worker_runtime.backends.manager import BackendManager
from worker_runtime.execution.executor import Executor
from worker_runtime.execution.local import LocalExecutor
from worker_runtime.execution.policies import Auto, LocalFallback, Retry, Timeout


def executor_for(manager: BackendManager) -> Executor:
    config = manager.config
    local_side = LocalExecutor(manager)
    retried = Retry(local_side, config.retries)
    local: Executor = Timeout(retried)
    if config.routing in ("local", "native"):
        return local
    # Imported here: a local-only runtime never loads the REAPI client.
    from worker_runtime.execution.race import Race
    from worker_runtime.execution.remote import RemoteExecutor

    remote_side = RemoteExecutor(manager)
    if config.routing == "race":
        return Timeout(Race(retried, remote_side))
    remote: Executor = remote_side
    if config.remote.fallback_local:
        remote = LocalFallback(remote_side, local)
    if config.routing == "auto":
        return Auto(local, remote, local_side.has_free_slot)
    return remote
