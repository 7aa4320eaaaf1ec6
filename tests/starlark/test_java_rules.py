"""The Java rules: what they register, and the example built end to end as Buck2 would,
warm through the javac worker and cold with javac, with the same classes and output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import starlark as sl

from workers_dev.buck2_fake import REPO_ROOT, AnalysedDep, Analysis, Buck2Fake
from workers_dev.build_runner import (
    PRELUDE_JAVA,
    BuildResult,
    build_java_package,
    java_toolchain_dep,
    javac_worker,
    javac_worker_config,
    make_project,
    run_action,
)

EXPECTED_OUTPUT = """Sales
O-2                         107.30
TOTAL                       107.30
declined: payment of 1.00 does not cover 59.98
"""


GEN = "buck-out/v2/gen/root/lib"


def jar(name: str) -> str:
    return f"{GEN}/__{name}__/{name}.jar"


def analyse_java(
    fake: Buck2Fake, name: str, attrs: dict[str, str], rule: str = "java_library"
) -> Analysis:
    """Analyses //lib:<name>; its deps are targets of //lib that ``fake`` analysed before."""
    targets: dict[str, str | AnalysedDep] = {
        "toolchains//:java": java_toolchain_dep(["worker-runtime"])
    }
    for key in ("deps", "exported_deps"):
        for dep in json.loads(attrs.get(key, "[]")):
            targets[dep] = fake.dep("//lib:" + dep.lstrip(":"))
    return fake.analyse(
        f"@prelude//java:{rule}.bzl", rule, f"//lib:{name}", attrs, targets, PRELUDE_JAVA
    )


def analyse_library(attrs: dict[str, str]) -> Analysis:
    return analyse_java(Buck2Fake(), "b", attrs)


def javac_args(analysis: Analysis) -> list[str]:
    """The javac arguments of a target: its @argfile's lines."""
    (argfile,) = [a for a in analysis.actions if a["kind"] == "write"]
    lines: list[str] = argfile["content"].split("\n")
    return lines


def test_java_library_compiles_on_the_worker_against_its_deps() -> None:
    fake = Buck2Fake()
    analyse_java(fake, "x", {"srcs": '["X.java"]'})
    analyse_java(fake, "a", {"srcs": '["A.java"]', "exported_deps": '[":x"]'})
    analysis = analyse_java(
        fake,
        "b",
        {"srcs": '["B.java", "C.java"]', "deps": '[":a"]', "resources": '["b.properties"]'},
    )
    argfile = analysis.action("write")
    classes = f"{GEN}/__b__/classes"
    assert argfile["content"].split("\n") == [
        "-d", classes, "-cp", f"{jar('a')}:{jar('x')}", "--release", "17",
        "lib/B.java", "lib/C.java",
    ]  # fmt: skip
    runs = [a for a in analysis.actions if a["kind"] == "run"]
    javac, jar_run = runs
    assert javac["category"] == "javac" and javac["fallback"] == ["toolchains/java/javac-worker"]
    assert javac["arguments"] == ["@" + argfile["output"]] and javac["outputs"] == [classes]
    envelope = json.loads(analysis.action("write_json")["content"])
    assert envelope["inputs"] == ["lib/B.java", "lib/C.java", jar("a"), jar("x")]
    assert jar_run["arguments"][:6] == [
        "jar", "--create", "--date", "1980-01-01T00:00:02Z", "--file", jar("b"),
    ]  # fmt: skip
    assert jar_run["arguments"][6:] == [
        "-C",
        classes,
        ".",
        "-C",
        f"{GEN}/__b__/resources",
        ".",
    ]
    info = analysis.provider("JavaLibraryInfo")
    b_jar = {"artifact": jar("b")}
    assert info["output_jar"] == b_jar
    assert info["compile_classpath"] == {"tset": [b_jar]}  # deps are not exported
    assert info["runtime_classpath"] == {
        "tset": [b_jar, {"artifact": jar("a")}, {"artifact": jar("x")}]
    }


