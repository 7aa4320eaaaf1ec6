"""A multiplex pool's request ids: int32 on the wire, so after 2^31 - 1 they begin again
at 1, and an id a process still holds (in flight, a cancel's, a cancel answered lately)
is never given out twice. They began again above the highest id in flight, and the first
id after that was not checked against the bound: 2^31 went out (a proto worker's request
failed to encode, a JSON worker got an id out of its range)."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.conftest import fake_backend
from worker_runtime.backends.manager import BackendManager
from worker_runtime.backends.pool import MultiplexPool
from worker_runtime.config import RuntimeConfig
from worker_runtime.protocol.messages import MAX_REQUEST_ID


class HoldingProcess:
    """Stands in for a backend process that still holds some ids."""

    def __init__(self, held: set[int]) -> None:
        self.held = held

    def holds_id(self, request_id: int) -> bool:
        return request_id in self.held

    def highest_outstanding_id(self) -> int:  # what the pool asked before
        return max(self.held)


def test_ids_begin_again_at_one_past_the_ids_still_held(tmp_path: Path) -> None:
    manager = BackendManager(
        RuntimeConfig(command=tuple(fake_backend()), multiplex=True), str(tmp_path), tmp_path
    )
    pool = manager.pool_for(manager.key_for(()))
    assert isinstance(pool, MultiplexPool)
    # The last id before the bound went out and is still in flight, as are 1, 2 and 4.
    pool.processes.add(HoldingProcess({1, 2, 4, MAX_REQUEST_ID}))  # type: ignore[arg-type]
    pool._ids = itertools.count(MAX_REQUEST_ID + 1)
    ids = [pool._next_id() for _ in range(3)]
    assert ids == [3, 5, 6]
    assert all(0 < i <= MAX_REQUEST_ID for i in ids)
