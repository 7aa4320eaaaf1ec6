"""The executor's sandbox as an action sees it (bubblewrap, as root): only its own
directory writable, the system read-only, a private /tmp it may write in, no other
process, no network unless asked, the tenant's uid with no groups, no capabilities and
no_new_privs."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import RunAs, hand_over

pytestmark = pytest.mark.needs_root("bubblewrap's mounts and the uid switch")
TENANT = RunAs(200007, 200007)
LOOK = r"""
import json, os, socket, sys
def attempt(f):
    try:
        f(); return "ok"
    except OSError as exc:
        return exc.strerror or str(exc)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "uid": os.getuid(), "groups": os.getgroups(), "cwd": os.getcwd(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "tmp": os.listdir("/tmp"),
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "write_own": attempt(lambda: open("own.txt", "w").write("x")),
    "write_tmp": attempt(lambda: open("/tmp/scratch.txt", "w").write("x")),
    "write_usr": attempt(lambda: open("/usr/x", "w")),
    "connect": attempt(lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)),
}))
"""


@pytest.fixture
def action_dir() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="wr-sandbox-"))
    top.chmod(0o711)
    directory = top / "action"
    directory.mkdir()
    hand_over(directory, TENANT)
    yield directory
    shutil.rmtree(top)


def look(directory: Path, network: bool) -> dict[str, object]:
    sandbox = Sandbox.find()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = str(listener.getsockname()[1])
        argv = sandbox.command(
            ["/usr/bin/python3", "-c", LOOK, port], run_as=TENANT, writable=[str(directory)],
            cwd=str(directory), network=network,
        )  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen: dict[str, object] = json.loads(result.stdout)
    return seen


def test_an_action_sees_only_what_it_should(action_dir: Path) -> None:
    seen = look(action_dir, network=False)
    assert seen["uid"] == TENANT.uid and seen["groups"] == []  # no supplementary groups
    assert seen["cwd"] == str(action_dir)
    assert seen["pids"] == [1, 2]  # bubblewrap's init and the action: nothing else
    assert seen["tmp"] == [action_dir.parent.name]  # a private /tmp, its own path only
    assert seen["write_tmp"] == "ok"  # and the tenant's to write in (compilers' scratch)
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["write_own"] == "ok" and (action_dir / "own.txt").read_text() == "x"
    assert seen["write_usr"] == "Read-only file system"
    assert seen["connect"] in ("Connection refused", "Network is unreachable")


def test_the_network_only_when_the_platform_asks(action_dir: Path) -> None:
    assert look(action_dir, network=True)["connect"] == "ok"


@pytest.mark.parametrize(
    ("source", "compile_it", "output"),
    [
        ("M.hs", ["ghc", "-c", "M.hs"], "M.o"),  # its package database is under /var/lib
        ("M.java", ["javac", "M.java"], "M.class"),  # its configuration under /etc
    ],
)
def test_debian_s_compilers_work_in_the_sandbox(
    action_dir: Path, source: str, compile_it: list[str], output: str
) -> None:
    """GHC and javac as the tenant, in the sandbox: each finds the files it keeps outside
    /usr, and writes its scratch files in the private /tmp."""
    text = {"M.hs": "module M where\nx :: Int\nx = 1\n", "M.java": "class M {}\n"}[source]
    (action_dir / source).write_text(text)
    argv = Sandbox.find().command(
        compile_it, run_as=TENANT, writable=[str(action_dir)], cwd=str(action_dir),
        network=False,
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (action_dir / output).is_file()


def test_a_worker_s_tool_files_are_read_only_in_its_writable_home(action_dir: Path) -> None:
    """A persistent worker's home is writable (its scratch), its tool files, mounted
    again read-only, are not: it can neither change, rename nor remove them."""
    tools = action_dir / "tools"
    tools.mkdir()
    (tools / "w.py").write_text("print('the tool')\n")  # root's, as the executor copies it
    hand_over(action_dir, TENANT)  # the directories the tenant's, as for a home
    script = r"""
import json, os
def attempt(f):
    try:
        f(); return "ok"
    except OSError as exc:
        return exc.errno
print(json.dumps({
    "change": attempt(lambda: open("tools/w.py", "a").write("x")),
    "remove": attempt(lambda: os.unlink("tools/w.py")),
    "rename_file": attempt(lambda: os.rename("tools/w.py", "tools/v.py")),
    "rename_dir": attempt(lambda: os.rename("tools", "gone")),
    "add_to_tools": attempt(lambda: open("tools/new.py", "w").write("x")),
    "scratch": attempt(lambda: open("scratch.txt", "w").write("x")),
}))
"""
    argv = Sandbox.find().command(
        ["/usr/bin/python3", "-c", script], run_as=TENANT, writable=[str(action_dir)],
        cwd=str(action_dir), network=False, fixed=[str(tools)],
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen.pop("scratch") == "ok" and (action_dir / "scratch.txt").exists()
    refused = {errno.EROFS, errno.EBUSY, errno.EACCES, errno.EPERM}
    assert all(code in refused for code in seen.values()), seen
    assert (tools / "w.py").read_text() == "print('the tool')\n"
