"""The runtime's exception tree, and the one place that says how each error reaches Buck2.

Errors about one request become an ``ExecuteResponse`` with ``RUNTIME_ERROR_EXIT_CODE``
and a message on stderr (Buck2 shows it as the action's output); errors about the
runtime's own set-up end the process with ``USAGE_EXIT_CODE``.
"""

from __future__ import annotations

#: mypy takes it as true; typing is not imported (a front imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from worker_runtime.protocol.messages import WorkResponse

#: Exit code of an action that the runtime (not the backend) failed: a bad request,
#: a backend that crashed or spoke garbage, a timeout. Chosen outside the range
#: compilers use so that it is never mistaken for a compile error.
RUNTIME_ERROR_EXIT_CODE = 125

#: Exit code of ``worker-runtime`` when it is started wrongly (bad flags, bad config,
#: no WORKER_SOCKET).
USAGE_EXIT_CODE = 2


class WorkerRuntimeError(Exception):
    """Base of every error the runtime raises on purpose."""


class ConfigError(WorkerRuntimeError):
    """The runtime's configuration (flags or --config file) is invalid."""


class RequestError(WorkerRuntimeError):
    """One request from Buck2 cannot be turned into a WorkRequest (bad UTF-8, missing @file...).

    Nothing was sent to a backend; the backend pool is untouched.
    """


class BackendError(WorkerRuntimeError):
    """A backend process failed while serving a request; that process has been discarded.

    ``summary`` is one sentence for notes; the message adds the evidence (stderr tail, log).
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]


class BackendStartError(BackendError):
    """A backend process could not be started, or exited before it could take a request.
    ``ours``: the fault is this machine's or the runtime's (a spawn refused for want of
    memory, processes or descriptors; a log that cannot be written; no pidfd), not the
    command's, so that another machine (a remote executor's server) may do better."""

    def __init__(self, message: str, summary: str | None = None, ours: bool = False) -> None:
        super().__init__(message, summary)
        self.ours = ours


class BackendDiedError(BackendError):
    """A backend process exited or closed its stdout before answering."""


class BackendProtocolError(BackendError):
    """A backend wrote something that is not a valid WorkResponse for a pending request."""


class ProtocolError(WorkerRuntimeError):
    """Raised by a framing decoder on bytes that are not a valid message.

    ``first_bytes`` holds the start of the offending data, for the error message;
    ``parsed`` the valid responses that came before it in the same bytes, which are
    still answers (a worker that answers and then prints to stdout has answered).
    """

    def __init__(self, message: str, first_bytes: bytes = b"") -> None:
        super().__init__(message)
        self.first_bytes = first_bytes
        self.parsed: list[WorkResponse] = []


class ClusterError(WorkerRuntimeError):
    """The embedded engine (`worker-runtime cluster`) could not be brought up or down."""
