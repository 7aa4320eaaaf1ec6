"""An action whose declared outputs conflict with its inputs or its own writes (an output
under an input file, under a file the action wrote, a name too long) fails as its own
fault (ActionError: INVALID_ARGUMENT, not retried), naming the output and what is wrong.
The executor's own disk faults (ENOSPC) stay retryable. Run through the real
ActionRunner, on a CAS and local blob copy that stand in for the server's."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import REPO_ROOT, wait_gone
from worker_runtime.executor import runner as runner_module
from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.limits import Confinement, Limits
from worker_runtime.executor.runner import (
    ActionCancelled,
    ActionError,
    ActionNotRun,
    ActionRunner,
    LeaseStop,
)
from worker_runtime.executor.workers import PersistentWorker, WorkerPool
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.cas import Cas
from worker_runtime.remote.convention import KEY_PROPERTY, PROTOCOL_PROPERTY
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of


class StoredBlobs:
    """Both the CAS and the local blob copy: blobs kept in a dict, uploads accepted."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], bytes] = {}

    def put(self, data: bytes) -> re_pb2.Digest:
        digest = digest_of(data)
        self.data[digest_key(digest)] = data
        return digest

    def read(self, digest: re_pb2.Digest) -> bytes:
        return self.data[digest_key(digest)]

    def prefetch_tree(self, root: re_pb2.Digest) -> None:
        pass

    def directories(self, digests: Sequence[re_pb2.Digest]) -> list[re_pb2.Directory]:
        return [re_pb2.Directory.FromString(self.read(digest)) for digest in digests]

    def checked(self, digest: re_pb2.Digest, node: re_pb2.Directory) -> bool:
        return False  # every directory is read afresh here: each is checked every time

    def mark_checked(self, digest: re_pb2.Digest, node: re_pb2.Directory) -> None:
        pass

    def place(
        self,
        files: Iterable[tuple[re_pb2.Digest, Path, bool]],
        check: Callable[[], None] = lambda: None,
    ) -> None:
        for digest, path, _executable in files:
            check()
            path.write_bytes(self.read(digest))

    def upload_missing(self, blobs: Blobs) -> int:
        return 0


def action_of(
    store: StoredBlobs, script: str, outputs: list[str], inputs: dict[str, bytes]
) -> re_pb2.Action:
    """An action running ``sh -c script`` on flat ``inputs``, declaring ``outputs``."""
    root = re_pb2.Directory()
    for name, data in sorted(inputs.items()):
        root.files.add(name=name, digest=store.put(data))
    command = re_pb2.Command(arguments=["sh", "-c", script], output_paths=outputs)
    return re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(root.SerializeToString()),
    )


def persistent_action(store: StoredBlobs, request: str) -> re_pb2.Action:
    """An action for tests/backends/remote_test_worker.py as a persistent (JSON) worker,
    its request's arguments in an @argfile holding ``request``, with an input in.txt."""
    root = re_pb2.Directory()
    files = {
        "args.txt": request.encode(),
        "in.txt": b"x\n",
        "worker.py": (REPO_ROOT / "tests" / "backends" / "remote_test_worker.py").read_bytes(),
    }
    for name, data in sorted(files.items()):
        root.files.add(name=name, digest=store.put(data))
    command = re_pb2.Command(
        arguments=[sys.executable, "worker.py", "--persistent_worker", "@args.txt"],
        output_paths=["o.txt"],
    )
    command.platform.properties.add(name=KEY_PROPERTY, value="k")
    command.platform.properties.add(name=PROTOCOL_PROPERTY, value="json")
    return re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(root.SerializeToString()),
    )


def runner_on(store: StoredBlobs, workdir: Path, **options: Any) -> ActionRunner:
    """The real ActionRunner, ``store`` its CAS and its local blob copy, working in
    ``workdir`` with a pool of one worker (``runner.pool.stop_all()`` stops it)."""
    stand_in: Any = store
    pool = WorkerPool(workdir / "workers", 1, None, 60)
    return ActionRunner(
        cast(Cas, stand_in), cast(BlobCache, stand_in), pool, workdir, "bot-under-test",
        **options,
    )  # fmt: skip


def run(tmp_path: Path, action: re_pb2.Action, store: StoredBlobs) -> re_pb2.ActionResult:
    runner = runner_on(store, tmp_path)
    try:
        return runner.run(action, "main", threading.Event()).result
    finally:
        runner.pool.stop_all()


