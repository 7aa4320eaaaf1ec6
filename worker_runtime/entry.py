"""The ``worker-runtime`` command's entry point.

``serve --config FILE`` with ``WORKER_SOCKET`` set is what the prelude's worker_tool makes
Buck2 run at the start of every command, and Buck2 waits for it. When the file is a
config for the daemon (``"daemon"`` not false) served by the runtime's own HTTP/2 server
(``"server"`` not ``"grpcio"``, which binds its sockets itself), this listens on Buck2's
socket before it imports anything else (the file read by quick_json.py, the socket made
with ``_socket``: daemon/handover.py), and hands the file's JSON object straight to the
front (daemon/front.py), without the command line's parser. The command itself is
``bin/worker-runtime``, which imports nothing but this module (a console script that pip
writes imports ``re``). The socket is never given up once listened on, except when the
attach fails: Buck2 may already have connected, and a connection reset fails its
worker's start. Every other command line is cli.py's.
"""

from __future__ import annotations

import os
import sys

from worker_runtime.quick_json import loads_unique

TYPE_CHECKING = False  # mypy takes it as true; typing itself is not imported (it costs a start)
if TYPE_CHECKING:
    from typing import Any

    from worker_runtime.config import RuntimeConfig


def main() -> int:
    argv = sys.argv[1:]
    socket_path = os.environ.get("WORKER_SOCKET")
    if socket_path and len(argv) == 3 and argv[:2] == ["serve", "--config"]:
        config_path = argv[2]
        mapping = plain_config_file(config_path)
        if mapping is not None:
            if mapping.get("server", "h2") == "h2":
                from worker_runtime.daemon.handover import listen_early

                listen_early(socket_path)
            from worker_runtime.daemon.front import run_front

            return run_front(socket_path, mapping, lambda: _checked_config(config_path))
    from worker_runtime.cli import main as cli_main

    return cli_main(argv)


def plain_config_file(path: str) -> dict[str, Any] | None:
    """The JSON object of config file ``path`` when it can go to the daemon as it is (it
    parses, and does not turn the daemon off); None otherwise, and the full check says why."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = loads_unique(handle.read())
    except (OSError, ValueError, RecursionError):  # the full check says what is wrong
        # (ValueError: not JSON, a 4,300-digit number, a key set twice)
        return None
    if not isinstance(data, dict) or data.get("daemon", True) is not True:
        return None
    return data


def _checked_config(path: str) -> RuntimeConfig:
    """The config file checked in full: only to start a daemon or explain a refusal."""
    from worker_runtime.cli import checked_config

    return checked_config(path, {})
