"""The GHC worker (toolchains/haskell/): one-shot like `ghc -c`, warm through the runtime,
and hermetic: no flags, search paths or stale interfaces carried from one request to the
next; @argfiles (the shared vectors) read alike warm, by the worker one-shot and by the
fallback ghc-argfile. GHC comes from Debian (scripts/bootstrap.sh installs it); without it
these fail."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.argfile_vectors import ARGFILE_EXIT_CODE, Case, json_outcome, parametrize_cases
from tests.conftest import REPO_ROOT, StartRuntime
from worker_runtime.envelope import Envelope, write_envelope
from worker_runtime.errors import RequestError
from worker_runtime.proto import bazel_worker_pb2 as bazel
from worker_runtime.protocol.argfiles import expand_argfiles
from worker_runtime.protocol.framing import ProtoFraming
from worker_runtime.protocol.messages import WorkResponse
from worker_runtime.protocol.wire import encode_varint

GHC_WORKER = str(REPO_ROOT / "toolchains" / "haskell" / "ghc-worker")
GHC_ARGFILE = str(REPO_ROOT / "toolchains" / "haskell" / "ghc-argfile")
GHC = shutil.which("ghc") or "/usr/bin/ghc"

TYPES_HS = """module Shop.Types (Item (..), total) where

data Item = Item {name :: String, price :: Int} deriving (Show, Eq)

total :: [Item] -> Int
total = sum . map price
"""

REPORT_HS = """module Shop.Report (report) where

import qualified Data.Map as Map
import Shop.Types

report :: [Item] -> String
report items =
  unlines [n ++ ": " ++ show p | (n, p) <- Map.toList (Map.fromListWith (+) [(name i, price i) | i <- items])]
    ++ "total " ++ show (total items)
"""


@pytest.fixture(autouse=True)
def _ghc_is_installed() -> None:
    assert Path(GHC).exists(), "ghc is missing: scripts/bootstrap.sh installs Debian's ghc"


class PipeWorker:
    """The worker in persistent mode, driven straight over its pipes as Bazel drives it."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [GHC_WORKER, "--persistent_worker"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.framing = ProtoFraming()

    def run(self, *args: str, inputs: tuple[str, ...] = (), verbose: bool = True) -> WorkResponse:
        request = bazel.WorkRequest(
            arguments=list(args),
            inputs=[bazel.Input(path=p, digest=sha256(self.cwd / p)) for p in inputs],
            verbosity=10 if verbose else 0,
        )
        return self.send(request)

    def send(self, request: bazel.WorkRequest) -> WorkResponse:
        body = request.SerializeToString()
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(encode_varint(len(body)) + body)
        self.proc.stdin.flush()
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the worker exited"
            responses = self.framing.feed(chunk)
            if responses:
                (response,) = responses
                return response

    def close(self) -> tuple[int, bytes]:
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


StartPipe = Callable[..., PipeWorker]


@pytest.fixture
def pipe_worker(tmp_path: Path) -> Iterator[StartPipe]:
    workers: list[PipeWorker] = []

    def start(cwd: Path = tmp_path, env: dict[str, str] | None = None) -> PipeWorker:
        workers.append(PipeWorker(cwd, env))
        return workers[-1]

    yield start
    for worker in workers:
        worker.proc.kill()
        worker.proc.wait()


def sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).hexdigest().encode()


def write(root: Path, relative: str, text: str) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return relative


def compile_args(module: str, out: str, *extra: str) -> list[str]:
    """A per-module compile as the Haskell rules issue it."""
    path = module.replace(".", "/")
    return ["-c", f"src/{path}.hs", "-o", f"{out}/{path}.o", "-ohi", f"{out}/{path}.hi", *extra]


def prepare_dirs(root: Path, *outs: str) -> None:
    for out in outs:
        (root / out / "Shop").mkdir(parents=True, exist_ok=True)


def cold_ghc(root: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GHC, *args], cwd=root, capture_output=True, text=True, timeout=120)


def object_contents(path: Path) -> str:
    """An object file's section contents: GHC 9.0 names local symbols after its internal
    uniques, which differ between a fresh and a warm session; the code and data do not."""
    dump = subprocess.run(["objdump", "-s", str(path)], capture_output=True, text=True, check=True)
    return dump.stdout.split("\n", 2)[2]


def global_symbols(path: Path) -> str:
    return subprocess.run(["nm", "-g", str(path)], capture_output=True, text=True).stdout


