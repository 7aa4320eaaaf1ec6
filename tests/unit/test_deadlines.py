"""The shared deadline timer (execution/deadlines.py): scopes behave as asyncio.timeout's
(a timeout, an outside cancel, a block that ends in time), on one loop timer for all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from worker_runtime.execution.deadlines import Deadlines

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    runner: Runner = RUNNERS[request.param]
    return runner


async def times_out(deadlines: Deadlines, delay_s: float) -> bool:
    """Whether a block that would sleep 5 s under ``deadlines.timeout(delay_s)`` timed out."""
    try:
        async with deadlines.timeout(delay_s):
            await asyncio.sleep(5)
    except TimeoutError:
        return True
    return False


def test_a_block_past_its_deadline_raises_timeout_error(run: Runner) -> None:
    deadlines = Deadlines()

    async def main() -> tuple[bool, int]:
        with pytest.raises(TimeoutError):
            async with deadlines.timeout(0.02) as scope:
                await asyncio.sleep(5)
        task = asyncio.current_task()
        assert task is not None
        return scope.expired(), task.cancelling()

    assert run(main()) == (True, 0)
    assert len(deadlines) == 0


def test_a_block_that_ends_in_time_is_never_cancelled_later(run: Runner) -> None:
    deadlines = Deadlines()

    async def main() -> bool:
        async with deadlines.timeout(0.02) as scope:
            await asyncio.sleep(0)
        await asyncio.sleep(0.06)  # past the deadline: nothing may cancel this task now
        return scope.expired()

    assert run(main()) is False
    assert len(deadlines) == 0


def test_an_outside_cancel_stays_a_cancel(run: Runner) -> None:
    deadlines = Deadlines()

    async def block() -> None:
        async with deadlines.timeout(5):
            await asyncio.sleep(5)

    async def main() -> None:
        task = asyncio.create_task(block())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert len(deadlines) == 0


def test_a_shorter_deadline_after_longer_ones_fires_on_time(run: Runner) -> None:
    deadlines = Deadlines()
    order: list[str] = []

    async def block(name: str, delay_s: float) -> None:
        try:
            async with deadlines.timeout(delay_s):
                await asyncio.sleep(5)
        except TimeoutError:
            order.append(name)

    async def main() -> None:
        long = asyncio.create_task(block("long", 0.2))
        await asyncio.sleep(0)
        short = asyncio.create_task(block("short", 0.02))
        await asyncio.gather(long, short)

    run(main())
    assert order == ["short", "long"]


def test_a_deadline_due_at_once_does_not_break_the_next_scope(run: Runner) -> None:
    # uvloop arms a timer due within half a millisecond as a plain Handle, without when().
    deadlines = Deadlines()

    async def main() -> list[bool]:
        return list(await asyncio.gather(times_out(deadlines, 0.0001), times_out(deadlines, 0.02)))

    assert run(main()) == [True, True]


def test_a_scope_is_entered_once() -> None:
    deadlines = Deadlines()

    async def main() -> None:
        scope = deadlines.timeout(5)
        async with scope:
            pass
        with pytest.raises(RuntimeError, match="only once"):
            async with scope:
                pass

    asyncio.run(main())


def test_many_scopes_share_one_loop_timer() -> None:
    deadlines = Deadlines()

    async def main() -> int:
        ready = asyncio.Event()
        release = asyncio.Event()
        entered = 0

        async def block() -> None:
            nonlocal entered
            async with deadlines.timeout(60):
                entered += 1
                if entered == 100:
                    ready.set()
                await release.wait()

        tasks = [asyncio.create_task(block()) for _ in range(100)]
        await ready.wait()
        timers = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        release.set()
        await asyncio.gather(*tasks)
        return timers

    assert asyncio.run(main()) == 1


def test_a_watcher_serves_a_new_event_loop(run: Runner) -> None:
    deadlines = Deadlines()

    async def left_running() -> None:
        async with deadlines.timeout(0.01):
            await asyncio.sleep(0)

    run(left_running())
    assert run(times_out(deadlines, 0.02)) is True


def test_a_scope_needs_a_task() -> None:
    deadlines = Deadlines()

    async def main() -> str:
        loop = asyncio.get_running_loop()
        problem: asyncio.Future[str] = loop.create_future()

        def outside_any_task() -> None:
            entering = deadlines.timeout(1).__aenter__()
            try:
                entering.send(None)
            except RuntimeError as exc:
                problem.set_result(str(exc))

        loop.call_soon(outside_any_task)
        return await problem

    assert "inside a task" in asyncio.run(main())
