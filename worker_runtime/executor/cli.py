"""`worker-runtime executor`: its command line."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from worker_runtime.executor.bots import (
    DEFAULT_SHUTDOWN_GRACE_S,
    ExecutorSettings,
    RegistrationFailed,
    run_executor,
)
from worker_runtime.executor.collect import ENTRY_OVERHEAD_BYTES
from worker_runtime.executor.disk import (
    DEFAULT_TENANT_DISK_SHARE,
    MAX_NEW_ENTRIES,
    default_tenant_disk_mb,
)
from worker_runtime.executor.limits import (
    DEFAULT_TENANT_MEMORY_SHARE,
    DEFAULT_TENANT_PIDS,
    Limits,
    default_tenant_memory_mb,
)
from worker_runtime.executor.metrics import MetricsPortUnavailable
from worker_runtime.executor.privileges import KEPT, keep_only_what_is_needed
from worker_runtime.executor.runner import DEFAULT_MAX_OUTPUT_MB
from worker_runtime.executor.sandbox import Sandbox, SandboxError
from worker_runtime.executor.tenants import (
    TenantError,
    parse_uid_range,
    privilege_problem,
    readable_secret,
    unprotected_hardlinks,
)
from worker_runtime.executor.workers import CANCEL_GRACE_S
from worker_runtime.remote.channels import ChannelConfigError, parse_endpoint


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="worker-runtime executor",
        description="A bot for a Remote Execution API server (BuildGrid's Bots API) that runs "
        "actions one-shot, or on persistent workers when they carry the worker convention.",
    )
    parser.add_argument(
        "--server",
        required=True,
        help="e.g. unix:///path/buildgrid.sock, or grpcs://host:port for TLS",
    )
    parser.add_argument(
        "--tls-ca-file", default="", metavar="PEM", help="CA to trust (default: the system's)"
    )
    parser.add_argument(
        "--credentials-file", default="", metavar="FILE", help="a file holding the bearer token"
    )
    parser.add_argument("--instance", default="main", help="instance name (default: main)")
    parser.add_argument("--bot-id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--capacity", type=int, default=2, help="leases run at once (default: 2)")
    parser.add_argument("--workdir", type=Path, required=True, help="per-action directories")
    parser.add_argument(
        "--max-workers", type=int, default=8, help="persistent workers (default: 8)"
    )
    parser.add_argument("--memory-limit", type=int, metavar="MB", help="their total memory")
    parser.add_argument("--worker-idle-timeout", type=float, default=600.0, metavar="S")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metavar="S",
        help="on SIGTERM, how long running actions have to finish; those still running "
        "then are stopped and handed back to the server, unless they finish as they are "
        f"stopped (default: {DEFAULT_SHUTDOWN_GRACE_S:g})",
    )
    parser.add_argument(
        "--max-output-mb",
        type=int,
        default=DEFAULT_MAX_OUTPUT_MB,
        metavar="MB",
        help="what the outputs of one action may take: their contents, stdout and stderr, "
        f"each output directory's Tree, and {ENTRY_OVERHEAD_BYTES} bytes and the name of "
        "each entry; the executor holds them in memory until they are uploaded, and an "
        "action that leaves more fails RESOURCE_EXHAUSTED. A persistent worker's answer "
        "longer than this is the worker's fault (INTERNAL; it is discarded) (default: "
        f"{DEFAULT_MAX_OUTPUT_MB})",
    )
    parser.add_argument(
        "--cancel-grace",
        type=float,
        default=CANCEL_GRACE_S,
        metavar="S",
        help="how long a multiplex worker has to answer a cancel before it is discarded "
        f"(default: {CANCEL_GRACE_S:g}, as the local runtime's cancel_grace_s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--uid-range",
        metavar="START-END",
        help="run each tenant (instance) under its own uid from this range, with no "
        "supplementary groups (needs root; required when run as root)",
    )
    parser.add_argument(
        "--uid-map",
        type=Path,
        metavar="FILE",
        help="where the tenants' uids are kept; executors sharing a --uid-range on one "
        "machine must share it (default: WORKDIR/tenant-uids.json)",
    )
    parser.add_argument(
        "--sandbox",
        action=argparse.BooleanOptionalAction,
        help="run each action and persistent worker in namespaces of its own (bubblewrap): "
        "the system read-only, a private /tmp, no other process, no network unless the "
        "platform sets network=on (default: on with --uid-range, off without)",
    )
    parser.add_argument(
        "--sandbox-read-only",
        action="append",
        default=[],
        metavar="PATH",
        help="also show PATH read-only in the sandbox (a toolchain outside /usr and /opt); "
        "repeatable",
    )
    parser.add_argument(
        "--limit-disk",
        type=int,
        metavar="MB",
        help="what each action may add to the disk while it runs (its directory, stdout and "
        f"stderr), and at most {MAX_NEW_ENTRIES:,} files and directories; one that passes "
        "it is killed, its action RESOURCE_EXHAUSTED. A persistent worker's request counts "
        "what it adds to the request's directory and what the worker's home holds beyond "
        "its tool files (default with --uid-range: "
        f"{DEFAULT_TENANT_DISK_SHARE * 100:.0f}%% of the size of WORKDIR's file system; "
        "without it, none)",
    )
    for name, kind, what in (
        ("--limit-memory", int, "MB of memory each action and each persistent worker may use; "
         "one that passes it is killed alone, its action RESOURCE_EXHAUSTED (default with "
         f"--uid-range and cgroups: {DEFAULT_TENANT_MEMORY_SHARE * 100:.0f}%% of the machine's)"),
        ("--limit-cpus", float, "CPUs each action and each persistent worker may use"),
        ("--limit-pids", int, "processes each action and each persistent worker may have "
         f"(default with --uid-range: {DEFAULT_TENANT_PIDS}, so that a fork bomb stays in its "
         "group)"),
    ):  # fmt: skip
        parser.add_argument(name, type=kind, metavar="N", help=what)
    args = parser.parse_args(argv)
    # (`not x >= 0` rather than `x < 0`: NaN passes every comparison's negation.)
    if not 0 <= args.shutdown_grace <= 1e6:
        parser.error(
            f"--shutdown-grace must be a number of seconds from 0 to 1e6, not {args.shutdown_grace:g}"
        )
    for name, count in (("--capacity", args.capacity), ("--max-workers", args.max_workers),
                        ("--max-output-mb", args.max_output_mb),
                        ("--limit-disk", args.limit_disk),
                        ("--memory-limit", args.memory_limit)):  # fmt: skip
        if count is not None and count <= 0:
            parser.error(f"{name} must be more than 0, not {count}")
    for name, seconds in (("--cancel-grace", args.cancel_grace),
                          ("--worker-idle-timeout", args.worker_idle_timeout)):  # fmt: skip
        if not 0 < seconds <= 1e6:
            parser.error(
                f"{name} must be a number of seconds above 0 (at most 1e6), not {seconds:g}"
            )
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be a port from 0 to 65535, not {args.metrics_port}")
    try:
        uid_range = parse_uid_range(args.uid_range) if args.uid_range else None
    except ValueError as exc:
        parser.error(str(exc))
    problem = privilege_problem(uid_range)
    if problem is None and uid_range is not None and args.credentials_file:
        problem = readable_secret(args.credentials_file, uid_range)
    if problem is not None:
        parser.error(problem)
    # Several tenants: each in its own sandbox unless the operator says otherwise.
    sandboxed = args.sandbox if args.sandbox is not None else uid_range is not None
    if uid_range is not None and not sandboxed and (problem := unprotected_hardlinks()):
        parser.error(problem)  # in the sandbox a link across its bind mounts fails
    if args.sandbox_read_only and not sandboxed:
        parser.error("--sandbox-read-only needs the sandbox (--sandbox)")
    memory, pids = args.limit_memory, args.limit_pids
    if uid_range is not None:  # tenants: none may take the machine unless the operator says
        memory = default_tenant_memory_mb() if memory is None else memory
        pids = DEFAULT_TENANT_PIDS if pids is None else pids
    limits = Limits(memory, args.limit_cpus, pids)
    disk = args.limit_disk
    if disk is None and uid_range is not None:
        try:
            disk = default_tenant_disk_mb(args.workdir)
        except OSError as exc:
            parser.error(f"cannot read the size of --workdir's file system: {exc}")
    if (problem := limits.problem()) is not None:
        parser.error(problem)
    sandbox = None
    if sandboxed:
        try:
            sandbox = Sandbox.find(args.sandbox_read_only)
        except SandboxError as exc:
            parser.error(f"{exc}{'' if args.sandbox else ' (it is on with --uid-range)'}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        endpoint = parse_endpoint(
            args.server, ca_file=args.tls_ca_file, credentials_file=args.credentials_file
        )
    except ChannelConfigError as exc:
        parser.error(str(exc))
    settings = ExecutorSettings(
        server=endpoint, instance=args.instance, bot_id=args.bot_id, capacity=args.capacity,
        workdir=args.workdir, max_workers=args.max_workers, memory_limit_mb=args.memory_limit,
        worker_idle_s=args.worker_idle_timeout, metrics_port=args.metrics_port,
        cancel_grace_s=args.cancel_grace, uid_range=uid_range, uid_map=args.uid_map,
        sandbox=sandbox, limits=limits, max_output_mb=args.max_output_mb, disk_limit_mb=disk,
        shutdown_grace_s=args.shutdown_grace,
    )  # fmt: skip
    if uid_range is not None:  # root, running tenants: root's other powers go
        try:
            keep_only_what_is_needed()
            logging.getLogger(__name__).info(
                "capabilities kept: %s", ", ".join(sorted(KEPT.values()))
            )
        except OSError as exc:
            print(
                f"worker-runtime executor: error: cannot drop capabilities: {exc}", file=sys.stderr
            )
            return 2
    try:
        return run_executor(settings)
    except (TenantError, MetricsPortUnavailable) as exc:  # one line: the operator's to mend
        print(f"worker-runtime executor: error: {exc}", file=sys.stderr)
        return 2
    except RegistrationFailed as exc:  # one line, no traceback: the server is at fault
        print(f"worker-runtime executor: error: {exc}", file=sys.stderr)
        return 1
