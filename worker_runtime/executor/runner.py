"""Runs one leased action: fetches its Command and input root, materializes them in a
fresh directory, runs it one-shot or on a persistent worker (when it carries the
convention's worker key, recomputed here from what was received), uploads the outputs
it declared (read only from its own directory, never through a symlink) and builds the
ActionResult. The directory is removed afterwards."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from worker_runtime.backends.key import PERSISTENT_WORKER_FLAG, WorkerKey
from worker_runtime.errors import RequestError
from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.collect import (
    ENTRY_OVERHEAD_BYTES,
    OutputBudget,
    OutputDirectory,
    OutputFile,
    OutputTooLarge,
    OutputUnreadable,
    UnsafeOutput,
    read_capped,
    read_output,
)
from worker_runtime.executor.disk import MAX_NEW_ENTRIES, DiskWatch, Usage
from worker_runtime.executor.launch import Launch, launch
from worker_runtime.executor.limits import Confinement, Group
from worker_runtime.executor.removal import remove_tree
from worker_runtime.executor.sandbox import Sandbox, wants_network
from worker_runtime.executor.tenants import RunAs, hand_over
from worker_runtime.executor.workers import (
    AcquireCancelled,
    PersistentWorker,
    WorkerCancelled,
    WorkerFault,
    WorkerPool,
)
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.protocol.messages import WorkInput, WorkRequest
from worker_runtime.remote.cas import BlobMissing, Cas
from worker_runtime.remote.convention import (
    KEY_PROPERTY,
    MULTIPLEX_PROPERTY,
    PROTOCOL_PROPERTY,
    TOOL_INPUT_PROPERTY,
    UnsafePathError,
    named_tool_files,
    request_arguments,
    safe_relative_path,
    split_arguments,
    worker_environment,
)
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of
from worker_runtime.spawn import as_user

LOGGER = logging.getLogger(__name__)
#: The lease status of an action (or its worker) killed for passing its memory limit.
RESOURCE_EXHAUSTED = 8
#: The lease status of an action that cannot run as sent (a blob missing, a bad tool).
FAILED_PRECONDITION = 9
INTERNAL = 13
#: The field of REAPI before 2.1 that names an output of each kind.
_LEGACY_FIELD = {"file": "output_files", "directory": "output_directories"}
#: Why a command cannot start that the action itself causes (its program missing, not
#: executable, a path too long, too many arguments): the same on every attempt, so its
#: result (exit 127). Any other (EAGAIN, ENOMEM, EMFILE) is the executor's, retried.
_COMMAND_FAULTS = frozenset({
    errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP,
    errno.ENAMETOOLONG, errno.E2BIG, errno.EISDIR, errno.EPERM,
})  # fmt: skip
#: Deletes the directories of finished actions, off the path of their results.
_REMOVER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discard")


#: Inlined in the ActionResult: blobs up to this size, up to this much in all.
INLINE_MAX_BYTES = 16 << 10
INLINE_TOTAL_BYTES = 256 << 10
#: What the outputs of one action (stdout and stderr included) may take by default: the
#: executor holds them in memory until they are uploaded.
DEFAULT_MAX_OUTPUT_MB = 1024
#: The most files and directories an action's input root may expand to. Directories
#: are named by digest, so a tree of a few blobs can name one directory twice at each of
#: many levels, doubling at each: without a bound, 25 blobs would have the executor make
#: tens of millions of entries for one action, for every tenant's loss.
MAX_INPUT_ENTRIES = 1_000_000
#: Outputs are uploaded in parts of about this size, a cancelled lease's stopped between.
UPLOAD_PART_BYTES = 64 << 20
#: The timeout of an action that gives none.
DEFAULT_TIMEOUT_S = 3600.0
#: The longest timeout taken as given (about eleven days); a longer one is cut to it.
MAX_TIMEOUT_S = 1e6


class ActionError(RuntimeError):
    """The action is malformed (bad path, missing blob): reported as its failure."""


class ActionCancelled(RuntimeError):
    """The lease was cancelled (or taken away) while the action ran; its process is gone."""


class LeaseStop(threading.Event):
    """A lease's stop, set when the server cancels it (or takes it away) or the executor
    stops it. ``stop(result_wanted=True)``: the executor's shutdown grace ran out, and an
    action whose process finished as the stop came is still reported (its outputs read
    and uploaded), so that it is not run again; after a server's cancel nobody will see
    the result, and the outputs are neither read nor uploaded."""

    result_wanted = False

    def stop(self, result_wanted: bool = False) -> None:
        self.result_wanted = result_wanted
        self.set()


def _result_unwanted(cancelled: threading.Event) -> bool:
    """Whether nobody will see the action's result: its lease was stopped, and not by the
    shutdown grace (a plain Event: any stop)."""
    return cancelled.is_set() and not (isinstance(cancelled, LeaseStop) and cancelled.result_wanted)


class ActionNotRun(RuntimeError):
    """The action got no result of its own here: its worker crashed, babbled or timed
    out. Reported as the lease's status (``code``), never as the action's exit code, so
    that a client cannot mistake it for the action failing: INTERNAL (13) for a worker
    fault, which the server retries, DEADLINE_EXCEEDED (4) for the action's timeout,
    FAILED_PRECONDITION (9) for a worker that cannot be started from the action's tools,
    or a blob of the action the server lacks (named in ``missing``)."""

    def __init__(self, message: str, code: int, missing: tuple[re_pb2.Digest, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        #: Blobs the server lacks (FAILED_PRECONDITION): named in the status's details.
        self.missing = missing


@dataclass
class Materialized:
    directory: Path
    #: Every input file: (path in the root, digest hex).
    files: list[tuple[str, str]]
    #: Tool files (bazel_tool_input): (path in the root, digest hex).
    tools: list[tuple[str, str]]


@dataclass
class ActionOutcome:
    result: re_pb2.ActionResult
    #: "persistent" (and whether the worker was reused) or "oneshot".
    mode: str
    reused: bool
    worker_pid: int


def _status(returncode: int) -> int:
    """Killed by signal N: 128 + N, as a shell reports it and as the sandbox (whose init
    is the process started here) does."""
    return returncode if returncode >= 0 else 128 - returncode


def _marked(read_end: int) -> bool:
    """Whether the start mark (``Launch.marked``) came, the read end closed."""
    try:
        os.set_blocking(read_end, False)
        return os.read(read_end, 1) == b"x"
    except BlockingIOError:
        return False
    finally:
        os.close(read_end)


class ActionRunner:
    def __init__(
        self,
        cas: Cas,
        blobs: BlobCache,
        pool: WorkerPool,
        workdir: Path,
        bot_id: str,
        run_as: RunAs = RunAs(),  # noqa: B008 - frozen
        sandbox: Sandbox | None = None,
        confinement: Confinement | None = None,
        max_output_mb: int = DEFAULT_MAX_OUTPUT_MB,
        disk_limit_mb: int | None = None,
    ) -> None:
        self.cas = cas
        self.blobs = blobs
        self.pool = pool
        self.workdir = workdir
        self.bot_id = bot_id
        #: Who the action's processes run as: its tenant's uid, or the executor's own.
        self.run_as = run_as
        #: The view they get (None: the executor's own).
        self.sandbox = sandbox
        #: Their resource limits (None: none).
        self.confinement = confinement
        #: What the outputs of one action may take, stdout and stderr included.
        self.max_output_mb = max_output_mb
        #: What one action may add to the disk while it runs (None: no limit).
        self.disk_limit_mb = disk_limit_mb

    def run(
        self, action: re_pb2.Action, instance: str, cancelled: threading.Event | None = None
    ) -> ActionOutcome:
        """Runs ``action``; raises ActionCancelled soon after ``cancelled`` is set, with
        the process that ran it (persistent worker or one-shot) killed and reaped. A
        command or input blob the server lacks fails it FAILED_PRECONDITION, naming the
        blob as REAPI asks (the client uploads it again and retries)."""
        try:
            return self._run(action, instance, cancelled or threading.Event())
        except BlobMissing as exc:
            raise ActionNotRun(
                f"the action's command or inputs are missing: {exc} (upload them again, then "
                "retry)",
                FAILED_PRECONDITION,
                exc.digests,
            ) from None

    def _run(
        self, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> ActionOutcome:
        fetch_started_ns = time.time_ns()
        _well_formed(action.command_digest, "its command")
        _well_formed(action.input_root_digest, "its input root")
        timeout = _timeout_of(action)
        command = re_pb2.Command()
        try:
            command.ParseFromString(self.cas.read(action.command_digest))
        except DecodeError:
            raise ActionError("its command blob is not a Command message") from None
        if command.working_directory:  # refused, not run in the input root instead
            raise ActionError(
                f"its command names a working directory ({command.working_directory!r}), "
                "which this executor does not support: it runs every command, and takes "
                "every output path, in the input root (as Buck2 and worker-runtime send "
                "them); send the action without one"
            )
        if not command.arguments:  # refused: no program to run, nothing is started
            raise ActionError(
                "its command has no arguments (Command.arguments is empty), so there is no "
                "program to run; send the program's path or name as its first argument"
            )
        if any("\0" in argument for argument in command.arguments):
            raise ActionError(
                "its command has an argument holding a NUL character, which no program can "
                "be given (a C string ends at the first NUL)"
            )
        for variable in command.environment_variables:
            if not variable.name or "=" in variable.name or "\0" in variable.name + variable.value:
                raise ActionError(
                    f"its command sets an environment variable no process can have "
                    f"({variable.name!r}: a name must be non-empty and hold neither `=` nor "
                    "NUL, and a value no NUL)"
                )
        directory = self.workdir / "actions" / uuid.uuid4().hex
        directory.mkdir(parents=True)
        budget = OutputBudget(self.max_output_mb << 20)
        try:
            inputs = self._materialize(action.input_root_digest, directory, cancelled)
            _make_output_parents(command, directory)
            # The tenant's own and private; its input files stay the executor's (readable).
            hand_over(directory, self.run_as)
            fetched_ns = time.time_ns()
            if cancelled.is_set():
                raise ActionCancelled("cancelled before it started")
            started = time.time()
            properties = {p.name: p.value for p in command.platform.properties}
            properties.update({p.name: p.value for p in action.platform.properties})
            startup, request_args = split_arguments(list(command.arguments))
            env = {v.name: v.value for v in command.environment_variables}
            if KEY_PROPERTY in properties and startup:
                code, stdout, stderr, reused, pid = self._persistent(
                    instance, properties, startup, request_args, env, inputs, timeout, cancelled
                )
                budget.take_bytes("its worker's output", len(stderr))
                mode = "persistent"
            else:
                code, stdout, stderr = self._oneshot(
                    list(command.arguments), env, directory, timeout, cancelled,
                    wants_network(properties), budget,
                )  # fmt: skip
                reused, pid, mode = False, 0, "oneshot"
            finished_ns = time.time_ns()
            if _result_unwanted(cancelled):  # its outputs are neither read nor uploaded
                raise ActionCancelled("cancelled as it finished: its outputs are not read")
            result = self._result(
                command, directory, code, stdout, stderr, started, finished_ns, budget, cancelled
            )
            result.execution_metadata.input_fetch_start_timestamp.FromNanoseconds(fetch_started_ns)
            result.execution_metadata.input_fetch_completed_timestamp.FromNanoseconds(fetched_ns)
            return ActionOutcome(result, mode, reused, pid)
        except OutputTooLarge as exc:
            limit = (
                f". The outputs of an action (their contents, stdout and stderr, each "
                f"output directory's Tree, and {ENTRY_OVERHEAD_BYTES} bytes and the name of "
                f"each file and directory) may take {self.max_output_mb} MB on this "
                "executor, set by its --max-output-mb"
                if exc.by_bytes
                else ""
            )
            raise ActionNotRun(
                f"the action's outputs are too large for this executor: {exc}{limit}; "
                "make the action leave less",
                RESOURCE_EXHAUSTED,
            ) from None
        finally:
            self._discard(directory)

    def _discard(self, directory: Path) -> None:
        """Removes an action's directory: out of actions/ at once (a rename), deleted on a
        background thread, so that the result is reported without waiting for it."""
        trash = self.workdir / "discarded" / directory.name
        try:
            trash.parent.mkdir(exist_ok=True)
            directory.rename(trash)
        except OSError:
            remove_tree(directory)
            return
        _REMOVER.submit(remove_tree, trash)

    def _materialize(
        self, root: re_pb2.Digest, directory: Path, cancelled: threading.Event
    ) -> Materialized:
        """Writes the input root under ``directory``: its tree read in one GetTree call,
        its files in bounded batches, each from the executor's local copy where it has one."""
        files: list[tuple[str, str]] = []
        tools: list[tuple[str, str]] = []
        placements: list[tuple[re_pb2.Digest, Path, bool]] = []
        self.blobs.prefetch_tree(root)
        level: list[tuple[re_pb2.Digest, Path, str]] = [(root, directory, "")]
        entries = 0
        while level:
            if cancelled.is_set():  # between reads: a large tree stops early
                raise ActionCancelled("cancelled while its inputs were fetched")
            try:
                nodes = self.blobs.directories([digest for digest, _, _ in level])
            except DecodeError:
                raise ActionError(
                    "a directory of its input root is not a Directory message"
                ) from None
            below: list[tuple[re_pb2.Digest, Path, str]] = []
            for (digest, at, prefix), node in zip(level, nodes, strict=True):
                entries += len(node.files) + len(node.directories)
                if entries > MAX_INPUT_ENTRIES:
                    raise ActionError(
                        f"its input root holds more than {MAX_INPUT_ENTRIES:,} files and "
                        "directories once expanded (a directory named under several names "
                        "is placed under each, so a few blobs can name millions), the most an "
                        "action may have"
                    )
                if cancelled.is_set():  # a wide level is not waited out either
                    raise ActionCancelled("cancelled while its inputs were placed")
                if not self.blobs.checked(digest, node):  # once per directory, not per action
                    _check_directory(node, prefix)
                    self.blobs.mark_checked(digest, node)
                try:
                    at.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise _too_long(exc, prefix) or exc from None
                for entry in node.files:
                    placements.append((entry.digest, at / entry.name, entry.is_executable))
                    path = f"{prefix}{entry.name}"
                    files.append((path, entry.digest.hash))
                    properties = entry.node_properties.properties
                    if any(p.name == TOOL_INPUT_PROPERTY for p in properties):
                        tools.append((path, entry.digest.hash))
                below += [
                    (sub.digest, at / sub.name, f"{prefix}{sub.name}/") for sub in node.directories
                ]
            level = below

        def check() -> None:
            if cancelled.is_set():
                raise ActionCancelled("cancelled while its inputs were fetched")

        check()
        try:
            self.blobs.place(placements, check)
        except OSError as exc:
            raise _too_long(exc, exc.filename or "") or exc from None
        return Materialized(directory, files, tools)

    def _oneshot(
        self,
        argv: list[str],
        env: dict[str, str],
        directory: Path,
        timeout: float,
        cancelled: threading.Event,
        network: bool,
        budget: OutputBudget,
    ) -> tuple[int, bytes, bytes]:
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        group = self.confinement.group("action") if self.confinement is not None else None
        try:
            return self._run_oneshot(
                argv, run_env, directory, timeout, cancelled, network, group, budget
            )
        finally:
            if group is not None:
                group.remove()  # and with it whatever the action left running

    def _run_oneshot(
        self,
        argv: list[str],
        run_env: dict[str, str],
        directory: Path,
        timeout: float,
        cancelled: threading.Event,
        network: bool,
        group: Group | None,
        budget: OutputBudget,
    ) -> tuple[int, bytes, bytes]:
        started = launch(
            argv, run_as=self.run_as, sandbox=self.sandbox, group=group,
            writable=[str(directory)], cwd=str(directory), network=network, env=run_env,
        )  # fmt: skip
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            watch = self._disk_watch(directory, cancelled, lambda: _allocated(out, err))
            try:
                return self._wait_oneshot(
                    argv,
                    started,
                    directory,
                    timeout,
                    cancelled,
                    watch,
                    group,
                    budget,
                    out,
                    err,
                )
            finally:
                if watch is not None:
                    watch.close()

    def _wait_oneshot(
        self,
        argv: list[str],
        started: Launch,
        directory: Path,
        timeout: float,
        cancelled: threading.Event,
        watch: DiskWatch | None,
        group: Group | None,
        budget: OutputBudget,
        out: IO[bytes],
        err: IO[bytes],
    ) -> tuple[int, bytes, bytes]:
        # Through the executor's wrappers, a pipe tells their failure from the action's.
        mark = os.pipe() if started.tenant_at is not None else None
        try:
            process = subprocess.Popen(
                started.marked(), cwd=directory, env=started.env,
                stdin=mark[1] if mark else subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, **as_user(started.run_as.ids),
            )  # fmt: skip
        except BaseException as exc:
            if mark:
                os.close(mark[0])
                os.close(mark[1])
            if not isinstance(exc, OSError):
                raise
            # The action's own program, started directly, that cannot start: its fault.
            # Through the executor's wrappers (the sandbox, a control group's joining,
            # env) the program's own failure is their exit status, so an error here is
            # the executor's, as are EAGAIN, ENOMEM and a working directory gone.
            direct = list(started.argv) == list(argv)
            if not direct or exc.errno not in _COMMAND_FAULTS or exc.filename == str(directory):
                raise
            return 127, b"", f"executor: cannot run {argv[0]!r}: {exc.strerror}\n".encode()
        if mark:
            os.close(mark[1])
        deadline = time.monotonic() + timeout
        finished = False
        reached = True
        try:
            # The pidfd wakes us the moment the process exits (Popen.wait(timeout)
            # polls with growing sleeps, which would add up to 50 ms to every action).
            exited = os.pidfd_open(process.pid)
            try:
                stopped = watch.stop if watch is not None else cancelled
                while not (stopped.is_set() or cancelled.is_set()) and time.monotonic() < deadline:
                    if select.select([exited], [], [], 0.05)[0]:
                        finished = True
                        break
            finally:
                os.close(exited)
        finally:
            # Whatever happened, the group goes: a finished action's stray children
            # too. (Its exited leader is not reaped yet, so the group id is its own.)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if mark:
                reached = _marked(mark[0])
        if not finished and cancelled.is_set():
            raise ActionCancelled("cancelled while running")
        if not finished and watch is not None and watch.passed:
            raise self._past_disk_limit(watch.passed)
        if not finished:
            raise ActionNotRun(f"the action ran past its timeout of {timeout:g} s", 4)
        if group is not None and group.oom_killed():
            assert self.confinement is not None
            raise ActionNotRun(
                f"the action passed its memory limit of "
                f"{self.confinement.limits.memory_mb} MB and was killed",
                RESOURCE_EXHAUSTED,
            )
        if watch is not None and (passed := watch.finish()):
            raise self._past_disk_limit(passed)
        out.seek(0)
        err.seek(0)
        if not reached:  # the action never ran: its wrappers' fault, the executor's
            said = os.pread(err.fileno(), 2048, 0).decode(errors="replace").strip()
            raise ActionNotRun(
                f"the executor could not start the action: what runs in front of its "
                f"program (the control group's join, the sandbox, the uid switch) ended "
                f"with status {_status(process.returncode)} before the program started"
                + (f": {said}" if said else ""),
                INTERNAL,
            )
        stdout = read_capped(out.fileno(), "its stdout", budget)
        return _status(process.returncode), stdout, read_capped(err.fileno(), "its stderr", budget)

    def _disk_watch(
        self,
        directory: Path,
        cancelled: threading.Event,
        extra: Callable[[], int] = lambda: 0,
        kept: tuple[Path, Usage] | None = None,
    ) -> DiskWatch | None:
        if self.disk_limit_mb is None:
            return None
        return DiskWatch(directory, self.disk_limit_mb << 20, cancelled, extra, kept)

    def _past_disk_limit(self, passed: str, worker_kept: bool = True) -> ActionNotRun:
        worker = "" if worker_kept else " (its persistent worker is discarded, with its home)"
        return ActionNotRun(
            f"the action was stopped at its disk limit: {passed}{worker} (this executor "
            f"lets an action add {self.disk_limit_mb:,} MB and {MAX_NEW_ENTRIES:,} files and "
            "directories, set by its --limit-disk); make it write less",
            RESOURCE_EXHAUSTED,
        )

    def _persistent(
        self,
        instance: str,
        properties: dict[str, str],
        startup: list[str],
        request_args: list[str],
        env: dict[str, str],
        inputs: Materialized,
        timeout: float,
        cancelled: threading.Event,
    ) -> tuple[int, bytes, bytes, bool, int]:
        protocol = properties.get(PROTOCOL_PROPERTY, "proto")
        multiplex = properties.get(MULTIPLEX_PROPERTY) == "true"
        # The marked tool files (Bazel's way), else the files the startup command names
        # (Buck2 marks none): staged in the worker's home and part of its key.
        tool_files = sorted(inputs.tools) or named_tool_files(startup, inputs.files)
        # Never the client's key: the one of what this action really carries.
        worker_env = worker_environment(env)
        identity = WorkerKey(
            tuple(a for a in startup if a != PERSISTENT_WORKER_FLAG),
            tuple(sorted(worker_env.items())),
            protocol,
            multiplex,
            tuple(tool_files),
            instance=instance,
            network=self.sandbox is not None and wants_network(properties),
        )
        # Always so for Buck2's actions (its key is its own digest of the exe's artifacts):
        # worth a line when debugging a client, not one per action in the log.
        if identity.digest != properties[KEY_PROPERTY]:
            LOGGER.debug(
                "client key %s differs from the recomputed %s",
                properties[KEY_PROPERTY],
                identity.digest,
            )
        try:
            arguments = request_arguments(request_args, str(inputs.directory))
        except RequestError as exc:  # the action's own fault: reported, not retried
            raise ActionError(str(exc)) from None
        request = WorkRequest(
            arguments=tuple(arguments),
            inputs=tuple(WorkInput(p, d.encode()) for p, d in inputs.files),
            sandbox_dir=str(inputs.directory),
        )
        tools = [(path, inputs.directory / path) for path, _ in tool_files]
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **worker_env}
        try:
            worker, reused = self.pool.acquire(identity, run_env, tools, self.run_as, cancelled)
        except AcquireCancelled as exc:
            raise ActionCancelled(str(exc)) from None
        except WorkerFault as exc:  # it could not be started
            # Its tool files at fault: FAILED_PRECONDITION, which no server retries. The
            # executor's own (no memory, processes or descriptors left; its log disk
            # full): INTERNAL, which BuildGrid runs again, perhaps on another bot.
            code = INTERNAL if exc.ours else FAILED_PRECONDITION
            raise ActionNotRun(f"the persistent worker could not be started: {exc}", code) from None
        try:  # its home's growth over the worker's life counts against each request
            watch = self._disk_watch(
                inputs.directory, cancelled, kept=(worker.home, worker.home_at_start)
            )
        except BaseException:
            self.pool.release(worker, healthy=True)
            raise
        try:
            response = worker.call(request, timeout, cancelled if watch is None else watch.stop)
        except WorkerCancelled as exc:
            # Singleplex: killed and reaped. Multiplex: kept if it answered the cancel.
            # (A watch that passed goes on the worker's home even if the lease was
            # cancelled too.)
            past = watch.passed if watch is not None else ""
            kept = self._release_after(worker, exc.worker_healthy, past)
            if past and not cancelled.is_set():
                raise self._past_disk_limit(past, worker_kept=kept) from None
            raise ActionCancelled("cancelled while its persistent worker ran it") from None
        except WorkerFault as exc:
            # A worker that wrote past the limit and then failed (its disk full, say)
            # is the disk's case, not a fault the server retries elsewhere.
            past = self._finished_watch(watch, worker)
            kept = self._release_after(worker, exc.worker_healthy, past)  # its group goes too
            if past:
                raise self._past_disk_limit(past, worker_kept=kept) from None
            if worker.passed_memory_limit():
                assert self.confinement is not None
                raise ActionNotRun(
                    f"the persistent worker passed its memory limit of "
                    f"{self.confinement.limits.memory_mb} MB and was killed (it is discarded; "
                    f"the next action of its key starts another): {exc}",
                    RESOURCE_EXHAUSTED,
                ) from None
            code = 4 if exc.timed_out else 13
            raise ActionNotRun(f"the persistent worker failed: {exc}", code) from None
        except BaseException:  # not expected (a bug, the pipe loop gone): its state unknown
            self.pool.release(worker, healthy=False)  # discarded, its place under the cap freed
            raise
        finally:
            if watch is not None:
                watch.close()
        passed = self._finished_watch(watch, worker)
        kept = self._release_after(worker, True, passed)
        if passed:
            raise self._past_disk_limit(passed, worker_kept=kept)
        return response.exit_code, b"", response.output.encode(), reused, worker.pid

    def _finished_watch(self, watch: DiskWatch | None, worker: PersistentWorker) -> str:
        """What the request passed, measured once more; the worker is discarded if that
        cannot be measured (it is not released until the caller does so)."""
        if watch is None:
            return ""
        try:
            return watch.finish()
        except BaseException:
            self.pool.release(worker, healthy=False)
            raise

    def _release_after(self, worker: PersistentWorker, healthy: bool, passed: str) -> bool:
        """Releases the worker after its request; one that passed the disk limit and
        whose home holds more than it did (what it wrote there would count against every
        later request) goes, its home with it. Whether it was kept."""
        try:
            kept = healthy and not (passed and worker.home_grew())
        except BaseException:
            self.pool.release(worker, healthy=False)
            raise
        self.pool.release(worker, healthy=kept)
        return kept

    def _result(
        self,
        command: re_pb2.Command,
        directory: Path,
        code: int,
        stdout: bytes,
        stderr: bytes,
        started: float,
        finished_ns: int,
        budget: OutputBudget,
        cancelled: threading.Event,
    ) -> re_pb2.ActionResult:
        """The ActionResult, its blobs uploaded. An output that cannot be taken (a
        symlink, unreadable, past the budget) fails an action that exited 0; one that
        failed keeps its exit code, stdout and stderr, the output left out and said so at
        the end of its stderr (a crash's core file must not hide the crash). Stops,
        uploading nothing more, once ``cancelled`` is set (but by the shutdown grace:
        ``LeaseStop``)."""
        blobs = Blobs()
        inline = _InlineBudget()
        result = re_pb2.ActionResult(exit_code=code)
        wanted = list(command.output_paths) or [*command.output_files, *command.output_directories]
        # The fields of REAPI before 2.1 say which kind each output is, and a mismatch is
        # the action's fault (an output path may be either).
        expected: dict[str, str] = {}  # output -> the field naming it
        if not command.output_paths:
            expected = {**{o: "output_directories" for o in command.output_directories},
                        **{o: "output_files" for o in command.output_files}}  # fmt: skip
        for output in sorted(set(wanted)):
            if _result_unwanted(cancelled):  # between reads: the rest go unread
                raise ActionCancelled("cancelled while its outputs were read: none is uploaded")
            try:
                relative = safe_relative_path(output, "output path")
            except UnsafePathError as exc:
                raise ActionError(str(exc)) from None
            used = budget.snapshot()
            try:
                found = _read_declared(directory, output, relative, budget)
                tree = Blobs()
                if isinstance(found, OutputDirectory):
                    data = _tree(found, tree).SerializeToString(deterministic=True)
                    budget.take_bytes(f"{relative} (its Tree)", len(data))
            except (ActionError, OutputTooLarge) as exc:
                if code == 0:
                    raise
                # A failed action's leftover: its exit code and output matter more.
                budget.restore(used)
                reason = str(exc).removeprefix(f"output {output!r}: ")
                reason = reason.removeprefix(f"output {output!r} ")
                if isinstance(exc, OutputTooLarge) and exc.by_bytes:
                    reason += f" (this executor's --max-output-mb is {self.max_output_mb})"
                stderr += (
                    f"executor: output {output!r} is left out of this failed action's "
                    f"result: {reason}\n"
                ).encode()
                continue
            kind = "file" if isinstance(found, OutputFile) else "directory"
            field = expected.get(output)
            if found is not None and field not in (None, _LEGACY_FIELD[kind]):
                if code != 0:  # a failed action's leftovers: its exit code and output matter
                    continue
                raise ActionError(
                    f"output {output!r} is declared in {field}, and the action left a {kind} there"
                )
            if isinstance(found, OutputFile):
                digest = digest_of(found.data)
                blobs.data[digest_key(digest)] = found.data
                result.output_files.add(
                    path=relative, digest=digest, is_executable=found.executable,
                    contents=inline.take(found.data),
                )  # fmt: skip
            elif isinstance(found, OutputDirectory):
                blobs.data.update(tree.data)
                digest = digest_of(data)
                blobs.data[digest_key(digest)] = data
                result.output_directories.add(path=relative, tree_digest=digest)
        for name, data in (("stdout", stdout), ("stderr", stderr)):
            digest = digest_of(data)
            if data:
                blobs.data[digest_key(digest)] = data
            getattr(result, f"{name}_digest").CopyFrom(digest)
            setattr(result, f"{name}_raw", inline.take(data))
        metadata = result.execution_metadata
        metadata.worker = self.bot_id
        metadata.execution_start_timestamp.FromNanoseconds(int(started * 1e9))
        metadata.execution_completed_timestamp.FromNanoseconds(finished_ns)
        metadata.output_upload_start_timestamp.FromNanoseconds(time.time_ns())
        for part in _upload_parts(blobs):
            if _result_unwanted(cancelled):  # between uploads: the rest is not sent
                raise ActionCancelled("cancelled while its outputs were uploaded: the rest are not")
            self.cas.upload_missing(part)
        metadata.output_upload_completed_timestamp.FromNanoseconds(time.time_ns())
        return result