def test_resources_root_is_taken_off_the_resources_paths_in_the_jar() -> None:
    """With the usual layout (`src/main/resources/com/x/app.properties`) a resource went
    into the jar under `src/main/resources/...`, where `getResource("/com/x/...")` does
    not look; `resources_root` (Buck2's prelude's name) takes it off."""
    attrs = {"srcs": '["A.java"]', "resources": '["src/main/resources/com/x/app.properties"]'}
    plain = analyse_java(Buck2Fake(), "a", attrs)
    (linked,) = [a for a in plain.actions if a["kind"] == "symlinked_dir"]
    assert list(linked["srcs"]) == ["src/main/resources/com/x/app.properties"]
    for root in ('"src/main/resources"', '"./src/main//resources/"', '"x/../src/main/resources"'):
        rooted = analyse_java(Buck2Fake(), "a", {**attrs, "resources_root": root})
        (linked,) = [a for a in rooted.actions if a["kind"] == "symlinked_dir"]
        assert linked["srcs"] == {
            "com/x/app.properties": "lib/src/main/resources/com/x/app.properties"
        }
    as_is = analyse_java(Buck2Fake(), "a", {**attrs, "resources_root": '"."'})
    (linked,) = [a for a in as_is.actions if a["kind"] == "symlinked_dir"]
    assert list(linked["srcs"]) == ["src/main/resources/com/x/app.properties"]
    with pytest.raises(
        sl.StarlarkError,
        match=r'resource src/main/resources/com/x/app.properties is not under resources_root "res"',
    ):
        analyse_java(Buck2Fake(), "a", {**attrs, "resources_root": '"res"'})
    with pytest.raises(sl.StarlarkError, match=r'resources_root "\.\./res" leaves the package'):
        analyse_java(Buck2Fake(), "a", {**attrs, "resources_root": '"../res"'})


def test_a_diamond_puts_each_jar_on_the_classpath_once_in_order() -> None:
    """app needs left and right, both export base: base once, where first met, and the
    binary's runtime classpath is the library's own jar, then its deps left to right."""
    fake = Buck2Fake()
    analyse_java(fake, "base", {"srcs": '["Base.java"]'})
    analyse_java(fake, "left", {"srcs": '["Left.java"]', "exported_deps": '[":base"]'})
    analyse_java(fake, "right", {"srcs": '["Right.java"]', "exported_deps": '[":base"]'})
    app = analyse_java(fake, "app", {"srcs": '["App.java"]', "deps": '[":left", ":right"]'})
    cp = javac_args(app)[javac_args(app).index("-cp") + 1]
    assert cp.split(":") == [jar("left"), jar("base"), jar("right")]
    binary = analyse_java(
        fake, "main", {"srcs": '["Main.java"]', "deps": '[":app", ":right"]',
                       "main_class": '"Main"'}, rule="java_binary",
    )  # fmt: skip
    (launcher,) = [a for a in binary.actions if a.get("output", "").endswith("/main.sh")]
    classpath = launcher["content"].split(" -cp ")[1].split(" ")[0].split(":")
    assert classpath == [jar("main"), jar("app"), jar("left"), jar("base"), jar("right")]
    run_info = binary.provider("RunInfo")["args"]
    assert run_info["hidden"][0]["cmd_args"] == classpath


def test_java_library_without_srcs_is_an_analysis_error() -> None:
    with pytest.raises(sl.StarlarkError, match="a Java target needs srcs"):
        analyse_library({})


def test_example_is_a_realistic_small_codebase() -> None:
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "examples" / "java" / "BUCK", "root")
    libraries = [n for n, a in fake.target_attrs.items() if "main_class" not in a]
    classes = sum(len(a["srcs"]) for a in fake.target_attrs.values())
    assert len(libraries) >= 6 and classes >= 40
    assert fake.target_attrs["bookshop"]["main_class"] == "com.example.bookshop.app.Main"


def class_files(project: Path) -> dict[str, bytes]:
    out = project / "buck-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.class"))}


def run_binary(project: Path) -> str:
    launcher = project / "buck-out/v2/gen/root/examples/java/__bookshop__/bookshop.sh"
    return subprocess.run(
        ["sh", str(launcher)], cwd=project, capture_output=True, text=True, check=True
    ).stdout


def test_example_builds_warm_and_cold_with_the_same_classes(tmp_path: Path) -> None:
    (tmp_path / "cold_root").mkdir()
    cold = make_project(tmp_path / "cold_root")
    build_java_package(cold, "examples/java", worker=None)
    assert run_binary(cold) == EXPECTED_OUTPUT
    (tmp_path / "warm_root").mkdir()
    warm = make_project(tmp_path / "warm_root")
    config = javac_worker_config()
    assert config["multiplex"] is True and config["command"] == ["toolchains/java/javac-worker"]
    with javac_worker(warm, config, ["--no-daemon"]) as worker:
        build_java_package(warm, "examples/java", worker=worker)
    assert run_binary(warm) == EXPECTED_OUTPUT
    assert class_files(warm) == class_files(cold)
    assert len(class_files(warm)) >= 40
    assert json.loads((warm / "buck-out/javac_worker.json").read_text())["routing"] == "local"


