"""The README's main job and the benchmark run end to end (small sizes; no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO_ROOT, RUNTIME

#: Above the 120 s default: the demo and benchmarks run for minutes (their own subprocess
#: timeouts reach 900 s); the suite's time guard, not a measure.
pytestmark = pytest.mark.timeout(1200)


def test_demo_builds_cold_and_warm_with_identical_outputs(tmp_path: Path) -> None:
    result_file = tmp_path / "demo.json"
    result = subprocess.run(
        [*RUNTIME, "demo", "--actions", "6", "--json", str(result_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Outputs identical to the cold build: yes" in result.stdout
    assert "Warm workers saved" in result.stdout
    data = json.loads(result_file.read_text())
    assert data["identical"] is True
    assert data["cold"]["actions"] == data["warm"]["actions"] == 6
    assert "The warm javac worker compiled the example" in result.stdout
    assert set(data["java"]) == {"cold", "warm1", "warm2"}
    assert "The warm GHC worker compiled the example" in result.stdout
    assert set(data["haskell"]) == {"cold", "warm1", "warm2"}


def engine_processes() -> set[int]:
    """The live BuildGrid and PostgreSQL processes on the machine."""
    found = set()
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        text = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        if process.info["status"] != psutil.STATUS_ZOMBIE and ("bgd" in text or "postgres" in text):
            found.add(process.pid)
    return found


def test_demo_remote_builds_java_on_the_engine_and_leaves_nothing_running(tmp_path: Path) -> None:
    before = engine_processes()
    result_file = tmp_path / "demo.json"
    result = subprocess.run(
        [*RUNTIME, "demo", "--actions", "4", "--no-haskell", "--remote", "--json", str(result_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warm remote workers compiled the example" in result.stdout
    data = json.loads(result_file.read_text())
    assert set(data["remote_java"]) == {"oneshot", "warm"}
    assert data["remote_java"]["warm"]["actions"] == data["remote_java"]["oneshot"]["actions"] == 7
    assert engine_processes() <= before  # the engine it started is gone


def run_benchmark(module: str, *args: str, timeout: int = 600) -> dict[str, Any]:
    """Runs ``python -m benchmarks.<module> ARGS --output -`` and returns its JSON result."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args, "--output", "-"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_front_start_benchmark_writes_its_json() -> None:
    data = run_benchmark("front_start", "--rounds", "3")
    assert data["buck2_polls_ms"] == [0.0, 50.0, 150.0, 350.0, 750.0]
    busy = data["busy_machine"]
    assert busy["spinning_processes"] == os.cpu_count()
    for figures in (
        data["front"],
        data["floor_bare_interpreter"],
        busy["front"],
        busy["floor_bare_interpreter"],
    ):
        assert 0 < figures["listening_ms_median"] <= figures["ready_ms_median"]
        # Buck2's wait ends at a poll, or at the answer if that came after the poll.
        assert figures["buck2_waits_ms_median"] >= 50.0
        assert 0 <= figures["buck2_done_waiting_by_60_ms"] <= 1
    assert isinstance(data["met"], bool)
    assert set(data["exit_after_sigterm_ms_median"]) == {"request_in_flight", "floor_idle_front"}