def _read_declared(
    directory: Path, output: str, relative: str, budget: OutputBudget
) -> OutputFile | OutputDirectory | None:
    """The output the action left at ``relative``; ActionError if it is a symlink or
    cannot be read, OutputTooLarge past ``budget``."""
    try:
        return read_output(str(directory), relative, budget)
    except UnsafeOutput as exc:
        raise ActionError(
            f"output {output!r}: {exc}; outputs are read from the action's directory only"
        ) from None
    except OutputUnreadable as exc:
        raise ActionError(
            f"output {output!r} cannot be read: {exc}; make the action leave its "
            "declared outputs where their paths lead"
        ) from None


def _upload_parts(blobs: Blobs) -> list[Blobs]:
    """``blobs`` in parts of about UPLOAD_PART_BYTES each (one, for most actions): a
    cancel is seen between two, not only once all are sent."""
    parts = [Blobs()]
    size = 0
    for key, data in blobs.data.items():
        if size and size + len(data) > UPLOAD_PART_BYTES:
            parts.append(Blobs())
            size = 0
        parts[-1].data[key] = data
        size += len(data)
    return parts


def _allocated(*files: IO[bytes]) -> int:
    """The bytes of disk ``files`` take."""
    return sum(os.fstat(f.fileno()).st_blocks * 512 for f in files)


