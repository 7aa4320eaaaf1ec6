"""The seam's data: a work request as the executors see it, and its typed outcome (the
action's own result, or the runtime's failure to run it). Protocol-independent: the Buck2
adapter converts at the edge."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class WorkRequest:
    """One action to run, after Buck2's request was decoded and its @argfiles expanded."""

    #: The backend's arguments (the tool's own argv after the worker command).
    arguments: tuple[str, ...]
    #: Values of the config's key_env variables; with the tool digests they pick the key.
    key_env: tuple[tuple[str, str], ...] = ()
    #: Path of the envelope worker_run attaches to the action ("" when it has none): the
    #: action's inputs and outputs, which a remote side needs and a local one may digest.
    envelope: str = ""
    #: Seconds the request may take from its arrival; 0: no limit. As Buck2 gave it: a
    #: remote action's digest holds it, so it never shrinks as the request goes on.
    timeout_s: int = 0
    #: 0 for the first try; n for the n-th retry, which must run on a fresh backend.
    attempt: int = 0
    #: ``time.monotonic()`` at its arrival, from which ``timeout_s`` counts (0: from when
    #: a Timeout first runs it). Not part of what the request is.
    started: float = field(default=0.0, compare=False)

    def time_left(self) -> float | None:
        """Seconds left of its timeout (all of it if ``started`` is unset); None: none."""
        if self.timeout_s <= 0:
            return None
        if not self.started:
            return float(self.timeout_s)
        return self.timeout_s - (time.monotonic() - self.started)


@dataclass(frozen=True, slots=True)
class Result:
    """The action ran: its exit code (0 or a compile error) and its output."""

    exit_code: int
    #: What the tool printed (Buck2 shows it as the action's stderr).
    output: str
    #: Lines the runtime adds before the output (retries, fallbacks, backend warnings).
    notes: tuple[str, ...] = ()

    def with_notes(self, *notes: str) -> Result:
        return replace(self, notes=(*notes, *self.notes))


class FailureKind(enum.Enum):
    """Why the runtime could not run an action; the wrappers decide on this alone."""

    #: The request itself is wrong (bad UTF-8, a missing @argfile or envelope): no side
    #: would do better, so nothing retries or falls back.
    BAD_REQUEST = "bad request"
    #: No backend process could be started for the request's key.
    START_FAILED = "start failed"
    #: The backend died, or answered garbage, while running it: a fresh one may succeed.
    BACKEND_FAILED = "backend failed"
    #: The remote side failed (unreachable, refused, a server fault): local may succeed.
    REMOTE_FAILED = "remote failed"
    #: The request ran past its timeout and was cancelled.
    TIMED_OUT = "timed out"


@dataclass(frozen=True, slots=True)
class Failure:
    """The runtime could not run the action; ``message`` says what failed and what to do."""

    kind: FailureKind
    message: str
    #: One sentence for a note when a wrapper recovers (a retry, a fallback).
    summary: str = ""
    notes: tuple[str, ...] = ()
    #: Set on TIMED_OUT: the timeout that passed (Buck2's ExecuteResponse reports it).
    timed_out_after_s: int = 0

    def with_notes(self, *notes: str) -> Failure:
        return replace(self, notes=(*notes, *self.notes))

    @property
    def short(self) -> str:
        return self.summary or (self.message.splitlines() or [""])[0]


Outcome = Result | Failure


def note(text: str) -> str:
    """A note line as the runtime prints it before an action's output."""
    return f"worker-runtime: note: {text}\n"