@pytest.mark.parametrize("placement", [(), ("--one-cpu",)], ids=["every_cpu", "one_cpu"])
def test_runtime_overhead_benchmark_writes_its_json(placement: tuple[str, ...]) -> None:
    data = run_benchmark(
        "runtime_overhead",
        "--requests",
        "50",
        "--rounds",
        "1",
        "--throughput-requests",
        "200",
        *placement,
        timeout=120,
    )
    expected = data["cpus"][:1] if placement else sorted(os.sched_getaffinity(0))
    assert data["cpus"] == expected
    # What the kernel says about how idle CPUs wait, as it says it (None where it does not).
    idle = data["cpu_idle"]
    sysfs = {
        "cpuidle_driver": Path("/sys/devices/system/cpu/cpuidle/current_driver"),
        "cpuidle_governor": Path("/sys/devices/system/cpu/cpuidle/current_governor"),
        "guest_halt_poll_ns": Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    }
    assert set(idle) == set(sysfs)
    for name, path in sysfs.items():
        said = path.read_text().strip() if path.exists() else None
        assert idle[name] == (int(said) if name == "guest_halt_poll_ns" and said else said)
    # How much of the run's CPU time the host gave to other guests.
    assert 0 <= data["cpu_steal_percent"] <= 100
    servers = ("bare_server", "bare_server_with_backend", "runtime", "runtime_grpcio")
    assert data["server_cpus"] == dict.fromkeys((*servers, "runtime_as_prelude"), expected)
    assert data["direct_pipes_median_ms"] > 0
    for server in servers:
        for rpc in ("unary", "stream"):
            assert data[server][rpc]["median_ms"] > 0
            assert data[server][rpc]["server_cpu_us_per_request"] > 0
    for suffix in ("", "_grpcio"):
        assert set(data[f"own_share{suffix}_ms"]) == {"unary", "stream"}
        assert set(data["met"]) >= {
            f"own_share{suffix}_unary",
            f"own_share{suffix}_stream",
            f"throughput{suffix}",
        }
    assert set(data["throughput_64_in_flight_rps"]) == {"runtime", "runtime_grpcio", "bare_server"}
    # The default runtime's @argfile series (the request's arguments read from a file).
    argfile = data["runtime"]["stream_argfile"]
    assert argfile["median_ms"] > 0 and argfile["server_cpu_us_per_request"] > 0
    assert data["argfile_adds_ms"] == pytest.approx(
        argfile["median_ms"] - data["runtime"]["stream"]["median_ms"]
    )
    assert "stream_argfile" not in data["runtime_grpcio"]
    # The prelude's request (an @argfile and an envelope) to a runtime with tool inputs.
    prelude = data["runtime_as_prelude"]
    assert set(prelude) == {"stream_prelude", "stream_prelude_one_changed_input"}
    assert prelude["stream_prelude"]["median_ms"] > 0
    assert data["prelude_request_adds_ms"] == pytest.approx(
        prelude["stream_prelude"]["median_ms"] - argfile["median_ms"]
    )
    assert data["prelude_one_changed_input_adds_ms"] == pytest.approx(
        prelude["stream_prelude_one_changed_input"]["median_ms"] - argfile["median_ms"]
    )


def test_runtime_overhead_benchmark_takes_medians_over_whole_runs() -> None:
    data = run_benchmark(
        "runtime_overhead",
        "--requests",
        "20",
        "--rounds",
        "1",
        "--throughput-requests",
        "100",
        "--runs",
        "2",
        timeout=180,
    )
    runs, medians = data["runs"], data["across_runs"]
    assert len(runs) == 2 and medians["run_count"] == 2
    assert medians["cpu_steal_percent_by_run"] == [run["cpu_steal_percent"] for run in runs]
    for key in ("own_share_ms", "own_share_grpcio_ms"):
        for rpc in ("unary", "stream"):
            each = sorted(run[key][rpc] for run in runs)
            assert medians[key][rpc] == pytest.approx((each[0] + each[1]) / 2)
    for name in ("runtime", "runtime_grpcio"):
        each = sorted(run[f"throughput_bare_over_{name}"] for run in runs)
        assert medians[f"throughput_bare_over_{name}"] == pytest.approx((each[0] + each[1]) / 2)
    each = sorted(run["argfile_adds_ms"] for run in runs)
    assert medians["argfile_adds_ms"] == pytest.approx((each[0] + each[1]) / 2)
    for key in ("prelude_request_adds_ms", "prelude_one_changed_input_adds_ms"):
        each = sorted(run[key] for run in runs)
        assert medians[key] == pytest.approx((each[0] + each[1]) / 2)
    assert set(medians["met"]) == set(medians["runs_that_met"])
    assert all(0 <= count <= 2 for count in medians["runs_that_met"].values())


