"""The javac worker (toolchains/java/): one-shot, through the runtime in both wire formats,
multiplexed, and never leaking one compile's classes into another; its @argfile handling
(the shared vectors), which is the same warm and in the one-shot fallback."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.argfile_vectors import ARGFILE_EXIT_CODE, CASES, Case, parametrize_cases
from tests.conftest import REPO_ROOT, StartRuntime, wait_started
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE, RequestError
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from worker_runtime.protocol.argfiles import expand_argfiles
from worker_runtime.protocol.framing import JsonFraming
from workers_dev.emulator import StreamingSession, make_command

JAVAC_WORKER = str(REPO_ROOT / "toolchains" / "java" / "javac-worker")


def serve_once(requests: bytes, cwd: Path) -> bytes:
    """Runs the worker in persistent mode straight over its pipes: writes ``requests``,
    closes stdin, returns everything it wrote to stdout."""
    worker = subprocess.Popen(
        [JAVAC_WORKER, "--persistent_worker"],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = worker.communicate(requests, timeout=120)
    finally:
        worker.kill()
        worker.wait()
    return out


def serve(
    requests: bytes, cwd: Path, *startup: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs the worker in persistent mode, after ``startup`` arguments, straight over its
    pipes: writes ``requests``, closes stdin, returns its stdout, stderr and exit code."""
    return subprocess.run(
        [JAVAC_WORKER, *startup, "--persistent_worker"],
        input=requests, cwd=cwd, env=env, capture_output=True, timeout=120,
    )  # fmt: skip


def json_requests(*requests: Mapping[str, object]) -> bytes:
    return b"".join(json.dumps(request).encode() for request in requests)


PROCESSOR = """package p;

import java.util.Set;
import javax.annotation.processing.AbstractProcessor;
import javax.annotation.processing.RoundEnvironment;
import javax.annotation.processing.SupportedAnnotationTypes;
import javax.annotation.processing.SupportedOptions;
import javax.lang.model.SourceVersion;
import javax.lang.model.element.TypeElement;
import javax.tools.Diagnostic;

@SupportedAnnotationTypes("*")
@SupportedOptions({"spawn", "throwInThread", "linger", "resource", "contextLoader", "await", "print", "closeOut"})
public class P extends AbstractProcessor {
  @Override
  public SourceVersion getSupportedSourceVersion() {
    return SourceVersion.latestSupported();
  }

  @Override
  public boolean process(Set<? extends TypeElement> annotations, RoundEnvironment round) {
    if (round.processingOver()) {
      return false;
    }
    processingEnv.getMessager().printMessage(Diagnostic.Kind.NOTE, "processor p ran");
    String spawn = processingEnv.getOptions().get("spawn");
    if (spawn != null) {
      try {
        new ProcessBuilder("sh", "-c", spawn).inheritIO().start().waitFor();
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
    }
    if (processingEnv.getOptions().containsKey("throwInThread")) {
      Thread thread = new Thread(() -> { throw new IllegalStateException("from p's thread"); });
      thread.start();
      try {
        thread.join();
      } catch (InterruptedException e) {
        throw new RuntimeException(e);
      }
    }
    if (processingEnv.getOptions().containsKey("linger")) {
      new Thread(() -> {
        try {
          Thread.sleep(600_000);
        } catch (InterruptedException e) {
          return;
        }
      }).start();
    }
    if (processingEnv.getOptions().containsKey("print")) {
      System.out.println("p's System.out");
      System.err.println("p's System.err");
    }
    if (processingEnv.getOptions().containsKey("closeOut")) {
      System.out.close();
    }
    String await = processingEnv.getOptions().get("await");
    if (await != null) {
      // Says it started (AWAIT.started), then waits until the file AWAIT exists.
      try {
        java.nio.file.Files.writeString(java.nio.file.Path.of(await + ".started"), "");
        while (!java.nio.file.Files.exists(java.nio.file.Path.of(await))) {
          Thread.sleep(10);
        }
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
    }
    if (processingEnv.getOptions().containsKey("contextLoader")) {
      // Notes its thread's context class loader, then leaves its own there.
      ClassLoader found = Thread.currentThread().getContextClassLoader();
      String name = found == null ? "none" : found.getClass().getName();
      processingEnv.getMessager().printMessage(Diagnostic.Kind.NOTE, "context loader: " + name);
      Thread.currentThread().setContextClassLoader(P.class.getClassLoader());
    }
    if (processingEnv.getOptions().containsKey("resource")) {
      try (java.io.InputStream in = P.class.getResource("msg.txt").openStream()) {
        String text = new String(in.readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
        processingEnv.getMessager().printMessage(Diagnostic.Kind.NOTE, "resource: " + text.trim());
      } catch (java.io.IOException e) {
        throw new RuntimeException(e);
      }
    }
    return false;
  }
}
"""


@pytest.fixture(scope="module")
def processor_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processor module path holding module ``p``, whose processor notes "processor p
    ran" and, given ``-Aspawn=<script>``, runs ``sh -c <script>`` with inheritIO."""
    root = tmp_path_factory.mktemp("processor")
    (root / "src" / "p").mkdir(parents=True)
    (root / "src" / "p" / "P.java").write_text(PROCESSOR)
    (root / "src" / "module-info.java").write_text(
        "module p {\n  requires java.compiler;\n"
        "  provides javax.annotation.processing.Processor with p.P;\n}\n"
    )
    subprocess.run(
        ["javac", "-d", "modules/p", "src/module-info.java", "src/p/P.java"],
        cwd=root, check=True, timeout=120,
    )  # fmt: skip
    return root / "modules"


def processor_jar(processor_modules: Path, jar: Path, message: str) -> None:
    """Processor p as a jar for -processorpath, holding the resource p/msg.txt."""
    classes = jar.parent / f"{jar.stem}-classes"
    shutil.copytree(processor_modules / "p", classes, dirs_exist_ok=True)
    (classes / "module-info.class").unlink()
    (classes / "p" / "msg.txt").write_text(message + "\n")
    services = classes / "META-INF" / "services"
    services.mkdir(parents=True, exist_ok=True)
    (services / "javax.annotation.processing.Processor").write_text("p.P\n")
    jar.unlink(missing_ok=True)
    subprocess.run(["jar", "--create", "--file", str(jar), "-C", str(classes), "."], check=True)
    shutil.rmtree(classes)


def write_sources(root: Path, count: int = 3) -> list[str]:
    """A small package with a dependency chain: C0 <- C1 <- C2 ..."""
    paths = []
    for i in range(count):
        body = "return 1;" if i == 0 else f"return C{i - 1}.value() + {i};"
        path = root / "src" / "demo" / f"C{i}.java"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"package demo;\npublic class C{i} {{\n  public static int value() {{ {body} }}\n}}\n"
        )
        paths.append(str(path.relative_to(root)))
    return paths


def classes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.class"))}


def cold_javac(root: Path, out: str, sources: list[str]) -> dict[str, bytes]:
    subprocess.run(["javac", "-d", out, *sources], cwd=root, check=True, timeout=120)
    return classes(root / out)


