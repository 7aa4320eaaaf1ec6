"""The Haskell rules: the per-module actions they register, and the example built end to
end as Buck2 would, warm through the GHC worker and cold with ghc, with the same result."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import starlark as sl

from workers_dev.buck2_fake import REPO_ROOT, AnalysedDep, Analysis, Buck2Fake
from workers_dev.build_runner import (
    PRELUDE_HASKELL,
    BuildResult,
    build_haskell_package,
    ghc_worker_config,
    haskell_toolchain_dep,
    javac_worker,
    make_project,
    run_action,
)

EXAMPLE = REPO_ROOT / "examples" / "haskell"
GEN = "buck-out/v2/gen/root/lib/__core__"


def analyse(
    rule: str,
    attrs: dict[str, str],
    imports: dict[str, list[str]] | None = None,
    *,
    fake: Buck2Fake | None = None,
    label: str = "//lib:core",
    package_dbs: list[str] | None = None,
    toolchain_flags: list[str] | None = None,
) -> Analysis:
    """Analyses ``label``; ``imports`` is what the import scan of its modules found. Its
    deps (``:name``) are targets of //base that ``fake`` analysed before."""
    fake = fake or Buck2Fake()
    targets: dict[str, str | AnalysedDep] = {
        "toolchains//:haskell": haskell_toolchain_dep(
            ["worker-runtime"], package_dbs, toolchain_flags
        )
    }
    for dep in json.loads(attrs.get("deps", "[]")):
        targets[dep] = fake.dep("//base:" + dep.lstrip(":"))
    fake.dynamic_resolver = lambda paths: [json.dumps(imports or {}) for _ in paths]
    return fake.analyse(
        f"@prelude//haskell:{rule}.bzl", rule, label, attrs, targets, PRELUDE_HASKELL
    )


BASE = "buck-out/v2/gen/root/base/__base__"


def with_base() -> Buck2Fake:
    """A fake that analysed //base:base: one module, Base.Util, using containers."""
    fake = Buck2Fake()
    base = {"srcs": '["Base/Util.hs"]', "packages": '["containers"]'}
    analyse("haskell_library", base, fake=fake, label="//base:base")
    return fake


TWO_MODULES = {"srcs": '["Sub/B.hs", "A.hs"]', "deps": '[":base"]'}


def argfile_lines(analysis: Analysis, identifier: str) -> list[str]:
    writes = [a for a in analysis.actions if a["kind"] == "write"]
    (argfile,) = [w for w in writes if w["output"].endswith(f"/{identifier}.args")]
    lines: list[str] = argfile["content"].split("\n")
    return lines