def test_an_output_under_an_input_file_is_the_actions_fault(tmp_path: Path) -> None:
    store = StoredBlobs()
    action = action_of(store, "true", ["a.txt/out"], {"a.txt": b"an input"})
    with pytest.raises(ActionError) as failed:
        run(tmp_path, action, store)
    message = str(failed.value)
    assert "'a.txt/out'" in message and "'a.txt' is an input file" in message


def test_an_output_under_a_file_the_action_wrote_is_the_actions_fault(tmp_path: Path) -> None:
    store = StoredBlobs()
    # Its parent `d` is made before the action runs; the action replaces it with a file.
    action = action_of(store, "rmdir d && echo x > d", ["d/out"], {})
    with pytest.raises(ActionError) as failed:
        run(tmp_path, action, store)
    message = str(failed.value)
    assert "'d/out' cannot be read" in message and "d is a file, not a directory" in message


def test_an_output_name_too_long_is_the_actions_fault(tmp_path: Path) -> None:
    store = StoredBlobs()
    too_long = "x" * 300
    for output in (too_long, f"{too_long}/out"):  # read after the run; made before it
        with pytest.raises(ActionError) as failed:
            run(tmp_path, action_of(store, "true", [output], {}), store)
        assert "longer than the file system allows" in str(failed.value)


def test_the_executors_own_disk_fault_stays_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StoredBlobs()
    action = action_of(store, "true", ["out/file"], {})
    real_mkdir = Path.mkdir

    def full_disk(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name == "out":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full_disk)
    with pytest.raises(OSError) as failed:  # INTERNAL in the lease: the server retries
        run(tmp_path, action, store)
    assert failed.value.errno == errno.ENOSPC and not isinstance(failed.value, ActionError)


def test_a_program_that_cannot_start_is_the_actions_result_and_a_fork_failure_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every OSError from starting the command was exit 127, a real result: EAGAIN or
    ENOMEM (the executor's own, of the moment) failed the action for good, unretried."""
    store = StoredBlobs()
    missing = re_pb2.Command(arguments=["/nonexistent/tool"])
    action = re_pb2.Action(
        command_digest=store.put(missing.SerializeToString()),
        input_root_digest=store.put(re_pb2.Directory().SerializeToString()),
    )
    result = run(tmp_path, action, store)
    assert result.exit_code == 127 and b"cannot run '/nonexistent/tool'" in result.stderr_raw

    def no_fork(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(runner_module.subprocess, "Popen", no_fork)
    with pytest.raises(OSError) as failed:  # INTERNAL in the lease: the server retries
        run(tmp_path, action_of(store, "true", [], {}), store)
    assert failed.value.errno == errno.EAGAIN and not isinstance(failed.value, ActionError)
    monkeypatch.undo()

    # Through the executor's own wrapper (here a sandbox launcher that is missing), the
    # program's failure would be the wrapper's exit status: an ENOENT is the executor's.
    real_launch = runner_module.launch

    def wrapped(argv: Sequence[str], **kwargs: Any) -> Any:
        started = real_launch(argv, **kwargs)
        return dataclasses.replace(started, argv=["/nonexistent/bwrap", "--", *started.argv])

    monkeypatch.setattr(runner_module, "launch", wrapped)
    with pytest.raises(OSError) as failed:
        run(tmp_path, action_of(store, "true", [], {}), store)
    assert failed.value.errno == errno.ENOENT and not isinstance(failed.value, ActionError)


def test_an_output_entry_whose_name_is_not_utf8_is_the_actions_fault(tmp_path: Path) -> None:
    """It raised UnicodeEncodeError as the Tree was built: INTERNAL, retried, the same
    every time."""
    store = StoredBlobs()
    action = action_of(store, "mkdir out && touch out/caf$(printf '\\351')", ["out"], {})
    with pytest.raises(ActionError, match="not UTF-8"):
        run(tmp_path, action, store)


@pytest.mark.parametrize(
    ("declared", "script", "message"),
    [
        ({"output_files": ["d"]}, "mkdir d", "declared in output_files, and the action left a directory"),
        ({"output_directories": ["f"]}, "echo x > f", "declared in output_directories, and the action left a file"),
    ],
)  # fmt: skip
def test_an_output_of_the_other_kind_than_its_legacy_field_says_is_the_actions_fault(
    tmp_path: Path, declared: dict[str, list[str]], script: str, message: str
) -> None:
    """REAPI before 2.1: a directory found where output_files named a file came back in
    output_directories, which such a client does not look in (the spec: an error)."""
    store = StoredBlobs()
    command = re_pb2.Command(arguments=["sh", "-c", script])
    for field, outputs in declared.items():
        getattr(command, field).extend(outputs)
    action = re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(re_pb2.Directory().SerializeToString()),
    )
    with pytest.raises(ActionError, match=message):
        run(tmp_path, action, store)
    right = re_pb2.Command(arguments=["sh", "-c", "mkdir d && echo x > f"],
                           output_files=["f"], output_directories=["d"])  # fmt: skip
    result = run(tmp_path, re_pb2.Action(
        command_digest=store.put(right.SerializeToString()),
        input_root_digest=store.put(re_pb2.Directory().SerializeToString()),
    ), store)  # fmt: skip
    assert [f.path for f in result.output_files] == ["f"]
    assert [d.path for d in result.output_directories] == ["d"]
    # A failed action's leftovers are left out: its exit code and stderr are its answer.
    failed = re_pb2.Command(arguments=["sh", "-c", "mkdir d; echo why >&2; exit 3"],
                            output_files=["d"])  # fmt: skip
    result = run(tmp_path, re_pb2.Action(
        command_digest=store.put(failed.SerializeToString()),
        input_root_digest=store.put(re_pb2.Directory().SerializeToString()),
    ), store)  # fmt: skip
    assert result.exit_code == 3 and result.stderr_raw == b"why\n"
    assert not result.output_files and not result.output_directories


def test_a_well_formed_action_still_runs(tmp_path: Path) -> None:
    store = StoredBlobs()
    action = action_of(store, "echo hi > out/file", ["out/file"], {"a.txt": b"an input"})
    result = run(tmp_path, action, store)
    assert result.exit_code == 0
    (output,) = result.output_files
    assert output.path == "out/file" and output.contents == b"hi\n"


def test_an_input_root_nesting_past_the_path_limit_is_the_actions_fault(
    tmp_path: Path,
) -> None:
    """Seventeen directories of 255-byte names, each name within bounds, make a path of
    more than 4,096 bytes: ENAMETOOLONG was the executor's fault (INTERNAL), retried on
    other executors and by the client."""
    store = StoredBlobs()
    node = re_pb2.Directory()
    node.files.add(name="f", digest=store.put(b"deep"))
    for level in range(17):
        digest = store.put(node.SerializeToString())
        node = re_pb2.Directory()
        node.directories.add(name=f"{level:02}" + "d" * 253, digest=digest)
    command = re_pb2.Command(arguments=["true"])
    action = re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(node.SerializeToString()),
    )
    with pytest.raises(ActionError, match="its input root nests too deep for this executor"):
        run(tmp_path, action, store)


