"""A singleplex backend that answers one request twice: when the second answer is already
waiting in its pipe as the next request comes, that backend is discarded and the request
runs on a fresh one (it would otherwise get the stray answer as its own). A second answer
that arrives after the next request was written cannot be told from that request's own
answer: a singleplex response carries no request id (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import fake_backend
from worker_runtime.backends.manager import BackendManager
from worker_runtime.config import RuntimeConfig


def test_a_stray_answer_waiting_in_the_pipe_discards_the_backend(tmp_path: Path) -> None:
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[str, str, int, int]:
        pool = manager.pool_for(manager.key_for(()))
        first = await pool.call(("answer-twice", "0.1"), (), 0)
        (babbler,) = pool.processes
        # The event loop is busy elsewhere while the second answer arrives: it sits in the
        # pipe, unread, when the next request is handed to a backend.
        deadline = time.monotonic() + 30
        while babbler.unread_output_bytes() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: ASYNC251 - holding the loop is the point
        assert babbler.unread_output_bytes(), "the second answer never came"
        second = await pool.call(("echo", "mine"), (), 0)
        (fresh,) = pool.processes
        await manager.stop_all()
        return first.output, second.output, babbler.pid, fresh.pid

    first, second, babbler, fresh = asyncio.run(scenario())
    assert first == "first answer"
    assert second == "mine"  # not "second answer"
    assert fresh != babbler


def test_part_of_a_stray_answer_read_already_discards_the_backend_too(tmp_path: Path) -> None:
    """The pipe was the only place looked at: part of a second answer that the event loop
    had read already (an unfinished message in its framing) was glued to the next
    request's answer, which got the stray's bytes, or failed as garbled."""
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[str, str, int, int]:
        pool = manager.pool_for(manager.key_for(()))
        first = await pool.call(("answer-then-part", "0.05"), (), 0)
        (babbler,) = pool.processes
        for _ in range(3000):  # until the loop has read the part: none left in the pipe
            if babbler.unread_output_bytes() == 0 and babbler.framing.mid_message():
                break
            await asyncio.sleep(0.01)
        assert babbler.unread_output_bytes() == 0 and babbler.framing.mid_message()
        second = await pool.call(("echo", "mine"), (), 0)
        (fresh,) = pool.processes
        await manager.stop_all()
        return first.output, second.output, babbler.pid, fresh.pid

    first, second, babbler, fresh = asyncio.run(scenario())
    assert first == "first answer"
    assert second == "mine"
    assert fresh != babbler


def test_a_retry_runs_on_a_fresh_backend_not_on_another_warm_one(tmp_path: Path) -> None:
    """A retry took an idle warm backend, as any request does: a request that kills its
    backend (a poison request) then killed a second warm one too, and the answer said it
    was retried on a fresh one. It now starts one; at the cap, an idle one makes room."""
    config = RuntimeConfig(command=tuple(fake_backend()), max_instances=3)
    manager = BackendManager(config, str(tmp_path), tmp_path)

    async def scenario() -> tuple[set[int], int, set[int], int, set[int]]:
        pool = manager.pool_for(manager.key_for(()))
        await asyncio.gather(*(pool.call(("sleep", "0.2"), (), 0) for _ in range(2)))
        warm = {p.pid for p in pool.processes}
        first = int((await pool.call_retry(("pid",), (), 0)).output)
        after_first = {p.pid for p in pool.processes}
        second = int((await pool.call_retry(("pid",), (), 0)).output)  # at the cap (3)
        after_second = {p.pid for p in pool.processes}
        await manager.stop_all()
        return warm, first, after_first, second, after_second

    warm, first, after_first, second, after_second = asyncio.run(scenario())
    assert len(warm) == 2 and first not in warm
    assert after_first == warm | {first}, "a warm backend was used or lost by the retry"
    assert second not in after_first and second in after_second and len(after_second) == 3
