"""Composes the executor for the config's ``routing`` (as the execution platform says)
from the local and remote executors and the policy wrappers:

- local, native:  Timeout(Retry(Local)) (under `native` Buck2 sends remote actions
  itself; the runtime only sees the ones it runs locally)
- remote: Timeout(Remote), or LocalFallback(Timeout(Remote), local) with
  ``remote.fallback_local``
- auto:   Auto(slots, remote), ``slots`` LocalSlots(local) counting every local run,
  ``remote`` as above (its fallback through ``slots`` too)
- race:   Timeout(Race(Retry(Local), Remote))

Every Timeout counts from the request's arrival. The remote client is also given what is
left of it, which bounds the execution on the server; the Timeout around it answers at
the timeout whatever holds the request on this side (a wait for a remote thread, a cache
lookup, an upload), and cancelling it cancels the operation on the server.
"""

from __future__ import annotations

from worker_runtime.backends.manager import BackendManager
from worker_runtime.execution.executor import Executor
from worker_runtime.execution.local import LocalExecutor
from worker_runtime.execution.policies import Auto, LocalFallback, LocalSlots, Retry, Timeout

#: What a Timeout around a remote run says it stopped.
STOPPED_REMOTELY = "its remote operation was cancelled on the server"


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
    remote: Executor = Timeout(remote_side, STOPPED_REMOTELY)
    if config.routing == "auto":
        # One count of local runs: auto's own, and fallback_local's after a remote one.
        slots = LocalSlots(local, local_side.capacity)
        if config.remote.fallback_local:
            remote = LocalFallback(remote, slots)
        return Auto(slots, remote)
    if config.remote.fallback_local:
        remote = LocalFallback(remote, local)
    return remote