def test_sources_and_diagnostics_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under LANG=C a JDK 17 worker read sources as ASCII ("unmappable character") and
    wrote its diagnostics' non-ASCII characters as `?`, warm and one-shot."""
    (tmp_path / "Cafe.java").write_text(
        'class Cafe { String s = "caf\u00e9"; void m() { th\u00e9(); } }\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANG", "LC_"))}
    env["LC_ALL"] = "C"
    cold = subprocess.run(
        [JAVAC_WORKER, "-d", "cold", "Cafe.java"],
        cwd=tmp_path, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert cold.returncode == 1
    assert "symbol:   method th\u00e9()" in cold.stderr.decode("utf-8"), cold.stderr
    assert b"unmappable" not in cold.stderr
    result = serve(
        json_requests({"arguments": ["-d", "warm", "Cafe.java"], "requestId": 0}), tmp_path,
        env=env,
    )  # fmt: skip
    (response,) = JsonFraming().feed(result.stdout)
    assert response.exit_code == 1
    assert "symbol:   method th\u00e9()" in response.output and "unmappable" not in response.output


def test_one_shot_with_an_argfile_matches_javac(tmp_path: Path) -> None:
    sources = write_sources(tmp_path)
    (tmp_path / "req.args").write_text("\n".join(["-d", "worker_out", *sources]) + "\n")
    result = subprocess.run(
        [JAVAC_WORKER, "@req.args"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert classes(tmp_path / "worker_out") == cold_javac(tmp_path, "javac_out", sources)


def test_one_shot_compile_error_exits_like_javac(tmp_path: Path) -> None:
    (tmp_path / "Bad.java").write_text("class Bad { int x = ; }\n")
    result = subprocess.run(
        [JAVAC_WORKER, "-d", "out", "Bad.java"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Bad.java:1: error: illegal start of expression" in result.stderr


def test_a_compile_naming_no_class_path_sees_only_its_own_sources(tmp_path: Path) -> None:
    """javac in the worker's JVM defaulted to that JVM's class path: a library with no deps
    compiled against the worker's own classes, warm and in the one-shot fallback. A compile
    that names no class path now has an empty one, which is not the working directory
    either (javac's reading of ``-cp ""``); one that names its own still gets it. The empty
    directory is the worker's, made in its temporary directory and gone when it exits."""
    (tmp_path / "Leak.java").write_text(
        "class Leak { Object w = buck2.workers.javac.JavacWorker.class; }\n"
    )
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "Dep.java").write_text("package lib; public class Dep {}\n")
    (tmp_path / "User.java").write_text("class User { lib.Dep d; }\n")
    subprocess.run(["javac", "-d", "deps", "lib/Dep.java"], cwd=tmp_path, check=True, timeout=120)
    temp = tmp_path / "worker-tmp"
    temp.mkdir()
    env = {**os.environ, "JAVAC_WORKER_JVM_FLAGS": f"-Djava.io.tmpdir={temp}"}

    def one_shot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [JAVAC_WORKER, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    leak = one_shot("-d", "cold", "Leak.java")
    assert leak.returncode == 1 and "package buck2.workers.javac does not exist" in leak.stderr
    # lib/Dep.java in the working directory is no source to find without a class path
    user = one_shot("-d", "cold", "User.java")
    assert user.returncode == 1 and "package lib does not exist" in user.stderr
    assert one_shot("-cp", "deps", "-d", "cold", "User.java").returncode == 0
    requests = json_requests(
        {"arguments": ["-d", "warm", "Leak.java"], "requestId": 1},
        {"arguments": ["-d", "warm", "User.java"], "requestId": 2},
        {"arguments": ["-d", "warm", "-classpath", "deps", "User.java"], "requestId": 3},
    )
    result = serve(requests, tmp_path, env=env)
    responses = sorted(JsonFraming().feed(result.stdout), key=lambda r: r.request_id)
    assert [r.exit_code for r in responses] == [1, 1, 0], result.stderr
    assert "package buck2.workers.javac does not exist" in responses[0].output
    assert "package lib does not exist" in responses[1].output
    assert (tmp_path / "warm" / "User.class").exists()
    assert list(temp.iterdir()) == []


def test_a_compile_that_writes_no_class_still_makes_its_output_directory(
    tmp_path: Path,
) -> None:
    """javac makes ``-d`` only to write a class there: a library of a package-info.java
    without annotations left none, and Buck2 failed the action for its missing output. The
    worker makes it, warm (in a sandbox too) and one-shot."""
    for root in (tmp_path, tmp_path / "sandbox-1"):
        (root / "foo").mkdir(parents=True)
        (root / "foo" / "package-info.java").write_text("package foo;\n")
    cold = subprocess.run(
        [JAVAC_WORKER, "-d", "cold", "foo/package-info.java"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stderr
    requests = json_requests(
        {"arguments": ["-d", "warm", "foo/package-info.java"]},
        {
            "arguments": ["-d", "out/classes", "foo/package-info.java"],
            "sandboxDir": str(tmp_path / "sandbox-1"),
        },
    )
    result = serve(requests, tmp_path)
    assert [r.exit_code for r in JsonFraming().feed(result.stdout)] == [0, 0], result.stderr
    for made in (tmp_path / "cold", tmp_path / "warm", tmp_path / "sandbox-1/out/classes"):
        assert made.is_dir() and list(made.iterdir()) == []


@pytest.mark.parametrize("protocol", ["proto", "json"])
def test_warm_compiles_through_the_runtime(
    start_runtime: StartRuntime, tmp_path: Path, protocol: str
) -> None:
    sources = write_sources(tmp_path)
    worker = start_runtime([JAVAC_WORKER], ["--protocol", protocol], cwd=tmp_path)
    for attempt in range(3):
        response = worker.run("-d", f"out{attempt}", *sources)
        assert (response.exit_code, response.stderr) == (0, "")
        assert classes(tmp_path / f"out{attempt}") == cold_javac(tmp_path, "cold", sources)
    (tmp_path / "src" / "Bad.java").write_text("class Bad { String s = 1; }\n")
    failed = worker.run("-d", "bad", "src/Bad.java")
    assert failed.exit_code == 1
    assert (
        "src/Bad.java:1: error: incompatible types: int cannot be converted to String"
        in failed.stderr
    )
    assert "1 error" in failed.stderr
    assert worker.run("-d", "again", *sources).exit_code == 0


def test_a_compile_never_sees_classes_of_an_earlier_one(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """State must not leak: Dep compiled by one request cannot satisfy another's import."""
    (tmp_path / "Dep.java").write_text("package leak; public class Dep {}\n")
    (tmp_path / "User.java").write_text("package other; public class User { leak.Dep d; }\n")
    worker = start_runtime([JAVAC_WORKER], cwd=tmp_path)
    assert worker.run("-d", "dep_out", "Dep.java").exit_code == 0
    response = worker.run("-d", "user_out", "User.java")
    assert response.exit_code == 1
    assert "package leak does not exist" in response.stderr
    assert worker.run("-d", "user_out", "-cp", "dep_out", "User.java").exit_code == 0


def test_eight_concurrent_compiles_in_one_multiplex_worker(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    sources = write_sources(tmp_path, 5)
    expected = cold_javac(tmp_path, "cold", sources)
    worker = start_runtime([JAVAC_WORKER], ["--multiplex", "--protocol", "proto"], cwd=tmp_path)

    async def scenario() -> list[pb.ExecuteResponse]:
        async with StreamingSession(worker.target, worker.proc) as session:
            return await asyncio.gather(
                *(session.execute(make_command(["-d", f"out{i}", *sources])) for i in range(8))
            )

    responses = asyncio.run(scenario())
    assert [(r.exit_code, r.stderr) for r in responses] == [(0, "")] * 8
    for i in range(8):
        assert classes(tmp_path / f"out{i}") == expected


def test_cancelled_compile_is_answered_and_the_worker_stays(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    big = tmp_path / "Big.java"
    methods = "\n".join(
        f"  static int m{i}(int x) {{ return x * {i} + m{max(i - 1, 0)}(x - 1); }}"
        for i in range(4000)
    )
    big.write_text(f"class Big {{\n{methods}\n}}\n")
    (tmp_path / "Small.java").write_text("class Small {}\n")
    worker = start_runtime([JAVAC_WORKER], ["--multiplex", "--cancellable"], cwd=tmp_path)
    assert worker.run("-d", "warm", "Small.java").exit_code == 0
    stub = pb_grpc.WorkerStub(worker.channel())

    def events():
        yield pb.ExecuteEvent(command=make_command(["-d", "big_out", "Big.java"]))
        time.sleep(0.2)
        yield pb.ExecuteEvent(cancel=pb.ExecuteCancel())

    response = stub.Exec(events(), timeout=60)
    assert (
        response.exit_code == RUNTIME_ERROR_EXIT_CODE
        and "cancelled by the client" in response.stderr
    )
    assert worker.run("-d", "after", "Small.java").exit_code == 0


class JsonWorker:
    """The javac worker under Bazel's JSON protocol, driven by hand, its stderr read."""

    def __init__(self, cwd: Path, temp: Path) -> None:
        self.process = subprocess.Popen(
            [JAVAC_WORKER, "--persistent_worker"], cwd=cwd,
            env={**os.environ, "JAVAC_WORKER_JVM_FLAGS": f"-Djava.io.tmpdir={temp}"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.stderr = self.process.stderr

    def send(self, request: Mapping[str, object]) -> None:
        self.stdin.write(json_requests(request) + b"\n")
        self.stdin.flush()

    def answer(self) -> dict[str, Any]:
        ready, _, _ = select.select([self.stdout], [], [], 60)
        assert ready, "no answer within 60 s"
        found: dict[str, Any] = json.loads(self.stdout.readline())
        return found

    def cancel(self, request_id: int) -> None:
        """Cancels a request and returns once the worker says it told the compile (its
        verbosity has it log the cancel then)."""
        self.send({"requestId": request_id, "cancel": True, "verbosity": 1})
        while True:
            line = self.stderr.readline()
            assert line, "the worker ended before it took the cancel"
            if f"request {request_id}: []".encode() in line:
                return

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.stdin, self.stdout, self.stderr):
            pipe.close()


def test_a_cancel_stops_the_compile_at_javacs_next_step(
    tmp_path: Path, processor_modules: Path
) -> None:
    """A cancelled compile ran to its end, writing its classes, before it was answered:
    the runtime, which waits 5 s for that answer, then killed a worker whose compile ran
    longer, and every compile in it. It stops at javac's next step now (here, once its
    processor returns), writes nothing more, and the worker serves on."""
    (tmp_path / "A.java").write_text("class A {}\n")
    go, temp = tmp_path / "go", tmp_path / "temp"
    temp.mkdir()
    worker = JsonWorker(tmp_path, temp)
    try:
        argv = ["--processor-module-path", str(processor_modules), f"-Aawait={go}"]
        worker.send({"arguments": [*argv, "-d", "out", "A.java"], "requestId": 1})
        wait_started(tmp_path / "go.started")  # the compile is in its processor
        worker.cancel(1)
        go.touch()  # the processor returns
        cancelled = worker.answer()
        assert cancelled["requestId"] == 1 and cancelled.get("wasCancelled"), cancelled
        assert not (tmp_path / "out").exists()  # stopped before it wrote a class
        worker.send({"arguments": ["-d", "out2", "A.java"], "requestId": 2})
        assert worker.answer() == {"exitCode": 0, "output": "", "requestId": 2}
        assert (tmp_path / "out2" / "A.class").exists()
        # Nothing taken for a fault of javac's: it writes its arguments to a file then
        # (JDK 17: in the working directory; from 21 in the temporary one).
        assert not [*temp.glob("javac.*.args"), *tmp_path.glob("javac.*.args")]
    finally:
        worker.close()


#: A javac plugin (-Xplugin:Record DIR) that notes each class javac starts to analyse as
#: DIR/analysed-NAME, and holds the analysis of class A until DIR/go exists (having made
#: DIR/A.started).
RECORDING_PLUGIN = """package r;

import com.sun.source.util.*;
import java.nio.file.*;

public class Record implements Plugin {
  public String getName() { return "Record"; }

  public void init(JavacTask task, String... args) {
    Path dir = Path.of(args[0]);
    task.addTaskListener(new TaskListener() {
      public void started(TaskEvent event) {
        if (event.getKind() != TaskEvent.Kind.ANALYZE) return;
        String name = event.getTypeElement().getSimpleName().toString();
        try {
          Files.writeString(dir.resolve("analysed-" + name), "");
          if (name.equals("A")) {
            Files.writeString(dir.resolve("A.started"), "");
            while (!Files.exists(dir.resolve("go"))) Thread.sleep(10);
          }
        } catch (Exception e) {
          throw new RuntimeException(e);
        }
      }
    });
  }
}
"""


@pytest.mark.parametrize(
    "policy",
    [[], ["-XDcompilePolicy=simple"], ["-XDcompilePolicy=byfile", "--should-stop=ifError=FLOW"]],
    ids=["default", "simple", "byfile as Error Prone sets it"],
)
def test_a_cancel_during_javacs_analysis_analyses_no_further_class(
    tmp_path: Path, policy: list[str]
) -> None:
    """javac never looks at its error count before analysing (attributing) a class: a
    cancel during the analysis of many classes waited for all of them (a review measured a
    44 s compile cancelled at 3 s end at 43.9 s), past the runtime's 5 s grace, which then
    killed the worker. The queue of classes to analyse (or of files, under byfile) now
    reads as empty once cancelled: the class being analysed is the last."""
    plugin = tmp_path / "plugin"
    (plugin / "src" / "r").mkdir(parents=True)
    (plugin / "src" / "r" / "Record.java").write_text(RECORDING_PLUGIN)
    (plugin / "classes" / "META-INF" / "services").mkdir(parents=True)
    (plugin / "classes" / "META-INF" / "services" / "com.sun.source.util.Plugin").write_text(
        "r.Record\n"
    )
    subprocess.run(
        ["javac", "-d", "classes", "src/r/Record.java"], cwd=plugin, check=True, timeout=120
    )
    seen = tmp_path / "seen"
    seen.mkdir()
    for name in ("A", "B", "C"):
        (tmp_path / f"{name}.java").write_text(f"class {name} {{ int f() {{ return 1; }} }}\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    worker = JsonWorker(tmp_path, temp)
    try:
        argv = [*policy, "-processorpath", str(plugin / "classes"), f"-Xplugin:Record {seen}"]
        worker.send({"arguments": [*argv, "-d", "out", "A.java", "B.java", "C.java"],
                     "requestId": 1})  # fmt: skip
        wait_started(seen / "A.started")  # analysing A, B and C still queued
        worker.cancel(1)
        (seen / "go").touch()
        cancelled = worker.answer()
        assert cancelled["requestId"] == 1 and cancelled.get("wasCancelled"), cancelled
        assert sorted(p.name for p in seen.glob("analysed-*")) == ["analysed-A"]
        assert not (tmp_path / "out").exists()
        # Not cancelled, the same compile analyses and writes every class.
        worker.send({"arguments": [*argv, "-d", "out2", "A.java", "B.java", "C.java"],
                     "requestId": 2})  # fmt: skip
        assert worker.answer() == {"exitCode": 0, "output": "", "requestId": 2}
        assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
            "A.class", "B.class", "C.class"
        ]  # fmt: skip
        assert not [*temp.glob("javac.*.args"), *tmp_path.glob("javac.*.args")]
    finally:
        worker.close()


def test_a_multiplex_compile_under_implicit_none_is_javacs(tmp_path: Path) -> None:
    """A multiplex compile (the path a cancel can stop) is javac's exactly: with a task
    listener in it, javac analysed implicitly compiled classes under -implicit:none and
    failed on an error in one that a cold javac never reports."""
    (tmp_path / "sp" / "p").mkdir(parents=True)
    (tmp_path / "sp" / "p" / "B.java").write_text(
        'package p; public class B { void m() { int x = "no"; } }\n'
    )
    (tmp_path / "A.java").write_text("class A { p.B b; }\n")
    argv = ["-implicit:none", "-sourcepath", "sp", "A.java"]
    cold = subprocess.run(
        ["javac", "-d", "cold", *argv], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stderr
    result = serve(json_requests({"arguments": ["-d", "warm", *argv], "requestId": 3}), tmp_path)
    (response,) = JsonFraming().feed(result.stdout)
    assert (response.exit_code, response.output) == (0, cold.stderr)
    assert classes(tmp_path / "warm") == classes(tmp_path / "cold")


def test_a_proto_request_of_123_bytes_is_not_taken_for_json(tmp_path: Path) -> None:
    """123 is '{': the worker must look past the first byte to tell the formats apart."""
    (tmp_path / "A.java").write_text("class A {}\n")
    from worker_runtime.proto import bazel_worker_pb2 as bazel
    from worker_runtime.protocol.framing import ProtoFraming
    from worker_runtime.protocol.wire import encode_varint

    padding = ""
    while True:
        request = bazel.WorkRequest(arguments=["-d", "out" + padding, "A.java"])
        body = request.SerializeToString()
        if len(body) >= 123:
            break
        padding += "x"
    assert len(body) == 123 and encode_varint(123) == b"{"
    out = serve_once(encode_varint(len(body)) + body, tmp_path)
    (response,) = ProtoFraming().feed(out)
    assert response.exit_code == 0, response.output


@pytest.mark.parametrize("length", [9, 10, 13, 32])
def test_a_proto_request_whose_length_is_white_space_is_not_taken_for_json(
    tmp_path: Path, length: int
) -> None:
    """JSON may start with white space, and so may a proto request of 9, 10, 13 or 32 bytes."""
    from worker_runtime.proto import bazel_worker_pb2 as bazel
    from worker_runtime.protocol.framing import ProtoFraming
    from worker_runtime.protocol.wire import encode_varint

    name = "A" + "x" * (length - 8)  # one argument, <name>.java: 2 + len(name) + 5 bytes
    (tmp_path / f"{name}.java").write_text(f"class {name} {{}}\n")
    body = bazel.WorkRequest(arguments=[f"{name}.java"]).SerializeToString()
    assert len(body) == length and encode_varint(length).isspace()
    out = serve_once(encode_varint(length) + body, tmp_path)
    (response,) = ProtoFraming().feed(out)
    assert response.exit_code == 0, response.output
    assert (tmp_path / f"{name}.class").exists()


@pytest.mark.parametrize(
    "first",
    [
        ' {"arguments": ["-d", "first", "A.java"]}',
        '\n\t{"arguments":["-d","first","A.java"]}',
        '{"unknownField": {"x": [1]}, "arguments": ["-d", "first", "A.java"]}',
        '{\n  "arguments": [\n    "-d",\n    "first",\n    "A.java"\n  ]\n}',
        '{"request_id": 0, "arguments": ["-d", "first", "A.java"]}',
    ],
    ids=["space", "newline-tab", "unknown-field", "pretty-printed", "snake-case"],
)
def test_json_is_recognised_after_white_space_and_with_any_first_field(
    tmp_path: Path, first: str
) -> None:
    (tmp_path / "A.java").write_text("class A {}\n")
    then = json_requests({"arguments": ["-d", "then", "A.java"]})
    result = serve(first.encode() + then, tmp_path)
    responses = JsonFraming().feed(result.stdout)
    assert [(r.exit_code, r.output) for r in responses] == [(0, "")] * 2, result.stderr
    assert (tmp_path / "first" / "A.class").exists() and (tmp_path / "then" / "A.class").exists()


def test_json_requests_may_name_fields_as_the_proto_does(tmp_path: Path) -> None:
    """proto3 JSON readers take a field's proto name (request_id, sandbox_dir) as well as its
    JSON name, and so does the worker; fields it does not use (inputs) are ignored."""
    sandbox = tmp_path / "sandbox-9"
    sandbox.mkdir()
    (sandbox / "A.java").write_text("class A {}\n")
    request = {
        "request_id": 7,
        "sandbox_dir": str(sandbox),
        "arguments": ["-d", "out", "A.java"],
        "inputs": [{"path": "A.java", "digest": ""}],
        "verbosity": 0,
    }
    cancel = {"request_id": 8, "cancel": True}  # of a request never sent: ignored
    result = serve(json_requests(request, cancel), tmp_path)
    (response,) = JsonFraming().feed(result.stdout)
    assert (response.exit_code, response.request_id) == (0, 7), response.output
    assert (sandbox / "out" / "A.class").exists() and not (tmp_path / "out").exists()


def test_one_shot_argfile_keeps_spaces_inside_an_argument(tmp_path: Path) -> None:
    """Buck2 writes one argument per line; javac alone would split this path in two."""
    (tmp_path / "sp dir").mkdir()
    (tmp_path / "sp dir" / "S.java").write_text("class S {}\n")
    (tmp_path / "req.args").write_text("-d\nout\nsp dir/S.java\n")
    result = subprocess.run(
        [JAVAC_WORKER, "@req.args"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "S.class").exists()


def test_multiplex_answers_reach_their_own_requests(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    sources = write_sources(tmp_path, 2)
    for i in range(4):
        (tmp_path / f"Bad{i}.java").write_text(f'class Bad{i} {{ int x = "{i}"; }}\n')
    worker = start_runtime([JAVAC_WORKER], ["--multiplex"], cwd=tmp_path)

    async def scenario() -> list[pb.ExecuteResponse]:
        async with StreamingSession(worker.target, worker.proc) as session:
            commands = []
            for i in range(8):
                argv = (
                    ["-d", f"out{i}", *sources] if i % 2 else ["-d", f"bad{i}", f"Bad{i // 2}.java"]
                )
                commands.append(session.execute(make_command(argv)))
            return await asyncio.gather(*commands)

    for i, response in enumerate(asyncio.run(scenario())):
        if i % 2:
            assert (response.exit_code, response.stderr) == (0, ""), i
        else:
            assert response.exit_code == 1 and f"Bad{i // 2}.java:1: error" in response.stderr, i


def test_sandbox_dir_makes_every_path_relative_to_it(tmp_path: Path) -> None:
    """Multiplex sandboxing: sources, -d, -cp and @argfiles all resolve in sandbox_dir."""
    sandbox = tmp_path / "sandbox-7"
    (sandbox / "lib").mkdir(parents=True)
    (sandbox / "lib" / "Dep.java").write_text("package lib; public class Dep {}\n")
    subprocess.run(["javac", "-d", "deps", "lib/Dep.java"], cwd=sandbox, check=True)
    (sandbox / "User.java").write_text("class User { lib.Dep d; }\n")
    (sandbox / "more.args").write_text("-cp\ndeps\nUser.java\n")
    request = {
        "arguments": ["-d", "out", "-nowarn", "@more.args"],
        "requestId": 5,
        "sandboxDir": str(sandbox),
    }
    out = serve_once(json.dumps(request).encode(), tmp_path)
    (response,) = JsonFraming().feed(out)
    assert (response.exit_code, response.request_id) == (0, 5), response.output
    assert (sandbox / "out" / "User.class").exists()
    assert not (tmp_path / "out").exists()


#: Sandboxed requests (after ``-d out<i>``): a source after an option that takes no value of
#: its own, or a path in an option's value (``--opt=value`` forms too). Each with the class
#: it writes under out<i>, and a file it writes in the sandbox or a note it must print.
SANDBOXED: list[tuple[list[str], str, str]] = [
    (["-Xdiags:verbose", "src/A.java"], "A.class", ""),
    (["-XDcompilePolicy=simple", "src/A.java"], "A.class", ""),
    (["-Xdoclint", "src/A.java"], "A.class", ""),
    (["-Xpkginfo:always", "src/A.java"], "A.class", ""),
    (["-XprintRounds", "src/A.java"], "A.class", ""),
    (["-Xlint:all", "-Akey=value", "src/A.java"], "A.class", ""),
    (["--class-path=lib", "src/B.java"], "B.class", ""),
    (["--source-path", "src", "--class-path", "lib", "src/B.java"], "B.class", ""),
    (["-Xstdout", "javac.log", "src/A.java"], "A.class", "file:javac.log"),
    (["-source", "8", "-target", "8", "-bootclasspath", "boot", "src/A.java"], "A.class", ""),
    (["--boot-class-path=boot", "-source", "8", "-target", "8", "src/A.java"], "A.class", ""),
    (["--processor-module-path", "procs", "src/A.java"], "A.class", "note:processor p ran"),
    (["--processor-module-path=procs", "src/A.java"], "A.class", "note:processor p ran"),
    (["--patch-module", "java.base=patch", "patch/java/lang/P.java"], "java/lang/P.class", ""),
    (["--patch-module=java.base=patch", "patch/java/lang/P.java"], "java/lang/P.class", ""),
]


def test_sandbox_dir_holds_every_source_and_path_whatever_the_options(
    tmp_path: Path, processor_modules: Path
) -> None:
    """Options without a value (-X..., -XD...) never swallow the source after them, and the
    paths in -Xstdout, -bootclasspath, --processor-module-path, --patch-module and the
    ``--opt=value`` forms are the sandbox's; the working directory's decoy is never read."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "A.java").write_text("class A { int decoy = ; }\n")
    sandbox = tmp_path / "sandbox-3"
    (sandbox / "src").mkdir(parents=True)
    (sandbox / "src" / "A.java").write_text("class A {}\n")
    (sandbox / "src" / "B.java").write_text("class B { dep.Dep d; }\n")
    (sandbox / "dep").mkdir()
    (sandbox / "dep" / "Dep.java").write_text("package dep; public class Dep {}\n")
    subprocess.run(["javac", "-d", "lib", "dep/Dep.java"], cwd=sandbox, check=True, timeout=120)
    (sandbox / "patch" / "java" / "lang").mkdir(parents=True)
    (sandbox / "patch" / "java" / "lang" / "P.java").write_text(
        "package java.lang; public class P {}\n"
    )
    shutil.copytree(processor_modules, sandbox / "procs")
    # java.lang, for -source 8 against a boot class path of its own.
    modules = Path(os.path.realpath(shutil.which("java") or "java")).parents[1] / "lib" / "modules"
    subprocess.run(
        ["jimage", "extract", "--dir", str(sandbox / "jdk"),
         "--include", "regex:/java.base/java/lang/.*", str(modules)],
        check=True, timeout=120,
    )  # fmt: skip
    (sandbox / "jdk" / "java.base").rename(sandbox / "boot")
    requests = [
        {"arguments": ["-d", f"out{i}", *argv], "requestId": i + 1, "sandboxDir": str(sandbox)}
        for i, (argv, _, _) in enumerate(SANDBOXED)
    ]
    result = serve(json_requests(*requests), tmp_path)
    responses = {r.request_id: r for r in JsonFraming().feed(result.stdout)}
    assert sorted(responses) == [r["requestId"] for r in requests], result.stderr
    for i, (argv, compiled, also) in enumerate(SANDBOXED):
        response = responses[i + 1]
        assert response.exit_code == 0, (argv, response.output)
        assert (sandbox / f"out{i}" / compiled).exists(), argv
        if also.startswith("file:"):
            assert (sandbox / also[5:]).exists() and not (tmp_path / also[5:]).exists(), argv
        if also.startswith("note:"):
            assert also[5:] in response.output, (argv, response.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox-3", "src"]


def test_out_of_memory_ends_the_worker_with_a_message_and_a_clean_stdout(tmp_path: Path) -> None:
    methods = "\n".join(
        f"  static int m{i}(int x) {{ return x * {i} + m{max(i - 1, 0)}(x - 1); }}"
        for i in range(20000)
    )
    (tmp_path / "Huge.java").write_text(f"class Huge {{\n{methods}\n}}\n")
    result = subprocess.run(
        [JAVAC_WORKER, "--persistent_worker"],
        input=json.dumps({"arguments": ["-d", "out", "Huge.java"]}).encode(),
        cwd=tmp_path, capture_output=True, timeout=120,
        env={**os.environ, "JAVAC_WORKER_JVM_FLAGS": "-Xmx32m"},
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == b""  # nothing that could be taken for a response
    assert b"OutOfMemoryError" in result.stderr


def test_startup_arguments_come_before_every_requests_own(tmp_path: Path) -> None:
    """``javac-worker -Xlint:all -Werror --persistent_worker`` compiles as the one-shot
    ``javac-worker -Xlint:all -Werror ...`` does. Startup arguments are the worker's, relative
    to its working directory, never moved into a request's sandbox."""
    (tmp_path / "R.java").write_text("class R { java.util.List raw; }\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "Dep.java").write_text("package lib; public class Dep {}\n")
    subprocess.run(["javac", "-d", "deps", "lib/Dep.java"], cwd=tmp_path, check=True, timeout=120)
    sandbox = tmp_path / "sandbox-4"
    sandbox.mkdir()
    (sandbox / "User.java").write_text("class User { lib.Dep d; }\n")
    startup = ["-Xlint:all", "-Werror", "-cp", "deps"]
    one_shot = subprocess.run(
        [JAVAC_WORKER, *startup, "-d", "cold", "R.java"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one_shot.returncode == 1, one_shot.stderr
    requests = json_requests(
        {"arguments": ["-d", "warm", "R.java"], "requestId": 1},
        {"arguments": ["-d", "out", "User.java"], "requestId": 2, "sandboxDir": str(sandbox)},
    )
    result = serve(requests, tmp_path, *startup)
    raw, user = sorted(JsonFraming().feed(result.stdout), key=lambda r: r.request_id)
    assert raw.exit_code == 1, raw.output
    assert "[rawtypes]" in raw.output and "warnings found and -Werror specified" in raw.output
    assert not (tmp_path / "warm").exists()
    assert user.exit_code == 0, user.output
    assert (sandbox / "out" / "User.class").exists()


def test_jvm_logs_and_child_output_never_reach_the_protocols_stdout(
    tmp_path: Path, processor_modules: Path
) -> None:
    """-Xlog output and a child started with inheritIO write to fd 1, which is not the
    protocol's: the launcher gives the worker the protocol on fd 3, not inherited by children."""
    (tmp_path / "A.java").write_text("class A {}\n")
    spawn = "echo child-says-hello; if [ -e /dev/fd/3 ]; then echo child-has-fd-3; fi"
    argv = ["--processor-module-path", str(processor_modules), f"-Aspawn={spawn}"]
    request = {"arguments": [*argv, "-d", "out", "A.java"], "requestId": 3}
    env = {**os.environ, "JAVA_TOOL_OPTIONS": "-Xlog:gc"}
    result = serve(json_requests(request), tmp_path, env=env)
    assert result.stdout.startswith(b'{"exitCode":0,'), result.stdout[:200]
    (response,) = JsonFraming().feed(result.stdout)
    assert response.request_id == 3 and "processor p ran" in response.output
    assert b"[info][gc]" in result.stderr and b"child-says-hello" in result.stderr
    assert b"child-has-fd-3" not in result.stderr
    assert result.returncode == 0


class OpenWorker:
    """A persistent worker over its pipes, kept open between requests (its stdin never
    closed, as a client keeps it); killed at the end of the ``with``."""

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [JAVAC_WORKER, "--persistent_worker"], cwd=cwd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def __enter__(self) -> OpenWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            assert pipe is not None
            pipe.close()

    def ask(self, request: Mapping[str, object]) -> dict[str, Any]:
        """Sends one JSON request; its answer, which must come within 60 s."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json_requests(request) + b"\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], 60)
        assert ready, "no answer within 60 s"
        answer: dict[str, Any] = json.loads(stdout.readline())
        return answer


def test_a_child_or_processor_reading_stdin_finds_it_empty_not_the_requests(
    tmp_path: Path, processor_modules: Path
) -> None:
    """A child started with inheritIO read the worker's stdin, the requests' pipe: it
    waited there for ever (the client keeps the pipe open), or ate the next request.
    Cold javac's stdin is /dev/null; the worker's children and processors now see an
    empty one too."""
    (tmp_path / "A.java").write_text("class A {}\n")
    spawn = "cat >/dev/null; echo child-read-to-the-end >&2"
    argv = ["--processor-module-path", str(processor_modules), f"-Aspawn={spawn}"]
    with OpenWorker(tmp_path) as worker:  # no answer: the child reads the requests' pipe
        for out, extra in (("out", argv), ("out2", [])):
            assert worker.ask({"arguments": [*extra, "-d", out, "A.java"]})["exitCode"] == 0
        assert (tmp_path / "out2" / "A.class").exists()


def test_an_exception_on_a_processors_own_thread_ends_neither_compile_nor_worker(
    tmp_path: Path, processor_modules: Path
) -> None:
    """A cold javac prints it and compiles on; the worker exited (code 5) on any thread's
    uncaught exception, every request in flight unanswered."""
    (tmp_path / "A.java").write_text("class A {}\n")
    argv = ["--processor-module-path", str(processor_modules), "-AthrowInThread"]
    cold = subprocess.run(
        ["javac", *argv, "-d", "cold", "A.java"], cwd=tmp_path, capture_output=True, timeout=120
    )
    assert cold.returncode == 0 and b"from p's thread" in cold.stderr
    first = {"arguments": [*argv, "-d", "out", "A.java"], "requestId": 1}
    second = {"arguments": ["-d", "out2", "A.java"], "requestId": 2}
    result = serve(json_requests(first, second), tmp_path)
    responses = sorted(JsonFraming().feed(result.stdout), key=lambda r: r.request_id)
    assert [(r.request_id, r.exit_code) for r in responses] == [(1, 0), (2, 0)]
    # Printed where a cold javac's is: the request's output (the action's).
    assert result.returncode == 0 and "from p's thread" in responses[0].output
    assert "from p's thread" not in responses[1].output


def test_what_a_processor_prints_is_its_requests_output(
    tmp_path: Path, processor_modules: Path
) -> None:
    """What a processor wrote to System.out or System.err went to the worker's log, where
    a cold javac's goes to the action's output (which Buck2 shows): warm, the user never
    saw it. It is the request's output now, singleplex and multiplex."""
    (tmp_path / "A.java").write_text("class A {}\n")
    argv = ["--processor-module-path", str(processor_modules), "-Aprint"]
    cold = subprocess.run(
        ["javac", *argv, "-d", "cold", "A.java"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert "p's System.out" in cold.stdout and "p's System.err" in cold.stderr
    for request_id in (0, 7):
        printing = {"arguments": [*argv, "-d", f"o{request_id}", "A.java"]}
        result = serve(json_requests({**printing, "requestId": request_id}), tmp_path)
        (response,) = JsonFraming().feed(result.stdout)
        assert response.exit_code == 0
        assert "p's System.out" in response.output and "p's System.err" in response.output
        assert b"p's System" not in result.stderr
    # A processor that closes System.out (a try-with-resources around a PrintWriter on it)
    # closed the stream every later request's processors print to.
    closing = {"arguments": [*argv, "-AcloseOut", "-d", "c1", "A.java"], "requestId": 0}
    after = {"arguments": [*argv, "-d", "c2", "A.java"], "requestId": 0}
    result = serve(json_requests(closing, after), tmp_path)
    assert ["p's System.out" in r.output for r in JsonFraming().feed(result.stdout)] == [True] * 2


def test_what_a_processor_leaves_on_its_thread_is_not_the_next_singleplex_compiles(
    tmp_path: Path, processor_modules: Path
) -> None:
    """Singleplex compiles ran on the worker's main thread, one after another: a context
    class loader a processor set there (its own, closed once its compile ended) was the
    next compile's, as no cold javac's is. Each runs on a thread of its own now."""
    (tmp_path / "A.java").write_text("class A {}\n")
    argv = ["--processor-module-path", str(processor_modules), "-AcontextLoader"]
    requests = [{"arguments": [*argv, "-d", f"o{n}", "A.java"], "requestId": 0} for n in (1, 2)]
    result = serve(json_requests(*requests), tmp_path)
    outputs = [r.output for r in JsonFraming().feed(result.stdout)]
    assert len(outputs) == 2, result.stderr
    first = outputs[0].split("context loader: ")[1].split()[0]
    assert first.endswith("AppClassLoader")
    assert f"context loader: {first}" in outputs[1], outputs[1]


def test_a_java_without_a_compiler_is_a_clear_error_not_an_internal_one(tmp_path: Path) -> None:
    """A JRE's java (here a JDK's with the jdk.compiler module left out) answered every
    compile with an internal error, a NullPointerException, and one-shot died of it."""
    (tmp_path / "A.java").write_text("class A {}\n")
    env = {**os.environ, "JAVAC_WORKER_JVM_FLAGS": "--limit-modules java.base,java.compiler"}
    for mode in ([], ["--persistent_worker"]):
        result = subprocess.run(
            [JAVAC_WORKER, *mode, "-d", "out", "A.java"],
            input=json_requests({"arguments": ["-d", "out", "A.java"]}), cwd=tmp_path, env=env,
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 6 and result.stdout == b"", (mode, result)
        assert b"has no Java compiler (the jdk.compiler module)" in result.stderr
        assert b"Exception" not in result.stderr


def test_the_worker_exits_at_the_end_of_its_input_whatever_a_processor_left_running(
    tmp_path: Path, processor_modules: Path
) -> None:
    """A processor's non-daemon thread kept the JVM, and so the worker, alive for ever
    after its input ended; a cold javac exits."""
    (tmp_path / "A.java").write_text("class A {}\n")
    argv = ["--processor-module-path", str(processor_modules), "-Alinger"]
    request = {"arguments": [*argv, "-d", "out", "A.java"], "requestId": 0}
    result = serve(json_requests(request), tmp_path)  # times out (120 s) if it never exits
    assert result.returncode == 0
    (response,) = JsonFraming().feed(result.stdout)
    assert response.exit_code == 0


def test_a_processor_jar_rebuilt_at_the_same_path_is_read_afresh(
    tmp_path: Path, processor_modules: Path
) -> None:
    """A processor's resource (getResource().openStream()) was read through the JVM's
    cache of open jars, keyed by path: the second compile, after the jar was rebuilt at
    the same path, still read the first jar's."""
    (tmp_path / "A.java").write_text("class A {}\n")
    jar = tmp_path / "p.jar"
    notes = []
    with OpenWorker(tmp_path) as worker:
        for n, message in enumerate(["first", "second"]):
            processor_jar(processor_modules, jar, message)
            arguments = ["-processorpath", "p.jar", "-Aresource", "-d", f"o{n}", "A.java"]
            answer = worker.ask({"arguments": arguments})
            assert answer["exitCode"] == 0, answer
            notes.append(answer["output"])
    assert "resource: first" in notes[0]
    assert "resource: second" in notes[1], notes[1]


def answer_once_released(worker: subprocess.Popen[bytes], fifo: Path) -> object:
    """Gives ``fifo`` a reader, so that the javac held opening it as its -Xstdout goes on,
    and returns the worker's next JSON answer."""
    assert worker.stdout
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return json.loads(worker.stdout.readline())
    finally:
        os.close(reader)


def worker_holding_request_1(
    tmp_path: Path, *then: Mapping[str, object], jvm_flags: str = ""
) -> subprocess.Popen[bytes]:
    """A multiplex worker (stderr to worker.stderr) given request 1, which compiles A.java
    into first/ and is held until held.fifo has a reader, then the requests ``then``."""
    (tmp_path / "A.java").write_text("class A {}\n")
    os.mkfifo(tmp_path / "held.fifo")
    env = {**os.environ, "JAVAC_WORKER_JVM_FLAGS": jvm_flags} if jvm_flags else None
    with (tmp_path / "worker.stderr").open("wb") as stderr:
        worker = subprocess.Popen(
            [JAVAC_WORKER, "--persistent_worker"], env=env,
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert worker.stdin
    held = {"arguments": ["-Xstdout", "held.fifo", "-d", "first", "A.java"], "requestId": 1}
    worker.stdin.write(json_requests(held, *then))
    worker.stdin.flush()
    return worker


def test_a_second_request_under_an_id_in_flight_is_ignored_not_answered(tmp_path: Path) -> None:
    """Only the first request under id 1 is answered (an answer to the second would be taken
    for the first's); the worker goes on serving and says why on stderr."""
    # javac opens its -Xstdout file first: request 1 stays in flight until the FIFO has a
    # reader, so the duplicate certainly arrives while it is.
    worker = worker_holding_request_1(
        tmp_path,
        {"arguments": ["-d", "duplicate", "A.java"], "requestId": 1},
        {"arguments": ["-d", "second", "A.java"], "requestId": 2},
    )
    assert worker.stdin and worker.stdout
    try:
        assert json.loads(worker.stdout.readline()) == {"exitCode": 0, "output": "", "requestId": 2}
        assert answer_once_released(worker, tmp_path / "held.fifo") == {
            "exitCode": 0, "output": "", "requestId": 1,
        }  # fmt: skip
        worker.stdin.close()
        assert worker.stdout.read() == b""  # nothing for the duplicate
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
    assert (tmp_path / "first" / "A.class").exists() and (tmp_path / "second" / "A.class").exists()
    assert not (tmp_path / "duplicate").exists()
    stderr_text = (tmp_path / "worker.stderr").read_text()
    assert "request with id 1, which is already in flight" in stderr_text


def test_a_request_under_the_id_of_a_cancelled_one_runs_once_that_one_is_answered(
    tmp_path: Path,
) -> None:
    """Bazel reuses the id of a request it has cancelled before that one is answered
    (bazelbuild/bazel#26251): the new request was dropped as a duplicate, unanswered, and
    its action hung. It runs after the cancelled one's answer, in that order."""
    worker = worker_holding_request_1(
        tmp_path,
        {"requestId": 1, "cancel": True},
        {"arguments": ["-d", "again", "A.java"], "requestId": 1},
    )
    assert worker.stdin and worker.stdout
    try:
        assert answer_once_released(worker, tmp_path / "held.fifo") == {
            "exitCode": 0, "output": "", "requestId": 1, "wasCancelled": True,
        }  # fmt: skip
        assert json.loads(worker.stdout.readline()) == {"exitCode": 0, "output": "", "requestId": 1}
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
    assert (tmp_path / "again" / "A.class").exists()


JAVA_SOURCES = REPO_ROOT / "toolchains" / "java" / "src" / "buck2" / "workers" / "javac"
ARGFILES_DRIVER = REPO_ROOT / "tests" / "drivers" / "ArgfilesDriver.java"

#: Per case: (argv, error) of the one-shot fallback, and of the warm path (None when the
#: runtime's front already failed the request, so the worker never sees it).
Outcome = tuple[list[str] | None, str | None]


@pytest.fixture(scope="module")
def javac_vector_outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[Outcome, Outcome | None]]:
    """Every vector through the worker's own code, in one JVM (tests/drivers/ArgfilesDriver):
    one-shot as the fallback runs it, and as a WorkRequest after the runtime's front
    expanded it (the warm path)."""
    build = tmp_path_factory.mktemp("javac-driver")
    subprocess.run(
        ["javac", "-nowarn", "-d", str(build), *map(str, JAVA_SOURCES.glob("*.java")), str(ARGFILES_DRIVER)],
        check=True, timeout=120,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("vectors")
    jobs: list[dict[str, object]] = []
    #: Per case: the index of its one-shot job, and of its request job (if any).
    indices: list[tuple[int, int | None]] = []
    for case in CASES:
        where = case.materialize(root)
        one_shot = len(jobs)
        jobs.append({"mode": "one-shot", "dir": str(where), "args": case.command})
        try:
            front = expand_argfiles(case.command, str(where))  # what the runtime's front sends
        except RequestError:
            indices.append((one_shot, None))
            continue
        indices.append((one_shot, len(jobs)))
        jobs.append({"mode": "request", "args": front})
    done = subprocess.run(
        ["java", "-cp", str(build), "buck2.workers.javac.ArgfilesDriver"],
        input="".join(json.dumps(job) for job in jobs), capture_output=True, text=True,
        encoding="utf-8", check=True, timeout=120,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    results: list[Outcome] = []
    for line in done.stdout.split("\n")[:-1]:  # (str.splitlines would split on U+2028)
        result = json.loads(line)
        results.append((result.get("argv"), result.get("error")))
    assert len(results) == len(jobs), done.stderr
    return [(results[o], None if w is None else results[w]) for o, w in indices]


@parametrize_cases()
def test_argfile_vector_gives_the_same_argv_warm_and_one_shot(
    case: Case, javac_vector_outcomes: list[tuple[Outcome, Outcome | None]]
) -> None:
    one_shot, warm = javac_vector_outcomes[case.index]
    case.check(*one_shot, "javac-worker one-shot")
    if warm is None:  # the runtime's front failed it, as the one-shot did
        assert case.argv is None
    else:
        case.check(*warm, "javac-worker request")


def test_one_shot_and_request_with_a_bad_argfile_fail_before_javac(tmp_path: Path) -> None:
    result = subprocess.run(
        [JAVAC_WORKER, "@nope.args"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == ARGFILE_EXIT_CODE
    assert "argument file 'nope.args' does not exist" in result.stderr
    (tmp_path / "self.args").write_text("@self.args\n")
    out = serve_once(json.dumps({"arguments": ["-d", "out", "@self.args"]}).encode(), tmp_path)
    (response,) = JsonFraming().feed(out)
    assert response.exit_code == ARGFILE_EXIT_CODE
    assert "argument file 'self.args' includes itself" in response.output


def test_warm_and_fallback_compile_the_same_from_argfiles_javac_would_misread(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Nested argfiles, CRLF, a space and a quote in paths: the fallback (the worker's own
    one-shot mode, toolchains//:javac_worker) compiles what the warm worker compiles, where
    ``javac @argfile`` alone fails."""
    (tmp_path / "sp dir").mkdir()
    (tmp_path / "sp dir" / "S.java").write_text("class S {}\n")
    (tmp_path / "q'uote").mkdir()
    (tmp_path / "q'uote" / "T.java").write_text("class T { S s; }\n")
    (tmp_path / "srcs.args").write_bytes(b"sp dir/S.java\r\nq'uote/T.java\r\n")
    for name in ("warm", "cold", "javac"):
        (tmp_path / f"{name}.args").write_text(f"-d\n{name}\n@srcs.args\n")
    worker = start_runtime([JAVAC_WORKER], cwd=tmp_path)
    assert (worker.run("@warm.args").exit_code, worker.run("@warm.args").stderr) == (0, "")
    cold = subprocess.run(
        [JAVAC_WORKER, "@cold.args"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert cold.returncode == 0, cold.stderr
    assert classes(tmp_path / "warm") == classes(tmp_path / "cold") != {}
    javac = subprocess.run(["javac", "@javac.args"], cwd=tmp_path, capture_output=True, timeout=120)
    assert javac.returncode != 0  # javac's own reader splits on spaces and reads quotes


def test_the_fallback_is_the_workers_own_one_shot_mode() -> None:
    """So that workers on or off, an action's argfiles are read by the same rule."""
    targets: dict[str, dict[str, object]] = {}
    for node in ast.walk(ast.parse((REPO_ROOT / "toolchains" / "BUCK").read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            attrs = {k.arg: k.value for k in node.keywords if k.arg}
            if isinstance(attrs.get("name"), ast.Constant):
                values: dict[str, object] = {
                    k: v.value for k, v in attrs.items() if isinstance(v, ast.Constant)
                }
                targets[str(values["name"])] = values
    javac_worker = targets["javac_worker"]
    assert javac_worker["fallback"] == javac_worker["backend"] == ":javac_worker_bin"
    assert targets["javac_worker_bin"]["script"] == "java/javac-worker"


@pytest.mark.needs_root("to give the worker another uid")
def test_a_worker_running_as_another_user_than_its_pipes_answers() -> None:
    """On the executor a tenant's worker runs under a uid of its own, on pipes the
    executor (root) made: it may write to the protocol's fd it was given, but not open
    /dev/fd/3 again (the first fd-3 launcher did, and every remote javac failed)."""
    work = Path(tempfile.mkdtemp(prefix="javac-as-nobody-"))
    try:
        work.chmod(0o777)
        (work / "A.java").write_text("class A {}\n")
        built = subprocess.run(  # the worker's build cache filled, as root
            [JAVAC_WORKER, "-d", str(work / "warmup"), str(work / "A.java")],
            capture_output=True, timeout=300,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        result = subprocess.run(
            [*as_nobody, JAVAC_WORKER, "--persistent_worker"],
            input=json_requests({"arguments": ["-d", "out", "A.java"]}),
            cwd=work, capture_output=True, timeout=120,
        )  # fmt: skip
        responses = JsonFraming().feed(result.stdout)
        assert [(r.exit_code, r.output) for r in responses] == [(0, "")], result.stderr
        assert (work / "out" / "A.class").exists()
    finally:
        shutil.rmtree(work)


@pytest.mark.needs_root("to be another user than the build cache's owner")
def test_another_users_unfinished_build_is_named_not_a_permission_error() -> None:
    """The build lock was opened for writing: a second user starting while the first
    built failed with "Permission denied", and for good once that build was killed. The
    lock is taken read-only, and an unfinished build of another user's is named."""
    copy = Path(tempfile.mkdtemp(prefix="javac-cache-"))
    try:
        copy.chmod(0o755)
        shutil.copytree(REPO_ROOT / "toolchains" / "java", copy / "toolchains" / "java")
        launcher = str(copy / "toolchains" / "java" / "javac-worker")
        built = subprocess.run([launcher, "-version"], capture_output=True, timeout=300)
        assert built.returncode == 0, built.stderr  # root's build, and root's lock file
        (cache,) = (copy / ".cache" / "javac-worker").iterdir()
        shutil.rmtree(cache / "classes")  # as a build killed half way leaves it
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        unfinished = subprocess.run(
            [*as_nobody, launcher, "-version"], capture_output=True, text=True, timeout=60,
            cwd="/",
        )  # fmt: skip
        assert unfinished.returncode == 1
        assert "is another user's and unfinished" in unfinished.stderr, unfinished.stderr
        assert "Permission denied" not in unfinished.stderr
    finally:
        shutil.rmtree(copy)


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x32-d",  # field 1 claims 50 bytes; 2 follow
        b"\x0a\x02-d\x2d\x01",  # a fixed32 field cut short
    ],
)
def test_a_request_whose_field_runs_past_its_message_ends_the_worker(
    tmp_path: Path, body: bytes
) -> None:
    """A length-delimited field longer than the message was cut short silently: the
    request ran with a truncated argument."""
    result = serve(bytes([len(body)]) + body, tmp_path)
    assert result.returncode == 5, result.stderr
    assert b"past the end of its message" in result.stderr or b"cut short" in result.stderr
    assert result.stdout == b""


def test_launcher_options_and_a_bad_compile_bound_are_clear_errors(tmp_path: Path) -> None:
    """-J in javac_options failed with an internal error and a stack trace (in-process
    javac has no launcher); maxCompiles=0 let no multiplex request compile, ever."""
    (tmp_path / "A.java").write_text("class A {}\n")
    cold = subprocess.run(
        [JAVAC_WORKER, "-J-Xmx1g", "-d", "cold", "A.java"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cold.returncode == 2 and "-J-Xmx1g is an option of the javac launcher" in cold.stderr
    assert "Exception" not in cold.stderr
    env = {**os.environ, "JAVAC_WORKER_JVM_FLAGS": "-Dbuck2.workers.javac.maxCompiles=0"}
    result = serve(
        json_requests(
            {"arguments": ["-d", "warm", "A.java"], "requestId": 1},
            {"arguments": ["-J-Xss4m", "A.java"], "requestId": 2},
        ),
        tmp_path,
        env=env,
    )
    responses = sorted(JsonFraming().feed(result.stdout), key=lambda r: r.request_id)
    assert [r.exit_code for r in responses] == [0, 2], result.stderr
    assert "lets nothing compile" in result.stderr.decode()
    assert (tmp_path / "warm" / "A.class").exists()
    # An option's value that starts with -J is no launcher option.
    value = subprocess.run(
        [JAVAC_WORKER, "-d", "-Jout", "A.java"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert value.returncode == 0, value.stderr
    assert (tmp_path / "-Jout" / "A.class").exists()


def test_an_empty_class_path_someone_else_made_at_its_name_is_not_used(tmp_path: Path) -> None:
    """A compile naming no class path gets an empty directory the worker made in /tmp. If
    a cleaner removed it, another user could make one at its name: javac took it as the
    class, source and processor path, running what it held."""
    (tmp_path / "User.java").write_text("class User { lib.Dep d; }\n")
    temp = tmp_path / "worker-tmp"
    temp.mkdir()
    env = {**os.environ, "JAVAC_WORKER_JVM_FLAGS": f"-Djava.io.tmpdir={temp}"}
    worker = subprocess.Popen(
        [JAVAC_WORKER, "--persistent_worker"], cwd=tmp_path, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert worker.stdin and worker.stdout

    def compile_user(request_id: int) -> dict[str, object]:
        assert worker.stdin and worker.stdout
        worker.stdin.write(json_requests({"arguments": ["-d", "out", "User.java"],
                                          "requestId": request_id}))  # fmt: skip
        worker.stdin.flush()
        answer: dict[str, object] = json.loads(worker.stdout.readline())
        return answer

    try:
        assert compile_user(1)["exitCode"] == 1  # lib.Dep is nowhere
        (empty,) = temp.iterdir()
        empty.rmdir()  # a cleaner of /tmp...
        (empty / "lib").mkdir(parents=True)  # ...and someone else's directory at its name
        (empty / "lib" / "Dep.java").write_text("package lib; public class Dep {}\n")
        second = compile_user(2)
        assert second["exitCode"] == 1 and "package lib does not exist" in str(second["output"])
        assert not (tmp_path / "out" / "User.class").exists()
    finally:
        worker.kill()
        worker.wait()


def test_multiplex_compiles_wait_their_turn_and_a_waiting_one_cancels_at_once(
    tmp_path: Path,
) -> None:
    """At most maxCompiles requests compile at once (each holds a javac in memory; too many
    ended the worker, and every request in flight, out of memory); the others wait, and
    one cancelled while it waits is answered at once, having compiled nothing."""
    (tmp_path / "A.java").write_text("class A {}\n")
    for name in ("first.fifo", "second.fifo"):
        os.mkfifo(tmp_path / name)
    flags = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dbuck2.workers.javac.maxCompiles=1"
    worker = subprocess.Popen(
        [JAVAC_WORKER, "--persistent_worker"], cwd=tmp_path, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "JAVAC_WORKER_JVM_FLAGS": flags},
    )  # fmt: skip
    assert worker.stdin and worker.stdout
    try:
        # Each request's javac opens its -Xstdout FIFO first, and stays there until the
        # FIFO has a reader: request 1 holds the one slot; request 2, were it compiling,
        # would hold at its own FIFO and answer its cancel only once that had a reader.
        worker.stdin.write(
            json_requests(
                {"arguments": ["-Xstdout", "first.fifo", "-d", "one", "A.java"], "requestId": 1},
                {"arguments": ["-Xstdout", "second.fifo", "-d", "two", "A.java"], "requestId": 2},
                {"requestId": 2, "cancel": True},
            )
        )
        worker.stdin.flush()
        ready, _, _ = select.select([worker.stdout], [], [], 60)
        assert ready, "the waiting request's cancel was not answered"
        answer = json.loads(worker.stdout.readline())
        assert answer == {"exitCode": 0, "output": "", "requestId": 2, "wasCancelled": True}
        assert answer_once_released(worker, tmp_path / "first.fifo") == {
            "exitCode": 0, "output": "", "requestId": 1,
        }  # fmt: skip
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
    assert (tmp_path / "one" / "A.class").exists() and not (tmp_path / "two").exists()


def test_requests_waiting_for_a_compile_slot_compile_in_the_order_they_came(
    tmp_path: Path,
) -> None:
    """With one slot, the requests waiting for it compile in the order they were read.
    Each once polled the slot every 20 ms, and whichever asked first when it freed went
    first: a request could wait behind any number that came after it."""
    later = [{"arguments": ["-d", f"out{n}", "A.java"], "requestId": n} for n in range(2, 10)]
    flags = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dbuck2.workers.javac.maxCompiles=1"
    worker = worker_holding_request_1(tmp_path, jvm_flags=flags)
    assert worker.stdin and worker.stdout
    try:
        # Written a few ms apart (not a timing assertion): the old pollers' 20 ms cycles
        # then did not line up in arrival order, and whoever asked first went first.
        for request in later:
            time.sleep(0.007)
            worker.stdin.write(json_requests(request))
            worker.stdin.flush()
        first: Any = answer_once_released(worker, tmp_path / "held.fifo")
        rest = [json.loads(worker.stdout.readline())["requestId"] for _ in later]
        assert [first["requestId"], *rest] == list(range(1, 10))
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()


def test_the_workers_build_by_a_newer_jdk_loads_in_the_older_java(tmp_path: Path) -> None:
    """The launcher built the worker for the release of whatever javac came first on
    PATH: built while a newer JDK did, its classes failed to load in the older java
    (UnsupportedClassVersionError) until the build cache was removed by hand. It builds
    for Java 17 now. The machine image has a second JDK (Temurin) beside the default."""
    newer = sorted(Path("/usr/lib/jvm").glob("temurin-*"))
    assert newer, "the machine image's second JDK (Temurin) is missing from /usr/lib/jvm"
    copy = tmp_path / "toolchains" / "java"  # a build cache of its own, in tmp_path/.cache
    shutil.copytree(REPO_ROOT / "toolchains" / "java" / "src", copy / "src")
    shutil.copy2(JAVAC_WORKER, copy / "javac-worker")
    (tmp_path / "A.java").write_text("class A {}\n")
    default_path = os.environ["PATH"]
    for path in (f"{newer[-1] / 'bin'}:{default_path}", default_path):
        result = subprocess.run(
            [str(copy / "javac-worker"), "-d", "out", "A.java"],
            cwd=tmp_path, env={**os.environ, "PATH": path}, capture_output=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()


def test_a_request_stream_that_cannot_be_read_ends_the_worker_with_code_5(
    tmp_path: Path,
) -> None:
    """A malformed request ended the worker through the main thread's uncaught
    exception: exit code 1, and a processor's thread left running kept it alive."""
    result = serve(b'{"arguments": ["-d", ', tmp_path)  # cut short
    assert result.returncode == 5, result.stderr
    assert b"javac-worker: fatal error serving requests:" in result.stderr
