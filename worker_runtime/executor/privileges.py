"""What root the executor keeps when it runs tenants (as root with ``--uid-range``): the
capabilities its work needs, and no others, for itself and for everything it starts.

It needs to switch uids and gids and clear groups (SETUID, SETGID), hand directories
over (CHOWN, FOWNER), read, write and remove its tenants' private directories and
outputs (DAC_OVERRIDE, DAC_READ_SEARCH), kill their processes (KILL), and, for
bubblewrap's namespaces and mounts and the processes' own drop of capabilities,
SYS_ADMIN, NET_ADMIN (the sandbox's loopback), SYS_CHROOT and SETPCAP. Everything else
root could do (load modules, raw I/O, ptrace, reboot, set the clock, bypass MAC, ...)
leaves the bounding set, so that nothing it starts can regain it, and its own effective
and permitted sets. It stays uid 0: files only root may change are still its own."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: The capabilities kept, by number (linux/capability.h).
KEPT = {
    0: "CHOWN", 1: "DAC_OVERRIDE", 2: "DAC_READ_SEARCH", 3: "FOWNER", 5: "KILL",
    6: "SETGID", 7: "SETUID", 8: "SETPCAP", 12: "NET_ADMIN", 18: "SYS_CHROOT",
    21: "SYS_ADMIN",
}  # fmt: skip
_PR_CAPBSET_DROP = 24
_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def kept_mask() -> int:
    return sum(1 << number for number in KEPT)


def last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as last:
        return int(last.read())


def keep_only_what_is_needed() -> None:
    """Drops every other capability from the bounding set and from this process's
    effective, permitted and inheritable sets. OSError if the kernel refuses."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for number in range(last_capability() + 1):
        if number not in KEPT and libc.prctl(_PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"dropping capability {number}: {os.strerror(error)}")
    mask = kept_mask()
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)(
        _Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0), _Data(mask >> 32, mask >> 32, 0)
    )
    if libc.capset(ctypes.byref(header), data) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"capset: {os.strerror(error)}")