def test_modules_compile_in_import_order_after_a_scan() -> None:
    analysis = analyse(
        "haskell_library",
        {**TWO_MODULES, "compiler_flags": '["-O0"]'},
        imports={"A": [], "Sub.B": ["A"]},
        fake=with_base(),
    )
    (scan,) = [a for a in analysis.actions if a.get("category") == "haskell_scan_imports"]
    assert scan["arguments"] == [
        "python3", "toolchains/haskell/scan_imports.py", f"{GEN}/module_imports.json",
        "Sub.B=lib/Sub/B.hs", "A=lib/A.hs",
    ]  # fmt: skip
    (dynamic,) = [a for a in analysis.actions if a["kind"] == "dynamic_output"]
    assert dynamic["dynamic"] == [f"{GEN}/module_imports.json"]
    assert sorted(dynamic["outputs"]) == sorted(
        f"{GEN}/{kind}/{m}.{ext}" for kind, ext in (("objs", "o"), ("ifaces", "hi"))
        for m in ("A", "Sub/B")
    )  # fmt: skip
    # A imports nothing of its target: no own search path, no own interface as input.
    assert argfile_lines(analysis, "A") == [
        "-c", "lib/A.hs", "-o", f"{GEN}/objs/A.o", "-ohi", f"{GEN}/ifaces/A.hi",
        "-i", f"-i{BASE}/ifaces", "-package", "containers", "-O0",
    ]  # fmt: skip
    # B finds A's interface in this target's interface folder, then the dep's.
    assert argfile_lines(analysis, "Sub/B") == [
        "-c", "lib/Sub/B.hs", "-o", f"{GEN}/objs/Sub/B.o", "-ohi", f"{GEN}/ifaces/Sub/B.hi",
        "-i", f"-i{GEN}/ifaces", f"-i{BASE}/ifaces", "-package", "containers", "-O0",
    ]  # fmt: skip
    runs = [a for a in analysis.actions if a["kind"] == "run"]
    compiles = [r for r in runs if r["category"] == "haskell_compile"]
    assert [r["identifier"] for r in compiles] == ["A", "Sub/B"]  # A first: B imports it
    assert all(r["fallback"] == ["toolchains/haskell/ghc-argfile"] for r in compiles)
    assert compiles[1]["outputs"] == [f"{GEN}/objs/Sub/B.o", f"{GEN}/ifaces/Sub/B.hi"]
    envelopes = {
        a["output"].split("/")[-1]: json.loads(a["content"])
        for a in analysis.actions
        if a["kind"] == "write_json"
    }
    assert envelopes["A.envelope.json"]["inputs"] == [
        "lib/A.hs",
        f"{BASE}/ifaces/Base/Util.hi",
    ]
    assert envelopes["B.envelope.json"]["inputs"] == [
        "lib/Sub/B.hs",
        f"{GEN}/ifaces/A.hi",
        f"{BASE}/ifaces/Base/Util.hi",
    ]
    (archive,) = [r for r in runs if r["category"] == "haskell_archive"]
    assert archive["arguments"] == [
        "ar", "qcsD", f"{GEN}/libcore.a", f"{GEN}/objs/Sub/B.o", f"{GEN}/objs/A.o"
    ]  # fmt: skip
    info = analysis.provider("HaskellLibraryInfo")
    assert info["packages"] == ["containers"]
    core, base = info["libraries"]["tset"]  # this library's node, then its dependency's
    assert core["archive"] == {"artifact": f"{GEN}/libcore.a"}
    assert core["interfaces"] == [{"artifact": f"{GEN}/ifaces/{m}.hi"} for m in ("Sub/B", "A")]
    assert core["search_path"]["cmd_args"] == [f"-i{GEN}/ifaces"]
    assert base["archive"] == {"artifact": f"{BASE}/libbase.a"}


def test_modules_that_import_each_other_in_a_cycle_are_an_analysis_error() -> None:
    with pytest.raises(
        sl.StarlarkError, match=re.escape("import each other in a cycle: A -> Sub.B -> A")
    ):
        analyse(
            "haskell_library", TWO_MODULES, imports={"A": ["Sub.B"], "Sub.B": ["A"]},
            fake=with_base(),
        )  # fmt: skip


def test_independent_modules_do_not_wait_for_each_other() -> None:
    analysis = analyse(
        "haskell_library", TWO_MODULES, imports={"A": [], "Sub.B": []}, fake=with_base()
    )
    assert f"-i{GEN}/ifaces" not in argfile_lines(analysis, "Sub/B")
    envelopes = [json.loads(a["content"]) for a in analysis.actions if a["kind"] == "write_json"]
    assert all(f"{GEN}/ifaces/A.hi" not in e["inputs"] for e in envelopes)


def test_binary_links_its_objects_with_every_archive() -> None:
    analysis = analyse(
        "haskell_binary", {"srcs": '["Main.hs"]', "deps": '[":base"]'}, fake=with_base()
    )
    (link,) = [a for a in analysis.actions if a.get("category") == "haskell_link"]
    assert link["arguments"] == [
        "ghc", "-o", f"{GEN}/core", f"{GEN}/objs/Main.o",
        f"{BASE}/libbase.a", "-package", "containers",
    ]  # fmt: skip


def test_linker_flags_reach_the_link_and_compiler_flags_do_not() -> None:
    """`-threaded` in compiler_flags used to be the only place to put it, and the link never
    saw it (the program ran on the non-threaded runtime)."""
    analysis = analyse(
        "haskell_binary",
        {"srcs": '["Main.hs"]', "deps": '[":base"]', "compiler_flags": '["-O1"]',
         "linker_flags": '["-threaded", "-rtsopts"]'},
        fake=with_base(),
    )  # fmt: skip
    (link,) = [a for a in analysis.actions if a.get("category") == "haskell_link"]
    assert link["arguments"][-2:] == ["-threaded", "-rtsopts"] and "-O1" not in link["arguments"]


