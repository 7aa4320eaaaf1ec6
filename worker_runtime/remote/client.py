"""The REAPI client that runs a worker request remotely: GetCapabilities once, the action
cache first, then the missing blobs, Execute (reattaching with WaitExecution if the stream
drops), and the outputs written into place atomically. Every call has a deadline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.google.longrunning import operations_pb2, operations_pb2_grpc
from worker_runtime.proto.google.rpc import error_details_pb2
from worker_runtime.protocol.wire import encode_varint
from worker_runtime.remote.action import BuiltAction
from worker_runtime.remote.cancellation import Cancellation, RemoteCancelled
from worker_runtime.remote.cas import BlobMissing, Cas, runs_within
from worker_runtime.remote.channels import KEEPALIVE_S, open_channel, parse_endpoint
from worker_runtime.remote.convention import UnsafePathError, safe_relative_path
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of
from worker_runtime.remote.outputs import StagedOutputs

LOGGER = logging.getLogger(__name__)

#: FAILED_PRECONDITION (a missing blob), INTERNAL, UNAVAILABLE.
RETRIED_CODES = (9, 13, 14)

#: A broken Execute or WaitExecution stream with one of these is followed again.
FOLLOWED_AGAIN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)

#: Breaks of an operation's stream in a row, with not a message in between, before the
#: client gives up on it (a stream that delivers messages between breaks is followed
#: until the execution's deadline).
MAX_BREAKS_IN_A_ROW = 20

#: A stream that carried on this long after it got the operation made progress: the
#: count of breaks in a row starts again.
MIN_FOLLOWED_S = 1.0

#: How often an operation the server lost (WaitExecution: NOT_FOUND) is executed again.
MAX_EXECUTIONS_OF_A_LOST_OPERATION = 2


class _NotCached(Exception):
    """The action is marked do_not_cache: no action cache lookup."""


class RemoteError(RuntimeError):
    """The remote side could not run the request; the message says what and where."""


@dataclass(frozen=True)
class RemoteResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    cached: bool
    #: Which executor ran it (ExecutedActionMetadata.worker), "" for a cache hit.
    worker: str


@dataclass(frozen=True)
class RemoteSettings:
    #: As configured: grpcs://host:port, grpc://host:port, unix:///path.
    endpoint: str
    instance: str = ""
    tls: bool = False
    credentials_file: str = ""
    tls_ca_file: str = ""
    #: Deadline of each unary call, and of a whole execution without a timeout of its own.
    #: ``call_timeout_s`` also bounds the wait for a server out of reach to come back
    #: while an operation is followed.
    call_timeout_s: float = 30.0
    execution_timeout_s: float = 7200.0
    #: HTTP/2 keepalive: a connection silent this long is pinged, and dropped if the ping
    #: is not answered (a server frozen or a peer gone without a word is noticed then, not
    #: at the execution's deadline). Servers refuse pings more often than every 5 minutes
    #: by default (gRPC's and Go's).
    keepalive_s: float = KEEPALIVE_S


class RemoteClient:
    """One endpoint and instance; thread-safe; GetCapabilities is asked once."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._channel = open_channel(
            parse_endpoint(
                settings.endpoint, settings.tls, settings.tls_ca_file, settings.credentials_file
            ),
            keepalive_s=settings.keepalive_s,
        )
        self._lock = threading.Lock()
        self._capabilities: re_pb2.ServerCapabilities | None = None
        self._execution = re_grpc.ExecutionStub(self._channel)
        self._action_cache = re_grpc.ActionCacheStub(self._channel)
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)
        self._cas: Cas | None = None

    def close(self) -> None:
        self._channel.close()

    def capabilities(self) -> re_pb2.ServerCapabilities:
        with self._lock:
            if self._capabilities is None:
                stub = re_grpc.CapabilitiesStub(self._channel)
                try:
                    self._capabilities = stub.GetCapabilities(
                        re_pb2.GetCapabilitiesRequest(instance_name=self.settings.instance),
                        timeout=self.settings.call_timeout_s,
                    )
                except grpc.RpcError as exc:
                    raise RemoteError(
                        f"the remote execution server at {self.settings.endpoint} did not answer "
                        f"GetCapabilities: {_describe(exc)}{_hint(exc)}"
                    ) from None
                limit = self._capabilities.cache_capabilities.max_batch_total_size_bytes
                self._cas = Cas(
                    self._channel, self.settings.instance, limit, self.settings.call_timeout_s
                )
            return self._capabilities

    @property
    def cas(self) -> Cas:
        self.capabilities()
        assert self._cas is not None
        return self._cas

    def run(
        self,
        built: BuiltAction,
        blobs: Blobs,
        root: Path,
        cancellation: Cancellation | None = None,
        may_write: Callable[[], bool] | None = None,
        execution_timeout_s: float | None = None,
        on_cache_answer: Callable[[bool], None] | None = None,
    ) -> RemoteResult:
        """Runs the action (or finds it cached) and writes its outputs under ``root``.

        ``cancellation`` lets another thread stop it (RemoteCancelled, nothing written,
        the operation cancelled on the server). ``may_write`` is asked once the outputs
        are downloaded and staged: False discards them (RemoteCancelled); by default
        they are written unless the execution was cancelled. ``execution_timeout_s``
        (default: the settings') bounds waiting for the result. ``on_cache_answer``
        is called with True when the action cache has the result (its outputs are then
        downloaded), and with False when it has none, is not asked, or names outputs
        evicted since."""
        cancellation = cancellation or Cancellation()
        may_write = may_write or cancellation.begin_write
        cancellation.bind(self._cancel_operation)
        self.capabilities()
        skip_cache = False
        try:
            if built.action.do_not_cache:
                raise _NotCached()
            cached = self._action_cache.GetActionResult(
                re_pb2.GetActionResultRequest(
                    instance_name=self.settings.instance,
                    action_digest=built.digest,
                    inline_stdout=True,
                    inline_stderr=True,
                ),
                timeout=self.settings.call_timeout_s,
            )
        except _NotCached:
            pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise RemoteError(f"GetActionResult failed: {_describe(exc)}") from None
        else:
            if on_cache_answer is not None:
                on_cache_answer(True)
            try:
                return self._finish_checked(cached, built, root, True, may_write)
            except BlobMissing as exc:  # outputs evicted since: run it again, past the cache
                _outputs_evicted(built, exc)
                skip_cache = True
        if on_cache_answer is not None:
            on_cache_answer(False)
        self._upload(blobs, cancellation)
        # One deadline for every Execute of this run: a retry does not start it afresh.
        deadline = time.monotonic() + (execution_timeout_s or self.settings.execution_timeout_s)
        response = self._execute_checked(built, blobs, cancellation, deadline, skip_cache)
        if response.cached_result and not skip_cache:
            try:
                return self._finish_checked(response.result, built, root, True, may_write)
            except BlobMissing as exc:  # the server's own cache lookup: the same case
                _outputs_evicted(built, exc)
            response = self._execute_checked(built, blobs, cancellation, deadline, True)
        return self._finish_checked(response.result, built, root, response.cached_result, may_write)

    def _finish_checked(
        self,
        result: re_pb2.ActionResult,
        built: BuiltAction,
        root: Path,
        cached: bool,
        may_write: Callable[[], bool],
    ) -> RemoteResult:
        """_finish, a failed read of the outputs reported as such (not as a bare gRPC
        error); BlobMissing passes (the caller runs the action again)."""
        try:
            return self._finish(result, built, root, cached, may_write)
        except grpc.RpcError as exc:
            raise RemoteError(
                f"downloading the action's outputs failed: {_describe(exc)}"
            ) from None

    def _execute_checked(
        self,
        built: BuiltAction,
        blobs: Blobs,
        cancellation: Cancellation,
        deadline: float,
        skip_cache: bool,
    ) -> re_pb2.ExecuteResponse:
        """Execute, run once more if the server lacked a blob or retried it in vain; a
        RemoteError unless the action ran (whatever its exit code)."""
        try:
            try:
                response = self._execute(built, cancellation, deadline, skip_cache)
            except grpc.RpcError as exc:
                # BuildGrid refuses the call itself, with no operation, when it lacks the
                # Action or Command blob (a server restarted with its CAS in memory, while
                # this client still believed them present). It refuses so for other
                # reasons too (a platform property no bot has): run again only if the
                # server turns out to lack some blob.
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                cancellation.check()
                self.cas.forget()
                refused = _describe(exc)
                try:
                    sent = self.cas.upload_missing(blobs)
                except grpc.RpcError as upload:
                    cancellation.check()
                    raise RemoteError(
                        f"Execute was refused ({refused}), and uploading the action's blobs "
                        f"again failed: {_describe(upload)}"
                    ) from None
                if not sent:
                    raise RemoteError(f"Execute failed: {refused}") from None
                LOGGER.warning(
                    "Execute of action %s was refused (%s) and the server lacked %d of its "
                    "blobs: running it again",
                    built.digest.hash, refused, sent,
                )  # fmt: skip
                response = self._execute(built, cancellation, deadline, skip_cache)
            else:
                if response.status.code in RETRIED_CODES:
                    # Perhaps a blob this client believed present was evicted: check
                    # them all again and run once more. (A malformed action,
                    # INVALID_ARGUMENT, is not.)
                    self.cas.forget()
                    self._upload(blobs, cancellation)
                    response = self._execute(built, cancellation, deadline, skip_cache)
        except grpc.RpcError as exc:
            cancellation.check()
            raise RemoteError(f"Execute failed: {_describe(exc)}") from None
        if response.status.code != 0:
            missing = _missing_blobs(response)
            raise RemoteError(
                f"the server could not run the action (code {response.status.code}): "
                f"{response.status.message}" + (f"; missing blobs: {missing}" if missing else "")
            )
        return response

    def _upload(self, blobs: Blobs, cancellation: Cancellation) -> None:
        """The blobs the server lacks; a failure is reported as the upload's."""
        try:
            self.cas.upload_missing(blobs)
        except grpc.RpcError as exc:
            cancellation.check()
            raise RemoteError(f"uploading the action's inputs failed: {_describe(exc)}") from None

    def _cancel_operation(self, name: str) -> None:
        """CancelOperation, tried again on UNAVAILABLE: BuildGrid answers that when the
        bot's row is locked by its concurrent session update ("failed to lock the bot")."""
        for attempt in range(6):
            try:
                self._operations.CancelOperation(
                    operations_pb2.CancelOperationRequest(name=name), timeout=5.0
                )
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 5:
                    raise
            time.sleep(0.05 * 2**attempt)

    def _execute(
        self,
        built: BuiltAction,
        cancellation: Cancellation,
        deadline: float,
        skip_cache_lookup: bool = False,
    ) -> re_pb2.ExecuteResponse:
        """Execute, followed to its end; an operation this client stops following
        (cancelled, past its deadline, lost) is cancelled on the server. A dropped stream
        is followed again with WaitExecution once the server is back (within
        ``call_timeout_s``); an operation the server lost (NOT_FOUND) is executed again."""
        cancellation.check()
        request = re_pb2.ExecuteRequest(
            instance_name=self.settings.instance,
            action_digest=built.digest,
            skip_cache_lookup=skip_cache_lookup,
        )

        def execute() -> Iterator[operations_pb2.Operation]:
            stream: Iterator[operations_pb2.Operation] = self._execution.Execute(
                request, timeout=max(1.0, deadline - time.monotonic()), metadata=affinity(built.key)
            )
            return stream

        stream = execute()
        cancellation.follow(stream)  # type: ignore[arg-type]
        name = ""
        breaks = 0  # in a row, none of them after a stream that carried on
        executed_again = 0
        try:
            while True:
                received = lost = False
                followed_since = 0.0  # when its first message came
                try:
                    for operation in stream:
                        if not received:
                            received, followed_since = True, time.monotonic()
                        if operation.name and operation.name != name:
                            name = operation.name
                            cancellation.named(name)
                        if operation.done:
                            return _execute_response(operation)
                except grpc.RpcError as exc:
                    cancellation.check()
                    lost = bool(name) and exc.code() == grpc.StatusCode.NOT_FOUND
                    if not lost and exc.code() not in FOLLOWED_AGAIN_CODES:
                        raise
                    why = _describe(exc)
                else:
                    why = "the stream ended early"
                cancellation.check()
                if not name or time.monotonic() > deadline:
                    raise RemoteError(
                        f"the Execute stream ended before the action completed ({why})"
                    )
                # A stream that got the operation and carried on a while made progress;
                # one that breaks at once (WaitExecution sends the operation first)
                # counts as a break, so that a server failing every stream is given up.
                carried_on = received and time.monotonic() - followed_since >= MIN_FOLLOWED_S
                breaks = 0 if carried_on else breaks + 1
                if breaks >= MAX_BREAKS_IN_A_ROW:
                    raise RemoteError(f"operation {name} could not be followed to its end ({why})")
                time.sleep(min(0.05 * 2**breaks, 2.0))
                self._await_server(cancellation, deadline, f"following operation {name} ({why})")
                if lost:
                    executed_again += 1
                    if executed_again > MAX_EXECUTIONS_OF_A_LOST_OPERATION:
                        raise RemoteError(
                            f"the server lost operation {name} {executed_again} times ({why})"
                        )
                    # The server forgot the operation (restarted, or dropped it): the same
                    # action, executed again, runs it or finds its result. The old one is
                    # cancelled first (once, briefly), in case another replica still runs
                    # it; the new one is followed from its own first message.
                    LOGGER.warning("the server lost operation %s (%s): executing again", name, why)
                    cancellation.abandon()
                    cancellation.check()
                    name = ""
                    stream = execute()
                else:
                    LOGGER.info("following operation %s broke off (%s); reattaching", name, why)
                    stream = self._execution.WaitExecution(
                        re_pb2.WaitExecutionRequest(name=name),
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                cancellation.follow(stream)  # type: ignore[arg-type]
        except BaseException:
            cancellation.abandon()
            raise

    def _await_server(self, cancellation: Cancellation, deadline: float, doing: str) -> None:
        """Returns once the server answers again (GetCapabilities, waiting for the
        connection; a proxy in front of a server restarting answers UNAVAILABLE at once,
        so that is asked again); a RemoteError if it stays out of reach for
        ``call_timeout_s``, or once ``deadline`` has passed."""
        started = time.monotonic()
        limit = min(self.settings.call_timeout_s, deadline - started)
        if limit <= 0:
            raise RemoteError(f"the execution's deadline passed while {doing}")
        until = started + limit
        stub = re_grpc.CapabilitiesStub(self._channel)
        request = re_pb2.GetCapabilitiesRequest(instance_name=self.settings.instance)
        while True:
            cancellation.check()
            left = until - time.monotonic()
            if left <= 0:
                raise RemoteError(
                    f"the remote execution server at {self.settings.endpoint} was out of "
                    f"reach for {time.monotonic() - started:.0f} s while {doing}"
                )
            answer = stub.GetCapabilities.future(request, timeout=left, wait_for_ready=True)
            try:
                while True:
                    cancellation.check()
                    try:
                        answer.result(timeout=min(0.5, max(0.01, until - time.monotonic())))
                        return
                    except grpc.FutureTimeoutError:
                        continue
            except grpc.RpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAVAILABLE,
                ):
                    return  # it answered, if not with its capabilities
            finally:
                answer.cancel()
            time.sleep(min(0.2, max(0.0, until - time.monotonic())))

    def _finish(
        self,
        result: re_pb2.ActionResult,
        built: BuiltAction,
        root: Path,
        cached: bool,
        may_write: Callable[[], bool],
    ) -> RemoteResult:
        wanted = set(built.outputs)
        links = [*result.output_symlinks, *result.output_file_symlinks]
        links += result.output_directory_symlinks
        if links:
            raise RemoteError(
                f"the server returned output {links[0].path!r} as a symlink (to "
                f"{links[0].target!r}); the runtime writes no symlink outputs: make the "
                "tool write a file there"
            )
        files = [(o, _checked(o.path, wanted)) for o in result.output_files]
        directories = [(d, _checked(d.path, wanted)) for d in result.output_directories]
        # What the server inlined (checked against its digest) needs no read; the rest
        # comes in one round trip: output files, trees, stdout and stderr. An output file
        # past the batch limit is streamed to its staged file instead, never whole in
        # memory.
        inlined = _inlined(result)
        streamed = {
            digest_key(o.digest)
            for o, _ in files
            if digest_key(o.digest) not in inlined and not self.cas.batched(o.digest)
        }
        digests = [o.digest for o, _ in files if digest_key(o.digest) not in streamed]
        digests += [d.tree_digest for d, _ in directories]
        digests += [d for d in (result.stdout_digest, result.stderr_digest) if d.hash]
        blobs = self.cas.read_many([d for d in digests if digest_key(d) not in inlined])
        blobs.update(inlined)
        staged = StagedOutputs()
        try:
            for output, path in files:
                key = digest_key(output.digest)
                if key in streamed:
                    mode = 0o755 if output.is_executable else 0o644
                    target = staged.file_path(root / path, output.is_executable)
                    self.cas.read_file(output.digest, target, mode)
                else:
                    staged.file(root / path, blobs[key], output.is_executable)
            for directory, path in directories:
                tree = re_pb2.Tree()
                tree.ParseFromString(blobs[digest_key(directory.tree_digest)])
                self._write_tree(tree, staged.directory(root / path))
            if not may_write():
                raise RemoteCancelled("the other side of the race won; remote outputs discarded")
            staged.commit()
        finally:
            staged.discard()
        stdout = blobs.get(digest_key(result.stdout_digest), result.stdout_raw)
        stderr = blobs.get(digest_key(result.stderr_digest), result.stderr_raw)
        return RemoteResult(
            result.exit_code, stdout, stderr, cached, result.execution_metadata.worker
        )

    def _write_tree(self, tree: re_pb2.Tree, target: Path) -> None:
        """Writes an output directory's Tree under ``target``: its files read in batches
        of up to TREE_READ_CHUNK_BYTES (one call per file before: 500 class files, 500
        round trips), one past the server's batch limit streamed to its file."""
        children = {
            digest_of(child.SerializeToString(deterministic=True)).hash: child
            for child in tree.children
        }
        files: list[tuple[re_pb2.FileNode, Path]] = []

        def walk(directory: re_pb2.Directory, at: Path, where: str) -> None:
            at.mkdir(parents=True, exist_ok=True)
            if directory.symlinks:
                link = directory.symlinks[0]
                raise RemoteError(
                    f"the server returned {where + link.name!r} in an output directory as a "
                    f"symlink (to {link.target!r}); the runtime writes no symlink outputs"
                )
            for node in directory.files:
                files.append((node, at / _server_name(node.name, "output file name")))
            for sub in directory.directories:
                name = _server_name(sub.name, "output directory name")
                child = children.get(sub.digest.hash)
                if child is None:
                    raise RemoteError(
                        f"the Tree of an output directory lacks its directory "
                        f"{where + name!r} ({sub.digest.hash}/{sub.digest.size_bytes}): the "
                        "server sent an incomplete Tree"
                    )
                walk(child, at / name, f"{where}{name}/")

        walk(tree.root, target, "")
        batched = [(node, path) for node, path in files if self.cas.batched(node.digest)]
        streamed = [(node, path) for node, path in files if not self.cas.batched(node.digest)]
        for chunk in runs_within(batched, lambda f: f[0].digest.size_bytes, TREE_READ_CHUNK_BYTES):
            blobs = self.cas.read_many([node.digest for node, _ in chunk])
            for node, path in chunk:
                data = blobs[digest_key(node.digest)]
                self.cas.read_to(node.digest, path, node.is_executable, data)
        for node, path in streamed:  # to its file as it comes, never whole in memory
            self.cas.read_to(node.digest, path, node.is_executable)


