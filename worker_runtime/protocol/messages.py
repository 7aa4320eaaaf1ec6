"""Protocol-independent WorkRequest / WorkResponse types shared by both wire formats."""

from __future__ import annotations

from dataclasses import dataclass, field

#: ``request_id`` is an int32 on the wire: the highest id a multiplex request may carry
#: (those given out go up to it, then begin again at 1).
MAX_REQUEST_ID = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class WorkInput:
    """A file the request may read, with an opaque content digest (may be empty)."""

    path: str
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class WorkRequest:
    """One request to a backend. ``request_id`` is 0 for singleplex backends."""

    arguments: tuple[str, ...]
    inputs: tuple[WorkInput, ...] = ()
    request_id: int = 0
    cancel: bool = False
    verbosity: int = 0
    sandbox_dir: str = ""


@dataclass(frozen=True, slots=True)
class WorkResponse:
    """A backend's answer to the request with the same ``request_id``."""

    exit_code: int = 0
    output: str = ""
    request_id: int = 0
    was_cancelled: bool = False
    #: Wire format details the reader saw (for example "snake_case exit_code"); empty if none.
    warnings: tuple[str, ...] = field(default=(), compare=False)
