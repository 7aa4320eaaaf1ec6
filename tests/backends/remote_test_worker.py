"""A persistent worker for the remote execution tests (JSON protocol; honours
sandbox_dir). A request `--out PATH FILE...` writes to PATH (in the sandbox) the files'
contents, then `pid=<its PID>` so a test can tell which process ran it (`--sleep S`
first makes it slow). `--link OUT TARGET` makes the output a symlink. `--escape PATH`
writes PATH outside the sandbox instead (a malicious worker). Without
--persistent_worker it does the same once, from its @argfile (the one-shot fallback)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def run(arguments: list[str], root: Path) -> tuple[int, str]:
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
        code, output = run(expand(sys.argv[1:], Path.cwd()), Path.cwd())
        sys.stderr.write(output)
        return code
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        root = Path(request.get("sandboxDir") or ".")
        code, output = run(expand(request.get("arguments", []), root), root)
        reply = {"exitCode": code, "output": output, "requestId": request.get("requestId", 0)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