#: The files of an output directory are read in batches of at most this many bytes.
TREE_READ_CHUNK_BYTES = 16 << 20


#: BuildGrid's scheduling header: SchedulingMetadata{locality_hint = 1}. Servers that do
#: not know it ignore it.
SCHEDULING_HEADER = "build.buildgrid.schedulingmetadata-bin"


def affinity(key: str) -> tuple[tuple[str, bytes], ...]:
    """The worker key as a locality hint, so that the scheduler prefers a bot that has
    already run (and so holds a warm worker for) the same key."""
    hint = key.encode()
    return ((SCHEDULING_HEADER, b"\x0a" + encode_varint(len(hint)) + hint),)


def _inlined(result: re_pb2.ActionResult) -> dict[tuple[str, int], bytes]:
    """The blobs a server inlined in ``result`` whose content matches their digest."""
    found: dict[tuple[str, int], bytes] = {}
    candidates = [(o.digest, o.contents) for o in result.output_files]
    candidates += [(result.stdout_digest, result.stdout_raw)]
    candidates += [(result.stderr_digest, result.stderr_raw)]
    for digest, data in candidates:
        if data and digest.hash and digest_key(digest_of(data)) == digest_key(digest):
            found[digest_key(digest)] = bytes(data)
    return found


def _server_name(name: str, what: str) -> str:
    """A name in an output directory's Tree, if it stays where it is: a server's fault
    (RemoteError) otherwise, never the request's."""
    try:
        return safe_relative_path(name, f"{what} from the server")
    except UnsafePathError as exc:
        raise RemoteError(str(exc)) from None