def _make_output_parents(command: re_pb2.Command, directory: Path) -> None:
    """Creates the parent directory of every output, as REAPI asks of a server before it
    runs the command (`jar --file out/x.jar` does not make `out/` itself)."""
    wanted = list(command.output_paths) or [*command.output_files, *command.output_directories]
    for output in wanted:
        try:
            relative = safe_relative_path(output, "output path")
        except UnsafePathError as exc:
            raise ActionError(str(exc)) from None
        parent = (directory / relative).parent
        if not _inside(parent, directory):
            raise ActionError(f"output {output!r} leaves the action's directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fault = _output_parent_fault(exc, directory)
            if fault is None:  # the executor's own disk (ENOSPC, EIO): INTERNAL, retried
                raise
            raise ActionError(
                f"output {output!r} cannot be prepared: {fault}; an output cannot be under "
                "an input file, nor have a name longer than 255 bytes: fix the action's "
                "declared outputs or its inputs"
            ) from None


#: The errors of making an output's parent directories that its own path or the action's
#: inputs cause (the same on every attempt), and what each means.
_OUTPUT_PARENT_FAULTS = {
    errno.EEXIST: "is an input file, not a directory",
    errno.ENOTDIR: "has a file on its way, not a directory",
    errno.ENAMETOOLONG: "has a name longer than the file system allows (255 bytes)",
    errno.ELOOP: "passes through too many levels of symlinks",
}


def _output_parent_fault(exc: OSError, directory: Path) -> str | None:
    """What is wrong with an output's path, if ``exc`` (raised making its parents in
    ``directory``, the action's) is the action's fault; None if it is the executor's."""
    reason = _OUTPUT_PARENT_FAULTS.get(exc.errno or 0)
    if reason is None:
        return None
    where = Path(os.fsdecode(exc.filename)) if exc.filename is not None else directory
    try:
        shown = where.relative_to(directory).as_posix()
    except ValueError:  # not in the action's directory: the executor's own fault
        return None
    return f"{shown!r} {reason}"


class _InlineBudget:
    """Small outputs, stdout and stderr go in the ActionResult as well as in the CAS, so
    that a client can skip the read round trip (ours checks them against their digests).
    REAPI asks servers to inline only on request; this executor does it for blobs up to
    INLINE_MAX_BYTES each and INLINE_TOTAL_BYTES in all, which keeps results small."""

    def __init__(self) -> None:
        self.left = INLINE_TOTAL_BYTES

    def take(self, data: bytes) -> bytes:
        if len(data) > INLINE_MAX_BYTES or len(data) > self.left:
            return b""
        self.left -= len(data)
        return data


#: The longest file name the file systems an action runs on take (NAME_MAX).
_MAX_NAME_BYTES = 255
#: The digest function this executor takes (SHA-256's, as hex).
_HEX = re.compile(r"[0-9a-f]{64}")


def _timeout_of(action: re_pb2.Action) -> float:
    """The action's timeout in seconds, its nanoseconds counted (a 0.3 s timeout was none
    at all); none given: DEFAULT_TIMEOUT_S; at most MAX_TIMEOUT_S (waits take no more). A
    negative one is the action's fault."""
    timeout = action.timeout.seconds + action.timeout.nanos / 1e9
    if timeout < 0 or action.timeout.nanos < 0:
        raise ActionError(
            f"its timeout is negative ({action.timeout.seconds} s, {action.timeout.nanos} ns); "
            "send a positive one, or none for this executor's default of "
            f"{DEFAULT_TIMEOUT_S:g} s"
        )
    return min(timeout or DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S)


def _too_long(exc: OSError, where: str | Path) -> ActionError | None:
    """An input placed past the file system's limits (ENAMETOOLONG: a path of more than
    4,096 bytes, from directories whose names are each within bounds) is the action's
    fault, not the executor's to retry elsewhere: the error saying so, else None."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    return ActionError(
        f"its input root nests too deep for this executor: a path (near {str(where)[:200]!r}) "
        "is longer than the file system allows (4,096 bytes); make its paths shorter"
    )


def _check_directory(node: re_pb2.Directory, prefix: str) -> None:
    """Refuses a directory of the input root that cannot be placed as sent: fields a
    Directory lacks, a name twice or not a single path segment, a digest that names no
    blob, a symlink. All of it is the message's own, whatever the action: the executor's
    copy of a directory is checked once (``BlobCache.checked``)."""
    _only_known_fields(node, prefix)
    _unique_names(node, prefix)
    for entry in node.files:
        name = _segment(entry.name)
        _well_formed(entry.digest, f"{(prefix + name)!r} in the input root")
    for sub in node.directories:
        name = _segment(sub.name)
        _well_formed(sub.digest, f"{(prefix + name + '/')!r} in the input root")
    if node.symlinks:
        raise ActionError("symlinks in the input root are not supported")


def _unique_names(node: re_pb2.Directory, prefix: str) -> None:
    """REAPI allows each name once in a Directory, files, directories and symlinks
    together: a second would overwrite, or fail to replace, the first."""
    seen: set[str] = set()
    for names in (
        (f.name for f in node.files),
        (d.name for d in node.directories),
        (s.name for s in node.symlinks),
    ):
        for name in names:
            if name in seen:
                raise ActionError(f"{(prefix + name)!r} appears twice in the input root")
            seen.add(name)


def _only_known_fields(node: re_pb2.Directory, prefix: str) -> None:
    """A blob that is not a Directory (a file's contents named as one, say) often still
    parses as one: every field it seems to hold unknown, and nothing in it placed. Such a
    directory is refused, not run empty. (A field from a later REAPI would be refused too;
    none is defined in Directory, FileNode or DirectoryNode past those this executor
    reads.)"""
    messages: list[Message] = [node, *node.files, *node.directories, *node.symlinks]
    messages += [entry.digest for entry in node.files]
    messages += [entry.digest for entry in node.directories]
    strays = []
    for message in messages:
        fields = unknown_fields.UnknownFieldSet(message)
        strays += [fields[i].field_number for i in range(len(fields))]
    if strays:
        where = f"directory {prefix!r}" if prefix else "root directory"
        numbers = ", ".join(str(n) for n in sorted(set(strays))[:5])
        raise ActionError(
            f"the {where} of its input root is not a Directory message: it holds fields "
            f"a Directory does not have (numbers {numbers}); send the Directory's digest "
            "there, not another blob's"
        )


def _well_formed(digest: re_pb2.Digest, what: str) -> None:
    """A digest that cannot name a blob (not 64 lowercase hex digits of SHA-256, or a
    negative size) is the action's fault, not a blob the server lacks to be uploaded
    again and retried."""
    if digest.size_bytes < 0 or not _HEX.fullmatch(digest.hash):
        raise ActionError(
            f"{what} names the digest "
            f"{digest.hash[:80]!r}/{digest.size_bytes}, which is not a SHA-256 digest "
            "(64 lowercase hex digits and a size of 0 or more)"
        )


def _segment(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ActionError(f"invalid name {name!r} in the input root")
    if len(name.encode()) > _MAX_NAME_BYTES:
        raise ActionError(
            f"name {name[:40]!r}... in the input root is longer than {_MAX_NAME_BYTES} bytes"
        )
    return name


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _tree(root: OutputDirectory, blobs: Blobs) -> re_pb2.Tree:
    """The REAPI Tree of an output directory, its files' blobs added to ``blobs``."""
    tree = re_pb2.Tree()

    def directory(at: OutputDirectory) -> re_pb2.Directory:
        node = re_pb2.Directory()
        for name, file in at.files.items():
            digest = digest_of(file.data)
            blobs.data[digest_key(digest)] = file.data
            node.files.add(name=name, digest=digest, is_executable=file.executable)
        for name, below in at.directories.items():
            child = directory(below)
            tree.children.append(child)
            node.directories.add(
                name=name, digest=digest_of(child.SerializeToString(deterministic=True))
            )
        return node

    tree.root.CopyFrom(directory(root))
    return tree