def test_the_toolchains_package_databases_reach_every_compile_and_the_link() -> None:
    """A package database in the toolchain's compiler_flags reached the compiles only:
    the link of a program using a package from it failed ("unknown package"). In a
    compile they come after the toolchain's flags (whose -clear-package-db would drop
    them) and before the target's."""
    dbs = ["/opt/ghc-pkgs/package.db", "/opt/more/db"]
    analysis = analyse(
        "haskell_binary",
        {"srcs": '["Main.hs", "Lib.hs"]', "packages": '["aeson"]', "compiler_flags": '["-O1"]'},
        {"Main": ["Lib"], "Lib": []},
        package_dbs=dbs,
        toolchain_flags=["-clear-package-db", "-global-package-db"],
    )
    db_args = ["-package-db", dbs[0], "-package-db", dbs[1]]
    for module in ("Main", "Lib"):
        assert argfile_lines(analysis, module)[-9:] == [
            "-package", "aeson", "-clear-package-db", "-global-package-db", *db_args, "-O1"
        ]  # fmt: skip
    (link,) = [a for a in analysis.actions if a.get("category") == "haskell_link"]
    assert link["arguments"][-6:] == [*db_args, "-package", "aeson"]


def test_a_diamond_links_each_archive_once_before_what_it_needs() -> None:
    """app needs left and right, both need base; left also needs util, which needs base:
    every archive once, each before every archive it needs, and packages once."""
    fake = Buck2Fake()
    needs = {"base": [], "util": ["base"], "left": ["util", "base"], "right": ["base"]}
    for name, deps in needs.items():
        attrs = {"srcs": f'["{name.title()}.hs"]', "packages": '["containers"]'}
        attrs["deps"] = json.dumps([f":{d}" for d in deps])
        analyse("haskell_library", attrs, fake=fake, label=f"//base:{name}")
    app = analyse(
        "haskell_binary", {"srcs": '["Main.hs"]', "deps": '[":left", ":right"]'}, fake=fake
    )
    (link,) = [a for a in app.actions if a.get("category") == "haskell_link"]
    archives = [a.split("/")[-1] for a in link["arguments"] if a.endswith(".a")]
    assert sorted(archives) == ["libbase.a", "libleft.a", "libright.a", "libutil.a"]
    for library, needed in needs.items():
        for other in needed:
            assert archives.index(f"lib{library}.a") < archives.index(f"lib{other}.a"), archives
    assert link["arguments"][-2:] == ["-package", "containers"]
    # Main's compile searches each library's interfaces once, a library before its deps.
    search = [a for a in argfile_lines(app, "Main") if a.startswith("-ibuck-out")]
    names = [path.split("/__")[1].split("__")[0] for path in search]
    assert names == ["left", "util", "base", "right"]


def test_a_module_defined_twice_in_a_closure_is_an_analysis_error() -> None:
    """Every module is compiled into GHC's one home unit: with Types in two libraries a
    compile took whichever interface its search path found first, and the link one of the
    two objects, silently. The diamond above, with no module twice, passes the check."""
    fake = Buck2Fake()
    for name in ("left", "right"):
        attrs = {"srcs": f'["{name.title()}.hs", "Types.hs"]'}
        analyse("haskell_library", attrs, {"Types": [], name.title(): []}, fake=fake,
                label=f"//base:{name}")  # fmt: skip
    with pytest.raises(sl.StarlarkError, match=(
        r"app: module Types is defined by both root//base:(left|right) and root//base:(left|right); "
        "each module name may appear once"
    )):  # fmt: skip
        analyse("haskell_binary", {"srcs": '["Main.hs"]', "deps": '[":left", ":right"]'},
                fake=fake, label="//app:app")  # fmt: skip
    with pytest.raises(
        sl.StarlarkError, match="module Types is defined by both root//base:left and this target"
    ):
        analyse("haskell_library", {"srcs": '["Types.hs"]', "deps": '[":left"]'}, fake=fake,
                label="//lib:core")  # fmt: skip


@pytest.mark.parametrize(
    ("srcs", "message"),
    [
        ("[]", "a Haskell target needs srcs"),
        ('["A.txt"]', "A.txt is not a .hs file"),
        ('["../other/A.hs"]', "a source path must be relative to the package"),
        ('["A.hs", "A.hs"]', "module A is listed twice"),
    ],
)
def test_bad_srcs_are_analysis_errors(srcs: str, message: str) -> None:
    with pytest.raises(sl.StarlarkError, match=message):
        analyse("haskell_library", {"srcs": srcs})


