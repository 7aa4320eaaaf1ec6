"""`worker-runtime executor`'s command line refuses bad values before it connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--shutdown-grace", "-1"],
            "--shutdown-grace must be a number of seconds from 0 to 1e6, not -1",
        ),
        # NaN passed `< 0`: running leases were then never stopped on SIGTERM.
        (
            ["--shutdown-grace", "nan"],
            "--shutdown-grace must be a number of seconds from 0 to 1e6, not nan",
        ),
        (["--max-output-mb", "0"], "--max-output-mb must be more than 0, not 0"),
        (["--limit-disk", "0"], "--limit-disk must be more than 0, not 0"),
        # A thread pool of no threads: a traceback.
        (["--capacity", "0"], "--capacity must be more than 0, not 0"),
        # Every persistent lease waited forever for a worker slot.
        (["--max-workers", "0"], "--max-workers must be more than 0, not 0"),
        (["--memory-limit", "-5"], "--memory-limit must be more than 0, not -5"),
        (["--cancel-grace", "0"], "--cancel-grace must be a number of seconds above 0"),
        (["--cancel-grace", "-1"], "--cancel-grace must be a number of seconds above 0"),
        (["--cancel-grace", "nan"], "--cancel-grace must be a number of seconds above 0"),
        (
            ["--worker-idle-timeout", "0"],
            "--worker-idle-timeout must be a number of seconds above 0",
        ),
        (["--metrics-port", "70000"], "--metrics-port must be a port from 0 to 65535, not 70000"),
    ],
)
def test_bad_numbers_are_refused_naming_the_option(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = executor(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def executor(
    tmp_path: Path, *args: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_nobody else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "worker_runtime", "executor", "--server",
         "unix:///nowhere", "--workdir", str(tmp_path / "work"), *args,
         *(executor_uid_arguments() if "--sandbox" in " ".join(args) else [])],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip


@pytest.mark.needs_root("the refusals are about root")
def test_root_without_a_uid_range_and_a_range_without_root_are_refused(tmp_path: Path) -> None:
    as_root = executor(tmp_path)
    assert as_root.returncode == 2
    assert "no action or worker may" in as_root.stderr and "--uid-range" in as_root.stderr
    unprivileged = executor(tmp_path, "--uid-range", "200000-200009", as_nobody=True)
    assert unprivileged.returncode == 2
    assert "needs root" in unprivileged.stderr
    bad = executor(tmp_path, "--uid-range", "0-10")
    assert bad.returncode == 2 and "START must be at least 1000" in bad.stderr


def test_the_sandbox_says_what_is_missing(tmp_path: Path) -> None:
    off = executor(tmp_path, "--no-sandbox", "--sandbox-read-only", "/opt")
    assert off.returncode == 2 and "--sandbox-read-only needs the sandbox" in off.stderr
    nowhere = executor(tmp_path, "--sandbox", "--sandbox-read-only", "/no/such/dir")
    assert nowhere.returncode == 2
    assert "--sandbox-read-only /no/such/dir: not an existing absolute path" in nowhere.stderr
    env = {**os.environ, "PATH": str(tmp_path)}  # neither bwrap nor setpriv on it
    # With tenants (as root) the sandbox is on unless --no-sandbox says otherwise.
    asked = executor_uid_arguments() or ["--sandbox"]
    result = subprocess.run(
        [sys.executable, "-m", "worker_runtime", "executor", "--server", "unix:///nowhere",
         "--workdir", str(tmp_path / "work"), *asked],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the sandbox needs bwrap (Debian package bubblewrap)" in result.stderr
    assert "install it, or give --no-sandbox" in result.stderr


def executor_uid_arguments() -> list[str]:
    """What the executor needs to start at all as this user."""
    return ["--uid-range", "200000-200009"] if os.getuid() == 0 else []


def test_limits_must_be_positive_and_need_root(tmp_path: Path) -> None:
    zero = executor(tmp_path, "--limit-memory", "0", *executor_uid_arguments())
    assert zero.returncode == 2 and "--limit-memory must be more than 0, not 0" in zero.stderr
    nan = executor(tmp_path, "--limit-cpus", "nan", *executor_uid_arguments())  # passed `<= 0`
    assert nan.returncode == 2 and "--limit-cpus must be more than 0, not nan" in nan.stderr
    if os.getuid() == 0:
        unprivileged = executor(tmp_path, "--limit-pids", "10", as_nobody=True)
        assert unprivileged.returncode == 2
        assert "the --limit-* options need root" in unprivileged.stderr


def test_the_help_names_every_default(tmp_path: Path) -> None:
    result = executor(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "75% of the machine's" in result.stdout and "default with --uid-range: 1024" in (
        " ".join(result.stdout.split())
    )
    assert "(INTERNAL; it is discarded) (default: 1024)" in " ".join(result.stdout.split())


def test_with_tenants_memory_is_bounded_by_default_where_a_group_can_bound_it() -> None:
    """3/4 of the machine's memory by a control group; none by rlimits, whose address-space
    limit GHC's and the JVM's reservations would pass without using the memory."""
    from worker_runtime.executor import limits

    with open("/proc/meminfo") as meminfo:
        total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    mechanism = limits.Confinement(limits.Limits(pids=1), "probe").kind
    own = limits._own_memory_limit(*limits._hierarchies())  # a container's, if any
    available = min(total_kb << 10, own) if own is not None else total_kb << 10
    expected = None if mechanism == "rlimits" else (available * 3 // 4) >> 20
    assert limits.default_tenant_memory_mb() == expected


def test_in_a_container_the_default_memory_is_a_share_of_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker_runtime.executor import limits

    monkeypatch.setattr(limits, "_own_memory_limit", lambda v2, v1: 4 << 30)
    grouped = limits.Confinement(limits.Limits(pids=1), "probe").kind != "rlimits"
    # 3/4 of the 4 GiB it may use; without cgroups no memory default at all
    assert limits.default_tenant_memory_mb() == (3072 if grouped else None)


@pytest.mark.needs_root("a multi-tenant executor")
def test_with_tenants_a_token_others_may_read_is_refused(tmp_path: Path) -> None:
    """The sandbox shows /etc read-only and the tenants' uids read what others may: the
    executor's bearer token must be its own."""
    token = tmp_path / "token"
    token.write_text("secret\n")

    def started_with(owner: int, group: int, mode: int) -> subprocess.CompletedProcess[str]:
        os.chown(token, owner, group)
        token.chmod(mode)
        return executor(tmp_path, "--uid-range", "200000-200009", "--credentials-file", str(token))

    refused = started_with(0, 0, 0o644)
    assert refused.returncode == 2
    assert f"--credentials-file {token} is -rw-r--r--, owner 0" in refused.stderr
    assert f"chmod 600 {token}" in refused.stderr
    assert "is -rw-r-----" in started_with(0, 200003, 0o640).stderr  # its group a tenant's
    assert "owner 200004" in started_with(200004, 0, 0o600).stderr  # a tenant's own
    passed = started_with(0, 0, 0o600)  # it gets as far as the endpoint (not TLS: refused)
    assert passed.returncode == 2 and "could read the executor's token" not in passed.stderr
    assert "credentials_file" in passed.stderr
