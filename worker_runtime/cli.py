"""Command-line parsing for ``worker-runtime``; every subcommand calls into the package."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from worker_runtime import __version__
from worker_runtime.errors import USAGE_EXIT_CODE, ConfigError

if TYPE_CHECKING:
    from worker_runtime.config import RuntimeConfig

SERVE_USAGE = "worker-runtime serve [options] -- BACKEND_COMMAND [ARG...]"

NO_SOCKET_MESSAGE = """\
worker-runtime: error: WORKER_SOCKET is not set.
`worker-runtime serve` is started by Buck2 as a persistent worker: Buck2 sets WORKER_SOCKET
to the Unix socket path to serve. Use it as the `exe` of a WorkerInfo (see the prelude's
worker_tool rule), or to try it by hand:
  WORKER_SOCKET=/tmp/w/socket worker-runtime serve -- BACKEND_COMMAND [ARG...]
"""


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-runtime serve",
        usage=SERVE_USAGE,
        description="Serve Buck2's worker protocol on $WORKER_SOCKET, running each request on a "
        "warm backend that speaks Bazel's persistent worker protocol.",
    )
    parser.add_argument(
        "--protocol",
        choices=("proto", "json"),
        help="wire format spoken with the backend (default: proto, or the config's `protocol`)",
    )
    parser.add_argument(
        "--multiplex",
        action="store_const",
        const=True,
        help="the backend takes many requests at once, routed by request_id (default: off)",
    )
    parser.add_argument(
        "--cancellable",
        action="store_const",
        const=True,
        help="the multiplex backend honours cancel requests; otherwise it is killed to cancel "
        "(default: off)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        metavar="N",
        help="singleplex: the most backend processes per worker key (default: number of CPUs)",
    )
    parser.add_argument(
        "--tool-input",
        action="append",
        metavar="PATH",
        dest="tool_inputs",
        help="a file whose content is part of the worker key; repeatable (default: none)",
    )
    parser.add_argument(
        "--key-env",
        action="append",
        metavar="NAME",
        dest="key_env",
        help="a per-request env variable that becomes part of the worker key and is set in the "
        "backend's environment; repeatable (default: none; other request env is ignored)",
    )
    parser.add_argument(
        "--verbosity", type=int, metavar="N", help="WorkRequest.verbosity to send (default: 0)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retries of a request whose backend died before answering (default: 1; 0 disables)",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="log directory (default: $WORKER_RUNTIME_LOG_DIR, else "
        "${XDG_STATE_HOME:-~/.local/state}/buck2-worker-runtime/logs)",
    )
    parser.add_argument(
        "--server",
        choices=("h2", "grpcio"),
        help="what serves Buck2's gRPC on the socket (default: h2, or the config's `server`)",
    )
    parser.add_argument(
        "--no-daemon",
        dest="daemon",
        action="store_const",
        const=False,
        help="serve in this process: backends die with it at the end of the Buck2 command "
        "(default: hand the socket to the project's daemon, which keeps backends warm)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file with the same settings (what the prelude writes); flags override it",
    )
    return parser


def checked_config(path: str | None, overrides: dict[str, Any]) -> RuntimeConfig:
    """The config of ``path`` (or the defaults) with the command line's ``overrides``,
    checked; raises ConfigError."""
    from worker_runtime.config import RuntimeConfig, load_config_file, with_overrides

    config = load_config_file(path) if path is not None else RuntimeConfig()
    return with_overrides(config, overrides).validated()


def serve_main(argv: Sequence[str]) -> int:
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = serve_parser().parse_args(argv)
    socket_path = os.environ.get("WORKER_SOCKET")
    if not socket_path:
        sys.stderr.write(NO_SOCKET_MESSAGE)
        return USAGE_EXIT_CODE

    overrides = {
        "protocol": args.protocol,
        "multiplex": args.multiplex,
        "cancellable": args.cancellable,
        "max_instances": args.max_instances,
        "tool_inputs": tuple(args.tool_inputs) if args.tool_inputs else None,
        "key_env": tuple(args.key_env) if args.key_env else None,
        "verbosity": args.verbosity,
        "retries": args.retries,
        "log_dir": args.log_dir,
        "command": tuple(command) if command else None,
        "daemon": args.daemon,
        "server": args.server,
    }
    from worker_runtime.entry import plain_config_file

    # `--config ""` (an unset variable) is a file that cannot be read, not no file.
    mapping = plain_config_file(args.config) if args.config is not None else None
    if mapping is not None and all(value is None for value in overrides.values()):
        # The form worker_tool writes, daemon on: the daemon checks the config itself, and
        # this process reads it only if it must start a daemon or explain a refusal.
        from worker_runtime.daemon.front import run_front

        return run_front(socket_path, mapping, lambda: checked_config(args.config, overrides))

    try:
        config = checked_config(args.config, overrides)
    except ConfigError as exc:
        sys.stderr.write(f"worker-runtime: error: {exc}\n")
        return USAGE_EXIT_CODE

    if config.daemon:
        from worker_runtime.config import config_to_mapping
        from worker_runtime.daemon.front import run_front

        return run_front(socket_path, config_to_mapping(config), lambda: config)

    from worker_runtime.buck2.server import run_server
    from worker_runtime.logs import start_run_logging, unusable_log_dir

    try:
        log_dir = start_run_logging(config.log_dir)
    except OSError as exc:
        sys.stderr.write(f"worker-runtime: error: {unusable_log_dir(exc)}\n")
        return USAGE_EXIT_CODE
    try:
        return run_server(config, socket_path, log_dir)
    except ConfigError as exc:
        sys.stderr.write(f"worker-runtime: error: {exc}\n")
        return USAGE_EXIT_CODE


def demo_main(argv: Sequence[str]) -> int:
    """The demo is development code (workers_dev/, beside this package in a checkout); an
    installed wheel carries only the runtime."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(checkout, "workers_dev", "demo.py")):
        sys.stderr.write(
            "worker-runtime: error: `worker-runtime demo` runs from a checkout of "
            "buck2-persistent-workers (it builds the repository's examples); this installation "
            f"has only the runtime ({checkout}). Clone the repository and run scripts/demo.sh\n"
        )
        return USAGE_EXIT_CODE
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from workers_dev.demo import main as demo

    return demo(list(argv))


