"""Benchmark: what the executor's sandbox (``--sandbox``: bubblewrap's namespaces, then
setpriv to the tenant's uid) costs, against the same process run as the tenant's uid
without it (Popen's own uid switch), in the same run, as root.

- a one-shot action: ``/bin/true`` spawned and reaped, as the executor's one-shot path
  runs it;
- a persistent worker's start: the executor's WorkerPool starting the remote tests'
  worker (python3) and its first request answered;
- a warm request to that running worker, which must cost nothing more: its namespaces
  were made once, when it started;
- where there are cgroups, a sandboxed one-shot action with and without the control
  group the executor gives each action with tenants (its default limits): the group
  made, joined by a shell before the sandbox, and removed.

Samples alternate between the two, so that both see the same machine. Writes
benchmarks/results/sandbox_cost.json.

Run (as root): ``.venv/bin/python -m benchmarks.sandbox_cost [--rounds N]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from worker_runtime.backends.key import WorkerKey
from worker_runtime.executor.launch import launch
from worker_runtime.executor.limits import (
    DEFAULT_TENANT_PIDS,
    Confinement,
    Limits,
    default_tenant_memory_mb,
)
from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import RunAs, hand_over
from worker_runtime.executor.workers import WorkerPool
from worker_runtime.protocol.messages import WorkRequest
from worker_runtime.spawn import as_user

TENANT = RunAs(200009, 200009)
WORKER = Path(__file__).resolve().parents[1] / "tests" / "backends" / "remote_test_worker.py"


def ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def oneshot(sandbox: Sandbox | None, directory: Path) -> float:
    argv = ["/bin/true"]
    run_as = TENANT
    if sandbox is not None:
        argv = sandbox.command(
            argv, run_as=TENANT, writable=[str(directory)], cwd=str(directory), network=False
        )
        run_as = RunAs()
    start = time.perf_counter()
    subprocess.run(argv, cwd=directory, check=True, start_new_session=True, **as_user(run_as.ids))
    return ms(start)


def oneshot_launched(sandbox: Sandbox, directory: Path, confinement: Confinement | None) -> float:
    """A sandboxed one-shot action as the executor starts it, with or without a control
    group of its own: made, joined by a shell before the sandbox, and removed after."""
    start = time.perf_counter()
    group = confinement.group("bench") if confinement is not None else None
    try:
        how = launch(
            ["/bin/true"], run_as=TENANT, sandbox=sandbox, group=group,
            writable=[str(directory)], cwd=str(directory), network=False,
            env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        subprocess.run(
            how.argv, cwd=directory, env=how.env, check=True, start_new_session=True,
            **as_user(how.run_as.ids),
        )  # fmt: skip
    finally:
        if group is not None:
            group.remove()
    return ms(start)


def worker_round(
    pool: WorkerPool, workdir: Path, serial: int, warm_requests: int
) -> tuple[float, list[float]]:
    """(start to first answer, warm requests) of a new worker of another key each time."""
    tool = workdir / "source" / "worker.py"
    identity = WorkerKey(
        ("python3", "tools/worker.py"), (), "json", False, (("tools/worker.py", str(serial)),),
        "bench",
    )  # fmt: skip
    action = workdir / "actions" / f"a{serial}"
    action.mkdir(parents=True)
    (action / "in.txt").write_text("x\n")
    hand_over(action, TENANT)
    request = WorkRequest(arguments=("--out", "o.txt", "in.txt"), sandbox_dir=str(action))
    start = time.perf_counter()
    worker, _ = pool.acquire(
        identity, {"PATH": "/usr/bin:/bin"}, [("tools/worker.py", tool)], TENANT
    )
    try:
        first = worker.call(request, 30)
        started = ms(start)
        assert first.exit_code == 0, first.output
        warm = []
        for _ in range(warm_requests):
            start = time.perf_counter()
            worker.call(request, 30)
            warm.append(ms(start))
    finally:
        pool.release(worker, healthy=False)  # stopped: the next round starts another
    return started, warm


def alternate(rounds: int, sample: Callable[[bool], Any]) -> dict[bool, list[Any]]:
    found: dict[bool, list[Any]] = {False: [], True: []}
    for i in range(rounds):
        order = (False, True) if i % 2 else (True, False)
        for sandboxed in order:
            found[sandboxed].append(sample(sandboxed))
    return found


def figures(plain: list[float], sandboxed: list[float]) -> dict[str, float]:
    return {
        "plain_ms": statistics.median(plain),
        "sandboxed_ms": statistics.median(sandboxed),
        "added_ms": statistics.median(sandboxed) - statistics.median(plain),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warm-requests", type=int, default=50)
    add_output_argument(parser, "sandbox_cost")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # each round's worker is stopped on purpose
    if os.geteuid() != 0:
        sys.exit("sandbox_cost: run it as root (the sandbox and the uid switch need it)")
    sandbox = Sandbox.find()
    with scratch_dir("wr-sandbox-bench-", mode=0o711) as top:
        oneshot_dir = top / "oneshot"
        oneshot_dir.mkdir()
        hand_over(oneshot_dir, TENANT)
        shots = alternate(args.rounds, lambda s: oneshot(sandbox if s else None, oneshot_dir))
        # The control group the executor gives every action with tenants (its defaults).
        confinement = Confinement(
            Limits(default_tenant_memory_mb(), None, DEFAULT_TENANT_PIDS), "sandbox-bench"
        )
        grouped: dict[bool, list[float]] = {}
        if confinement.kind != "rlimits":
            confinement.clear()
            grouped = alternate(
                args.rounds,
                lambda g: oneshot_launched(sandbox, oneshot_dir, confinement if g else None),
            )
            confinement.clear()
        pools = {}
        for sandboxed in (False, True):
            workdir = top / ("sandboxed" if sandboxed else "plain")
            (workdir / "source").mkdir(parents=True)
            shutil.copy(WORKER, workdir / "source" / "worker.py")
            (workdir / "workers").mkdir(mode=0o711)
            pools[sandboxed] = WorkerPool(
                workdir / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600,
                sandbox=sandbox if sandboxed else None,
            )  # fmt: skip
        serials = iter(range(1_000_000))
        rounds = alternate(
            max(4, args.rounds // 4),
            lambda s: worker_round(
                pools[s], top / ("sandboxed" if s else "plain"), next(serials), args.warm_requests
            ),
        )
        for pool in pools.values():
            pool.stop_all()
    result = {
        "oneshot_action": figures(shots[False], shots[True]),
        "worker_start": figures([r[0] for r in rounds[False]], [r[0] for r in rounds[True]]),
        "warm_request": figures(
            [w for r in rounds[False] for w in r[1]], [w for r in rounds[True] for w in r[1]]
        ),
        "rounds": args.rounds,
    }
    if grouped:
        result["oneshot_group"] = {
            "mechanism": confinement.kind,
            "limits": confinement.limits.describe(),
            "sandboxed_ms": statistics.median(grouped[False]),
            "sandboxed_grouped_ms": statistics.median(grouped[True]),
            "added_ms": statistics.median(grouped[True]) - statistics.median(grouped[False]),
        }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
