"""The ``worker-runtime`` console script's entry point.

For ``serve --config FILE`` with ``WORKER_SOCKET`` set (what the prelude's worker_tool
makes Buck2 run), it listens on Buck2's socket before it imports anything else
(daemon/handover.py), so that Buck2's first connect poll after the start finds it.
Everything else is cli.py's.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    argv = sys.argv[1:]
    socket_path = os.environ.get("WORKER_SOCKET")
    if socket_path and len(argv) == 3 and argv[:2] == ["serve", "--config"]:
        from worker_runtime.daemon.handover import listen_early

        listen_early(socket_path)
    from worker_runtime.cli import main as cli_main

    return cli_main(argv)