def daemon_command(name: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        from worker_runtime.daemon import commands

        entry: Callable[[Sequence[str]], int] = getattr(commands, f"{name}_main")
        return entry(argv)

    return run


def cells_main(argv: Sequence[str]) -> int:
    from worker_runtime.cells import main as cells

    return cells(argv)


def cluster_main(argv: Sequence[str]) -> int:
    from worker_runtime.cluster.commands import main as cluster

    return cluster(argv)


def executor_main(argv: Sequence[str]) -> int:
    from worker_runtime.executor.cli import main as executor

    return executor(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "serve": serve_main,
        "demo": demo_main,
        "cluster": cluster_main,
        "cells": cells_main,
        "executor": executor_main,
        **{name: daemon_command(name) for name in ("status", "stop", "logs", "daemon")},
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: worker-runtime {serve,demo,status,stop,logs,cells,cluster,executor} ...\n\n"
            "  serve   serve Buck2's worker protocol on $WORKER_SOCKET (what Buck2 launches)\n"
            "  demo    build the examples cold and warm through the runtime, print the savings\n"
            "  status  show the project's daemon and its backends (--json for JSON)\n"
            "  stop    drain and stop the project's daemon\n"
            "  logs    show where the daemon's logs are and tail them\n"
            "  cells   path|install: the Buck2 cells (rules, toolchains) to mount in a project\n"
            "  cluster up|status|down: the embedded REAPI engine (PostgreSQL + BuildGrid)\n"
            "  executor  a bot for that engine (persistent workers on the remote side)\n"
            "  --version\n"
        )
        return 0 if argv else USAGE_EXIT_CODE
    if argv[0] == "--version":
        print(f"worker-runtime {__version__}")
        return 0
    run = commands.get(argv[0])
    if run is None:
        sys.stderr.write(
            f"worker-runtime: error: unknown command {argv[0]!r}; try `worker-runtime --help`\n"
        )
        return USAGE_EXIT_CODE
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
