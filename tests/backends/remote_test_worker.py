"""A persistent worker for the remote execution tests (JSON protocol; honours
sandbox_dir). A request `--out PATH FILE...` writes to PATH (in the sandbox) the files'
contents, then `pid=<its PID>` so a test can tell which process ran it (`--sleep S`
first makes it slow; `--sleep-if SIDE S` only on that side, `local` or `remote`, told
apart by the request's sandbox_dir, which only the executor sends; `--wait-if SIDE FILE`
waits until FILE exists in the project root; a one-shot run is always `remote`: the
runtime runs nothing one-shot). `--link OUT TARGET` makes the output a
symlink. `--escape PATH` writes PATH outside the sandbox instead (a malicious worker).
Without --persistent_worker it does the same once, from its @argfile (the one-shot
fallback)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def run(arguments: list[str], root: Path, side: str = "local") -> tuple[int, str]:
    while arguments[:1] in (["--sleep-if"], ["--wait-if"]):
        option, where, value = arguments[:3]
        arguments = arguments[3:]
        if where != side:
            continue
        (root / "started.txt").write_text(str(os.getpid()))
        if option == "--sleep-if":
            time.sleep(float(value))
        else:
            while not Path(value).exists():
                time.sleep(0.02)
    if arguments[:1] == ["--sleep"]:
        (root / "started.txt").write_text(str(os.getpid()))
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
    if arguments[:1] != ["--out"]:
        return 2, f"remote_test_worker: unknown request {arguments!r}\n"
    out = root / arguments[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    body = "".join((root / name).read_text() for name in arguments[2:])
    out.write_text(f"{body}pid={os.getpid()}\n")
    return 0, f"wrote {arguments[1]}\n"


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
        code, output = run(expand(sys.argv[1:], Path.cwd()), Path.cwd(), "remote")
        sys.stderr.write(output)
        return code
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sandbox = request.get("sandboxDir")
        root = Path(sandbox or ".")
        side = "remote" if sandbox else "local"
        code, output = run(expand(request.get("arguments", []), root), root, side)
        reply = {"exitCode": code, "output": output, "requestId": request.get("requestId", 0)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