def test_buck2_builds_the_javac_worker_with_plain_javac(tmp_path: Path) -> None:
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "toolchains" / "BUCK", "toolchains")
    srcs = fake.target_attrs["javac_worker_built"]["srcs"]
    assert any(s.endswith("JavacWorker.java") for s in srcs)
    analysis = Buck2Fake().analyse(
        "@toolchains//java:defs.bzl", "javac_worker_binary", "//toolchains:javac_worker_built",
        {"srcs": json.dumps(srcs), "java": '":java"', "javac": '":javac"'},
        {":java": 'fake_dep(RunInfo(args = cmd_args("java")))', ":javac": 'fake_dep(RunInfo(args = cmd_args("javac")))'},
    )  # fmt: skip
    project = make_project(tmp_path)
    result = BuildResult()
    for action in analysis.actions:
        run_action(project, action, None, result)
    launcher = project / analysis.provider("DefaultInfo")["default_outputs"][0]["artifact"]
    (project / "Hello.java").write_text("class Hello {}\n")
    compiled = subprocess.run(
        ["sh", str(launcher), "-d", "out", "Hello.java"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr
    assert (project / "out" / "Hello.class").exists()
    # Built for Java 17 (class file 61) whatever javac built it, as the launcher builds
    # it: a remote executor's older java must load it (routing native).
    (compile_run,) = [a for a in analysis.actions if a.get("category") == "javac"]
    assert compile_run["arguments"][1:3] == ["--release", "17"]
    worker_class = next((project / "buck-out").rglob("JavacWorker.class")).read_bytes()
    assert int.from_bytes(worker_class[6:8], "big") == 61


def test_the_same_classes_make_the_same_jar(tmp_path: Path) -> None:
    """The jar action as java_library registers it, run twice on the same classes whose
    files' times changed between (a source edited and reverted): the same bytes, so that
    what compiles against the jar, and the action cache, see no change."""
    analysis = analyse_library({"srcs": '["B.java"]'})
    (jar_run,) = [a for a in analysis.actions if a["kind"] == "run" and a["category"] == "jar"]
    args = jar_run["arguments"]
    classes = tmp_path / args[args.index("-C") + 1]
    (classes / "p").mkdir(parents=True)
    (classes / "p" / "B.class").write_bytes(b"\xca\xfe\xba\xbe not a real class")
    made = []
    for stamp in (1_000_000_000, 1_700_000_000):
        os.utime(classes / "p" / "B.class", (stamp, stamp))
        (tmp_path / args[args.index("--file") + 1]).unlink(missing_ok=True)
        (tmp_path / args[args.index("--file") + 1]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, timeout=120)
        made.append((tmp_path / args[args.index("--file") + 1]).read_bytes())
    assert made[0] == made[1]


def test_the_binary_launcher_quotes_a_nested_main_class(tmp_path: Path) -> None:
    """`t.A$Inner` reaches java whole (the shell used to expand `$Inner` to nothing)."""
    fake = Buck2Fake()
    analyse_java(fake, "a", {"srcs": '["A.java"]'})
    binary = analyse_java(
        fake, "nested", {"deps": '[":a"]', "main_class": '"t.A$Inner"'}, rule="java_binary"
    )
    (launcher,) = [a for a in binary.actions if a.get("output", "").endswith("/nested.sh")]
    script = tmp_path / "nested.sh"
    script.write_text(launcher["content"])
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "java"
    stub.write_text('#!/bin/sh\nfor arg do echo "$arg"; done\n')
    stub.chmod(0o755)
    ran = subprocess.run(
        ["sh", str(script), "an arg"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert ran.stdout.splitlines() == ["-cp", jar("a"), "t.A$Inner", "an arg"], ran.stderr


def test_binary_resources_without_srcs_are_an_analysis_error() -> None:
    """They used to be dropped without a word (only the binary's own jar carries them)."""
    fake = Buck2Fake()
    analyse_java(fake, "a", {"srcs": '["A.java"]'})
    with pytest.raises(sl.StarlarkError, match="resources need srcs"):
        analyse_java(
            fake, "r", {"deps": '[":a"]', "main_class": '"t.A"', "resources": '["app.properties"]'},
            rule="java_binary",
        )  # fmt: skip