def test_an_actions_timeout_counts_its_nanoseconds_and_a_negative_one_is_refused(
    tmp_path: Path,
) -> None:
    store = StoredBlobs()
    action = action_of(store, "sleep 5", [], {})
    action.timeout.nanos = 300_000_000  # 0.3 s: it was read as none (an hour)
    with pytest.raises(ActionNotRun, match=r"ran past its timeout of 0\.3 s") as failed:
        run(tmp_path, action, store)
    assert failed.value.code == 4  # DEADLINE_EXCEEDED
    action.timeout.seconds, action.timeout.nanos = -1, 0
    with pytest.raises(ActionError, match=r"its timeout is negative \(-1 s, 0 ns\)"):
        run(tmp_path, action, store)
    quick = action_of(store, "true", [], {})
    quick.timeout.seconds = 10**15  # past what a wait takes: cut to eleven days
    assert run(tmp_path, quick, store).exit_code == 0


def test_an_action_cancelled_while_its_inputs_come_stops_reading_them(tmp_path: Path) -> None:
    """The cancel was seen only between directory levels: every file of the input root
    was still read (one CAS call after another) before the action gave up its thread."""
    cancelled = threading.Event()
    reads: list[str] = []

    class CancelledMidway(StoredBlobs):
        def read(self, digest: re_pb2.Digest) -> bytes:
            reads.append(digest.hash)
            return super().read(digest)

        def place(
            self,
            files: Iterable[tuple[re_pb2.Digest, Path, bool]],
            check: Callable[[], None] = lambda: None,
        ) -> None:
            for n, (digest, path, _executable) in enumerate(files):
                if n == 2:
                    cancelled.set()  # the lease is dropped as its third file comes
                check()
                path.write_bytes(self.read(digest))

    store = CancelledMidway()
    inputs = {f"f{n}": f"input {n}".encode() for n in range(10)}
    action = action_of(store, "true", [], inputs)
    runner = runner_on(store, tmp_path)
    try:
        before = len(reads)
        with pytest.raises(ActionCancelled, match="cancelled while its inputs were fetched"):
            runner.run(action, "main", cancelled)
    finally:
        runner.pool.stop_all()
    assert len(reads) - before <= 4  # the directory blobs aside, two files read, not ten


