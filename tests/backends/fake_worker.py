#!/usr/bin/env python3
"""A Bazel-protocol test backend whose behaviour each request picks with its first argument.

Written independently of worker_runtime's framing so that the tests check the runtime
against a second implementation of the protocol. Startup flags (before
``--persistent_worker``): ``--protocol proto|json`` (default: detect from the first
byte), ``--multiplex`` (one thread per request), ``--inline`` (answer on the reading
thread: a no-op backend for benchmarks), ``--slow-start SECONDS``, ``--die-at-start``,
``--ignore-cancel``, ``--alloc-mb N``, ``--spawn-helper`` (``--spawn-session-helper``:
in a session of its own, holding the worker's stdout).

Request commands: ``echo WORDS...``, ``exit CODE [MESSAGE]``, ``sleep SECONDS [STARTED]``,
``sleep-write SECONDS FILE [STARTED]`` (STARTED: a file made as the request starts), ``pid``, ``identity``,
``env NAME``, ``args``, ``crash``, ``crash-once MARKER``, ``crash-after SECONDS MARKER``, ``bad-int``, ``alloc-sleep MB SECONDS``, ``helper-pid``, ``garbage``, ``silent``,
``close-stdin DELAY``, ``close-stdout``, ``answer-then-close-stdout``, ``answer-then-print``,
``sleep-answer-twice-if-cancelled SECONDS``, ``uncancelled``, ``raw TEXT``, ``answer-then-newline SECONDS``, ``wrong-id``, ``huge BYTES``, ``snake`` (JSON:
answer in snake_case).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from worker_runtime.proto import bazel_worker_pb2 as pb

OUT = sys.stdout.buffer
WRITE_LOCK = threading.Lock()
CANCELLED: set[int] = set()
BALLAST: list[bytes] = []
HELPER: list[subprocess.Popen] = []
CANCEL_LOCK = threading.Lock()


def read_varint(stream) -> int | None:
    shift = value = 0
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Proto:
    def __init__(self, stream) -> None:
        self.stream = stream

    def read(self) -> dict | None:
        size = read_varint(self.stream)
        if size is None:
            return None
        message = pb.WorkRequest()
        message.ParseFromString(self.stream.read(size))
        return {
            "arguments": list(message.arguments),
            "request_id": message.request_id,
            "cancel": message.cancel,
            "verbosity": message.verbosity,
            "inputs": [(i.path, i.digest.decode("ascii", "replace")) for i in message.inputs],
        }

    def write(
        self, exit_code: int, output: str, request_id: int, cancelled: bool = False, **_
    ) -> bytes:
        body = pb.WorkResponse(
            exit_code=exit_code, output=output, request_id=request_id, was_cancelled=cancelled
        ).SerializeToString()
        return varint(len(body)) + body


class Json:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.decoder = json.JSONDecoder()
        self.buffer = ""

    def read(self) -> dict | None:
        while True:
            text = self.buffer.lstrip()
            if text:
                try:
                    obj, end = self.decoder.raw_decode(text)
                    self.buffer = text[end:]
                    return {
                        "arguments": obj.get("arguments", []),
                        "request_id": obj.get("requestId", 0),
                        "cancel": obj.get("cancel", False),
                        "verbosity": obj.get("verbosity", 0),
                        "inputs": [
                            (i.get("path", ""), i.get("digest", "")) for i in obj.get("inputs", [])
                        ],
                    }
                except json.JSONDecodeError:
                    pass
            chunk = self.stream.read1(65536)
            if not chunk:
                return None
            self.buffer += chunk.decode("utf-8")

    def write(
        self,
        exit_code: int,
        output: str,
        request_id: int,
        cancelled: bool = False,
        snake: bool = False,
    ) -> bytes:
        obj: dict = {}
        if exit_code:
            obj["exit_code" if snake else "exitCode"] = exit_code
        if output:
            obj["output"] = output
        if request_id:
            obj["requestId"] = request_id
        if cancelled:
            obj["wasCancelled"] = True
        # No newline between objects, as Bazel 4.2.3 writes them.
        return json.dumps(obj).encode("utf-8")


def send(data: bytes) -> None:
    with WRITE_LOCK:
        OUT.write(data)
        OUT.flush()


def started(marker: list[str]) -> None:
    """Creates the file a request names after its own arguments (``sleep SECONDS
    STARTED``), so that a test knows the request is running, not guesses it by a sleep."""
    if marker:
        with open(marker[0], "w"):
            pass


def handle(framing, request: dict, options: dict) -> None:
    args = request["arguments"]
    rid = request["request_id"]
    command, rest = (args[0], args[1:]) if args else ("echo", [])
    if request["verbosity"]:
        sys.stderr.write(f"verbosity {request['verbosity']}\n")
    reply = {"exit_code": 0, "output": "", "request_id": rid}
    if command == "echo":
        reply["output"] = " ".join(rest)
    elif command == "exit":
        reply["exit_code"] = int(rest[0])
        reply["output"] = " ".join(rest[1:])
    elif command in ("sleep", "sleep-answer-twice-if-cancelled"):
        started(rest[1:])
        deadline = time.monotonic() + float(rest[0])
        while time.monotonic() < deadline:
            with CANCEL_LOCK:
                if rid in CANCELLED and not options["ignore_cancel"]:
                    CANCELLED.discard(rid)
                    sys.stderr.write(f"fake_worker: cancelled request {rid}\n")
                    sys.stderr.flush()
                    send(framing.write(0, "", rid, cancelled=True))
                    if command != "sleep":  # its work ended as the cancel came: a 2nd answer
                        send(framing.write(0, "late", rid))
                    return
            time.sleep(0.01)
        reply["output"] = "slept"
    elif command == "sleep-write":
        started(rest[2:])
        time.sleep(float(rest[0]))
        with open(rest[1], "w") as handle:
            handle.write("output\n")
        reply["output"] = "written"
    elif command == "alloc-sleep":
        BALLAST.append(b"\1" * (int(rest[0]) << 20))
        time.sleep(float(rest[1]))
        reply["output"] = "slept"
    elif command == "helper-pid":
        reply["output"] = str(HELPER[0].pid) if HELPER else "none"
    elif command == "pid":
        reply["output"] = str(os.getpid())
    elif command == "identity":  # tests/worker_identity.py: the pid in a sandbox too
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
        with open("/proc/self/stat") as stat:
            start = stat.read().rsplit(")", 1)[1].split()[19]
        reply["output"] = f"{os.getpid()}@{namespace}@{start}"
    elif command == "env":
        reply["output"] = os.environ.get(rest[0], "<unset>")
    elif command == "args":
        reply["output"] = json.dumps(args)
    elif command == "inputs":  # the request's WorkRequest.inputs, as path=digest
        reply["output"] = " ".join(f"{path}={digest}" for path, digest in request["inputs"])
    elif command == "crash":
        sys.stderr.write("fake_worker: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif command == "crash-once":
        if not os.path.exists(rest[0]):
            open(rest[0], "w").close()
            sys.stderr.write("fake_worker: crashing once on purpose\n")
            sys.stderr.flush()
            os._exit(3)
        reply["output"] = "survived"
    elif command == "crash-after":
        time.sleep(float(rest[0]))
        if not os.path.exists(rest[1]):
            open(rest[1], "w").close()
            os._exit(3)
        reply["output"] = "survived"
    elif command == "bad-int":
        send(b'{"exitCode": 4294967296, "requestId": %d}' % rid)
        return
    elif command == "garbage":
        send(b"Hello from a chatty worker!\n")
        reply["output"] = "after garbage"
    elif command == "silent":
        return
    elif command == "close-stdin":
        # Closes its stdin (a reader thread that crashed, say), answers after DELAY
        # seconds, and lives on, taking no more requests.
        os.close(0)
        time.sleep(float(rest[0]))
        send(framing.write(0, str(os.getpid()), rid))
        time.sleep(3600)
        return
    elif command == "answer-then-close-stdout":
        send(framing.write(0, str(os.getpid()), rid))
        os.close(1)
        time.sleep(3600)
        return
    elif command == "close-stdout":
        sys.stderr.write("fake_worker: closing stdout and staying alive\n")
        sys.stderr.flush()
        os.close(1)
        time.sleep(3600)
    elif command == "chatter":
        sys.stderr.write(("fake_worker: chatter " + "." * 50 + "\n") * int(rest[0]))
        sys.stderr.flush()
        reply["output"] = "chattered"
    elif command == "answer-twice":
        # Answers, then after a pause answers the same request again (a buggy singleplex
        # worker), before it reads its next request.
        send(framing.write(0, "first answer", rid))
        time.sleep(float(rest[0]))
        reply["output"] = "second answer"
    elif command == "answer-then-part":
        # Answers, then after a pause writes all but the last 8 bytes of a second answer
        # (a buggy singleplex worker), before it reads its next request.
        send(framing.write(0, "first answer", rid))
        time.sleep(float(rest[0]))
        send(framing.write(0, "second answer", rid)[:-8])
        return
    elif command == "answer-then-print":
        # Answers and prints to stdout in the same write (a worker's stray print).
        send(framing.write(0, "answered", rid) + b"done\n")
        return
    elif command == "answer-then-newline":
        # Answers, then after a pause writes the newline after it (print, unbuffered).
        send(framing.write(0, "answered", rid))
        time.sleep(float(rest[0]))
        send(b"\n")
        return
    elif command == "uncancelled":
        # Answers as cancelled a request nobody cancelled.
        send(framing.write(0, "", rid, cancelled=True))
        return
    elif command == "raw":
        # Writes TEXT to stdout as it is, and no answer (a worker's stray print).
        send(rest[0].encode("utf-8"))
        return
    elif command == "wrong-id":
        reply["request_id"] = rid + 1000
    elif command == "huge":
        reply["output"] = "x" * int(rest[0])
    elif command == "snake":
        send(framing.write(7, "snake", rid, snake=True))
        return
    else:
        reply["exit_code"] = 1
        reply["output"] = f"fake_worker: unknown command {command!r}"
    send(framing.write(reply["exit_code"], reply["output"], reply["request_id"]))


def detect(stream):
    first = stream.peek(1)[:1]
    return Json(stream) if first == b"{" else Proto(stream)


def main(argv: list[str]) -> int:
    options = {
        "multiplex": "--multiplex" in argv,
        "inline": "--inline" in argv,
        "ignore_cancel": "--ignore-cancel" in argv,
    }
    if "--slow-start" in argv:
        time.sleep(float(argv[argv.index("--slow-start") + 1]))
    if "--die-at-start" in argv:
        sys.stderr.write("fake_worker: dying at start on purpose\n")
        return 4
    if "--spawn-helper" in argv:
        # A child of its own that does not get the parent-death signal (like a compiler
        # server a real worker may start).
        HELPER.append(subprocess.Popen(["sleep", "300"]))
    if "--spawn-session-helper" in argv:
        # Out of the worker's process group, so that nothing kills it with the worker;
        # it inherits the worker's stdout, which then never reaches its end.
        HELPER.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
    ballast = b""
    if "--alloc-mb" in argv:
        ballast = b"\1" * (int(argv[argv.index("--alloc-mb") + 1]) << 20)
    if "--persistent_worker" not in argv:
        sys.stderr.write("fake_worker: one-shot mode is not supported\n")
        return 2
    stdin = sys.stdin.buffer
    if "--protocol" in argv:
        proto = argv[argv.index("--protocol") + 1]
        framing = Json(stdin) if proto == "json" else Proto(stdin)
    else:
        framing = detect(stdin)
    threads = []
    while True:
        request = framing.read()
        if request is None:
            break
        if request["cancel"]:
            with CANCEL_LOCK:
                CANCELLED.add(request["request_id"])
            continue
        if options["multiplex"] and not options["inline"]:
            thread = threading.Thread(target=handle, args=(framing, request, options), daemon=True)
            thread.start()
            threads.append(thread)
        else:
            handle(framing, request, options)
    del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
