"""A persistent worker for the remote execution tests (JSON protocol; honours
sandbox_dir). A request `--out PATH FILE...` writes to PATH (in the sandbox) the files'
contents, then `pid=<PID@PID-NAMESPACE@START>` so a test can tell which process ran it, in a
sandbox too (tests/worker_identity.py finds its host pid; `--sleep S`
first makes it slow; `--sleep-if SIDE S` only on that side, `local` or `remote`, told
apart by the request's sandbox_dir, which only the executor sends; `--wait-if SIDE FILE`
waits until FILE exists in the project root; a one-shot run is always `remote`: the
runtime runs nothing one-shot). `--link OUT TARGET` makes the output a
symlink. `--escape PATH` writes PATH outside the sandbox instead (a malicious worker).
`--scribble-if SIDE PATH` (on that side) rewrites PATH every 10 ms until it is
stopped, as a loser still writing would. `--exit` makes the process exit at once (a
crash). `--probe OUT KIND:TARGET...` (a hostile tenant) tries each of read:PATH,
write:PATH, unlink:PATH, rename:PATH, list:PATH, kill:PID (signal 0), environ:PID, cmdline:PID and
connect:HOST:PORT, and writes to OUT a JSON object: its uid, and for each probe "ok" or
the errno's name. `--eat MB` takes that much memory. `--fill PATH MB` first writes
that many MiB to PATH in the sandbox (`--fill-home` in its working directory, its home
on the executor), then does the rest of the request. `--fork-bomb OUT` starts sleeping
children until a fork fails (at most 1,000), stops them, and writes their count to OUT. Without --persistent_worker it does
the same once, from its @argfile (the one-shot fallback). Started with --multiplex it
serves each request on a thread of its own, answering by requestId, and a cancel request
stops the waits of the request it names (answered with wasCancelled)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def identity() -> str:
    """``PID@NAMESPACE@START``: this process's pid, its PID namespace's inode (both
    reused once freed) and its start time (clock ticks since boot, as the host sees it)."""
    namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    start = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
    return f"{os.getpid()}@{namespace}@{start}"


class Cancelled(Exception):
    pass


def wait(done: Callable[[], bool], cancelled: Callable[[], bool]) -> None:
    while not done():
        if cancelled():
            raise Cancelled()
        time.sleep(0.02)


def run(
    arguments: list[str],
    root: Path,
    side: str = "local",
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[int, str]:
    while arguments[:1] in (["--sleep-if"], ["--wait-if"], ["--scribble-if"]):
        option, where, value = arguments[:3]
        arguments = arguments[3:]
        if where != side:
            continue
        (root / "started.txt").write_text(identity())
        if option == "--scribble-if":
            target = root / value
            target.parent.mkdir(parents=True, exist_ok=True)
            while not cancelled():
                target.write_text(f"scribbled by {os.getpid()}\n")
                time.sleep(0.01)
            raise Cancelled()
        if option == "--sleep-if":
            until = time.monotonic() + float(value)
            wait(lambda: time.monotonic() > until, cancelled)  # noqa: B023
        else:
            wait(Path(value).exists, cancelled)
    if arguments[:1] in (["--fill"], ["--fill-home"]):  # a disk filler, then the rest
        into = root if arguments[0] == "--fill" else Path.cwd()
        (into / arguments[1]).write_bytes(b"\1" * (int(arguments[2]) << 20))
        arguments = arguments[3:]
    if arguments[:1] == ["--exit"]:
        os._exit(3)
    if arguments[:1] == ["--sleep"]:
        (root / "started.txt").write_text(identity())
        time.sleep(float(arguments[1]))
        arguments = arguments[2:]
    if arguments[:1] == ["--link"]:  # an output that is a symlink to elsewhere
        link = root / arguments[1]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(arguments[2])
        return 0, ""
    if arguments[:1] == ["--escape"]:
        target = Path(arguments[1])
        target.write_text("escaped\n")
        return 0, ""
    if arguments[:1] == ["--eat"]:
        eaten = [bytearray(1 << 20) for _ in range(int(arguments[1]))]
        return 0, f"ate {len(eaten)} MB\n"
    if arguments[:1] == ["--fork-bomb"]:
        children: list[subprocess.Popen[bytes]] = []
        try:
            while len(children) < 1000:
                children.append(subprocess.Popen(["sleep", "60"]))
        except OSError:
            pass
        for child in children:
            child.kill()
            child.wait()
        out = root / arguments[1]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(str(len(children)))
        return 0, ""
    if arguments[:1] == ["--probe"]:
        out = root / arguments[1]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"uid": os.getuid(), **probe(arguments[2:])}))
        return 0, ""
    if arguments[:1] != ["--out"]:
        return 2, f"remote_test_worker: unknown request {arguments!r}\n"
    out = root / arguments[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    body = "".join((root / name).read_text() for name in arguments[2:])
    out.write_text(f"{body}pid={identity()}\n")
    return 0, f"wrote {arguments[1]}\n"


def probe(targets: list[str]) -> dict[str, str]:
    """What a hostile tenant gets of each ``KIND:TARGET``: "ok" or the errno's name."""
    tries: dict[str, Callable[[str], object]] = {
        "read": lambda path: Path(path).read_bytes(),
        "write": lambda path: Path(path).open("ab").close(),
        "unlink": os.unlink,
        "rename": lambda path: os.rename(path, f"{path}.moved"),
        "list": os.listdir,
        "kill": lambda pid: os.kill(int(pid), 0),
        "environ": lambda pid: Path(f"/proc/{pid}/environ").read_bytes(),
        "cmdline": lambda pid: Path(f"/proc/{pid}/cmdline").read_bytes(),
        "connect": lambda address: socket.create_connection(
            (address.rpartition(":")[0], int(address.rpartition(":")[2])), timeout=5
        ).close(),
    }
    found = {}
    for target in targets:
        kind, _, what = target.partition(":")
        try:
            tries[kind](what)
            found[target] = "ok"
        except OSError as exc:
            found[target] = errno.errorcode.get(exc.errno or 0, str(exc))
    return found