def _checked(path: str, wanted: set[str]) -> str:
    """An output path the server returned, if it is one the action asked for."""
    try:
        normal = safe_relative_path(path, "output path from the server")
    except UnsafePathError as exc:
        raise RemoteError(str(exc)) from None
    if normal not in wanted and not any(normal.startswith(w + "/") for w in wanted):
        raise RemoteError(f"the server returned output {path!r}, which the action did not declare")
    return normal


def _outputs_evicted(built: BuiltAction, exc: BlobMissing) -> None:
    LOGGER.warning(
        "the cached result of action %s names outputs the CAS no longer holds (%s): "
        "running it again, past the cache",
        built.digest.hash, exc,
    )  # fmt: skip


def _execute_response(operation: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    if operation.HasField("error"):
        raise RemoteError(
            f"operation {operation.name} failed: {operation.error.message} "
            f"(code {operation.error.code})"
        )
    response = re_pb2.ExecuteResponse()
    if not operation.response.Unpack(response):
        raise RemoteError(f"operation {operation.name} ended without an ExecuteResponse")
    return response


def _missing_blobs(response: re_pb2.ExecuteResponse) -> list[str]:
    missing = []
    for detail in response.status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            missing += [v.subject for v in failure.violations if v.type == "MISSING"]
    return missing


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"


def _hint(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (
            "; the server refused the credentials: check [persistent_workers] "
            "remote_credentials_file (a file holding the bearer token) and that the token "
            "has not expired"
        )
    return ""
