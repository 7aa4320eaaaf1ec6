"""toolchains/haskell/scan_imports.py: which modules of a target each module imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

SCANNER = REPO_ROOT / "toolchains" / "haskell" / "scan_imports.py"


def scan(tmp_path: Path, sources: dict[str, str]) -> tuple[int, dict[str, list[str]], str]:
    args = []
    for name, text in sources.items():
        path = tmp_path / (name.replace(".", "/") + ".hs")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        args.append(f"{name}={path}")
    out = tmp_path / "imports.json"
    done = subprocess.run(
        [sys.executable, str(SCANNER), str(out), *args], capture_output=True, text=True
    )
    graph = json.loads(out.read_text()) if done.returncode == 0 else {}
    return done.returncode, graph, done.stderr


def test_every_form_of_import_is_found(tmp_path: Path) -> None:
    main = """{-# LANGUAGE PackageImports #-}
module A.Main (main) where
-- import A.Commented
{- import A.Blocked {- nested -} import A.AlsoBlocked -}
import A.Plain
import qualified A.Qualified as Q
import A.PostQualified qualified as P
import {-# SOURCE #-} A.Boot
import safe A.Safe (x)
import "base" Data.List (sort)
import
  A.NextLine
import Data.Map (Map) -- a package module: not in the target
x --> y = y  -- an operator, not a comment
main :: IO ()
main = pure ()
"""
    others = ["A.Plain", "A.Qualified", "A.PostQualified", "A.Boot", "A.Safe", "A.NextLine"]
    others += ["A.Commented", "A.Blocked", "A.AlsoBlocked"]
    code, graph, _ = scan(tmp_path, {"A.Main": main, **{m: f"module {m} where\n" for m in others}})
    assert code == 0
    assert graph["A.Main"] == sorted(
        ["A.Plain", "A.Qualified", "A.PostQualified", "A.Boot", "A.Safe", "A.NextLine"]
    )
    assert graph["A.Plain"] == []


def test_indented_and_brace_layout_imports_are_found(tmp_path: Path) -> None:
    main = "module A.Main where { import A.One; import qualified A.Two\n  ; x = 1 }\n"
    indented = "module A.Other where\n  import A.One\n  y = 2\n"
    sources = {"A.Main": main, "A.Other": indented, "A.One": "", "A.Two": ""}
    code, graph, _ = scan(tmp_path, sources)
    assert code == 0
    assert graph["A.Main"] == ["A.One", "A.Two"] and graph["A.Other"] == ["A.One"]


def test_an_import_on_the_header_line_and_after_a_byte_order_mark_are_found(
    tmp_path: Path,
) -> None:
    """Both are valid Haskell that ghc compiles; each import was once missed, and the
    importer was then not rebuilt when the module it imports changed."""
    code, graph, _ = scan(
        tmp_path,
        {
            "A": "module A where import B\nx = y\n",
            "C": "\ufeffimport B\nmain = print y\n",
            "B": "module B where\ny :: Int\ny = 1\n",
        },
    )
    assert code == 0
    assert graph == {"A": ["B"], "B": [], "C": ["B"]}


def test_a_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "imports.json"
    done = subprocess.run(
        [sys.executable, str(SCANNER), str(out), "A=missing/A.hs"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "cannot read missing/A.hs (module A)" in done.stderr
    assert not out.exists()


def test_bad_usage_says_how_to_call_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCANNER), "x.json", "A"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage:" in done.stderr


def test_a_generated_module_of_megabytes_is_scanned(tmp_path: Path) -> None:
    """Generated code (Happy, Alex) runs to megabytes: the scan is linear in the file (it
    once copied the rest of the file at every character, and took minutes on this one;
    the timeout below only keeps a regression from hanging the suite)."""
    body = "".join(
        f"f{i} :: Int -> Int -- the {i}th\nf{i} x = x --> {i} {{- a -- block -}}\n"
        for i in range(40_000)
    )
    text = f"module Gen where\nimport Gen.Base -- its base\n{body}import Gen.Tail\n"
    assert len(text) > 2_500_000
    for name, source in (("Gen", text), ("Gen.Base", "module Gen.Base where\n")):
        path = tmp_path / (name.replace(".", "/") + ".hs")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    (tmp_path / "Gen" / "Tail.hs").write_text("module Gen.Tail where\n")
    out = tmp_path / "imports.json"
    modules = [
        f"{n}={tmp_path / (n.replace('.', '/') + '.hs')}" for n in ("Gen", "Gen.Base", "Gen.Tail")
    ]
    subprocess.run([sys.executable, str(SCANNER), str(out), *modules], check=True, timeout=120)
    assert json.loads(out.read_text())["Gen"] == ["Gen.Base", "Gen.Tail"]


def test_a_header_that_names_another_module_than_the_path_is_an_error(tmp_path: Path) -> None:
    """`Lib/X.hs` in a package whose BUCK file sits in `Lib` is module `X` to the rules; a
    source that says `module Lib.X` compiled, and its dependents then found nothing."""
    code, _, stderr = scan(
        tmp_path,
        {"X": "-- a comment\nmodule Lib.X (x) where\nx :: Int\nx = 1\n", "Y": "module Y where\n"},
    )
    assert code == 1
    assert "says `module Lib.X`, but its path in the package makes it X" in stderr
    # Without a header a module is Main's; with the right one, all is well.
    code, graph, _ = scan(tmp_path, {"M": "main = pure ()\n", "Y": "{- x -} module Y where\n"})
    assert code == 0 and graph == {"M": [], "Y": []}