def expand(arguments: list[str], root: Path) -> list[str]:
    out: list[str] = []
    for argument in arguments:
        if argument.startswith("@"):
            out += [line for line in (root / argument[1:]).read_text().split("\n") if line]
        else:
            out.append(argument)
    return out


def main() -> int:
    if "--persistent_worker" not in sys.argv:
        arguments = [a for a in sys.argv[1:] if a != "--multiplex"]
        code, output = run(expand(arguments, Path.cwd()), Path.cwd(), "remote")
        sys.stderr.write(output)
        return code
    multiplex = "--multiplex" in sys.argv
    lock = threading.Lock()
    cancelled: set[int] = set()

    def reply(answer: dict[str, object]) -> None:
        with lock:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()

    def serve(request: dict[str, object]) -> None:
        request_id = int(request.get("requestId", 0))  # type: ignore[call-overload]
        sandbox = request.get("sandboxDir")
        root = Path(str(sandbox or "."))
        side = "remote" if sandbox else "local"
        arguments = expand([str(a) for a in request.get("arguments", [])], root)  # type: ignore[attr-defined]
        try:
            code, output = run(arguments, root, side, lambda: request_id in cancelled)
        except Cancelled:
            reply({"requestId": request_id, "wasCancelled": True})
            return
        reply({"exitCode": code, "output": output, "requestId": request_id})

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        arguments = request.get("arguments", [])
        if multiplex and arguments[:1] == ["--close-stdin"]:
            # Its reader dies: stdin closed, what it has in hand still answered, and
            # nothing more read (a thread blocked reading would keep the pipe open).
            os.close(0)
            request["arguments"] = arguments[1:]
            threading.Thread(target=serve, args=(request,), daemon=True).start()
            threading.Event().wait()
        if request.get("cancel"):
            cancelled.add(int(request.get("requestId", 0)))
        elif multiplex:
            threading.Thread(target=serve, args=(request,), daemon=True).start()
        else:
            serve(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
