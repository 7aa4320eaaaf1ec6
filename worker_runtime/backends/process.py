"""One backend process: spawning it, writing requests, routing its responses, stopping it.

The process is started as ``argv + --persistent_worker`` in its own session (so Buck2's
SIGTERM to the runtime's process group does not reach it mid-request) and, where
util-linux ``setpriv`` exists, with a parent-death signal so that it never outlives the
runtime. Its stderr goes to one log file per process.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker_runtime.backends.key import WorkerKey
from worker_runtime.errors import (
    BackendDiedError,
    BackendError,
    BackendProtocolError,
    BackendStartError,
    ProtocolError,
)
from worker_runtime.logs import private_directory, private_log_file
from worker_runtime.protocol.framing import make_framing, quote_bytes
from worker_runtime.protocol.messages import WorkRequest, WorkResponse
from worker_runtime.spawn import as_user, dying_with_parent

LOGGER = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 2048
STDERR_TAIL_LINES = 12
#: How many answered cancels a backend remembers, to drop a late second answer to one.
ANSWERED_CANCELS = 256
#: How long a stop waits for a backend to exit after SIGKILL. Only a process stuck in the
#: kernel (a hung NFS or FUSE mount) outlives it; the daemon must not wait on it forever.
STUCK_AFTER_SIGKILL_S = 10.0
_SEQUENCE = itertools.count(1)
#: Why a spawn fails for want of this machine's resources, not because of the command.
_SPAWN_RESOURCES = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """Everything needed to start backend processes of one worker key."""

    key: WorkerKey
    env: dict[str, str]
    cwd: str
    cancellable: bool
    frame_stall_timeout_s: float
    cancel_grace_s: float
    log_dir: Path
    #: The uid and gid to run as, with no supplementary groups (the executor's tenants;
    #: needs root); None: the runtime's own.
    run_as: tuple[int, int] | None = None
    #: A command the backend's command runs under (the executor's sandbox), or empty.
    launcher: tuple[str, ...] = ()
    #: The environment the launcher is started with (it sets ``env`` for the backend's
    #: command itself); None: ``env``.
    launcher_env: dict[str, str] | None = None
    #: The largest response taken (the executor's output budget); None: no limit.
    max_response_bytes: int | None = None

    @property
    def tool(self) -> str:
        return os.path.basename(self.key.argv[0])


def stderr_tail(path: Path) -> str:
    """The last lines of a backend's stderr log, or a note that it is empty."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - STDERR_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return "(no stderr log)"
    lines = data.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:]
    if not lines:
        return "(stderr was empty)"
    return "\n".join("    " + line for line in lines)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "closed its stdout"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with code {returncode}"


class _StdoutProtocol(asyncio.Protocol):
    """Feeds the backend's stdout straight into its framing, with no reader task in between
    (one event-loop hop less per response)."""

    def __init__(self, owner: BackendProcess) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._on_stdout(data)

    def eof_received(self) -> bool:
        self.owner._on_stdout_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_stdout_closed()


class _StdinProtocol(asyncio.Protocol):
    """Tells the backend when its stdin pipe closes (a worker that closed its end)."""

    def __init__(self, owner: BackendProcess) -> None:
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_stdin_closed()