@pytest.mark.parametrize("name", ["objs", "ifaces", "haskell_compile", "module_imports.json"])
def test_a_binary_named_as_its_compile_outputs_is_an_analysis_error(name: str) -> None:
    """Its program would be a file where its objects' (or argfiles') directory goes: Buck2
    refuses that as conflicting output locations, which the fake now does too; the rule
    says what to do first."""
    with pytest.raises(sl.StarlarkError, match=f"haskell_binary {re.escape(name)}: the program"):
        analyse("haskell_binary", {"srcs": '["Main.hs"]'}, label=f"//app:{name}")


def test_example_is_a_realistic_small_codebase() -> None:
    fake = Buck2Fake()
    fake.eval_file(EXAMPLE / "BUCK", "root")
    attrs = fake.target_attrs
    libraries = [n for n, a in attrs.items() if a["_impl"] == "_haskell_library_impl"]
    modules = sum(len(a["srcs"]) for a in attrs.values())
    assert len(libraries) >= 3 and modules >= 15
    assert attrs["bookshop"]["_impl"] == "_haskell_binary_impl"
    # A chain: each library depends on the one before it.
    assert ":core" in attrs["inventory"]["deps"] and ":inventory" in attrs["reports"]["deps"]


def objects(project: Path) -> dict[str, str]:
    """Every object's section contents (GHC 9.0 names local symbols after its internal
    uniques, which a warm session numbers differently; code and data are the same)."""
    out = project / "buck-out"
    found = {}
    for path in sorted(out.rglob("*.o")):
        dump = subprocess.run(["objdump", "-s", str(path)], capture_output=True, text=True)
        found[str(path.relative_to(out))] = dump.stdout.split("\n", 2)[2]
    return found


def interfaces(project: Path) -> dict[str, bytes]:
    out = project / "buck-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.hi"))}


def run_bookshop(project: Path) -> str:
    exe = project / "buck-out/v2/gen/root/examples/haskell/__bookshop__/bookshop"
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def test_example_builds_warm_and_cold_with_the_same_outputs(tmp_path: Path) -> None:
    expected = (EXAMPLE / "expected_output.txt").read_text()
    (tmp_path / "cold_root").mkdir()
    cold = make_project(tmp_path / "cold_root")
    build_haskell_package(cold, "examples/haskell", worker=None)
    assert run_bookshop(cold) == expected
    (tmp_path / "warm_root").mkdir()
    warm = make_project(tmp_path / "warm_root")
    config = ghc_worker_config()
    assert config["command"] == ["toolchains/haskell/ghc-worker"]
    with javac_worker(warm, config, ["--no-daemon"], name="ghc_worker") as worker:
        result = build_haskell_package(warm, "examples/haskell", worker=worker)
    assert run_bookshop(warm) == expected
    assert interfaces(warm) == interfaces(cold)
    assert objects(warm) == objects(cold)
    assert len(interfaces(warm)) >= 15
    assert len([c for c, _ in result.action_seconds if c == "haskell_compile"]) >= 15


def test_buck2_builds_the_ghc_worker_with_plain_ghc(tmp_path: Path) -> None:
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "toolchains" / "BUCK", "toolchains")
    srcs = fake.target_attrs["ghc_worker_built"]["srcs"]
    analysis = Buck2Fake().analyse(
        "@toolchains//haskell:defs.bzl", "ghc_worker_binary", "//toolchains:ghc_worker_built",
        {"srcs": json.dumps(srcs), "ghc": '":ghc"'},
        {":ghc": 'fake_dep(RunInfo(args = cmd_args("ghc")))'},
    )  # fmt: skip
    project = make_project(tmp_path)
    result = BuildResult()
    for action in analysis.actions:
        run_action(project, action, None, result)
    exe = project / analysis.provider("DefaultInfo")["default_outputs"][0]["artifact"]
    (project / "Hello.hs").write_text('module Hello where\n\nhello :: String\nhello = "hi"\n')
    compiled = subprocess.run(
        [str(exe), "-c", "Hello.hs", "-o", "Hello.o", "-ohi", "Hello.hi"],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    assert (project / "Hello.o").exists()
