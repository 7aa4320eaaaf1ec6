"""The executor's session with BuildGrid's Bots service: create a bot session, then renew
it in a loop (the heartbeat that keeps its leases), start every new lease on a thread,
report results in the next update, stop work on cancelled leases (BuildGrid drops a
cancelled lease from the session; other servers mark it CANCELLED), never run a lease
twice while the server lists it, and on SIGTERM finish what runs, then send
BOT_TERMINATING."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.disk import MAX_NEW_ENTRIES
from worker_runtime.executor.limits import Confinement, Limits
from worker_runtime.executor.metrics import ExecutorMetrics
from worker_runtime.executor.removal import remove_tree
from worker_runtime.executor.runner import (
    DEFAULT_MAX_OUTPUT_MB,
    ActionCancelled,
    ActionError,
    ActionNotRun,
    ActionOutcome,
    ActionRunner,
    LeaseStop,
)
from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import (
    PRIVATE_DIRECTORIES,
    SHARED_DIRECTORIES,
    TenantError,
    Tenants,
    prepare_workdir,
)
from worker_runtime.executor.workers import CANCEL_GRACE_S, WorkerPool
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from worker_runtime.proto.google.rpc import error_details_pb2
from worker_runtime.remote.cas import DEFAULT_BATCH_LIMIT, Cas
from worker_runtime.remote.channels import Endpoint, open_channel
from worker_runtime.remote.convention import UnsafePathError

LOGGER = logging.getLogger(__name__)
#: How long an idle bot lets the server hold an UpdateBotSession (BuildGrid hands out no
#: lease under about 3 s), and the short deadline used while work is running.
LONG_POLL_S = 5.0
SHORT_POLL_S = 0.5
#: The short deadline doubles after each update it cut short, up to this: a server slow
#: to answer (a loaded database) rolls back an update its client gave up on, and would
#: never take a completion, nor the heartbeat that keeps the bot's leases its own.
SLOW_SERVER_POLL_S = 8.0
#: While leases run, the session is renewed this often (the heartbeat, and how soon a
#: cancelled lease is seen); a lease that ends sooner is reported at once instead.
HEARTBEAT_S = 0.2
#: On SIGTERM, how long running actions have to finish by default.
DEFAULT_SHUTDOWN_GRACE_S = 30.0
#: On the way out, how long the threads of actions stopped past the grace have to end.
STOPPED_ACTIONS_WAIT_S = 5.0
#: On the way out, how long the last report waits to try again a server out of reach.
LAST_REPORT_RETRY_S = 0.5
#: How long a CreateBotSession may take: BuildGrid holds it (as it holds an update) until
#: it has a lease or most of the deadline has passed. Short, so that a SIGTERM while the
#: executor registers is not held up longer than by an idle update.
CREATE_SESSION_S = LONG_POLL_S
#: Between attempts to register with a server out of reach: the first wait, and the
#: longest the wait doubles to.
REGISTER_RETRY_FIRST_S = 0.5
REGISTER_RETRY_MAX_S = 10.0
#: A session lost after lasting this long is registered again at once: the loss was a
#: server's restart or a long silence, not a refusal that registering again repeats.
SETTLED_SESSION_S = 60.0
#: At start-up, how long the executor tries to register with a server out of reach
#: before it exits with an error (its supervisor then restarts it, or an operator looks).
STARTUP_REGISTER_S = 60.0
#: The most of an error message one lease carries, and the most its ActionResult may
#: take. An update carries every lease that completed since the last, and servers take
#: 4 MiB in one message by default (BuildGrid sets no other limit): an update over it was
#: refused, sent again and refused for good, the executor's reports all stuck behind it.
MAX_STATUS_MESSAGE_CHARS = 4096
MAX_RESULT_BYTES = 1 << 20
#: A lease's report this small is never blamed for an update the server refused.
SMALL_REPORT_BYTES = 2 * MAX_STATUS_MESSAGE_CHARS
#: Batch calls' size where the server does not say its limit (GetCapabilities failed).
FALLBACK_BATCH_LIMIT = 2 << 20
#: The code of a lease whose result is too large to report (RESOURCE_EXHAUSTED).
RESOURCE_EXHAUSTED = 8
#: google.rpc.Code UNAVAILABLE: BuildGrid runs a lease completed with it again.
UNAVAILABLE = 14
#: The most missing blobs a lease's report names (about 87 KB of them).
MAX_MISSING_NAMED = 1000
#: The codes of an UpdateBotSession refused because the server no longer knows the
#: session: BuildGrid answers INVALID_ARGUMENT ("Bot does not exist ...") once it has
#: reaped a bot silent past its keepalive, or when a newer session took the bot id;
#: NOT_FOUND is what other servers answer for an unknown session name.
SESSION_GONE_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
#: The codes of a CreateBotSession that may succeed if tried again (the server out of
#: reach, starting, or too slow this once); any other is the request's or the server's
#: configuration's fault, which trying again does not mend.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class RegistrationFailed(RuntimeError):
    """The executor could not create its bot session when it started: the message says
    which server, why, and what to do."""


class _Backoff:
    """Waits that double from REGISTER_RETRY_FIRST_S up to REGISTER_RETRY_MAX_S."""

    def __init__(self) -> None:
        self.next_s = REGISTER_RETRY_FIRST_S

    def take(self) -> float:
        wait = self.next_s
        self.next_s = min(self.next_s * 2, REGISTER_RETRY_MAX_S)
        return wait

    def reset(self) -> None:
        self.next_s = REGISTER_RETRY_FIRST_S


@dataclass
class ExecutorSettings:
    server: Endpoint
    instance: str
    bot_id: str
    capacity: int
    workdir: Path
    max_workers: int
    memory_limit_mb: int | None
    worker_idle_s: float
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    #: How long a multiplex worker has to answer a cancel before it is discarded.
    cancel_grace_s: float = CANCEL_GRACE_S
    metrics_port: int | None = None
    #: Multi-tenant: each tenant runs under its own uid from this range (needs root).
    uid_range: range | None = None
    #: Where the tenants' uids are kept (default: <workdir>/tenant-uids.json).
    uid_map: Path | None = None
    #: The view each action and worker gets (None: the executor's own).
    sandbox: Sandbox | None = None
    #: The resource limits of each action and worker (none when all are None).
    limits: Limits = Limits()  # noqa: RUF009 - frozen
    #: What the outputs of one action may take, stdout and stderr included.
    max_output_mb: int = DEFAULT_MAX_OUTPUT_MB
    #: What one action may add to the disk while it runs (None: no limit).
    disk_limit_mb: int | None = None


@dataclass
class Stats:
    leases: int = 0
    succeeded: int = 0
    failed: int = 0
    persistent: int = 0
    reused: int = 0


class Executor:
    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.channel = open_channel(settings.server)
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self._capabilities = re_grpc.CapabilitiesStub(self.channel)
        self.confinement = (
            Confinement(settings.limits, settings.bot_id) if settings.limits.any else None
        )
        self.pool = WorkerPool(
            settings.workdir / "workers", settings.max_workers, settings.memory_limit_mb,
            settings.worker_idle_s, settings.cancel_grace_s, settings.sandbox,
            confinement=self.confinement, max_response_bytes=settings.max_output_mb << 20,
        )  # fmt: skip
        self.cas_by_instance: dict[str, Cas] = {}
        self.blobs_by_instance: dict[str, BlobCache] = {}
        self._caches_lock = threading.Lock()
        self.tenants = Tenants(
            settings.uid_range, settings.uid_map or settings.workdir / "tenant-uids.json",
            settings.instance,
        )  # fmt: skip
        self.stats = Stats()
        self.metrics = ExecutorMetrics()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = ThreadPoolExecutor(max_workers=settings.capacity)
        self._running: dict[str, Future[ActionOutcome]] = {}
        #: The deadline of an update while work runs (SHORT_POLL_S, longer for a slow
        #: server: SLOW_SERVER_POLL_S).
        self._short_poll_s = SHORT_POLL_S
        self._cancel_events: dict[str, LeaseStop] = {}
        #: The waits between attempts to register again; back to the shortest once a
        #: session has lasted SETTLED_SESSION_S.
        self._register_retry = _Backoff()
        #: time.monotonic() of the current session's creation.
        self._session_since = time.monotonic()
        #: The current bot session (once registered): ended if the loop fails.
        self._current = bots_pb2.BotSession()

    def stop(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()

    def _cas(self, instance: str) -> Cas:
        with self._caches_lock:
            known = instance in self.cas_by_instance
        # Asked outside the lock: a slow server must not hold up every lease thread.
        limit = None if known else self._batch_limit(instance)
        with self._caches_lock:  # lease threads: one Cas per instance, never two
            if instance not in self.cas_by_instance:
                assert limit is not None
                # Every output checked against the server: a result naming a blob it
                # evicted (or lost in a restart) since a memo said present fails its client.
                self.cas_by_instance[instance] = Cas(
                    self.channel, instance, limit, present_ttl_s=0.0
                )
            return self.cas_by_instance[instance]

    def _batch_limit(self, instance: str) -> int:
        """The server's limit on one batch call for ``instance``, as it states it (BuildGrid
        takes 1 KiB less than 4 MiB; one batch over it is refused whole)."""
        try:
            capabilities = self._capabilities.GetCapabilities(
                re_pb2.GetCapabilitiesRequest(instance_name=instance), timeout=SHORT_POLL_S * 10
            )
        except grpc.RpcError as exc:
            LOGGER.warning(
                "GetCapabilities of instance %r failed (%s): batches of at most %d bytes",
                instance, exc.code(), FALLBACK_BATCH_LIMIT,
            )  # fmt: skip
            return FALLBACK_BATCH_LIMIT
        return capabilities.cache_capabilities.max_batch_total_size_bytes or DEFAULT_BATCH_LIMIT

    def _blobs(self, instance: str) -> BlobCache:
        cas = self._cas(instance)
        with self._caches_lock:  # one local copy per instance: two would race on its files
            if instance not in self.blobs_by_instance:
                self.blobs_by_instance[instance] = BlobCache.for_instance(
                    cas, self.settings.workdir
                )
            return self.blobs_by_instance[instance]

    def _instance_of(self, lease_id: str) -> str:
        """The instance of a lease's job. BuildGrid 0.9 names every lease
        ``<instance>/<job>``; 0.4 names it by its bare job id, even when its scheduler
        pools several instances (``instance-pools``): the executor's own instance is then
        taken, right only where its instance is pooled with none other (docs/remote.md)."""
        return lease_id.rsplit("/", 1)[0] if "/" in lease_id else self.settings.instance

    def _run(
        self, lease_id: str, action: re_pb2.Action, cancelled: threading.Event, received: float
    ) -> ActionOutcome:
        self.metrics.queue_seconds.observe(time.monotonic() - received)
        instance = self._instance_of(lease_id)
        try:
            run_as = self.tenants.run_as(instance)
        except TenantError as exc:
            raise ActionNotRun(str(exc), 9) from None  # FAILED_PRECONDITION
        runner = ActionRunner(
            self._cas(instance), self._blobs(instance), self.pool, self.settings.workdir,
            self.settings.bot_id, run_as, self.settings.sandbox, self.confinement,
            self.settings.max_output_mb, self.settings.disk_limit_mb,
        )  # fmt: skip
        try:
            with self.metrics.execution_seconds.time():
                return runner.run(action, instance, cancelled)
        except ActionCancelled as exc:
            LOGGER.info("lease %s cancelled: %s", lease_id, exc)
            self.metrics.actions.labels(outcome="cancelled").inc()
            raise

    def _cancel(self, lease_id: str) -> None:
        """Stops a running lease: its process is killed, its result never reported."""
        future = self._running.pop(lease_id, None)
        event = self._cancel_events.pop(lease_id, None)
        if event is not None:
            event.set()
        if future is not None:
            future.cancel()  # only stops it if it has not started yet

    def _session(self) -> bots_pb2.BotSession:
        device = worker_pb2.Device(handle=self.settings.bot_id)
        device.properties.add(key="OSFamily", value="linux")
        worker = worker_pb2.Worker(devices=[device])
        worker.configs.add(key="capacity", value=str(self.settings.capacity))
        return bots_pb2.BotSession(bot_id=self.settings.bot_id, status=bots_pb2.OK, worker=worker)

    def serve(self) -> int:
        """Registers, runs leases until stopped, then ends the session. The metrics port
        is taken first: one in use fails the executor (MetricsPortUnavailable) before it
        holds any lease."""
        if self.settings.metrics_port is not None:
            self.metrics.bind(self.settings.metrics_port)
        try:
            return self._serve()
        finally:
            self.metrics.close()

    def _serve(self) -> int:
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        # What a killed predecessor in this workdir left: action directories, worker homes,
        # its local copy of the CAS.
        for leftover in (*SHARED_DIRECTORIES, *PRIVATE_DIRECTORIES):
            remove_tree(self.settings.workdir / leftover)
        prepare_workdir(self.settings.workdir, self.tenants.multi)
        if self.confinement is not None:
            self.confinement.start()  # what killed predecessors left goes
            LOGGER.info("limits: %s", self.confinement.describe())
        if self.settings.disk_limit_mb is not None:
            LOGGER.info(
                "disk: %s MB and %s new files and directories per action (--limit-disk)",
                f"{self.settings.disk_limit_mb:,}",
                f"{MAX_NEW_ENTRIES:,}",
            )
        session = self._register_at_start()
        if session is None:  # stopped before the server could be reached
            return self._end(None)
        self.metrics.start()  # answered once the bot is registered (`cluster up` waits)
        LOGGER.info("bot session %s", session.name)
        try:
            final = self._serve_session(session)
        except BaseException:
            # A fault after registering (a bug, the machine out of descriptors): the
            # session is ended, its leases handed back, rather than left to the server
            # until its keepalive lapses (600 s by BuildGrid's default).
            LOGGER.error(
                "the executor failed; ending bot session %s, its unfinished leases handed back",
                self._current.name,
            )
            for event in list(self._cancel_events.values()):
                event.set()
            with contextlib.suppress(Exception):
                self._end(self._current)
            raise
        return self._end(final)

    def _serve_session(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession | None:
        """The loop: renews ``session``, runs and reports its leases until the executor
        is stopped. The session to end then (None: none left, it was lost as the
        executor stopped); ``self._current`` is the current one at every moment."""
        self._current = session
        last_reap = time.monotonic()
        stopping_since: float | None = None
        while True:
            self._current = session
            if self._stop.is_set() and stopping_since is None:
                stopping_since = time.monotonic()
            reported = self._update_leases(session, accept=stopping_since is None)
            if stopping_since is not None:
                # Draining: no new lease. BuildGrid gives leases only to a bot whose status
                # is OK, and leaves those it has alone otherwise (BOT_TERMINATING too: it
                # only means no new lease; sent at the very end, with the handed back).
                session.status = bots_pb2.UNHEALTHY
            if stopping_since is not None and not self._running:
                session = self._report_before_terminating(session)
                break
            if (
                stopping_since is not None
                and time.monotonic() - stopping_since > self.settings.shutdown_grace_s
            ):
                running = len(self._running)
                LOGGER.warning(
                    "shutdown grace of %g s over with %d lease%s running: stopping %s (each "
                    "handed back to the server unless it finishes as it stops)",
                    self.settings.shutdown_grace_s, running, "" if running == 1 else "s",
                    "it" if running == 1 else "them",
                )  # fmt: skip
                for event in self._cancel_events.values():
                    # One-shot groups killed, persistent workers too; an action whose
                    # process finished as this came still has its outputs read.
                    event.stop(result_wanted=True)
                # The stopped actions' threads end within moments (a kill, a reap, their
                # directory moved away; one fetching its inputs at its next read). One
                # that finished as its stop came has a result: reported, not run again.
                wait_for_futures(list(self._running.values()), timeout=STOPPED_ACTIONS_WAIT_S)
                for lease_id, future in self._running.items():
                    unwanted = self._cancel_events.get(lease_id)
                    if unwanted is not None and not future.done():
                        unwanted.stop()  # handed back: its outputs are wanted no more
                session = self._report_finished_despite_stop(session)
                break
            if self._running and not reported and not self._any_done():
                # Leases run: no update until one ends or the heartbeat is due. A short
                # action's completion then goes in the very next update, and the server
                # (which also serves the action's inputs) is not asked for a bare
                # acknowledgement while it runs.
                self._wake.wait(HEARTBEAT_S)
                self._wake.clear()
                if self._any_done():
                    continue  # reported at the top, in the update that follows
            short = bool(self._running or stopping_since)
            deadline = self._short_poll_s if short else LONG_POLL_S
            try:
                session = self.bots.UpdateBotSession(
                    bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
                    timeout=deadline,
                )
                self._short_poll_s = SHORT_POLL_S
                self._current = session
            except grpc.RpcError as exc:
                if short and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._short_poll_s = min(self._short_poll_s * 2, SLOW_SERVER_POLL_S)
                    LOGGER.warning(
                        "UpdateBotSession took longer than %g s; allowing %g s",
                        deadline, self._short_poll_s,
                    )  # fmt: skip
                if exc.code() in SESSION_GONE_CODES:
                    renewed = self._register_again(session, exc)
                    if renewed is None:  # stopped meanwhile: nothing left to report
                        return None
                    session = self._current = renewed
                elif _too_large(exc) and _shed_largest_report(session):
                    pass  # sent again at once, one report lighter
                elif exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    LOGGER.warning("UpdateBotSession failed: %s; retrying", exc.code())
                    time.sleep(0.5)
            if time.monotonic() - last_reap > 1.0:
                self.pool.reap_idle()
                last_reap = time.monotonic()
        return session

    def _end(self, session: bots_pb2.BotSession | None) -> int:
        """Tells the server the bot is terminating, its leases not finished (stopped past
        the grace, or assigned as it stopped and never started) handed back, then stops
        the workers; ``session`` None: the executor has no session to end.

        A lease is handed back as COMPLETED with UNAVAILABLE, which BuildGrid (0.4 and
        0.9 alike) runs again at once on another bot. Marked PENDING it was ignored (the
        server skips a bot's leases while its session's version is unchanged, as it is
        while draining), and so is BOT_TERMINATING: the action waited for the bot's
        keepalive to lapse (600 s by BuildGrid's default)."""
        if session is not None:
            session.status = bots_pb2.BOT_TERMINATING
            for lease in session.leases:
                # Reported ones are COMPLETED in this copy (and never listed again by the
                # server unless assigned again, as a retry, under the same id: then
                # PENDING or ACTIVE, not finished here).
                if lease.state in _UNFINISHED:
                    lease.state = bots_pb2.COMPLETED
                    lease.status.code = UNAVAILABLE
                    lease.status.message = (
                        f"executor {self.settings.bot_id} stopped before the action finished "
                        "(SIGTERM); it runs again on another executor"
                    )
            with contextlib.suppress(grpc.RpcError):
                self.bots.UpdateBotSession(
                    bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
                    timeout=5,
                )
        # A thread stuck past the wait above (in one CAS call) is still joined at the
        # exit, for up to that call's deadline.
        self.pool.stop_all()
        if self.confinement is not None:
            self.confinement.clear()
            self.confinement.release()
        self._threads.shutdown(wait=False, cancel_futures=True)
        return 0

    def _create_session(self) -> bots_pb2.BotSession:
        """One CreateBotSession with the bot's id; grpc.RpcError as it fails."""
        session: bots_pb2.BotSession = self.bots.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(
                parent=self.settings.instance, bot_session=self._session()
            ),
            timeout=CREATE_SESSION_S,
        )
        return session

    def _register_at_start(self) -> bots_pb2.BotSession | None:
        """The first bot session. A server out of reach (not up yet, restarting) is tried
        again, with a warning each time, for up to STARTUP_REGISTER_S; then, or at once
        for a refusal that trying again does not mend, RegistrationFailed. None if the
        executor is stopped meanwhile."""
        target = self.settings.server.target
        backoff = _Backoff()
        give_up_at = time.monotonic() + STARTUP_REGISTER_S
        while not self._stop.is_set():
            try:
                session = self._create_session()
                self._session_since = time.monotonic()
                return session
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                if code not in TRANSIENT_CODES:
                    raise RegistrationFailed(
                        f"the server {target} refused to register bot "
                        f"{self.settings.bot_id!r} on instance {self.settings.instance!r}: "
                        f"{code.name}: {details}; check --server, --instance and the "
                        "credentials, and that the server runs a Bots service for that instance"
                    ) from None
                left = give_up_at - time.monotonic()
                if left <= 0:
                    raise RegistrationFailed(
                        f"the server {target} could not be reached for "
                        f"{STARTUP_REGISTER_S:g} s ({code.name}: {details}); check that it "
                        "runs and that --server names it, then start the executor again"
                    ) from None
                wait = min(backoff.take(), left)
                LOGGER.warning(
                    "cannot register with the server %s (%s: %s): trying again in %.1f s "
                    "(giving up %.0f s from now)", target, code.name, details, wait, left,
                )  # fmt: skip
                self._stop.wait(wait)
        return None

    def _register_again(
        self, lost: bots_pb2.BotSession, refusal: grpc.RpcError
    ) -> bots_pb2.BotSession | None:
        """After the server refused ``lost`` as a session it no longer knows: what runs
        here for its leases is stopped (the server has given them to other bots and would
        refuse their results) and a new session is created with the same bot id, tried
        again with growing waits for as long as the server is out of reach. None if the
        executor is stopped meanwhile (it then has no session to end)."""
        running = len(self._running)
        LOGGER.warning(
            "the server no longer knows bot session %s (%s: %s): its leases are lost to this "
            "bot (the server gives them to others), %d running here %s stopped; registering "
            "again as bot %s",
            lost.name, refusal.code().name, refusal.details(), running,
            "is" if running == 1 else "are", self.settings.bot_id,
        )  # fmt: skip
        for lease_id in list(self._running):
            self._cancel(lease_id)
        # At once if the lost session had lasted; else after a wait, longer each time:
        # a server refusing every update, or another executor started with the same bot
        # id (each new session ends the other's) is not registered with over and over.
        if time.monotonic() - self._session_since >= SETTLED_SESSION_S:
            self._register_retry.reset()
            wait = 0.0
        else:
            wait = self._register_retry.take()
        while not self._stop.wait(wait):
            try:
                session = self._create_session()
            except grpc.RpcError as exc:
                wait = self._register_retry.take()
                LOGGER.warning(
                    "cannot register again with the server %s (%s: %s): trying again in "
                    "%.1f s", self.settings.server.target, exc.code().name, exc.details(), wait,
                )  # fmt: skip
                continue
            LOGGER.info("registered again: bot session %s", session.name)
            self._session_since = time.monotonic()
            return session
        return None

    def _report_before_terminating(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession:
        """Sends the last completions before the bot says it terminates. BuildGrid
        records a completion from any update, but one that never reaches it leaves the
        lease with the bot until its keepalive lapses (600 s by default), the action
        then run again: a server out of reach (UNAVAILABLE: the update never got there)
        is tried once more, so that a blip at the last moment does not send a finished
        action to run again."""
        attempt = 0
        while attempt < 2:
            request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
            try:
                updated: bots_pb2.BotSession = self.bots.UpdateBotSession(
                    request, timeout=self._short_poll_s
                )
                return updated
            except grpc.RpcError as exc:
                if _too_large(exc) and _shed_largest_report(session):
                    continue  # too large for the server: sent again one report lighter
                # Any other error: the server has the update (past its deadline, BuildGrid
                # holds the call it took), or would refuse it again.
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                LOGGER.warning("the last report found the server out of reach (%s)",
                               "giving up" if attempt else "trying again")  # fmt: skip
                if not attempt:
                    time.sleep(LAST_REPORT_RETRY_S)
                attempt += 1
        return session

    def _report_finished_despite_stop(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession:
        """Past the shutdown grace, once the stopped actions were waited for: those that
        ended otherwise than stopped (they finished as the stop came) are reported; those
        stopped, or still stuck, stay running here, to be handed back."""

        def finished(future: Future[ActionOutcome]) -> bool:
            if not future.done() or future.cancelled():
                return False
            return not isinstance(future.exception(), ActionCancelled)

        reported = False
        for lease in session.leases:
            future = self._running.get(lease.id)
            if future is not None and finished(future):
                self._report(lease, future)
                LOGGER.info("lease %s finished as it was stopped: reported", lease.id)
                reported = True
        return self._report_before_terminating(session) if reported else session

    def _update_leases(self, session: bots_pb2.BotSession, accept: bool) -> bool:
        """Starts the new leases of ``session``, stops the dropped or cancelled ones and
        marks the finished ones COMPLETED; whether it marked any."""
        reported = False
        listed = {lease.id for lease in session.leases}
        for lease_id in [i for i in self._running if i not in listed]:
            # The server dropped a lease we run: cancelled, or given to another bot.
            self._cancel(lease_id)
        for lease in session.leases:
            future = self._running.get(lease.id)
            if lease.state == bots_pb2.CANCELLED:
                self._cancel(lease.id)
                continue
            if future is not None and future.done():
                self._report(lease, future)
                reported = True
                continue
            # A lease this bot finished is COMPLETED in its own copy of the session (kept
            # as it was when an update failed) until the server's answer drops it: listed
            # PENDING or ACTIVE again, it is the server's new assignment of that job (a
            # retry of an UNAVAILABLE or INTERNAL report, given to this bot again under
            # the same id), and runs again.
            startable = lease.state in (bots_pb2.PENDING, bots_pb2.ACTIVE)
            if future is None and accept and startable:
                action = re_pb2.Action()
                if not lease.payload.Unpack(action):
                    lease.state = bots_pb2.COMPLETED
                    lease.status.code = 3
                    lease.status.message = "executor: the lease's payload is not an Action"
                    reported = True
                    continue
                self.stats.leases += 1
                self.metrics.leases.inc()
                lease.state = bots_pb2.ACTIVE
                cancelled = LeaseStop()
                self._cancel_events[lease.id] = cancelled
                future = self._threads.submit(
                    self._run, lease.id, action, cancelled, time.monotonic()
                )
                # Woken once the outcome is there (not before: the report needs it).
                future.add_done_callback(lambda _: self._wake.set())
                self._running[lease.id] = future
        return reported

    def _report(self, lease: bots_pb2.Lease, future: Future[ActionOutcome]) -> None:
        """Marks ``lease`` COMPLETED with the outcome of ``future`` (done), for the next
        update, and forgets it as running (COMPLETED in this copy of the session, it is
        not started again; listed again by the server, it is a new assignment)."""
        del self._running[lease.id]
        self._cancel_events.pop(lease.id, None)
        self._complete(lease, future)

    def _any_done(self) -> bool:
        return any(future.done() for future in self._running.values())

    def _complete(self, lease: bots_pb2.Lease, future: Future[ActionOutcome]) -> None:
        lease.state = bots_pb2.COMPLETED
        try:
            outcome = future.result()
        except (ActionError, UnsafePathError) as exc:  # the action itself is wrong: no retry
            self.stats.failed += 1
            self.metrics.actions.labels(outcome="invalid").inc()
            lease.status.code = 3  # INVALID_ARGUMENT
            lease.status.message = _capped(f"executor {self.settings.bot_id}: {exc}")
            return
        except ActionNotRun as exc:  # a worker fault (the server retries) or a timeout
            self.stats.failed += 1
            self.metrics.actions.labels(outcome="timeout" if exc.code == 4 else "error").inc()
            lease.status.code = exc.code
            lease.status.message = _capped(f"executor {self.settings.bot_id}: {exc}")
            if exc.missing:  # REAPI's way to say which blobs to upload again
                # The first MAX_MISSING_NAMED: a lost CAS may miss tens of thousands of an
                # action's blobs (87 bytes each), and the reports of a few leases would
                # pass the server's 4 MiB and be shed. A client checks all its blobs again
                # on FAILED_PRECONDITION (ours and Bazel's ask FindMissingBlobs).
                failure = error_details_pb2.PreconditionFailure()
                for digest in exc.missing[:MAX_MISSING_NAMED]:
                    failure.violations.add(
                        type="MISSING", subject=f"blobs/{digest.hash}/{digest.size_bytes}"
                    )
                lease.status.details.add().Pack(failure)
                if len(exc.missing) > MAX_MISSING_NAMED:
                    lease.status.message = _capped(
                        f"{lease.status.message} ({len(exc.missing)} blobs missing, the first "
                        f"{MAX_MISSING_NAMED} named)"
                    )
            return
        except Exception as exc:  # the action could not be run: INTERNAL, the server retries
            LOGGER.exception("lease %s failed", lease.id)
            self.stats.failed += 1
            self.metrics.actions.labels(outcome="error").inc()
            lease.status.code = 13
            lease.status.message = _capped(f"executor {self.settings.bot_id}: {exc}")
            return
        size = outcome.result.ByteSize()
        if size > MAX_RESULT_BYTES:
            self.stats.failed += 1
            self.metrics.actions.labels(outcome="error").inc()
            lease.status.code = RESOURCE_EXHAUSTED
            lease.status.message = (
                f"executor {self.settings.bot_id}: the action's result takes {size:,} bytes "
                f"({len(outcome.result.output_files):,} output files), more than the "
                f"{MAX_RESULT_BYTES:,} an executor reports for one action; declare a "
                "directory among its outputs rather than so many files"
            )
            return
        self.stats.succeeded += 1
        exit_code = outcome.result.exit_code
        self.metrics.actions.labels(outcome="success" if exit_code == 0 else "nonzero_exit").inc()
        if outcome.mode == "persistent":
            self.stats.persistent += 1
            self.stats.reused += int(outcome.reused)
            (self.metrics.worker_reuses if outcome.reused else self.metrics.worker_starts).inc()
            self.metrics.warm_hit_ratio.set(self.stats.reused / self.stats.persistent)
        self.metrics.worker_evictions.set(self.pool.evictions)
        lease.status.code = 0
        lease.result.Pack(outcome.result)


#: Lease states of work not finished here: started and stopped, or never started.
_UNFINISHED = (bots_pb2.PENDING, bots_pb2.ACTIVE)


def _capped(message: str) -> str:
    """``message`` cut to MAX_STATUS_MESSAGE_CHARS (an error can quote a working
    directory or a path of megabytes), saying how much was cut."""
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_STATUS_MESSAGE_CHARS
    return f"{message[:MAX_STATUS_MESSAGE_CHARS]}... ({cut:,} more characters)"


def _too_large(exc: grpc.RpcError) -> bool:
    """Whether the server refused a call for its size ("Received message larger than
    max"), not for another RESOURCE_EXHAUSTED (a concurrency limit, a quota), which
    trying again later mends."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details


def _shed_largest_report(session: bots_pb2.BotSession) -> bool:
    """After the server refused an update as too large: replaces the largest completed
    lease's report with a short RESOURCE_EXHAUSTED status, so that the others get through
    (each lease is bounded, but several can complete at once); whether there was one."""
    completed = [lease for lease in session.leases if lease.state == bots_pb2.COMPLETED]
    if not completed:
        return False
    largest = max(completed, key=lambda lease: lease.ByteSize())
    size = largest.ByteSize()
    if size <= SMALL_REPORT_BYTES:  # no report to blame (each is short already)
        return False
    largest.ClearField("result")
    largest.status.Clear()
    largest.status.code = RESOURCE_EXHAUSTED
    largest.status.message = (
        f"executor: the server refused the report of this action ({size:,} bytes) with "
        "others as more than it takes in one message; raise its gRPC message limit"
    )
    LOGGER.warning("an update was too large for the server: lease %s's report (%d bytes) "
                   "replaced by an error", largest.id, size)  # fmt: skip
    return True


def run_executor(settings: ExecutorSettings) -> int:
    executor = Executor(settings)
    signal.signal(signal.SIGTERM, executor.stop)
    signal.signal(signal.SIGINT, executor.stop)
    return executor.serve()
