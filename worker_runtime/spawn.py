"""How every worker process is started so that it never outlives its owner: util-linux
``setpriv --pdeathsig KILL`` in front of its command, where the machine has it (found
once, here, for the local backends and the executor's workers alike); and, for the
executor's tenants, as another user with no supplementary groups."""

from __future__ import annotations

import shutil
from typing import Any

SETPRIV = shutil.which("setpriv")


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when the thread that started it ends."""
    if SETPRIV:
        return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return argv


def as_user(ids: tuple[int, int] | None) -> dict[str, Any]:
    """Popen's keyword arguments that run the child as ``ids`` (uid, gid) with no
    supplementary groups, switched between fork and exec (needs root); none for None."""
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}