def test_a_worker_whose_call_fails_unexpectedly_is_discarded_not_kept_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the runner does not expect (a bug, the pipe loop gone) while a persistent
    worker runs an action: the worker is discarded and its place under the cap freed.
    It stayed counted as busy: at a cap of one, every later persistent action of the
    executor waited for ever."""
    store = StoredBlobs()
    action = persistent_action(store, "--out\no.txt\nin.txt\n")
    runner = runner_on(store, tmp_path)
    real_call = PersistentWorker.call
    pids: list[int] = []

    def fails_once(worker: PersistentWorker, *args: Any, **kwargs: Any) -> Any:
        if not pids:
            pids.append(worker.pid)
            raise RuntimeError("an unexpected fault")
        return real_call(worker, *args, **kwargs)

    monkeypatch.setattr(PersistentWorker, "call", fails_once)
    try:
        with pytest.raises(RuntimeError, match="an unexpected fault"):
            runner.run(action, "main", threading.Event())
        assert runner.pool.pids() == []  # discarded: neither busy nor idle
        assert wait_gone(pids) == []
        outcome = runner.run(action, "main", threading.Event())  # not held at the cap
        assert outcome.result.exit_code == 0 and outcome.mode == "persistent"
        assert outcome.worker_pid != pids[0]
    finally:
        runner.pool.stop_all()


def empty_command_action(store: StoredBlobs) -> re_pb2.Action:
    return re_pb2.Action(
        command_digest=store.put(re_pb2.Command(arguments=[]).SerializeToString()),
        input_root_digest=store.put(re_pb2.Directory().SerializeToString()),
    )


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_command_without_arguments_is_refused_before_anything_runs(
    tmp_path: Path, wrapped: bool
) -> None:
    """An empty Command.arguments: Popen([]) raised IndexError (INTERNAL, run again by the
    server up to its attempts); through a wrapper (tenants, limits, the sandbox) it ran
    `env -i -- PATH=...` with no program, which printed the environment and exited 0: a
    fake success, cached. Here the wrapper is the rlimits fallback's prlimit."""
    store = StoredBlobs()
    confinement = (
        Confinement(Limits(pids=256), "empty-command", rlimits_only=True) if wrapped else None
    )
    runner = runner_on(store, tmp_path, confinement=confinement)
    try:
        with pytest.raises(ActionError, match=r"Command\.arguments is empty"):
            runner.run(empty_command_action(store), "main", threading.Event())
    finally:
        runner.pool.stop_all()
    assert not list((tmp_path / "actions").glob("*"))  # nothing was made for it


def open_pipes() -> set[str]:
    """This process's descriptors that are pipes (the runner's other threads open and
    close directories meanwhile)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                found.add(fd)
    return found


@pytest.mark.parametrize("wrapped", [False, True], ids=["direct", "through a wrapper"])
def test_an_argument_holding_nul_is_the_actions_fault_and_leaks_nothing(
    tmp_path: Path, wrapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen raised ValueError (embedded null byte): INTERNAL, run again by the server up
    to its attempts; through a wrapper each attempt also leaked the start mark's pipe.
    Refused now before anything runs, and whatever else Popen raises closes the pipe."""
    store = StoredBlobs()
    confinement = Confinement(Limits(pids=256), "nul", rlimits_only=True) if wrapped else None
    runner = runner_on(store, tmp_path, confinement=confinement)
    try:
        with pytest.raises(ActionError, match="NUL"):
            runner.run(action_of(store, "echo a\0b", [], {}), "main", threading.Event())

        def refused(*args: Any, **kwargs: Any) -> None:
            raise ValueError("refused by Popen")

        monkeypatch.setattr(runner_module.subprocess, "Popen", refused)
        before = open_pipes()
        for _ in range(3):
            with pytest.raises(ValueError, match="refused by Popen"):
                runner.run(action_of(store, "true", [], {}), "main", threading.Event())
        assert open_pipes() == before
    finally:
        runner.pool.stop_all()