def test_a_short_soak_loses_nothing() -> None:
    """About 1,000 requests at 64 in flight through the daemon, over unary and streaming,
    pooled and multiplex backends, with backends SIGKILLed five times and the daemon once:
    every request is answered, correctly or with a clear error."""
    data = run_benchmark("soak", "--requests", "1000", timeout=300)
    assert (data["lost"], data["hung"], data["duplicated"], data["wrong"]) == (0, 0, 0, 0), data
    assert data["answered"] == 1000 and data["ok"] > 0, data
    assert [k["what"] for k in data["kills"]].count("daemon") == 1, data["kills"]
    assert data["met"] is True


def test_daemon_warmth_benchmark_writes_its_json() -> None:
    data = run_benchmark("daemon_warmth", "--rounds", "1", "--requests", "20", timeout=300)
    for backend in ("text_stats", "text_stats_compile_sized", "slow_start_0_5s"):
        assert data[backend]["second_command_first_request_ms"] > 0
    assert data["memory"]["idle_daemon_rss_mb"] > 0
    assert set(data["met"]) >= {"second_over_warm", "front_added", "idle_daemon_rss"}


def test_javac_worker_benchmark_writes_its_json() -> None:
    data = run_benchmark(
        "javac_worker", "--cold-runs", "1", "--warm-runs", "2", "--warmup", "1", timeout=300
    )
    for target in ("one_class", "ten_classes"):
        assert data[target]["cold_ms"] > 0 and data[target]["warm_ms"] > 0
    assert "met" in data


def test_java_example_benchmark_writes_its_json() -> None:
    data = run_benchmark("java_example", "--rounds", "1", "--warmup-commands", "1", timeout=600)
    assert data["cold"]["compile_actions_s"] > 0 and data["warm"]["compile_actions_s"] > 0
    assert "compile_ratio" in data and "met" in data


def test_ghc_worker_benchmark_writes_its_json() -> None:
    data = run_benchmark("ghc_worker", "--runs", "1", "--warmup", "1", timeout=600)
    assert len(data["modules"]) >= 15 and data["ratio"] > 0 and data["target_ratio"] == 5.0


def test_haskell_example_benchmark_writes_its_json() -> None:
    data = run_benchmark("haskell_example", "--rounds", "1", "--warmup-commands", "1", timeout=600)
    assert data["compile_ratio"] > 0 and data["target_ratio"] == 3.0


def test_remote_workers_benchmark_writes_its_json() -> None:
    data = run_benchmark("remote_workers", "--rounds", "1", "--runs", "2", timeout=900)
    assert data["java"]["ratio"] > 0 and data["affinity"]["requests"] > 0
    assert data["trivial"]["cache_hit_ms"] > 0 and set(data["met"]) == set(data["targets"])
    warm = data["warm"]
    assert warm["end_to_end_ms"] > 0 and warm["bare_execute_ms"] > 0 and warm["samples"] == 2
    stages = ["submit", "queue", "dispatch", "fetch", "run", "upload", "report", "notify"]
    assert list(warm["stages_ms"]) == stages
    assert warm["engine_ms"] > 0 and warm["executor_ms"] > 0 and warm["engine_share"] > 0
    if os.getuid() == 0:  # the same figures with the executor's sandbox and limits
        isolated = data["isolated"]
        assert "--sandbox" in isolated["options"] and list(isolated["warm_stages_ms"]) == stages
        assert isolated["oneshot_floor_ms"] > 0 and isolated["warm_end_to_end_ms"] > 0


@pytest.mark.needs_root("the sandbox and the uid switch")
def test_sandbox_cost_benchmark_writes_its_json() -> None:
    result = run_benchmark("sandbox_cost", "--rounds", "4", "--warm-requests", "5")
    for figure in ("oneshot_action", "worker_start", "warm_request"):
        assert set(result[figure]) == {"plain_ms", "sandboxed_ms", "added_ms"}
    # This machine kind has cgroups (v1): the control group's own cost is measured too.
    assert result["oneshot_group"]["mechanism"] in ("cgroup v1", "cgroup v2")
    assert "1024 processes" in result["oneshot_group"]["limits"]
    assert {"sandboxed_ms", "sandboxed_grouped_ms", "added_ms"} <= set(result["oneshot_group"])