class BackendProcess:
    """A running backend. ``call`` sends one request and waits for its response.

    Any protocol error, EOF or exit fails every pending request with a ``BackendError``
    and leaves the process dead; it is never reused after that.
    """

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.seq = next(_SEQUENCE)
        self.log_path = spec.log_dir / f"backend-{spec.tool}-{spec.key.short}-{self.seq}.log"
        self.framing = make_framing(spec.key.protocol, spec.max_response_bytes)
        self.pid = 0
        self.requests_served = 0
        #: time.monotonic() of the last answer (or of the start), for idle reclamation.
        self.last_used = time.monotonic()
        #: Set by the reclaimer: take no new work, stop after the current work.
        self.recycle = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._exit_fd = -1
        self._stdin: asyncio.WriteTransport | None = None
        self._stdout: asyncio.ReadTransport | None = None
        self._pending: dict[int, asyncio.Future[WorkResponse]] = {}
        self._cancelling: set[int] = set()
        #: The last ANSWERED_CANCELS cancelled requests whose cancel was answered: a late
        #: second answer to one (its work ended as the cancel came) is dropped, and the
        #: other requests in flight go on (the pool gives none of these ids out again).
        self._answered_cancels: collections.deque[int] = collections.deque(maxlen=ANSWERED_CANCELS)
        #: A singleplex backend answered with a request id of its own (said once).
        self._said_singleplex_id = False
        #: Set when the backend answers a cancel (one event per cancelled request).
        self._cancel_answered: dict[int, asyncio.Event] = {}
        self._failure: BackendError | None = None
        self._exited = asyncio.Event()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stdout_closed = False
        #: Its end of stdin closed while it ran: it can take no more requests.
        self._stdin_closed = False
        #: The pipe ("stdout", "stdin") it closed and lived on, for which the runtime
        #: killed it (not a signal from elsewhere, whose EOF on stdout also comes before
        #: its exit is seen).
        self._killed_for_closed: str | None = None
        #: Called once the process has ended (its pool forgets it).
        self.when_gone: Callable[[BackendProcess], None] | None = None

    @property
    def alive(self) -> bool:
        """Running and able to take requests."""
        return (
            self._proc is not None
            and self._failure is None
            and not self._exited.is_set()
            and not self._stdin_closed
            and not self._stdout_closed
        )

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def describe(self) -> str:
        return f"backend `{self.spec.tool}` (pid {self.pid}, key {self.spec.key.short})"

    def _check_executable(self) -> None:
        """Fails clearly here rather than as an exit code 127 from setpriv's exec."""
        program = self.spec.key.argv[0]
        if os.sep in program:
            path = os.path.join(self.spec.cwd, program)
            ok = os.path.isfile(path) and os.access(path, os.X_OK)
        else:
            ok = shutil.which(program, path=self.spec.env.get("PATH")) is not None
        if not ok:
            raise BackendStartError(
                f"backend command {program!r} could not be started: it is not an executable "
                f"file (looked from {self.spec.cwd} and on PATH); check the command after `--` "
                "(or `command` in the config)"
            )

    async def start(self) -> None:
        self._check_executable()
        argv = dying_with_parent([*self.spec.launcher, *self.spec.key.argv, "--persistent_worker"])
        try:
            private_directory(self.spec.log_dir)
            log = private_log_file(self.log_path)  # handed to the child; a local file
        except OSError as exc:
            raise BackendStartError(
                f"the backend's log file {self.log_path} cannot be created ({exc.strerror or exc}); "
                "point --log-dir (or `log_dir`, or WORKER_RUNTIME_LOG_DIR) at a writable directory",
                ours=True,
            ) from None
        # Spawned with Popen and watched through a pidfd rather than with the event loop's
        # subprocess support: uvloop's leaves the parent's pipe ends open in the child
        # (so a backend that closes stdout is never seen to), and this needs no child
        # watcher thread.
        try:
            proc = subprocess.Popen(  # noqa: ASYNC220 - fork+exec, a few ms, rare
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.spec.cwd,
                env=self.spec.env if self.spec.launcher_env is None else self.spec.launcher_env,
                start_new_session=True,
                **as_user(self.spec.run_as),
            )
        except OSError as exc:
            if exc.errno in _SPAWN_RESOURCES:
                raise BackendStartError(
                    f"backend command {self.spec.key.argv[0]!r} could not be started: "
                    f"{exc.strerror or exc} (this machine is short of memory, processes or "
                    "file descriptors)",
                    ours=True,
                ) from None
            raise BackendStartError(
                f"backend command {self.spec.key.argv[0]!r} could not be started: "
                f"{exc.strerror or exc}; check the command after `--` (or `command` in the "
                f"config) and that it is executable from {self.spec.cwd}"
            ) from None
        finally:
            os.close(log)
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self.pid = proc.pid
        loop = asyncio.get_running_loop()
        try:
            self._exit_fd = os.pidfd_open(proc.pid)
        except OSError as exc:  # ENOSYS before Linux 5.3; EPERM under an old seccomp filter
            self._discard_unwatched(proc)
            raise BackendStartError(
                f"the runtime cannot watch its backend processes: pidfd_open failed "
                f"({exc.strerror or exc}); it needs Linux 5.3 or later and, in a container, "
                "a seccomp profile that allows pidfd_open",
                ours=True,
            ) from None
        loop.add_reader(self._exit_fd, self._on_exit)
        try:
            stdin, _ = await loop.connect_write_pipe(lambda: _StdinProtocol(self), proc.stdin)
            self._stdin = stdin
            self._stdout, _ = await loop.connect_read_pipe(
                lambda: _StdoutProtocol(self), proc.stdout
            )
        except BaseException:  # the pidfd reaps it: nothing is left running untracked
            self.kill(BackendStartError(f"{self.describe()} could not be connected to"))
            raise
        LOGGER.info("started %s: %s; log %s", self.describe(), argv, self.log_path)

    async def call(self, request: WorkRequest) -> WorkResponse:
        """Sends ``request`` and returns its response.

        If the caller is cancelled (timeout, client cancel, a lost race) the backend is
        left clean: a cancellable multiplex backend gets a cancel request, any other is
        killed. The cancellation ends only once the backend no longer works on the
        request (the cancel answered, or the process gone), so that nothing the request
        would have written lands after it.
        """
        if self._failure is not None:
            raise self._failure
        assert self._stdin is not None
        if self._stdin_closed or self._stdin.is_closing():
            # Its stdin broke since it was chosen; written now, the request would be lost.
            raise BackendDiedError(f"{self.describe()} closed its stdin while still running")
        # Encoded before it is in flight: one that cannot be (a field out of its range) must
        # leave no request pending, which would keep the backend busy for good.
        data = self.framing.encode(request)
        future: asyncio.Future[WorkResponse] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            self._stdin.write(data)
            response = await future
        except asyncio.CancelledError:
            if self._pending.pop(request.request_id, None) is not None and self._running():
                self._abandon(request.request_id)
                clean = asyncio.ensure_future(self._abandoned(request.request_id))
                while not clean.done():  # a second cancel must not cut this wait short
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(clean)
            raise
        self.requests_served += 1
        self.last_used = time.monotonic()
        return response

    def _running(self) -> bool:
        """The process may still work on a request (alive, or its stdin closed lately)."""
        return self._proc is not None and self._failure is None and not self._exited.is_set()

    def unread_output_bytes(self) -> int:
        """Bytes waiting in its stdout pipe, unread by the event loop (0 once it is dead).
        Safe from any thread: it only asks the kernel."""
        proc = self._proc
        if proc is None or proc.stdout is None or not self.alive or self._stdout_closed:
            return 0
        waiting = array.array("i", [0])
        try:
            fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, waiting)
        except (OSError, ValueError):  # ValueError: the loop closed the pipe meanwhile
            return 0
        return waiting[0]

    def discard_if_babbling(self) -> bool:
        """For an idle singleplex backend about to get a request: if bytes it wrote are
        waiting in its stdout pipe, unread by the event loop yet (a second answer to its
        last request, say), or were read as part of a message not finished yet, it is
        killed and True returned; the request must go to another backend. (Called on the
        event loop, which alone feeds the framing.) What waits is read and framed first:
        whitespace between answers is no babble. Bytes that arrive after the request is
        written cannot be told from its answer: a singleplex response carries no
        request id."""
        waiting = self.unread_output_bytes()
        if waiting and self._proc is not None and self._proc.stdout is not None:
            # Read here what waits, as the loop would: the whitespace a JSON worker
            # writes after its answer in a write of its own (`print` unbuffered) is
            # taken, not a reason to kill a warm backend; anything else fails it as read.
            try:
                data = os.read(self._proc.stdout.fileno(), waiting)
            except (BlockingIOError, InterruptedError):
                data = b""
            except (OSError, ValueError):  # closed meanwhile: judged on the count
                data = None
            if data is not None:
                if data:
                    self._on_stdout(data)
                if not self.alive:
                    LOGGER.warning(
                        "%s wrote while it had no request (%d byte(s) unread in its pipe, "
                        "no answer to a request in flight): discarded before its next request",
                        self.describe(),
                        waiting,
                    )
                    return True
                waiting = self.unread_output_bytes()
        partial = self.framing.mid_message()  # read already, an unfinished message
        if not waiting and not partial:
            return False
        wrote = [f"{waiting} byte(s) unread in its pipe"] if waiting else []
        wrote += ["part of a message, read already"] if partial else []
        summary = f"{self.describe()} wrote while it had no request ({' and '.join(wrote)})"
        LOGGER.warning("%s: discarded before its next request", summary)
        self.kill(
            BackendProtocolError(
                f"{summary} (a second answer to its last request?); it was discarded",
                summary,
            )
        )
        return True

    def holds_id(self, request_id: int) -> bool:
        """Whether ``request_id`` may not be given out again yet: awaiting an answer, a
        cancel's included, or a cancel answered lately (whose late second answer it drops)."""
        return (
            request_id in self._pending
            or request_id in self._cancelling
            or request_id in self._answered_cancels
        )

    def _abandon(self, request_id: int) -> None:
        """Leaves the backend clean after a request whose caller has gone."""
        if (
            self.spec.key.multiplex
            and self.spec.cancellable
            and self._stdin is not None
            and not self._stdin_closed
        ):
            self._cancelling.add(request_id)
            # Made before the cancel is written: its answer may arrive before
            # _abandoned first runs, and must find the event to set.
            self._cancel_answered[request_id] = asyncio.Event()
            cancel = WorkRequest(arguments=(), request_id=request_id, cancel=True)
            self._stdin.write(self.framing.encode(cancel))
            asyncio.get_running_loop().call_later(
                self.spec.cancel_grace_s, self._check_cancel_acknowledged, request_id
            )
            LOGGER.info("%s: sent cancel for request %d", self.describe(), request_id)
            return
        LOGGER.info("%s: killed, its request %d was abandoned", self.describe(), request_id)
        self.kill(BackendDiedError(f"{self.describe()} was killed: a request was cancelled"))

    async def _abandoned(self, request_id: int) -> None:
        """Returns once the backend has stopped working on an abandoned request: its
        cancel answered, or the process gone. A process stuck in the kernel outlives its
        SIGKILL; the wait for it ends ``STUCK_AFTER_SIGKILL_S`` after that kill (sent at
        once, or when an unanswered cancel's grace ends), and says so."""
        loop = asyncio.get_running_loop()
        answered = self._cancel_answered.get(request_id)
        give_up = loop.time() + STUCK_AFTER_SIGKILL_S
        if answered is not None:  # a cancel was sent
            give_up += self.spec.cancel_grace_s
            if not answered.is_set():
                waits = [asyncio.ensure_future(e.wait()) for e in (answered, self._exited)]
                try:
                    await asyncio.wait(
                        waits, timeout=give_up - loop.time(), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for wait in waits:
                        wait.cancel()
            self._cancel_answered.pop(request_id, None)
            if answered.is_set():
                return
        if self._proc is None or self._exited.is_set():
            return
        await self._exit_after_kill(
            max(0.0, give_up - loop.time()),
            f"its cancelled request {request_id} is given up without waiting for it",
        )

    async def _exit_after_kill(self, within_s: float, given_up: str) -> None:
        """Waits up to ``within_s`` for the exit a SIGKILL brings. Only a process stuck in
        the kernel (a hung NFS or FUSE mount) outlives it: logged, with what ``given_up``
        says the runtime no longer waits for."""
        try:
            await asyncio.wait_for(self._exited.wait(), within_s)
        except TimeoutError:
            LOGGER.error(
                "%s has not exited %g s after SIGKILL (stuck in the kernel: a hung NFS or "
                "FUSE mount?); %s",
                self.describe(),
                STUCK_AFTER_SIGKILL_S,
                given_up,
            )

    def _check_cancel_acknowledged(self, request_id: int) -> None:
        if request_id in self._cancelling and self._running():
            self.kill(
                BackendDiedError(
                    f"{self.describe()} did not answer a cancel of request {request_id} "
                    f"within {self.spec.cancel_grace_s:g} s and was killed"
                )
            )

    # -- events from the pipes (called by _PipeProtocol on the event loop) -------------
    def _on_stdout(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            for response in self.framing.feed(data):
                self._deliver(response)
        except ProtocolError as exc:
            # What it answered before the bad bytes is answered (Bazel, reading one
            # response per request, would fail only the next request).
            with contextlib.suppress(ProtocolError):
                for response in exc.parsed:
                    self._deliver(response)
            self._fail_protocol(str(exc), exc.first_bytes)
            return
        except Exception as exc:  # a fault of the framing's: the backend goes, no request hangs
            LOGGER.exception("reading the response of %s failed", self.describe())
            self._fail_protocol(
                f"its response could not be read ({type(exc).__name__}: {exc})",
                self.framing.first_bytes(),
            )
            return
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.framing.mid_message():
            self._stall_timer = asyncio.get_running_loop().call_later(
                self.spec.frame_stall_timeout_s, self._on_stall
            )

    def _on_stall(self) -> None:
        self._stall_timer = None
        if self.framing.mid_message() and self._failure is None:
            self._fail_protocol(
                f"a response started but no more bytes came for "
                f"{self.spec.frame_stall_timeout_s:g} s",
                self.framing.first_bytes(),
            )

    def _on_stdout_closed(self) -> None:
        # A process that closes stdout but lives on can serve nothing: give it a moment
        # to exit by itself (for its exit status), then kill it.
        if self._stdout_closed:
            return
        self._stdout_closed = True
        asyncio.get_running_loop().call_later(1.0, self._kill_for_closed_pipe, "stdout")

    def _on_stdin_closed(self) -> None:
        # Also when the runtime closes it (a stop, an exit seen): nothing to do then.
        if self._stdin_closed or not self._running():
            return
        # No longer alive: no request is given to it. What it works on may still be
        # answered, or it is exiting (a process's pipes close before its exit is seen,
        # and its exit status says more): a moment, as for stdout, then it is killed.
        self._stdin_closed = True
        asyncio.get_running_loop().call_later(1.0, self._kill_for_closed_pipe, "stdin")

    def _close_stdout(self) -> None:
        """A moment after the exit (for what is left in the pipe to be read): the pipe's
        read end, if a process outside the group still holds its write end (a helper in
        a session of its own). Else it would stay open, and the process's buffers with it."""
        if self._stdout is not None and not self._stdout.is_closing():
            LOGGER.warning(
                "%s has exited, and a process it started still holds its stdout open: "
                "the runtime closes its end",
                self.describe(),
            )
            self._stdout.close()

    def _kill_for_closed_pipe(self, pipe: str) -> None:
        if self.pid and not self._exited.is_set():
            LOGGER.warning("%s closed its %s and lived on: killed", self.describe(), pipe)
            self._killed_for_closed = self._killed_for_closed or pipe
            self._kill_group()

    def _on_exit(self) -> None:
        assert self._proc is not None
        returncode = self._proc.poll()
        if returncode is None:
            return  # a spurious wake-up: the pidfd is readable only once the process ended
        asyncio.get_running_loop().remove_reader(self._exit_fd)
        os.close(self._exit_fd)
        self._exited.set()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        if self._failure is None:
            how = describe_exit(returncode)
            if self._killed_for_closed and returncode == -signal.SIGKILL:
                how = f"closed its {self._killed_for_closed} while still running (it was killed)"
            summary = f"{self.describe()} {how} before answering"
            self._failure = BackendDiedError(
                f"{summary}; last stderr lines:\n{stderr_tail(self.log_path)}\n  log: {self.log_path}",
                f"{summary} (log: {self.log_path})",
            )
        self._fail_pending()
        # Whatever the backend left in its process group goes too. The group id cannot be
        # reused while any member lives, so this never hits an unrelated process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._stdin is not None:
            self._stdin.close()
        asyncio.get_running_loop().call_later(1.0, self._close_stdout)
        LOGGER.info("%s ended: %s", self.describe(), describe_exit(returncode))
        if self.when_gone is not None:
            self.when_gone(self)

    def _deliver(self, response: WorkResponse) -> None:
        if (
            response.was_cancelled
            and response.request_id not in self._cancelling
            and response.request_id not in self._answered_cancels  # said again: dropped below
        ):
            # Bazel refuses it too. Stray text on stdout can parse as one (a line of
            # spaces is field 4, was_cancelled): taken, it made a failed action exit 0.
            raise ProtocolError(
                f"it answered request id {response.request_id} as cancelled, which was "
                "never cancelled",
                b"",
            )
        future = self._pending.pop(response.request_id, None)
        if future is None and not self.spec.key.multiplex and 0 in self._pending:
            # Singleplex requests carry no id (0): Bazel's reader takes the next answer
            # as the answer whatever id it names, and so does this.
            future = self._pending.pop(0)
            if not self._said_singleplex_id:
                self._said_singleplex_id = True
                LOGGER.warning(
                    "%s (singleplex) answers with request id %d; taken as the answer, as "
                    "Bazel does (said once)",
                    self.describe(),
                    response.request_id,
                )
        if future is None:
            if response.request_id in self._cancelling:
                self._cancelling.discard(response.request_id)
                self._answered_cancels.append(response.request_id)
                answered = self._cancel_answered.get(response.request_id)
                if answered is not None:
                    answered.set()  # _abandoned takes it out
                return
            if response.request_id in self._answered_cancels:
                LOGGER.warning(
                    "%s answered request %d again after answering its cancel; dropped",
                    self.describe(),
                    response.request_id,
                )
                return
            pending = sorted(self._pending) or "none"
            raise ProtocolError(
                f"it answered request id {response.request_id}, which is not in flight "
                f"(in flight: {pending})",
                b"",
            )
        if not future.done():
            future.set_result(response)

    def _fail_protocol(self, why: str, first_bytes: bytes) -> None:
        quoted = f"; it wrote: {quote_bytes(first_bytes)}" if first_bytes else ""
        summary = f"{self.describe()} wrote an invalid response: {why}"
        self.kill(
            BackendProtocolError(
                f"{summary}{quoted}. Did it print something to stdout? A worker may write only "
                f"WorkResponses there. Last stderr lines:\n{stderr_tail(self.log_path)}\n"
                f"  log: {self.log_path}",
                f"{summary} (log: {self.log_path})",
            )
        )

    def _fail_pending(self) -> None:
        assert self._failure is not None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._failure)
        self._pending.clear()

    def kill(self, reason: BackendError) -> None:
        """Discards the process at once; pending requests fail with ``reason``."""
        if self._failure is None:
            self._failure = reason
        self._fail_pending()
        self._kill_group()

    def _discard_unwatched(self, proc: subprocess.Popen[bytes]) -> None:
        """Kills and reaps a process started but never watched (no pidfd)."""
        self._failure = BackendStartError(f"{self.describe()} could not be watched")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STUCK_AFTER_SIGKILL_S)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        self._exited.set()

    def _kill_group(self) -> None:
        if self.pid and not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Closes stdin, then SIGTERM, then SIGKILL; returns once the process is gone."""
        if self._proc is None:
            return
        if self._failure is None:
            self._failure = BackendDiedError(f"{self.describe()} was stopped by the runtime")
        if not self._exited.is_set():
            if self._stdin is not None:
                self._stdin.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._exited.wait(), grace_s)
            except TimeoutError:
                LOGGER.warning("%s ignored SIGTERM for %g s; killing it", self.describe(), grace_s)
            self._kill_group()
        await self._exit_after_kill(STUCK_AFTER_SIGKILL_S, "the runtime no longer waits for it")
