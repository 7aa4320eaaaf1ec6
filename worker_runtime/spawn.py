"""How every worker process is started so that it never outlives its owner: util-linux
``setpriv --pdeathsig KILL`` in front of its command, where the machine has it (found
once, here, for the local backends and the executor's workers alike)."""

from __future__ import annotations

import shutil

SETPRIV = shutil.which("setpriv")


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when the thread that started it ends."""
    if SETPRIV:
        return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return argv
