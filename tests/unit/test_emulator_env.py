"""The emulator sends each request only the environment Buck2 sends, never its own."""

from __future__ import annotations

import os

from workers_dev.emulator import make_command


def test_a_request_carries_only_buck2s_variables_and_the_actions_env() -> None:
    command = make_command(["@args"], env={"LANG": "C.UTF-8"}, scratch="/tmp/scratch")
    env = {e.key.decode(): e.value.decode() for e in command.env}
    assert set(env) == {"TMPDIR", "BUCK_SCRATCH_PATH", "BUCK2_DAEMON_UUID", "BUCK_BUILD_ID", "LANG"}
    assert env["TMPDIR"] == env["BUCK_SCRATCH_PATH"] == "/tmp/scratch"
    # Buck2 does not pass the daemon's environment (app/buck2_execute_impl/src/executors/local.rs).
    assert "PATH" in os.environ and "PATH" not in env
