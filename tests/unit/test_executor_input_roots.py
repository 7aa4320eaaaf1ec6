"""An input root that names one directory under several names expands to a tree far
larger than its blobs: the executor places at most MAX_INPUT_ENTRIES files and
directories for one action and fails the rest as the action's own fault (INVALID_ARGUMENT,
not retried). Run through the real ActionRunner on the stand-in store of
test_executor_action_faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_executor_action_faults import StoredBlobs, run
from worker_runtime.executor import runner
from worker_runtime.executor.runner import ActionError
from worker_runtime.proto import remote_execution_pb2 as re_pb2


def doubling_tree(store: StoredBlobs, levels: int) -> re_pb2.Action:
    """A root of ``levels`` directories each naming the one below twice (`a` and `b`):
    2**levels copies of one file, from levels + 1 Directory blobs."""
    node = re_pb2.Directory()
    node.files.add(name="f", digest=store.put(b"one file"))
    for _ in range(levels):
        digest = store.put(node.SerializeToString())
        node = re_pb2.Directory()
        node.directories.add(name="a", digest=digest)
        node.directories.add(name="b", digest=digest)
    command = re_pb2.Command(arguments=["true"])
    return re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(node.SerializeToString()),
    )


def test_an_input_root_that_expands_past_the_limit_fails_as_the_actions_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "MAX_INPUT_ENTRIES", 100)
    store = StoredBlobs()
    assert run(tmp_path, doubling_tree(store, 4), store).exit_code == 0  # 46 entries: run
    made: list[Path] = []
    real_mkdir = Path.mkdir

    def counted(self: Path, *args: object, **kwargs: object) -> None:
        made.append(self)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", counted)
    with pytest.raises(ActionError, match="more than 100 files and directories once expanded"):
        run(tmp_path, doubling_tree(store, 30), store)  # 2**30 files from 31 blobs
    assert len(made) < 200, "the tree was placed far past the limit before it was refused"