def test_a_failed_actions_untakeable_outputs_are_left_out_and_its_crash_reported(
    tmp_path: Path,
) -> None:
    """An action that exited non-zero leaving a symlink, an unreadable output or one past
    --max-output-mb (a crash's core file) lost its exit code, stdout and stderr to an
    INVALID_ARGUMENT or RESOURCE_EXHAUSTED about the output. Now those outputs are left
    out, said so at the end of its stderr; an action that exited 0 still fails."""
    store = StoredBlobs()
    script = (
        "echo kept > good.txt; ln -s /etc/passwd link; rmdir d && echo x > d; "
        "head -c 2097152 /dev/zero > core; echo ran; echo crashed >&2; exit {code}"
    )
    outputs = ["good.txt", "link", "d/out", "core"]
    runner = runner_on(store, tmp_path, max_output_mb=1)
    try:
        result = runner.run(
            action_of(store, script.format(code=134), outputs, {}), "main", threading.Event()
        ).result
        assert result.exit_code == 134 and result.stdout_raw == b"ran\n"
        assert [f.path for f in result.output_files] == ["good.txt"]
        notes = result.stderr_raw.decode().splitlines()
        assert notes[0] == "crashed"
        assert [n.split(":")[0] for n in notes[1:]] == ["executor"] * 3
        left_out = "\n".join(notes[1:])
        for output, why in (("core", "--max-output-mb is 1"), ("d/out", "cannot be read"),
                            ("link", "is a symlink")):  # fmt: skip
            assert f"output {output!r} is left out of this failed action's result" in left_out
            assert why in left_out
        for exit_0, fault in (("ln -s /etc/passwd link", "is a symlink"),
                              ("rmdir d && echo x > d", "cannot be read")):  # fmt: skip
            with pytest.raises(ActionError, match=fault):
                runner.run(action_of(store, exit_0, outputs[1:3], {}), "main", threading.Event())
        with pytest.raises(ActionNotRun, match="outputs are too large") as failed:
            runner.run(action_of(store, "head -c 2097152 /dev/zero > core", ["core"], {}),
                       "main", threading.Event())  # fmt: skip
        assert failed.value.code == runner_module.RESOURCE_EXHAUSTED
    finally:
        runner.pool.stop_all()


class CountsUploads(StoredBlobs):
    def __init__(self) -> None:
        super().__init__()
        self.uploads: list[int] = []

    def upload_missing(self, blobs: Blobs) -> int:
        self.uploads.append(len(blobs.data))
        return 0


@pytest.mark.parametrize(
    "when", ["process ended", "first output read", "first upload", "grace over as it ended"]
)
def test_a_lease_cancelled_after_its_process_ended_reads_and_uploads_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A cancel was only flagged: once the process had finished, every output was still
    read and uploaded (up to --max-output-mb) for nobody, holding a lease thread. The
    shutdown grace's stop is no cancel: an action that finished as it came is reported,
    not run again, its outputs read and uploaded."""
    store = CountsUploads()
    cancelled = LeaseStop()
    real_read_capped, real_read_output = runner_module.read_capped, runner_module.read_output
    reads: list[str] = []

    def read_capped(*args: Any) -> bytes:
        if when == "process ended":
            cancelled.set()  # as the process's stdout is read, after it exited
        if when == "grace over as it ended":
            cancelled.stop(result_wanted=True)
        return real_read_capped(*args)

    def read_output(root: str, relative: str, budget: Any) -> Any:
        reads.append(relative)
        if when == "first output read":
            cancelled.set()
        return real_read_output(root, relative, budget)

    def upload_missing(blobs: Blobs) -> int:
        if when == "first upload":
            cancelled.set()
        return CountsUploads.upload_missing(store, blobs)

    monkeypatch.setattr(runner_module, "read_capped", read_capped)
    monkeypatch.setattr(runner_module, "read_output", read_output)
    monkeypatch.setattr(store, "upload_missing", upload_missing)
    monkeypatch.setattr(runner_module, "UPLOAD_PART_BYTES", 1 << 10)  # one part per output
    action = action_of(
        store, "for o in a b; do head -c 2048 /dev/urandom > $o; done", ["a", "b"], {}
    )
    runner = runner_on(store, tmp_path)
    try:
        if when == "grace over as it ended":
            outcome = runner.run(action, "main", cancelled)
            assert [o.path for o in outcome.result.output_files] == ["a", "b"]
        else:
            with pytest.raises(ActionCancelled):
                runner.run(action, "main", cancelled)
    finally:
        runner.pool.stop_all()
    expected = {"process ended": ([], []), "first output read": (["a"], []),
                "first upload": (["a", "b"], [1]),
                "grace over as it ended": (["a", "b"], [1, 1])}[when]  # fmt: skip
    assert (reads, store.uploads) == expected