def test_one_shot_from_an_argfile_matches_cold_ghc(tmp_path: Path) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "cold", "worker")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "cold")).returncode == 0
    (tmp_path / "req.args").write_text("\n".join(compile_args("Shop.Types", "worker")) + "\n")
    result = subprocess.run(
        [GHC_WORKER, "@req.args"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for ext in ("hi", "o"):
        cold, warm = tmp_path / f"cold/Shop/Types.{ext}", tmp_path / f"worker/Shop/Types.{ext}"
        assert cold.read_bytes() == warm.read_bytes(), ext


def test_one_shot_type_error_is_reported_like_ghc(tmp_path: Path) -> None:
    write(tmp_path, "src/Shop/Bad.hs", 'module Shop.Bad where\n\nx :: Int\nx = "five"\n')
    prepare_dirs(tmp_path, "out")
    result = subprocess.run(
        [GHC_WORKER, *compile_args("Shop.Bad", "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    cold = cold_ghc(tmp_path, compile_args("Shop.Bad", "out"))
    assert (result.returncode, cold.returncode) == (1, 1)
    assert "src/Shop/Bad.hs:4:5: error:" in result.stderr
    assert result.stderr == cold.stderr  # GHC's own formatting, caret diagnostics included


def test_warm_compiles_match_cold_ghc_and_reuse_interfaces(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "cold", *(f"w{i}" for i in range(3)))
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "cold")).returncode == 0
    report_args = compile_args("Shop.Report", "cold", "-icold", "-package", "containers")
    assert cold_ghc(tmp_path, report_args).returncode == 0
    worker = pipe_worker()
    for i in range(3):
        out = f"w{i}"
        response = worker.run(
            *compile_args("Shop.Report", out, "-icold", "-package", "containers"),
            inputs=("src/Shop/Report.hs", "cold/Shop/Types.hi"),
        )
        assert response.exit_code == 0, response.output
        reused = "reused home interfaces: [Shop.Types]" in response.output
        assert reused == (i > 0), response.output  # validated by digest, then reused
        cold_hi = (tmp_path / "cold/Shop/Report.hi").read_bytes()
        assert (tmp_path / out / "Shop/Report.hi").read_bytes() == cold_hi
        cold_o, warm_o = tmp_path / "cold/Shop/Report.o", tmp_path / out / "Shop/Report.o"
        assert object_contents(warm_o) == object_contents(cold_o)
        assert global_symbols(warm_o) == global_symbols(cold_o)


def test_a_changed_dependency_is_never_seen_stale(pipe_worker: StartPipe, tmp_path: Path) -> None:
    """Types.hi changes between two compiles of Report: the second must see the new one."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "deps", "out")
    worker = pipe_worker()
    inputs = ("src/Shop/Report.hs", "deps/Shop/Types.hi")
    report_args = compile_args("Shop.Report", "out", "-ideps", "-package", "containers")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    assert worker.run(*report_args, inputs=inputs).exit_code == 0
    assert "reused home interfaces: [Shop.Types]" in worker.run(*report_args, inputs=inputs).output
    # The dependency changes on disk (rebuilt by another process): a field is renamed,
    # which breaks Report against the new interface and not against the kept one.
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS.replace("{name :: String", "{label :: String"))
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    broken = worker.run(*report_args, inputs=inputs)
    assert "dropped: [Shop.Types]" in broken.output
    cold = cold_ghc(tmp_path, report_args)
    assert (broken.exit_code, cold.returncode) == (1, 1)
    assert "Variable not in scope: name" in cold.stderr
    assert broken.output.startswith(cold.stderr)
    # Fixed again: the new interface is validated and reused from then on.
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS.replace("name i", "label i"))
    assert worker.run(*report_args, inputs=inputs).exit_code == 0
    again = worker.run(*report_args, inputs=inputs)
    assert again.exit_code == 0 and "reused home interfaces: [Shop.Types]" in again.output


def test_a_ghc_internal_error_drops_the_warm_state(pipe_worker: StartPipe, tmp_path: Path) -> None:
    """An error of GHC itself (a panic, a `sorry`, a tool it cannot run) was answered as a
    compile error and the interfaces loaded kept: one GHC left half-read (a panic inside
    a lazily loaded declaration stays in it) failed every later request that touched
    it. Here the tool: an assembler that cannot be run; the next request reuses nothing."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "deps", "out", "broken")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    worker = pipe_worker()
    inputs = ("src/Shop/Report.hs", "deps/Shop/Types.hi")
    flags = ("-ideps", "-package", "containers")
    report_args = compile_args("Shop.Report", "out", *flags)
    assert worker.run(*report_args, inputs=inputs).exit_code == 0
    assert "reused home interfaces: [Shop.Types]" in worker.run(*report_args, inputs=inputs).output
    broken_args = compile_args("Shop.Report", "broken", *flags, "-pgma", "/nonexistent/as")
    broken = worker.run(*broken_args, inputs=inputs)
    assert broken.exit_code == 1 and "could not execute: /nonexistent/as" in broken.output
    after = worker.run(*report_args, inputs=inputs)
    assert after.exit_code == 0, after.output
    assert "reused home interfaces: []" in after.output, after.output


def test_an_unchanged_interface_found_elsewhere_is_not_reused(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """Same module name, another file (another target's copy): never the kept one."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "a", "b", "out")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "a")).returncode == 0
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS.replace("{name :: String", "{label :: String"))
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "b")).returncode == 0
    worker = pipe_worker()
    args = compile_args("Shop.Report", "out", "-package", "containers")
    assert worker.run(*args, "-ia", inputs=("a/Shop/Types.hi",)).exit_code == 0
    other = worker.run(*args, "-ib", inputs=("b/Shop/Types.hi",))
    assert other.exit_code == 1 and "Variable not in scope: name" in other.output
    assert "dropped: [Shop.Types]" in other.output


def test_without_digests_no_home_interface_is_reused(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "deps", "out")
    worker = pipe_worker()
    assert worker.run(*compile_args("Shop.Types", "deps")).exit_code == 0
    for _ in range(2):
        response = worker.run(
            *compile_args("Shop.Report", "out", "-ideps", "-package", "containers")
        )
        assert response.exit_code == 0, response.output
        assert "reused home interfaces: []" in response.output


def test_flags_and_search_paths_do_not_leak_between_requests(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    write(
        tmp_path,
        "src/Shop/Case.hs",
        "{-# OPTIONS_GHC -Wall #-}\nmodule Shop.Case where\n\nf :: Int -> Int\nf = \\case 0 -> 1; n -> n\n",
    )
    prepare_dirs(tmp_path, "deps", "out")
    worker = pipe_worker()
    assert worker.run(*compile_args("Shop.Case", "out", "-XLambdaCase")).exit_code == 0
    no_extension = worker.run(*compile_args("Shop.Case", "out"), verbose=False)
    assert no_extension.exit_code == 1
    assert "Illegal lambda-case (use LambdaCase)" in no_extension.output
    assert worker.run(*compile_args("Shop.Types", "deps")).exit_code == 0
    inputs = ("deps/Shop/Types.hi",)
    found = worker.run(
        *compile_args("Shop.Report", "out", "-ideps", "-package", "containers"), inputs=inputs
    )
    assert found.exit_code == 0, found.output
    # Types is in the warm state now, but this request's search path does not reach it.
    lost = worker.run(*compile_args("Shop.Report", "out", "-package", "containers"), inputs=inputs)
    assert lost.exit_code == 1
    assert "Could not find module" in lost.output and "Shop.Types" in lost.output
    # -package containers does not stick to the session either.
    hidden_args = compile_args(
        "Shop.Report", "out", "-ideps", "-hide-all-packages", "-package", "base"
    )
    hidden = worker.run(*hidden_args, inputs=inputs, verbose=False)
    cold = cold_ghc(tmp_path, hidden_args)
    assert (hidden.exit_code, cold.returncode) == (1, 1)
    assert "member of the hidden package" in hidden.output and hidden.output == cold.stderr


def test_bad_requests_are_answered_and_the_worker_goes_on(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "out")
    worker = pipe_worker()
    unknown = worker.run(*compile_args("Shop.Types", "out", "-fno-such-flag"), verbose=False)
    assert unknown.exit_code == 1 and "unrecognised flag: -fno-such-flag" in unknown.output
    missing = worker.run(*compile_args("Shop.Missing", "out"), verbose=False)
    assert missing.exit_code == 1 and "src/Shop/Missing.hs" in missing.output
    mode = worker.run("--make", "src/Shop/Types.hs", verbose=False)
    assert mode.exit_code == 1 and "--make is not supported" in mode.output
    none = worker.run("-c", verbose=False)
    assert none.exit_code == 1 and "no input files" in none.output
    # No -c: ghc would link a program; the worker compiled the module alone and answered
    # 0, with no program made.
    link = worker.run("src/Shop/Types.hs", "-o", "out/prog", verbose=False)
    assert link.exit_code == 1 and "no -c" in link.output and not (tmp_path / "out/prog").exists()
    assert not (tmp_path / "src/Shop/Types.o").exists()
    # One -ohi for two sources: ghc refuses it (the GHC API alone wrote both modules'
    # interfaces to the same file and answered 0).
    write(tmp_path, "src/Shop/Other.hs", "module Shop.Other where\ny :: Int\ny = 2\n")
    two = ["-c", "src/Shop/Types.hs", "src/Shop/Other.hs", "-ohi", "out/x.hi"]
    refused = worker.run(*two, verbose=False)
    cold = cold_ghc(tmp_path, two)
    assert (refused.exit_code, cold.returncode) == (1, 1), refused.output
    assert refused.output.strip() == cold.stderr.strip()
    assert "-ohi can only be used when compiling a single source file" in refused.output
    assert not (tmp_path / "out" / "x.hi").exists()
    # An -o or -ohi in a directory that does not exist: ghc refuses it (the GHC API alone
    # made the directory and compiled).
    for flag, path in (("-o", "gone/Types.o"), ("-ohi", "gone/Types.hi")):
        args = ["-c", "src/Shop/Types.hs", "-odir", "out", "-hidir", "out", flag, path]
        refused = worker.run(*args, verbose=False)
        cold = cold_ghc(tmp_path, args)
        assert (refused.exit_code, cold.returncode) == (1, 1), refused.output
        assert refused.output.strip() == cold.stderr.strip()
        assert f'directory portion of "{path}" does not exist' in refused.output
        assert not (tmp_path / "gone").exists()
    # A request that fails before compiling reports no reuse of an earlier one's.
    assert "reused home interfaces" in worker.run(*compile_args("Shop.Types", "out")).output
    late = worker.run(*compile_args("Shop.Types", "out", "-fno-such-flag"))
    assert late.exit_code == 1 and "reused home interfaces" not in late.output
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0


def test_a_request_naming_a_hundred_thousand_inputs_is_answered(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """The worker once decoded a request's repeated fields with an append each, in time
    quadratic in their number: 100,000 inputs (a large repository's transitive
    interfaces) took minutes, past this test's guard."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "cold", "out")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "cold")).returncode == 0
    worker = pipe_worker()
    # The home interface it imports is looked up among the inputs' digests: all are read.
    inputs = [bazel.Input(path=f"lib/M{i}.hi", digest=b"%064d" % i) for i in range(100_000)]
    types_hi = tmp_path / "cold/Shop/Types.hi"
    inputs.append(bazel.Input(path="cold/Shop/Types.hi", digest=sha256(types_hi)))
    request = bazel.WorkRequest(
        arguments=compile_args("Shop.Report", "out", "-icold", "-package", "containers"),
        inputs=inputs,
    )
    for _ in range(2):
        response = worker.send(request)
        assert response.exit_code == 0, response.output


def test_diagnostics_are_utf_8_whatever_the_locale(pipe_worker: StartPipe, tmp_path: Path) -> None:
    """Under LANG=C a warning quoting a non-ASCII name once failed the compile (GHC's
    printer could not encode it) and threw the warm state away."""
    write(tmp_path, "src/Shop/Cafe.hs", "module Shop.Cafe where\nf :: Int -> Int\nf café = 1\n")
    prepare_dirs(tmp_path, "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    worker = pipe_worker(env=dict(env, LANG="C", LC_ALL="C"))
    response = worker.run(*compile_args("Shop.Cafe", "out", "-Wall"))
    assert response.exit_code == 0, response.output
    assert "Defined but not used: `café'" in response.output  # ghc's ASCII quotes under C
    assert (tmp_path / "out" / "Shop" / "Cafe.o").exists()


def test_capi_wrappers_are_numbered_afresh_for_each_request(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """GHC numbers the C wrappers of `foreign import capi` per module in a counter the
    session keeps: a second compile of the module in one worker named them `:1:`, not
    `:0:` as ghc does, in the object's global symbols and the interface."""
    write(
        tmp_path,
        "src/Shop/Sine.hs",
        "{-# LANGUAGE CApiFFI #-}\nmodule Shop.Sine (sine) where\n"
        'foreign import capi "math.h sin" sine :: Double -> Double\n',
    )
    prepare_dirs(tmp_path, "cold", "w0", "w1")
    assert cold_ghc(tmp_path, compile_args("Shop.Sine", "cold")).returncode == 0
    worker = pipe_worker()
    for out in ("w0", "w1"):
        response = worker.run(*compile_args("Shop.Sine", out))
        assert response.exit_code == 0, response.output
        assert (tmp_path / out / "Shop/Sine.hi").read_bytes() == (
            tmp_path / "cold/Shop/Sine.hi"
        ).read_bytes(), out
        assert global_symbols(tmp_path / out / "Shop/Sine.o") == global_symbols(
            tmp_path / "cold/Shop/Sine.o"
        ), out


def test_malformed_input_ends_the_worker_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [GHC_WORKER, "--persistent_worker"], input=b"\x05\x0a\xff", cwd=tmp_path,
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == b""
    assert b"truncated WorkRequest" in result.stderr


def test_sandbox_dir_is_where_a_request_runs(pipe_worker: StartPipe, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox-3"
    write(sandbox, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(sandbox, "out")
    worker = pipe_worker()
    request = bazel.WorkRequest(
        arguments=compile_args("Shop.Types", "out"), sandbox_dir=str(sandbox)
    )
    body = request.SerializeToString()
    assert worker.proc.stdin and worker.proc.stdout
    worker.proc.stdin.write(encode_varint(len(body)) + body)
    worker.proc.stdin.flush()
    (response,) = worker.framing.feed(os.read(worker.proc.stdout.fileno(), 65536))
    assert response.exit_code == 0, response.output
    assert (sandbox / "out/Shop/Types.o").exists() and not (tmp_path / "out").exists()


def test_warm_through_the_runtime_with_a_type_error(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Bad.hs", 'module Shop.Bad where\n\nx :: Int\nx = "five"\n')
    prepare_dirs(tmp_path, "out", "cold")
    prepare_dirs(tmp_path, "out0", "out1")
    worker = start_runtime([GHC_WORKER], cwd=tmp_path)
    for i in range(2):
        response = worker.run(*compile_args("Shop.Types", f"out{i}"))
        assert (response.exit_code, response.stderr) == (0, "")
    failed = worker.run(*compile_args("Shop.Bad", "out"))
    cold = cold_ghc(tmp_path, compile_args("Shop.Bad", "cold"))
    assert failed.exit_code == 1
    assert failed.stderr == cold.stderr
    assert "src/Shop/Bad.hs:4:5: error:" in failed.stderr and "Couldn't match" in failed.stderr
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0


def test_the_runtime_sends_input_digests_from_the_envelope(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Through Buck2's path: worker_run's envelope names the inputs, the runtime digests
    them into WorkRequest.inputs, and the worker validates its kept interfaces with them."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "deps", "out")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    envelope = Envelope(
        "report.args",
        ("src/Shop/Report.hs", "deps/Shop/Types.hi"),
        ("out/Shop/Report.o", "out/Shop/Report.hi"),
    )
    write_envelope(tmp_path / "report.envelope.json", envelope)
    worker = start_runtime([GHC_WORKER], ["--verbosity", "10"], cwd=tmp_path)
    env = {"WORKER_RUNTIME_ENVELOPE": "report.envelope.json"}
    args = compile_args("Shop.Report", "out", "-ideps", "-package", "containers")
    first = worker.run(*args, env=env)
    assert first.exit_code == 0, first.stderr
    second = worker.run(*args, env=env)
    assert "reused home interfaces: [Shop.Types]" in second.stderr
    without = worker.run(*args)
    assert "reused home interfaces: []" in without.stderr


def test_same_flags_reuse_the_session_flags_but_see_a_new_package_environment(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """Identical flags skip re-deriving the unit state, unless what it reads changed:
    a package environment file appearing in the working directory is seen at once."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "deps", "out")
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    worker = pipe_worker()
    args = compile_args("Shop.Report", "out", "-ideps")
    for _ in range(2):
        response = worker.run(*args, verbose=False)
        assert response.exit_code == 0, response.output
    version = subprocess.run([GHC, "--numeric-version"], capture_output=True, text=True).stdout
    environment = tmp_path / f".ghc.environment.x86_64-linux-{version.strip()}"
    base_id = subprocess.run(
        ["ghc-pkg", "field", "base", "id", "--simple-output"], capture_output=True, text=True
    ).stdout.strip()
    environment.write_text(f"clear-package-db\nglobal-package-db\npackage-id {base_id}\n")
    hidden = worker.run(*args, verbose=False)
    cold = cold_ghc(tmp_path, args)
    assert cold.returncode == 1 and "Data.Map" in cold.stderr
    assert "Loaded package environment from" in cold.stdout
    assert (hidden.exit_code, hidden.output) == (1, cold.stdout + cold.stderr)
    environment.unlink()
    assert worker.run(*args, verbose=False).exit_code == 0


def test_an_o0_request_does_not_change_the_next_optimised_one(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """-O0 reads interfaces without their unfoldings and rules: an -O compile after it
    must not see interfaces read that way."""
    write(
        tmp_path,
        "X.hs",
        "module X where\nimport qualified Data.Map as M\nx :: Int\nx = M.size (M.fromList [(1 :: Int, 'a')])\n",
    )
    write(
        tmp_path,
        "Y.hs",
        "module Y where\nimport qualified Data.Map as M\ny :: Int -> Int\ny n = M.size (M.insert n n (M.singleton (n + 1) n))\n",
    )
    worker = pipe_worker()
    assert worker.run("-c", "X.hs", "-o", "x.o", "-ohi", "x.hi", "-O0").exit_code == 0
    optimised = ["-c", "Y.hs", "-o", "wy.o", "-ohi", "wy.hi", "-O"]
    assert worker.run(*optimised).exit_code == 0
    assert cold_ghc(tmp_path, ["-c", "Y.hs", "-o", "cy.o", "-ohi", "cy.hi", "-O"]).returncode == 0
    assert (tmp_path / "wy.hi").read_bytes() == (tmp_path / "cy.hi").read_bytes()


def test_a_boot_interface_is_never_reused_as_the_module_s_own(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "B.hs-boot", "module B where\ndata T\n")
    write(tmp_path, "B.hs", "module B where\ndata T = T Int\ng :: Int\ng = 42\n")
    write(tmp_path, "A.hs", "module A where\nimport {-# SOURCE #-} B (T)\nh :: T -> T\nh x = x\n")
    write(tmp_path, "C.hs", "module C where\nimport B (g)\nc :: Int\nc = g + 1\n")
    (tmp_path / "out").mkdir()
    worker = pipe_worker()
    steps = [
        (["-c", "B.hs-boot", "-o", "out/B.o-boot", "-ohi", "out/B.hi-boot"], ()),
        (["-c", "B.hs", "-o", "out/B.o", "-ohi", "out/B.hi"], ()),
        (
            ["-c", "A.hs", "-iout", "-o", "out/A.o", "-ohi", "out/A.hi"],
            ("out/B.hi-boot", "out/B.hi"),
        ),
        (["-c", "C.hs", "-iout", "-o", "out/C.o", "-ohi", "out/C.hi"], ("out/B.hi",)),
    ]
    for args, inputs in steps:
        response = worker.run(*args, inputs=inputs)
        assert response.exit_code == 0, response.output


def package_id(name: str) -> str:
    return subprocess.run(
        ["ghc-pkg", "field", name, "id", "--simple-output"], capture_output=True, text=True
    ).stdout.strip()


def test_a_changed_package_environment_file_is_read_again(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "X.hs",
        "module X where\nimport qualified Data.Map as M\nx :: Int\nx = M.size M.empty\n",
    )
    environment = "clear-package-db\nglobal-package-db\npackage-id {}\n"
    (tmp_path / "env1").write_text(
        environment.format(package_id("base")) + f"package-id {package_id('containers')}\n"
    )
    args = ["-c", "X.hs", "-o", "x.o", "-ohi", "x.hi", "-package-env", "env1"]
    worker = pipe_worker()
    first = worker.run(*args, verbose=False)
    cold = cold_ghc(tmp_path, args)
    assert (first.exit_code, cold.returncode) == (0, 0)
    assert "Loaded package environment from env1" in cold.stdout
    assert first.output == "Loaded package environment from env1\n"  # as ghc prints it
    (tmp_path / "env1").write_text(environment.format(package_id("base")))  # containers gone
    (tmp_path / "x.hi").unlink()
    hidden = worker.run(*args, verbose=False)
    cold = cold_ghc(tmp_path, args)
    assert (hidden.exit_code, cold.returncode) == (1, 1)
    assert hidden.output == cold.stdout + cold.stderr


TH_LEADING = (
    "B.hs",
    "{-# LANGUAGE TemplateHaskell #-}\nmodule B where\nimport A\nb :: Integer\nb = $(f)\n",
)
TH_BEHIND_CPP = (
    "B.hs",
    "{-# LANGUAGE CPP #-}\n#if __GLASGOW_HASKELL__ >= 900\n{-# LANGUAGE TemplateHaskell #-}\n#endif\n"
    "module B where\nimport A\nb :: Integer\nb = $(f)\n",
)
TH_LITERATE = (
    "B.lhs",
    "> {-# LANGUAGE TemplateHaskell #-}\n> module B where\n> import A\n> b :: Integer\n> b = $(f)\n",
)


@pytest.mark.parametrize(
    "source", [TH_LEADING, TH_BEHIND_CPP, TH_LITERATE], ids=["leading", "cpp", "literate"]
)
def test_template_haskell_never_runs_code_of_an_earlier_request(
    pipe_worker: StartPipe, tmp_path: Path, source: tuple[str, str]
) -> None:
    """Two sandboxes with different A: B's splice runs the A of its own request. (Requests
    with Template Haskell are compiled by a cold ghc: Debian's ghc loads A's dynamic
    object, built here with -dynamic-too as Buck2 would have to.) Template Haskell was
    detected by the raw file's leading pragmas only: its pragma after an #if (CPP), or
    behind a literate source's bird tracks, ran the splice in the warm session, which
    loaded the first sandbox's A and ran it for the second. A source with CPP and a
    directive, or a literate one, is compiled the isolated way."""
    name, text = source
    worker = pipe_worker()
    for value in (1, 2):
        sandbox = tmp_path / f"s{value}"
        write(
            sandbox,
            "A.hs",
            "{-# LANGUAGE TemplateHaskell #-}\nmodule A where\nimport Language.Haskell.TH\n"
            f"f :: Q Exp\nf = litE (integerL {value})\n",
        )
        write(sandbox, name, text)
        (sandbox / "out").mkdir()
        for a_args in (
            ["-c", "A.hs", "-o", "out/A.o", "-ohi", "out/A.hi"],
            ["-c", "A.hs", "-dynamic", "-o", "out/A.dyn_o", "-ohi", "out/A.dyn_hi"],
        ):
            assert cold_ghc(sandbox, a_args).returncode == 0
        request = bazel.WorkRequest(
            arguments=["-c", name, "-O", "-iout", "-o", "out/B.o", "-ohi", "out/B.hi"],
            sandbox_dir=str(sandbox), verbosity=10,
            inputs=[bazel.Input(path="out/A.hi", digest=sha256(sandbox / "out/A.hi"))],
        )  # fmt: skip
        response = worker.send(request)
        assert response.exit_code == 0, response.output
        assert "started from a fresh state" in response.output
        shown = subprocess.run(
            [GHC, "--show-iface", str(sandbox / "out" / "B.hi")], capture_output=True, text=True
        ).stdout
        assert f"Unfolding: ({value})" in shown, shown[shown.find("b ::") :][:200]


def test_a_signal_during_a_compile_ends_the_worker_instead_of_failing_the_request(
    tmp_path: Path,
) -> None:
    """SIGTERM is the worker being stopped, not a compile error to report and go on."""
    body = "\n".join(f"f{i} :: Int -> Int\nf{i} x = x * {i} + {i}" for i in range(3000))
    write(tmp_path, "Big.hs", f"module Big where\n{body}\n")
    worker = PipeWorker(tmp_path)
    try:
        request = bazel.WorkRequest(
            arguments=["-c", "Big.hs", "-o", "big.o", "-ohi", "big.hi", "-O"]
        )
        payload = request.SerializeToString()
        assert worker.proc.stdin and worker.proc.stdout
        worker.proc.stdin.write(encode_varint(len(payload)) + payload)
        worker.proc.stdin.flush()
        time.sleep(1.0)
        worker.proc.terminate()
        out = worker.proc.stdout.read()
        assert worker.proc.wait(timeout=60) != 0
        assert out == b""  # no made-up "exit 1" answer
    finally:
        worker.proc.kill()
        worker.proc.wait()


@pytest.fixture(scope="module")
def argfiles_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/drivers/ArgfilesDriver.hs built against the worker's own Argfiles module: it
    expands its command line as the worker's one-shot mode does and prints it as JSON."""
    build = tmp_path_factory.mktemp("ghc-driver")
    source = REPO_ROOT / "tests" / "drivers" / "ArgfilesDriver.hs"
    subprocess.run(
        [GHC, "-O0", "-v0", "-outputdir", str(build), f"-i{REPO_ROOT / 'toolchains/haskell/src'}",
         "-o", str(build / "driver"), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    return build / "driver"


@pytest.fixture(scope="module")
def argv_printer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for ghc (ghc-argfile and the worker's cold compiles run $GHC_WORKER_GHC):
    prints the argv it got, NUL-terminated."""
    printer = tmp_path_factory.mktemp("printer") / "print-argv"
    printer.write_text("#!/usr/bin/env bash\n[ $# -eq 0 ] || printf '%s\\0' \"$@\"\n")
    printer.chmod(0o755)
    return printer


@parametrize_cases()
def test_argfile_vector_gives_the_same_argv_warm_one_shot_and_fallback(
    case: Case, argfiles_driver: Path, argv_printer: Path, tmp_path: Path
) -> None:
    """The warm path (the runtime's front expands, the worker takes the arguments as they
    come), the worker's one-shot mode and the fallback ghc-argfile: the same argv."""
    where = case.materialize(tmp_path)
    try:
        case.check(expand_argfiles(case.command, str(where)), None, "runtime front (warm)")
    except RequestError as exc:
        case.check(None, str(exc), "runtime front (warm)")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "GHC_WORKER_GHC": str(argv_printer)}
    one_shot = subprocess.run(
        [argfiles_driver, *case.command],
        cwd=where, capture_output=True, encoding="utf-8", env=env, timeout=60,
    )  # fmt: skip
    case.check(*json_outcome(one_shot.returncode, one_shot.stdout, one_shot.stderr), "ghc-worker")
    fallback = subprocess.run(
        [GHC_ARGFILE, *case.command],
        cwd=where, capture_output=True, encoding="utf-8", env=env, timeout=60,
    )  # fmt: skip
    if fallback.returncode == ARGFILE_EXIT_CODE:
        case.check(None, fallback.stderr, "ghc-argfile")
    else:
        assert fallback.returncode == 0, fallback.stderr
        argv = fallback.stdout.split("\0")[:-1] if fallback.stdout else []
        case.check(argv, None, "ghc-argfile")


def test_one_shot_with_a_bad_argfile_fails_before_ghc(tmp_path: Path) -> None:
    (tmp_path / "a.args").write_text("-c\n@b.args\n")
    (tmp_path / "b.args").write_text("@a.args\n")
    for tool in (GHC_WORKER, GHC_ARGFILE):
        result = subprocess.run(
            [tool, "@a.args"], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == ARGFILE_EXIT_CODE, (tool, result.stderr)
        assert "argument file 'a.args' includes itself" in result.stderr, tool


def test_warm_and_fallback_compile_the_same_from_nested_crlf_argfiles(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """The fallback toolchains//:ghc_worker runs (ghc-argfile) and the warm worker behind
    the runtime read the same argfiles alike: nested, CRLF, a space in a path."""
    write(tmp_path, "my src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "warm", "cold")
    (tmp_path / "flags.args").write_bytes(b"-c\r\nmy src/Shop/Types.hs\r\n")
    for name in ("warm", "cold"):
        outputs = f"-o\n{name}/Shop/Types.o\n-ohi\n{name}/Shop/Types.hi\n"
        (tmp_path / f"{name}.args").write_text(f"@flags.args\n{outputs}")
    worker = start_runtime([GHC_WORKER], cwd=tmp_path)
    response = worker.run("@warm.args")
    assert (response.exit_code, response.stderr) == (0, "")
    cold = subprocess.run(
        [GHC_ARGFILE, "@cold.args"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert cold.returncode == 0, cold.stderr
    hi = "Shop/Types.hi"
    assert (tmp_path / "warm" / hi).read_bytes() == (tmp_path / "cold" / hi).read_bytes()


def test_an_annotation_never_runs_code_of_an_earlier_request(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """An ANN pragma's expression is run by GHC's interpreter, which loads home modules'
    code: a request with one is compiled by a cold ghc, so a changed Dep is seen (the
    annotation's value is serialized in the interface: it matches a cold ghc's)."""
    worker = pipe_worker()
    write(tmp_path, "src/User.hs", "module User where\nimport Dep\n{-# ANN module tag #-}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "cold").mkdir()
    for version in ("ONE", "TWO"):
        write(
            tmp_path, "src/Dep.hs", f'module Dep (tag) where\ntag :: String\ntag = "v-{version}"\n'
        )
        built = cold_ghc(
            tmp_path,
            ["-c", "-dynamic-too", "-fforce-recomp", "src/Dep.hs", "-odir", "out", "-hidir", "out"],
        )
        assert built.returncode == 0, built.stderr
        response = worker.run(
            "-c", "src/User.hs", "-iout", "-o", f"out/{version}.o", "-ohi", f"out/{version}.hi",
            inputs=("out/Dep.hi",),
        )  # fmt: skip
        assert response.exit_code == 0, response.output
        assert "started from a fresh state" in response.output
        cold = cold_ghc(
            tmp_path,
            ["-c", "src/User.hs", "-iout", "-o", f"cold/{version}.o", "-ohi", f"cold/{version}.hi"],
        )
        assert cold.returncode == 0, cold.stderr
        warm_hi = (tmp_path / "out" / f"{version}.hi").read_bytes()
        assert warm_hi == (tmp_path / "cold" / f"{version}.hi").read_bytes()


def test_ghc_temporary_files_do_not_pile_up_and_dumps_start_afresh(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """Each request's temporary files (assembly, preprocessed source) are removed after
    it, in the worker's private directory (0700, made by the worker: a directory of its
    name made first by someone else, in a shared TMPDIR, is left alone); a
    -ddump-to-file dump is written, not appended to, by each request, as by a ghc
    process."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    write(work, "A.hs", "{-# LANGUAGE CPP #-}\nmodule A where\nf :: Int -> Int\nf x = x + 1\n")
    # The worker keeps the shell's pid (exec): its first choice of name is taken.
    decoy_first = 'mkdir -m 777 "$TMPDIR/ghc-worker-$$" && exec "$0" --persistent_worker'
    proc = subprocess.Popen(
        ["sh", "-c", decoy_first, GHC_WORKER], cwd=work, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    decoy = tmp / f"ghc-worker-{proc.pid}"
    worker = PipeWorker.__new__(PipeWorker)
    worker.cwd, worker.proc, worker.framing = work, proc, ProtoFraming()
    try:
        for i in range(3):
            response = worker.run(
                "-c", "A.hs", "-o", f"A{i}.o", "-ohi", f"A{i}.hi", "-ddump-simpl",
                "-ddump-to-file", "-dumpdir", "dumps/", verbose=False,
            )  # fmt: skip
            assert response.exit_code == 0, response.output
            (private,) = set(tmp.iterdir()) - {decoy}  # GHC's temporary files go there
            assert private.name == f"ghc-worker-{proc.pid}-1"
            assert stat.S_IMODE(private.stat().st_mode) == 0o700
            assert list(decoy.iterdir()) == []
            left = [p for p in private.rglob("*") if p.is_file() and p.name != "output"]
            assert left == [], left
        dumps = list((work / "dumps").rglob("*.dump-simpl"))
        assert len(dumps) == 1
        assert dumps[0].read_text().count("==================== Tidy Core") == 1
    finally:
        proc.kill()
        proc.wait()


def test_output_printed_before_a_failure_outside_ghc_is_kept(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """A compile that warns, then fails writing its interface (an I/O error, not a GHC
    error), answers with the warning as well as the failure."""
    write(tmp_path, "Wa.hs", "module Wa where\nf :: Int -> Int\nf x = 1\n")
    worker = pipe_worker()
    # /proc/self: a directory that exists, where no file can be made (one that does not
    # exist is refused before the compile, as ghc refuses it).
    response = worker.run(
        "-c", "-Wall", "Wa.hs", "-o", "Wa.o", "-ohi", "/proc/self/Wa.hi", verbose=False
    )
    assert response.exit_code == 1
    assert "Defined but not used: `x'" in response.output or "unused-matches" in response.output
    assert "ghc-worker: /proc/self/Wa.hi" in response.output, response.output
    assert worker.run("-c", "Wa.hs", "-o", "Wa.o", "-ohi", "Wa.hi").exit_code == 0


def test_a_tool_ghc_runs_holds_neither_protocol_pipe(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """The assembler (here a wrapper that lists its fds) gets no copy of the protocol's
    pipes: it can neither read requests nor write answers, nor keep them open."""
    fds = tmp_path / "fds.txt"
    wrapper = tmp_path / "as-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nfor fd in /proc/$$/fd/*; do echo "$fd $(readlink $fd)"; done > {fds}\n'
        'exec gcc "$@"\n'
    )
    wrapper.chmod(0o755)
    write(tmp_path, "A.hs", "module A where\nx :: Int\nx = 1\n")
    worker = pipe_worker()
    response = worker.run("-c", "A.hs", "-o", "A.o", "-ohi", "A.hi", "-pgma", str(wrapper))
    assert response.exit_code == 0, response.output
    assert worker.proc.stdin and worker.proc.stdout
    pipes = {
        os.readlink(f"/proc/{worker.proc.pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{worker.proc.pid}/fd")
        if os.readlink(f"/proc/{worker.proc.pid}/fd/{fd}").startswith("pipe:")
    }
    opened = dict(line.split(" ", 1) for line in fds.read_text().splitlines())
    request_pipe = os.readlink(f"/proc/self/fd/{worker.proc.stdin.fileno()}")
    answer_pipe = os.readlink(f"/proc/self/fd/{worker.proc.stdout.fileno()}")
    assert request_pipe in pipes and answer_pipe in pipes
    assert request_pipe not in opened.values() and answer_pipe not in opened.values()


def test_a_bad_argfile_in_a_request_exits_125_and_keeps_the_warm_state(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "out")
    worker = pipe_worker()
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0
    first = worker.run(*compile_args("Shop.Report", "out", "-iout"), inputs=("out/Shop/Types.hi",))
    assert first.exit_code == 0, first.output
    bad = worker.run("@missing.args", verbose=False)
    assert bad.exit_code == ARGFILE_EXIT_CODE
    assert "ghc-worker: argument file 'missing.args' does not exist" in bad.output
    again = worker.run(*compile_args("Shop.Report", "out", "-iout"), inputs=("out/Shop/Types.hi",))
    assert again.exit_code == 0, again.output
    assert "reused home interfaces: [Shop.Types]" in again.output, again.output


def test_json_sent_to_the_proto_worker_is_refused_at_once(tmp_path: Path) -> None:
    """A '{' is also the length prefix of a 123-byte message: JSON is told apart by what
    follows it, and refused without waiting for bytes that never come (stdin stays open)."""
    # So is JSON with a space after its '{', and a length prefix past any plausible
    # request (it was allocated, or waited on, whole).
    for data, said in (
        (b'{"arguments":["-c"]}\n', b"the request is JSON"),
        (b'{ "arguments": ["-c"] }', b"the request is JSON"),
        (encode_varint(1 << 40), b"is not plausible"),
    ):
        proc = subprocess.Popen(
            [GHC_WORKER, "--persistent_worker"], cwd=tmp_path, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdin and proc.stderr
            proc.stdin.write(data)
            proc.stdin.flush()
            assert proc.wait(timeout=120) != 0
            assert said in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    # A proto request of 123 bytes (its prefix a '{') is still read as one.
    request = bazel.WorkRequest(arguments=["-c", "x" * 117])
    assert len(request.SerializeToString()) == 123
    worker = PipeWorker(tmp_path)
    try:
        response = worker.send(request)
        assert response.exit_code == 1 and "x" * 117 in response.output
    finally:
        worker.proc.kill()
        worker.proc.wait()


def test_a_libdir_of_another_ghc_is_refused_clearly(tmp_path: Path) -> None:
    """A worker built without (or with a wrong) GHC_LIBDIR asks `ghc --print-libdir`; it
    once took /usr/lib/ghc whenever that existed, whichever GHC built it, and any answer
    of `ghc`. Each is now taken only if it holds the worker's own GHC version."""
    src = REPO_ROOT / "toolchains" / "haskell" / "src"
    worker = tmp_path / "ghc-worker"
    build = subprocess.run(
        [GHC, "-O0", "-threaded", "-package", "ghc", '-DGHC_LIBDIR="/nonexistent"',
         "-outputdir", str(tmp_path / "build"), f"-i{src}", "-o", str(worker), str(src / "Main.hs")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "out")
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "ghc").write_text("#!/bin/sh\necho /opt/another-ghc/lib\n")
    (other / "ghc").chmod(0o755)
    args = [str(worker), *compile_args("Shop.Types", "out")]
    env = dict(os.environ, PATH=f"{other}:{os.environ['PATH']}")
    refused = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert "/nonexistent is not one" in refused.stderr
    assert "says /opt/another-ghc/lib, another GHC's" in refused.stderr
    assert "GHC_WORKER_LIBDIR" in refused.stderr and not (tmp_path / "out/Shop/Types.o").exists()
    found = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr  # the real ghc's libdir is this GHC's


def test_a_removed_scratch_directory_is_made_again_not_the_workers_end(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """A cleaner of the temporary directory removes the worker's private scratch
    directory between two requests: the capture file could not be made, and the worker
    ended, warm state and all. It makes the directory again and compiles."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "out")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    worker = pipe_worker(env=dict(os.environ, TMPDIR=str(tmp)))
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0
    (scratch,) = tmp.iterdir()
    shutil.rmtree(scratch)
    again = worker.run(*compile_args("Shop.Types", "out"))
    assert again.exit_code == 0, again.output
    assert scratch.is_dir() and stat.S_IMODE(scratch.stat().st_mode) == 0o700


@pytest.mark.parametrize("removed", ["the scratch directory", "GHC's directory in it"])
def test_a_compile_after_the_temporary_directory_was_removed_writes_its_files_anew(
    pipe_worker: StartPipe, tmp_path: Path, removed: str
) -> None:
    """GHC remembers the directory it made for its temporary files (the assembly of
    each module) and used it again without looking: once a cleaner removed it, every
    compile that had to write one failed, for the worker's whole life. (The test above
    compiles what needs no recompilation, and writes none.)"""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    prepare_dirs(tmp_path, "out", "again", "third")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    worker = pipe_worker(env=dict(os.environ, TMPDIR=str(tmp)))
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0
    (scratch,) = tmp.iterdir()
    (ghc_dir,) = [d for d in scratch.iterdir() if d.is_dir() and d.name.startswith("ghc")]
    shutil.rmtree(scratch if removed == "the scratch directory" else ghc_dir)
    for outputs in ("again", "third"):  # to new outputs: a real compile each time
        answered = worker.run(*compile_args("Shop.Types", outputs))
        assert answered.exit_code == 0, answered.output
        assert (tmp_path / outputs / "Shop/Types.o").exists()


def test_output_that_is_not_utf8_reaches_the_response_as_replacement_characters(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """What a compile writes to its file descriptors is passed on as bytes: valid UTF-8
    as it is, anything else as U+FFFD (a response's output is a string), never a failed
    request. (A splice writes raw bytes to fd 2: GHC's own messages are always UTF-8.)"""
    raw = list("café ".encode() + b"\xff\xfe end\n")
    write(
        tmp_path,
        "A.hs",
        "{-# LANGUAGE TemplateHaskell #-}\nmodule A where\n"
        "import qualified Data.ByteString as Bytes\n"
        "import Language.Haskell.TH.Syntax (runIO)\nimport System.IO (stderr)\n"
        f"$(runIO (Bytes.hPut stderr (Bytes.pack {raw})) >> return [])\n"
        "x :: Int\nx = 1\n",
    )
    worker = pipe_worker()
    response = worker.run("-c", "A.hs", verbose=False)
    assert response.exit_code == 0, response.output
    assert response.output == "caf\u00e9 \ufffd\ufffd end\n"
    assert (tmp_path / "A.o").exists()
    # A cap that falls inside "é" (bytes 3 and 4) cuts before it, not through it.
    capped = pipe_worker(env={**os.environ, "GHC_WORKER_MAX_OUTPUT_BYTES": "4"})
    cut = capped.run("-c", "A.hs", verbose=False)
    assert cut.exit_code == 0
    assert cut.output == (
        "caf\n[ghc-worker: the output was cut here: 13 bytes in all, of which the first 3 "
        "are above]\n"
    )


def test_output_past_the_cap_is_cut_and_says_so(pipe_worker: StartPipe, tmp_path: Path) -> None:
    """A -ddump-* to stdout of a large module was read whole into the worker's memory
    and answered whole (past the runtime's max_response_mb: a protocol error, the warm
    worker discarded). Past GHC_WORKER_MAX_OUTPUT_BYTES (16 MiB by default) the output
    is cut, saying so, and the compile's exit code is kept."""
    write(tmp_path, "A.hs", "module A where\nf :: Int -> Int\nf x = x + 1\n")
    worker = pipe_worker(env={**os.environ, "GHC_WORKER_MAX_OUTPUT_BYTES": "200"})
    response = worker.run("-c", "A.hs", "-ddump-simpl", verbose=False)
    assert response.exit_code == 0
    shown, note = response.output.split("\n[ghc-worker: the output was cut here: ")
    # The first 200 bytes, or fewer if the 200th fell inside a character (GHC's quotes).
    assert 197 <= len(shown.encode()) <= 200
    assert note.endswith(f"of which the first {len(shown.encode())} are above]\n")
    assert (tmp_path / "A.o").exists()
    small = worker.run("-c", "A.hs", verbose=False)  # under the cap: whole, no note
    assert small.exit_code == 0 and "ghc-worker: the output was cut" not in small.output
    # A bound past 1 GiB (it wrapped around as an Int) is not taken: the default is.
    huge = pipe_worker(env={**os.environ, "GHC_WORKER_MAX_OUTPUT_BYTES": "9" * 20})
    whole = huge.run("-c", "A.hs", "-ddump-simpl", verbose=False)
    assert whole.exit_code == 0 and "Tidy Core" in whole.output
    assert "ghc-worker: the output was cut" not in whole.output


def test_an_interface_that_failed_to_load_is_never_kept(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """GHC puts an empty interface in the package state for a module whose interface it
    could not read (here a corrupt .hi), and the worker kept it like any other: a later
    request naming the same file with the same digest saw an empty module, and
    `import M ()` compiled where ghc fails. Each request reads the file again."""
    write(tmp_path, "out/M.hi", "not an interface\n")
    write(tmp_path, "U.hs", "module U where\nimport M ()\nu :: Int\nu = 1\n")
    for out in ("w0", "w1", "cold"):
        (tmp_path / out).mkdir()
    cold = cold_ghc(tmp_path, ["-c", "U.hs", "-iout", "-o", "cold/U.o", "-ohi", "cold/U.hi"])
    assert cold.returncode == 1 and "Bad interface file: out/M.hi" in cold.stderr
    worker = pipe_worker()
    for out in ("w0", "w1"):
        args = ["-c", "U.hs", "-iout", "-o", f"{out}/U.o", "-ohi", f"{out}/U.hi"]
        response = worker.run(*args, inputs=("out/M.hi",), verbose=False)
        assert (response.exit_code, response.output) == (1, cold.stderr), out
        assert not (tmp_path / out / "U.hi").exists()


def test_a_package_error_is_answered_as_ghc_does_and_keeps_the_warm_state(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """A -package of no package, a missing -package-env file or -package-db: GHC's error
    was answered as a fault of the worker ("ghc-worker: " before it) and the warm state
    thrown away. It is answered as `ghc -c` answers it, and the next request is warm."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    prepare_dirs(tmp_path, "out")
    worker = pipe_worker()
    assert worker.run(*compile_args("Shop.Types", "out")).exit_code == 0
    inputs = ("out/Shop/Types.hi",)
    good = compile_args("Shop.Report", "out", "-iout", "-package", "containers")
    assert worker.run(*good, inputs=inputs).exit_code == 0
    for flags in (["-package", "contaners"], ["-package-env", "nosuch"], ["-package-db", "nodb"]):
        args = compile_args("Shop.Report", "out", "-iout", *flags)
        bad = worker.run(*args, inputs=inputs, verbose=False)
        cold = cold_ghc(tmp_path, args)
        assert (bad.exit_code, cold.returncode) == (1, 1), bad.output
        assert bad.output == cold.stdout + cold.stderr
        assert "ghc-worker" not in bad.output
        again = worker.run(*good, inputs=inputs)
        assert again.exit_code == 0, again.output
        assert "reused home interfaces: [Shop.Types]" in again.output, again.output


def test_a_failed_dynamic_too_pass_does_not_change_later_requests(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """GHC records that -dynamic-too could not write both outputs in one pass (a
    dependency without its .dyn_hi) in a flag the session keeps: every later -dynamic-too
    compile ran a second, dynamic pass, which with -o panicked. Each request starts
    afresh, as a ghc process does."""
    write(tmp_path, "A.hs", "module A where\na :: Int\na = 1\n")
    write(tmp_path, "B.hs", "module B where\nimport A\nb :: Int\nb = a\n")
    write(tmp_path, "C.hs", "module C where\nc :: Int\nc = 1\n")
    assert cold_ghc(tmp_path, ["-c", "A.hs"]).returncode == 0  # no A.dyn_hi
    worker = pipe_worker()
    b_args = ["-c", "B.hs", "-dynamic-too"]
    failed = worker.run(*b_args, inputs=("A.hi",), verbose=False)
    assert (failed.exit_code, cold_ghc(tmp_path, b_args).returncode) == (1, 1)
    for out in ("w", "cold"):
        c_args = ["-c", "C.hs", "-dynamic-too", "-o", f"{out}.o", "-ohi", f"{out}.hi"]
        if out == "cold":
            assert cold_ghc(tmp_path, c_args).returncode == 0
        else:
            response = worker.run(*c_args, verbose=False)
            assert (response.exit_code, response.output) == (0, ""), response.output
    assert (tmp_path / "w.hi").read_bytes() == (tmp_path / "cold.hi").read_bytes()


def test_worker_and_fallback_run_the_ghc_that_ghc_worker_ghc_names(
    pipe_worker: StartPipe, argv_printer: Path, tmp_path: Path
) -> None:
    """The fallback (ghc-argfile) ran $GHC, a name set for many other things, while the
    worker's own cold compiles run $GHC_WORKER_GHC: both run $GHC_WORKER_GHC now."""
    write(tmp_path, "T.hs", "{-# LANGUAGE TemplateHaskell #-}\nmodule T where\n")
    args = ["-c", "T.hs", "-o", "T.o"]
    env = {**os.environ, "GHC": "/nonexistent/ghc", "GHC_WORKER_GHC": str(argv_printer)}
    worker = pipe_worker(env=env)
    cold = worker.run(*args, verbose=False)  # Template Haskell: a cold ghc compiles it
    assert cold.exit_code == 0, cold.output
    assert cold.output.split("\0")[:-1] == args
    fallback = subprocess.run(
        [GHC_ARGFILE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.split("\0")[:-1] == args


def test_an_orphan_family_instance_of_a_kept_interface_reaches_no_other_compile(
    pipe_worker: StartPipe, tmp_path: Path
) -> None:
    """GHC reduces a type family with every instance in the package state, imported or
    not (GHC #13102): O's orphan `Fam Int = Bool`, kept from a request that imported O,
    made a later compile that imports only F succeed where ghc fails. A module with an
    orphan family instance is never kept."""
    write(tmp_path, "F.hs", "{-# LANGUAGE TypeFamilies #-}\nmodule F where\ntype family Fam a\n")
    orphan = (
        "{-# LANGUAGE TypeFamilies #-}\nmodule O where\nimport F\ntype instance Fam Int = Bool\n"
    )
    write(tmp_path, "O.hs", orphan)
    write(tmp_path, "U1.hs", "module U1 where\nimport F ()\nimport O ()\n")
    write(tmp_path, "U2.hs", "module U2 where\nimport F\nx :: Fam Int\nx = True\n")
    (tmp_path / "out").mkdir()
    for name in ("F", "O"):
        built = cold_ghc(tmp_path, ["-c", f"{name}.hs", "-iout", "-odir", "out", "-hidir", "out"])
        assert built.returncode == 0, built.stderr
    worker = pipe_worker()
    inputs = ("out/F.hi", "out/O.hi")
    first = worker.run("-c", "U1.hs", "-iout", "-o", "U1.o", "-ohi", "U1.hi", inputs=inputs)
    assert first.exit_code == 0, first.output
    args = ["-c", "U2.hs", "-iout", "-o", "U2.o", "-ohi", "U2.hi"]
    cold = cold_ghc(tmp_path, args)
    assert cold.returncode == 1 and "Couldn't match expected type" in cold.stderr
    second = worker.run(*args, inputs=inputs)
    assert second.exit_code == 1 and second.output.startswith(cold.stderr), second.output
    assert "reused home interfaces: [F]" in second.output  # F is still kept, O is not


@pytest.mark.parametrize("via", ["flag", "environment file"])
def test_an_extra_package_database_is_read_once_and_again_when_it_changes(
    pipe_worker: StartPipe, tmp_path: Path, via: str
) -> None:
    """A package database the worker did not start with (the toolchain's package_dbs,
    which the rules add to every compile; a package-db line of an environment file) was
    compared with the worker's own databases on every request: each such request started
    from a fresh state and kept nothing, so every compile was cold. The last request's
    databases are kept: the same ones again are warm, changed on disk they are read again."""
    write(tmp_path, "src/Shop/Types.hs", TYPES_HS)
    write(tmp_path, "src/Shop/Report.hs", REPORT_HS)
    outs = [f"out{i}" for i in range(6)]  # each compile writes anew (none is skipped)
    prepare_dirs(tmp_path, "deps", *outs)
    assert cold_ghc(tmp_path, compile_args("Shop.Types", "deps")).returncode == 0
    database = tmp_path / "extra.db"
    subprocess.run(["ghc-pkg", "init", str(database)], check=True)
    if via == "flag":
        extra = ["-package-db", "extra.db", "-package", "containers"]
    else:
        (tmp_path / "env").write_text(
            f"package-db {database}\npackage-id {package_id('base')}\n"
            f"package-id {package_id('containers')}\n"
        )
        extra = ["-package-env", "env"]
    inputs = ("src/Shop/Report.hs", "deps/Shop/Types.hi")
    worker = pipe_worker()

    def compiled(*flags: str) -> str:
        args = compile_args("Shop.Report", outs.pop(0), "-ideps", *flags)
        response = worker.run(*args, inputs=inputs)
        assert response.exit_code == 0, response.output
        assert "compilation IS NOT required" not in response.output
        return response.output

    assert "started from a fresh state" in compiled(*extra)  # not the worker's databases
    warm = compiled(*extra)
    assert "reused home interfaces: [Shop.Types]" in warm, warm
    assert "started from a fresh state" not in warm, warm
    # The database changes on disk (a package registered in it): read again, from a
    # fresh state; the request after that is warm again.
    conf = tmp_path / "fake.conf"
    conf.write_text("name: fake-pkg\nversion: 1.0\nid: fake-pkg-1.0\nkey: fake-pkg-1.0\n")
    subprocess.run(
        ["ghc-pkg", "--package-db", str(database), "register", "--force", str(conf)],
        check=True,
        capture_output=True,
    )
    changed = compiled(*extra)
    assert "started from a fresh state" in changed and "reused home interfaces: []" in changed
    assert "reused home interfaces: [Shop.Types]" in compiled(*extra)
    # Back to the worker's own databases: they differ from the last request's.
    assert "started from a fresh state" in compiled("-package", "containers")
    assert "reused home interfaces: [Shop.Types]" in compiled("-package", "containers")
