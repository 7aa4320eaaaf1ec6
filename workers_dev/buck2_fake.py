"""A fake of Buck2's analysis API for testing the prelude with starlark-pyo3.

starlark-pyo3 wraps starlark-rust, the interpreter Buck2 uses, so the prelude's .bzl files
are parsed and run in Buck2's dialect (runtime-checked type annotations, no load
re-export). What starlark-rust lacks of Buck2 (``rule``, ``attrs``, ``provider``,
``cmd_args``, the built-in providers, ``ctx``) is written below in Starlark, with the
signatures Buck2's source gives them (app/buck2_build_api/src/interpreter/): keyword-only where Buck2's are, so
an unknown or misplaced argument fails as it does in Buck2, and with Buck2's own checks
(an empty ``WorkerInfo.exe``, a rule returning no ``DefaultInfo``, floats in
``write_json``, an output declared twice...).

Transitive sets follow Buck2's (``transitive_set`` with ``args_projections``,
``ctx.actions.tset``, ``project_as_args`` and its five orderings, walked as Buck2's
iterators walk them); see the section in FAKE_API for what is left out.

Known limits: a ``provider_field`` default that is a list or dict makes the fake's
provider type unhashable (so it cannot index a dependency): use None. Provider field types
are not checked. ``cmd_args`` here is a function, so it cannot be a type annotation as it
can in Buck2; code tested with the fake annotates command lines ``typing.Any``. Every
file is evaluated once, as Buck2 evaluates its prelude cell; Buck2 evaluates any other
cell's .bzl once per cell that loads it (see provider_annotations).

Python cannot receive Starlark functions (starlark-pyo3 converts values to plain data),
so a rule's ``impl`` runs inside a Starlark harness and only plain data comes back:
providers as dicts tagged with their name, actions as the fake recorded them. The harness
module is kept, frozen, so that a later analysis can depend on the target
(``Buck2Fake.dep``) and get its very providers, as Buck2 hands a dependent the frozen
providers of its dependencies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import starlark as sl

from workers_dev.definition_check import unbound_definitions
from workers_dev.freeze_check import unfreezable_captures
from workers_dev.provider_annotations import provider_annotations, provider_names


class UnfreezableCapture(ValueError):
    """A .bzl file does what Buck2 refuses and the fake cannot see at run time: a nested
    function captures ``ctx`` or ``ctx.actions`` (``freeze_check``), or an annotation names
    a provider (``provider_annotations``)."""


REPO_ROOT = Path(__file__).resolve().parent.parent
CELLS = {
    "root": REPO_ROOT,
    "prelude": REPO_ROOT / "prelude",
    "toolchains": REPO_ROOT / "toolchains",
}


def _dialect(*, build_file: bool) -> sl.Dialect:
    """Buck2's dialects (app/buck2_interpreter/src/file_type.rs): a .bzl file has def,
    keyword-only and positional-only parameters, runtime-checked types and top-level
    if/for; a BUCK file has none of these. Both have f-strings and no load re-export."""
    dialect = sl.Dialect.extended()
    dialect.enable_def = not build_file
    dialect.enable_lambda = True
    dialect.enable_load = True
    dialect.enable_keyword_only_arguments = not build_file
    dialect.enable_positional_only_arguments = not build_file
    dialect.enable_types = sl.DialectTypes.DISABLE if build_file else sl.DialectTypes.ENABLE
    dialect.enable_load_reexport = False
    dialect.enable_top_level_stmt = not build_file
    dialect.enable_f_strings = True
    return dialect


def _cell_of(path: Path) -> tuple[str, Path]:
    """The cell of a file of this repository, and that cell's root."""
    for cell, root in CELLS.items():
        if cell != "root" and root in path.parents:
            return cell, root
    return "root", CELLS["root"]


def provider_modules(files: list[Path]) -> dict[str, str]:
    """The load path (``@cell//pkg:file.bzl``) of each provider these files declare."""
    found: dict[str, str] = {}
    for path in files:
        cell, root = _cell_of(path)
        package = path.parent.relative_to(root).as_posix()
        load_id = f"@{cell}//{'' if package == '.' else package}:{path.name}"
        for name in provider_names([path]):
            if name in found:
                raise ValueError(f"provider {name} is declared twice: {found[name]}, {load_id}")
            found[name] = load_id
    return found


def buck2_bzl_dialect() -> sl.Dialect:
    return _dialect(build_file=False)


def buck2_build_dialect() -> sl.Dialect:
    return _dialect(build_file=True)


_EXT = sl.LibraryExtension
GLOBALS = sl.Globals.extended_by(
    [_EXT.StructType, _EXT.RecordType, _EXT.EnumType, _EXT.Map, _EXT.Filter, _EXT.Partial,
     _EXT.Debug, _EXT.Print, _EXT.Pprint, _EXT.Json, _EXT.Typing, _EXT.Internal]
)  # fmt: skip

# The fake, in Starlark. Names starting with "_" are the fake's own.
FAKE_API = r"""
AnalysisContext = typing.Any
AnalysisActions = typing.Any
Provider = typing.Any
Artifact = typing.Any
Dependency = typing.Any
Label = typing.Any
Attr = typing.Any

_NO_DEFAULT = "<no default>"
_UNSET = "<unset>"  # a parameter Buck2 types Option<T>: absent is fine, None is not
_SNAKE = "abcdefghijklmnopqrstuvwxyz0123456789_"

def _check_type(what, value, allowed):
    if type(value) not in allowed:
        fail(what, "must be one of", allowed, "not", type(value))

# -- attrs --------------------------------------------------------------------------
def _attr(kind, default, doc, inner = None, extra = None):
    if type(doc) != "string":
        fail("attrs." + kind + ": doc must be a string")
    return struct(_kind = "attr", kind = kind, default = default, inner = inner, extra = extra or {})

def _attr_string(*, default = _NO_DEFAULT, validate = None, doc = ""):
    return _attr("string", default, doc)

def _attr_bool(*, default = _NO_DEFAULT, doc = ""):
    return _attr("bool", default, doc)

def _attr_int(*, default = _NO_DEFAULT, doc = ""):
    return _attr("int", default, doc)

def _attr_list(inner, /, *, default = _NO_DEFAULT, doc = ""):
    return _attr("list", default, doc, inner)

def _attr_dict(key, value, *, sorted = False, default = _NO_DEFAULT, doc = ""):
    return _attr("dict", default, doc, (key, value))

def _attr_option(inner, /, *, default = _NO_DEFAULT, doc = ""):
    if default != _NO_DEFAULT and default != None:
        fail("attrs.option: default must be None or absent, not", repr(default))
    return _attr("option", default, doc, inner)

def _attr_enum(variants, /, *, default = _NO_DEFAULT, doc = ""):
    for v in variants:
        if v != v.lower():
            fail("attrs.enum: variants must be lowercase:", v)
    if default != _NO_DEFAULT and default not in variants:
        fail("attrs.enum: default", repr(default), "is not one of", variants)
    return _attr("enum", default, doc, None, {"variants": variants})

def _attr_source(*, allow_directory = False, default = _NO_DEFAULT, doc = ""):
    return _attr("source", default, doc)

def _attr_dep(*, providers = [], pulls_plugins = [], pulls_and_pushes_plugins = [], default = _NO_DEFAULT, doc = ""):
    return _attr("dep", default, doc, None, {"providers": providers})

def _attr_exec_dep(*, providers = [], default = _NO_DEFAULT, doc = ""):
    return _attr("exec_dep", default, doc, None, {"providers": providers})

def _attr_toolchain_dep(*, providers = [], default = _NO_DEFAULT, doc = ""):
    return _attr("toolchain_dep", default, doc, None, {"providers": providers})

def _attr_default_only(inner, /, *, doc = ""):
    if inner.default == _NO_DEFAULT:
        fail("attrs.default_only: the inner attribute must have a default")
    return _attr("default_only", inner.default, doc, inner)

attrs = struct(
    bool = _attr_bool,
    default_only = _attr_default_only,
    dep = _attr_dep,
    dict = _attr_dict,
    enum = _attr_enum,
    exec_dep = _attr_exec_dep,
    int = _attr_int,
    list = _attr_list,
    option = _attr_option,
    source = _attr_source,
    string = _attr_string,
    toolchain_dep = _attr_toolchain_dep,
)

# -- providers ------------------------------------------------------------------------
def provider_field(ty, /, *, default = _NO_DEFAULT):
    # Without a default the field is required, as in Buck2. The type is not checked (the
    # fake's stand-ins for Artifact, cmd_args, transitive sets... are not types).
    if default == _NO_DEFAULT:
        return field(typing.Any)
    return field(typing.Any, default)

def provider(*, doc = "", fields):
    if type(fields) == "dict":
        return record(**{k: v if type(v) == "field" else field(typing.Any) for k, v in fields.items()})
    return record(**{f: field(typing.Any, None) for f in fields})

_DefaultInfo = record(default_outputs = field(typing.Any, None), other_outputs = field(typing.Any, None), sub_targets = field(typing.Any, None))

def DefaultInfo(default_output = None, default_outputs = None, other_outputs = [], sub_targets = {}):
    if default_output != None and default_outputs != None:
        fail("DefaultInfo: default_output and default_outputs are mutually exclusive")
    if default_outputs != None:
        for output in default_outputs:
            if not _is_artifact(output):
                fail("DefaultInfo: Error unpacking value for parameter `default_outputs` of type `None | list[Artifact]`:", repr(output))
    outputs = default_outputs or ([default_output] if default_output != None else [])
    return _DefaultInfo(default_outputs = outputs, other_outputs = other_outputs, sub_targets = sub_targets)

RunInfo = record(args = field(typing.Any, None))

_WorkerInfo = record(
    exe = field(typing.Any),
    env = field(typing.Any),
    concurrency = field(typing.Any),
    streaming = field(typing.Any),
    supports_bazel_remote_persistent_worker_protocol = field(bool),
)

def WorkerInfo(exe = [], env = None, *, concurrency = None, streaming = None, supports_bazel_remote_persistent_worker_protocol = False):
    if len(_render(cmd_args(exe))) == 0:
        fail("WorkerInfo: exe must be a non-empty command line")
    if concurrency != None:
        _check_type("WorkerInfo.concurrency", concurrency, ["int"])
        if concurrency < 0:  # a usize in Buck2
            fail("WorkerInfo: Error unpacking value for parameter `concurrency` of type `None | int`:", concurrency)
    return _WorkerInfo(
        exe = exe,
        env = env or {},
        concurrency = concurrency,
        streaming = streaming,
        supports_bazel_remote_persistent_worker_protocol = supports_bazel_remote_persistent_worker_protocol,
    )

_WorkerRunInfo = record(worker = field(typing.Any), remote_worker = field(typing.Any), exe = field(typing.Any))

def WorkerRunInfo(*, worker = None, remote_worker = None, exe = []):
    for name, value in (("worker", worker), ("remote_worker", remote_worker)):
        if value != None and not isinstance(value, _WorkerInfo):
            fail("WorkerRunInfo: Error unpacking value for parameter `" + name + "`: expected `None | WorkerInfo`, not", repr(value))
    return _WorkerRunInfo(worker = worker, remote_worker = remote_worker, exe = exe)

# -- artifacts and cmd_args -------------------------------------------------------------
def _artifact(path, short_path, is_source, key = None, is_output = False, declared = False, owner = None):
    # In Buck2 two values of one artifact are equal (and dedupe in a dict). A struct with
    # a lambda field never equals another, so only declared and bound outputs, each one
    # value, carry the as_output() method; sources and hand-made artifacts compare by their
    # fields. `owner` is the label of the target that declared the artifact (None for a
    # source, as in Buck2): only that target's actions bind it.
    fields = dict(
        _kind = "artifact",
        path = path,
        short_path = short_path,
        basename = short_path.split("/")[-1],
        is_source = is_source,
        key = key,
        is_output = is_output,
        owner = owner,
    )
    if declared:
        fields["as_output"] = lambda: _as_output(path, short_path, is_source, key, is_output, owner)
    return struct(**fields)

def _as_output(path, short_path, is_source, key, is_output, owner):
    if is_source:
        fail("as_output: a source file cannot be an output:", path)
    if is_output:
        fail("as_output: already an output:", path)
    return _artifact(path, short_path, False, key, True, owner = owner)

def _is_artifact(value):
    return type(value) == "struct" and getattr(value, "_kind", None) == "artifact"

def _source(path, package = ""):
    # A source attribute's value is relative to its package, and so is the artifact's
    # short_path; its path (on command lines) is relative to the project root. In Buck2,
    # source_artifact("foo/bar", "baz/quz.h").short_path == "baz/quz.h".
    return _artifact(package + "/" + path if package else path, path, True)

_CmdArgs = record(items = list, hidden = list, delimiter = typing.Any, format = typing.Any, quote = typing.Any, ignore_artifacts = bool, outputs = list, parent = int)

def cmd_args(*args, hidden = _UNSET, delimiter = _UNSET, format = _UNSET, prepend = _UNSET, quote = _UNSET, ignore_artifacts = False, absolute_prefix = _UNSET, absolute_suffix = _UNSET, parent = 0, relative_to = _UNSET, replace_regex = []):
    # Buck2 types these Option<...> (app/buck2_build_api/src/interpreter/rule_defs/
    # cmd_args/typ.rs): leaving one out is fine, passing None explicitly is a type error.
    for arg_name, arg_value in (("hidden", hidden), ("delimiter", delimiter), ("format", format), ("prepend", prepend), ("quote", quote), ("absolute_prefix", absolute_prefix), ("absolute_suffix", absolute_suffix), ("relative_to", relative_to)):
        if arg_value == None:
            fail("cmd_args: Type of parameter `" + arg_name + "` doesn't match, actual `NoneType` (leave it out instead of passing None)")
    hidden = [] if hidden == _UNSET else hidden
    delimiter = None if delimiter == _UNSET else delimiter
    format = None if format == _UNSET else format
    quote = None if quote == _UNSET else quote
    items = []
    for arg in args:
        items.extend(_cmd_items(arg))
    hidden_items = _cmd_items(hidden)
    outputs = []
    for item in items + hidden_items:
        if _is_artifact(item) and item.is_output:
            outputs.append(item)
        elif isinstance(item, _CmdArgs):
            outputs.extend(item.outputs)
    if type(parent) != "int" or parent < 0:
        fail("cmd_args: parent must be a non-negative int, not", repr(parent))
    if quote not in (None, "shell"):
        fail("cmd_args: quote must be \"shell\", not", repr(quote))
    return _CmdArgs(items = items, hidden = hidden_items, delimiter = delimiter, format = format, quote = quote, ignore_artifacts = ignore_artifacts, outputs = outputs, parent = parent)

def _cmd_items(arg):
    if type(arg) == "list":
        out = []
        for a in arg:
            out.extend(_cmd_items(a))
        return out
    if type(arg) in ("tuple", "int", "float", "bool", "NoneType", "dict"):
        fail("cmd_args: a", type(arg), "is not a command-line argument (tuples and ints are not accepted)")
    return [arg]

def _render_one(item, parent = 0):
    if type(item) == "string":
        return [item]
    if _is_args_projection(item):
        return _render(cmd_args(_projected(item)))
    if isinstance(item, _CmdArgs):
        return _render(item)
    if isinstance(item, RunInfo):
        return _render(item.args)
    if _is_artifact(item):
        parts = item.path.split("/")
        if parent > len(parts):
            fail("cmd_args: parent =", parent, "goes above the root from", item.path)
        return [_path_format("/".join(parts[:len(parts) - parent]))]
    fail("cannot render", type(item), "on a command line")

def _path_format(path):
    # As Buck2 renders a project-relative path (builder.rs, path_format): the empty one is
    # `.`, and one of a single component gets `./` (execvp looks up a name without `/`).
    if path == "":
        return "."
    if "/" not in path:
        return "./" + path
    return path

_SHELL_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+./:@,=%"

def _shell_quote(s):
    # As Buck2's quote = "shell": a word the shell reads as is stays; any other is quoted.
    if s and all([c in _SHELL_SAFE for c in s.elems()]):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"

def _render(args):
    if not isinstance(args, _CmdArgs):
        args = cmd_args(args)
    out = []
    for item in args.items:
        out.extend(_render_one(item, args.parent))
    if args.format != None:
        out = [args.format.replace("{}", s) for s in out]
    if args.quote == "shell":  # after format, before the delimiter, as Buck2 renders it
        out = [_shell_quote(s) for s in out]
    if args.delimiter != None:
        # One argument, even of nothing: Buck2 writes its join when the scope ends
        # (builder.rs, pop_scope), an empty string if nothing was joined.
        out = [args.delimiter.join(out)]
    return out

def _artifacts_of(value, ignored = False):
    # (artifact, ignored) pairs reachable from a command-line-like value.
    if _is_artifact(value):
        return [(value, ignored)]
    if isinstance(value, _CmdArgs):
        out = []
        for item in value.items + value.hidden:
            out.extend(_artifacts_of(item, ignored or value.ignore_artifacts))
        return out
    if isinstance(value, RunInfo):
        return _artifacts_of(value.args, ignored)
    if _is_args_projection(value):
        return _artifacts_of(_projected(value), ignored)
    if isinstance(value, _WorkerRunInfo):
        return _artifacts_of(value.exe, ignored) + (_artifacts_of(value.worker.exe, ignored) if value.worker else [])
    if type(value) == "list":
        out = []
        for v in value:
            out.extend(_artifacts_of(v, ignored))
        return out
    if type(value) == "dict":
        out = []
        for v in value.values():
            out.extend(_artifacts_of(v, ignored))
        return out
    return []

# -- transitive sets ---------------------------------------------------------------------------
# After app/buck2_build_api/src/interpreter/rule_defs/transitive_set/. A definition comes from
# transitive_set() at the top level of a .bzl file (the binding is checked statically, by
# definition_check.py); ctx.actions.tset() computes the args projections of its value when
# the set is made, as Buck2 does, and takes children of the same definition only; the five
# orderings walk the nodes exactly as traversal.rs and transitive_set_iterator.rs do, telling
# nodes apart by identity (an id), never by value. A set made by a dependency is frozen, as
# everything a dependency's analysis left. What the prelude does not use fails loudly:
# json_projections and reductions.

_ORDERINGS = ["preorder", "postorder", "topological", "bfs", "dfs"]
_FOREVER = range(1 << 30)  # Starlark has no `while`: loops end with `break`

_TSetNode = record(id = int, definition = typing.Any, has_value = bool, value = typing.Any, projections = dict, children = list)

def transitive_set(*, args_projections = _UNSET, json_projections = _UNSET, reductions = _UNSET):
    _py_require_bzl("transitive_set")
    if json_projections != _UNSET or reductions != _UNSET:
        fail("transitive_set: the fake implements args_projections only (add json_projections and reductions to workers_dev/buck2_fake.py, after Buck2's transitive_set.rs)")
    projections = {}
    if args_projections != _UNSET:
        if type(args_projections) != "dict":
            fail("transitive_set: Type of parameter `args_projections` doesn't match, expected `dict[str, typing.Callable]`, actual `" + type(args_projections) + "`")
        for name, function in args_projections.items():
            if type(name) != "string" or type(function) != "function":
                fail("transitive_set: args_projections maps names (str) to functions, not", repr(name), "to", type(function))
            projections[name] = function
    return struct(_kind = "tset_definition", _id = _py_next_id(), args_projections = projections)

def _is_tset_definition(value):
    return type(value) == "struct" and getattr(value, "_kind", None) == "tset_definition"

def _is_tset(value):
    return type(value) == "struct" and getattr(value, "_kind", None) == "tset"

def _is_args_projection(value):
    return type(value) == "struct" and getattr(value, "_kind", None) == "tset_args_projection"

# How Buck2 names what a command line takes (as the real Buck2 prints it).
_CMD_ARG_LIKE = "Artifact | CellPath | CellRoot | Label | OutputArtifact | ProjectRoot | ResolvedStringWithMacros | TaggedCommandLine | TargetLabel | TransitiveSetArgsProjection | WriteJsonCliArgs | cmd_args | str | RunInfo"

def _is_cmd_arg_like(value):
    # ValueAsCommandLineLike (cmd_args/value_as.rs): a list is not one.
    return type(value) == "string" or _is_artifact(value) or isinstance(value, _CmdArgs) or isinstance(value, RunInfo) or _is_args_projection(value) or _is_target_label(value)

def _check_ordering(ordering):
    if ordering not in _ORDERINGS:
        fail("Expected ordering to be one of `preorder`, `postorder`, `topological`, `bfs`, or `dfs`,  but got `" + str(ordering) + "`")

def _make_tset(definition, value, children):
    if not _is_tset_definition(definition):
        fail("tset: Type of parameter `definition` doesn't match, expected `TransitiveSetDefinition`, actual `" + type(definition) + "`")
    kids = []
    given_children = []
    if children != _UNSET:
        if type(children) not in ("list", "tuple"):
            fail("tset: `children` must be an iterable of transitive sets, not a", type(children))
        for child in children:
            if not _is_tset(child):
                fail("Transitive set transitive values must be transitive sets, got `" + repr(child) + "`")
            if child.definition._id != definition._id:
                fail("Transitive set transitive values must be of the same transitive set type (expected: definition #" + str(definition._id) + ", got: definition #" + str(child.definition._id) + ")")
            kids.append(child._node)
            given_children.append(child)
    projections = {}
    if value != _UNSET:
        for name, function in definition.args_projections.items():
            projected = function(value)
            for item in projected if type(projected) == "list" else [projected]:
                if not _is_cmd_arg_like(item):
                    fail("Expected `" + _CMD_ARG_LIKE + "`, but got `" + type(item) + " (repr: " + repr(item) + ")` (from transitive set projection " + name + ")")
            projections[name] = projected
    node = _TSetNode(
        id = _py_next_id(),
        definition = definition,
        has_value = value != _UNSET,
        value = None if value == _UNSET else value,
        projections = projections,
        children = kids,
    )

    def project_as_args(projection, *, ordering = "preorder"):
        if type(projection) != "string":
            fail("project_as_args: Type of parameter `projection` doesn't match, expected `str`, actual `" + type(projection) + "`")
        if projection not in definition.args_projections:
            fail("The requested projection `" + projection + "` does not exist. Valid projections: " + ", ".join(definition.args_projections.keys()))
        _check_ordering(ordering)
        return struct(_kind = "tset_args_projection", node = node, projection = projection, ordering = ordering)

    def project_as_json(projection, *, ordering = "preorder"):
        fail("project_as_json: the fake has no json projections (see transitive_set)")

    def reduce(reduction):
        fail("reduce: the fake has no reductions (see transitive_set)")

    def traverse(*, ordering = "preorder"):
        _check_ordering(ordering)
        return [n.value for n in _traverse(node, ordering) if n.has_value]

    return struct(
        _kind = "tset",
        _node = node,
        children = given_children,
        definition = definition,
        project_as_args = project_as_args,
        project_as_json = project_as_json,
        reduce = reduce,
        traverse = traverse,
        value = node.value,
    )

def _traverse(root, ordering):
    # The nodes of the set under `root` in Buck2's order for `ordering`, each once.
    _check_ordering(ordering)
    out = []
    if ordering == "preorder":
        # Marked seen when pushed: children in an order that keeps the stack small.
        stack = [root]
        seen = {}
        for _ in _FOREVER:
            if not stack:
                break
            node = stack.pop()
            out.append(node)
            for child in reversed(node.children):
                if child.id not in seen:
                    seen[child.id] = True
                    stack.append(child)
    elif ordering == "postorder":
        # Children left to right, then the node.
        stack = [(root, None)]
        seen = {}
        for child in reversed(root.children):
            stack.append((child, child.id))
        for _ in _FOREVER:
            if not stack:
                break
            node, pending = stack.pop()
            if pending == None:
                out.append(node)
            elif pending not in seen:
                seen[pending] = True
                stack.append((node, None))
                for child in reversed(node.children):
                    stack.append((child, child.id))
    elif ordering == "topological":
        # A node after every node that has it as a descendant: where it last occurs.
        counts = {}
        stack = [root]
        for _ in _FOREVER:
            if not stack:
                break
            node = stack.pop()
            for child in reversed(node.children):
                if child.id in counts:
                    counts[child.id] += 1
                else:
                    counts[child.id] = 1
                    stack.append(child)
        stack = [root]
        for _ in _FOREVER:
            if not stack:
                break
            node = stack.pop()
            out.append(node)
            for child in reversed(node.children):
                if counts[child.id] == 1:
                    stack.append(child)
                counts[child.id] -= 1
    elif ordering == "bfs":
        queue = [root]
        seen = {}
        for _ in _FOREVER:
            if not queue:
                break
            node = queue.pop(0)
            out.append(node)
            for child in node.children:
                if child.id not in seen:
                    seen[child.id] = True
                    queue.append(child)
    else:
        # dfs: the node, then its children left to right; marked seen when visited.
        stack = [(root, None)]
        seen = {}
        for _ in _FOREVER:
            if not stack:
                break
            node, identity = stack.pop()
            if identity != None:
                if identity in seen:
                    continue
                seen[identity] = True
            for child in reversed(node.children):
                if child.id not in seen:
                    stack.append((child, child.id))
            out.append(node)
    return out

def _projected(projection):
    # The projected values of an args projection, in its ordering (nodes without a value
    # are walked through and yield nothing).
    return [n.projections[projection.projection] for n in _traverse(projection.node, projection.ordering) if n.has_value]

# -- JSON as write_json renders it --------------------------------------------------------
def _json_value(value):
    kind = type(value)
    if kind in ("NoneType", "string", "int", "bool"):
        return value
    if kind == "float":
        fail("write_json: floats are not accepted")
    if kind in ("list", "tuple"):
        return [_json_value(v) for v in value]
    if kind == "dict":
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, _CmdArgs):
        return _render(value)
    if _is_artifact(value):
        return value.path
    if _is_args_projection(value):
        return _render(cmd_args(value))  # a command line: a list of strings (json.rs)
    fail("write_json: cannot encode a", kind)

# -- ctx ------------------------------------------------------------------------------------
def _snake_case(category):
    parts = category.split("_")
    for part in parts:
        if not part or part[0] not in "abcdefghijklmnopqrstuvwxyz":
            return False
        for c in part.elems():
            if c not in "abcdefghijklmnopqrstuvwxyz0123456789":
                return False
    return True

def _make_actions(label, bindable = []):
    owner = label.raw_target().text  # the artifacts this analysis declares, and only those, it binds
    declared = {}  # declared output key -> bound yet
    originals = {}  # declared output key -> the artifact declare_output returned
    for artifact in bindable:
        declared[artifact.key] = False  # outputs handed to a dynamic_output's f, to bind there
    categories = {}

    def declare_output(prefix, filename = None, /, *, dir = False, has_content_based_path = None):
        name = prefix if filename == None else prefix + "/" + filename
        parts = name.split("/")
        if not name or name.startswith("/") or ".." in parts or "." in parts or "" in parts:
            fail("declare_output: the path must be a normalized forward-relative path:", repr(name))
        if name in declared:
            fail("declare_output: the same path twice:", name)
        # Buck2 (app/buck2_build_api/src/actions/registry.rs) refuses one output inside
        # another: `o` and `o/b` are conflicting output locations.
        for other in declared:
            if other.startswith(name + "/") or name.startswith(other + "/"):
                fail("declare_output: conflicting output locations:", repr(other), "and", repr(name))
        declared[name] = False
        originals[name] = _artifact("buck-out/v2/gen/root/" + label.package + "/__" + label.name + "__/" + name, name, False, name, declared = True, owner = owner)
        return originals[name]

    def _bind(artifact):
        if artifact.is_source:
            fail("a source file cannot be an action's output:", artifact.path)
        if artifact.owner != owner or artifact.key not in declared:
            fail("this artifact was not declared here (nor handed to this dynamic_output's f):", artifact.path)
        if declared.get(artifact.key):
            fail("An artifact can be bound only once:", artifact.path)
        declared[artifact.key] = True

    def _output(output):
        artifact = declare_output(output) if type(output) == "string" else output
        _bind(artifact)
        if artifact.key in originals:
            return originals[artifact.key]  # in Buck2 the bound artifact is the declared one
        return _artifact(artifact.path, artifact.short_path, False, artifact.key, declared = True, owner = owner)

    def _check_inputs(value):
        for artifact, ignored in _artifacts_of(value):
            # A dependency's artifacts were bound by its own analysis.
            if not ignored and not artifact.is_output and artifact.owner == owner and not declared.get(artifact.key):
                fail("Input artifact must already be bound:", artifact.path)

    def write_json(output, content, /, *, with_inputs = False, pretty = False, absolute = False, has_content_based_path = None, use_dep_files_placeholder_for_content_based_paths = False):
        for artifact, ignored in _artifacts_of(content):
            if artifact.is_output and not ignored:
                fail("write_json: content cannot contain an output artifact:", artifact.path)
        _check_inputs(content)
        artifact = _output(output)
        _py_action({"kind": "write_json", "output": artifact.path, "content": json.encode(_json_value(content))})
        return artifact

    def write(output, content, /, *, is_executable = False, allow_args = False, with_inputs = False, absolute = False, has_content_based_path = None, use_dep_files_placeholder_for_content_based_paths = False):
        for artifact, ignored in _artifacts_of(content):
            if artifact.is_output and not ignored:
                fail("write: content cannot contain an output artifact (use cmd_args(..., ignore_artifacts = True)):", artifact.path)
        _check_inputs(content)
        artifact = _output(output)
        _py_action({"kind": "write", "output": artifact.path, "content": "\n".join(_render(cmd_args(content)))})
        return (artifact, []) if allow_args else artifact

    def run(arguments, /, *, category, identifier = None, env = _UNSET, local_only = False, prefer_local = False, prefer_remote = False, low_pass_filter = True, always_print_stderr = False, weight = _UNSET, weight_percentage = _UNSET, dep_files = _UNSET, metadata_env_var = _UNSET, metadata_path = _UNSET, incremental_metadata_ignore_tags = [], no_outputs_cleanup = False, incremental_remote_outputs = False, allow_cache_upload = None, allow_dep_file_cache_upload = False, allow_offline_output_cache = False, force_full_hybrid_if_capable = False, exe = _UNSET, unique_input_inodes = False, error_handler = None, remote_execution_dependencies = [], re_gang_workers = [], remote_execution_dynamic_image = None, timeout_seconds = None, meta_internal_extra_params = None, outputs_for_error_handler = [], expect_eligible_for_dedupe = None, eager_materialization_enabled = False):
        if type(category) != "string" or not _snake_case(category):
            fail("run: category must be snake_case, not", repr(category))
        if (category, identifier) in categories:
            fail("run: the pair (category, identifier) must be unique within a target:", repr((category, identifier)))
        # Buck2 (registry.rs) allows a category several times only if every action of it
        # has an identifier, whatever their order.
        if [c for c, i in categories if c == category and (i == None or identifier == None)]:
            fail("Analysis produced multiple actions with category `" + category + "` and at least one of them had no identifier")
        categories[(category, identifier)] = True
        if len([x for x in (local_only, prefer_local, prefer_remote) if x]) > 1:
            fail("run: only one of local_only, prefer_local and prefer_remote")
        # Buck2 takes these as Option<...> (app/buck2_action_impl/src/context/run.rs):
        # leaving one out is fine, passing None explicitly is a type error.
        for arg_name, arg_value in (("weight", weight), ("weight_percentage", weight_percentage), ("dep_files", dep_files), ("metadata_env_var", metadata_env_var), ("metadata_path", metadata_path), ("env", env), ("exe", exe)):
            if arg_value == None:
                fail("run: Type of parameter `" + arg_name + "` doesn't match, actual `NoneType` (leave it out instead of passing None)")
        env = None if env == _UNSET else env
        exe = None if exe == _UNSET else exe
        weight = None if weight == _UNSET else weight
        weight_percentage = None if weight_percentage == _UNSET else weight_percentage
        if weight != None and weight_percentage != None:
            fail("run: weight or weight_percentage, not both")
        if weight != None and weight <= 0:
            fail("run: weight must be greater than 0")
        if timeout_seconds != None and type(timeout_seconds) != "int":
            fail("run: Error unpacking value for parameter `timeout_seconds` of type `None | int`:", repr(timeout_seconds))
        if timeout_seconds != None and timeout_seconds <= 0:
            fail("run: timeout_seconds must be greater than 0")
        if exe != None and not isinstance(exe, RunInfo) and not isinstance(exe, _WorkerRunInfo):
            fail("run: exe must be a RunInfo or a WorkerRunInfo")
        env = env or {}
        found = _artifacts_of([arguments, exe, env])
        outputs = [a for a, _ in found if a.is_output]
        if not outputs:
            fail("run: an action needs at least one output")
        _check_inputs([arguments, exe, env])
        for artifact in outputs:
            _bind(artifact)
        recorded = {
            "kind": "run",
            "category": category,
            "identifier": identifier,
            "arguments": _render(cmd_args(arguments)),
            "env": {k: " ".join(_render(cmd_args(v))) for k, v in env.items()},
            "outputs": [a.path for a in outputs],
            "timeout_seconds": timeout_seconds,
            "weight": weight,
        }
        if isinstance(exe, _WorkerRunInfo):
            recorded["worker"] = _render(exe.worker.exe) if exe.worker else None
            recorded["fallback"] = _render(exe.exe)
        elif exe != None:
            recorded["exe"] = _render(exe)
        _py_action(recorded)
        return None

    def unbound():
        return [key for key, bound in declared.items() if not bound]

    def symlinked_dir(output, srcs, /, *, has_content_based_path = None):
        for name, source in srcs.items():
            if not _is_artifact(source):
                fail("symlinked_dir: srcs values must be artifacts")
        _check_inputs(list(srcs.values()))
        artifact = _output(output)
        _py_action({"kind": "symlinked_dir", "output": artifact.path, "srcs": {k: v.path for k, v in srcs.items()}})
        return artifact

    def dynamic_output(*, dynamic, inputs = None, outputs, f):
        # Buck2 runs `f` once the `dynamic` artifacts are built; the fake asks the Python
        # side (a build runner, or a test's canned contents) for them right away.
        if type(dynamic) != "list" or not all([_is_artifact(a) for a in dynamic]):
            fail("dynamic_output: `dynamic` must be a list of artifacts")
        if type(outputs) != "list" or not outputs:
            fail("dynamic_output: `outputs` must be a non-empty list of OutputArtifacts")
        for output in outputs:
            if not _is_artifact(output) or not output.is_output:
                fail("dynamic_output: `outputs` must be OutputArtifacts (.as_output()), not", repr(output))
            if output.key not in originals:
                fail("dynamic_output: an output not declared by this target:", output.path)
        _check_inputs(dynamic)
        for output in outputs:
            _bind(output)
        _py_action({"kind": "dynamic_output", "dynamic": [a.path for a in dynamic], "outputs": [o.path for o in outputs]})
        contents = _py_dynamic([a.path for a in dynamic])
        values = {}
        for artifact, content in zip(dynamic, contents):
            values[artifact] = _artifact_value(content)
        plain = [originals[o.key] for o in outputs]
        inner = _make_actions(label, plain)
        f(struct(actions = inner, label = label), values, {o: o for o in plain})
        if inner._unbound():
            fail("dynamic_output: f did not bind every output:", inner._unbound())

    def tset(definition, /, *, value = _UNSET, children = _UNSET):
        if children == None:
            fail("Operation `(iter)` not supported on type `NoneType`")
        return _make_tset(definition, value, children)

    return struct(declare_output = declare_output, dynamic_output = dynamic_output, run = run, symlinked_dir = symlinked_dir, tset = tset, write = write, write_json = write_json, _unbound = unbound)

def _artifact_value(content):
    # Buck2's ArtifactValue has only these two methods.
    return struct(read_string = lambda: content, read_json = lambda: json.decode(content))


def fake_artifact(path):
    # A source file, for dependencies given by hand in tests.
    return _source(path)

def glob(include, *, exclude = []):
    return _py_glob(include, exclude)

def fake_target_label(text):
    package, _, name = text.split("//")[-1].partition(":")
    return struct(_kind = "target_label", name = name, package = package, text = text)

def fake_dep_of(providers):
    # A dependency from {provider type: instance}, for providers the fake cannot name.
    return dict(providers)

def fake_dep(*providers):
    return {type_of(p): p for p in providers}

def fake_dep_from(providers, provider_types):
    # A dependency on a target the fake analysed before: its providers as that analysis
    # left them (frozen, as Buck2 hands them to a dependent); provider_types names the
    # types of the user providers among them ({"JavaLibraryInfo": JavaLibraryInfo}).
    dep = {}
    for p in providers:
        name = _provider_name(p)
        dep[provider_types[name] if name in provider_types else type_of(p)] = p
    return dep

def type_of(p):
    # Rule code indexes a dependency with the public name (ConstraintValueInfo, not the
    # record type behind the fake's checking constructor).
    public = {
        _DefaultInfo: DefaultInfo,
        RunInfo: RunInfo,
        _WorkerInfo: WorkerInfo,
        _WorkerRunInfo: WorkerRunInfo,
        _ConstraintSettingInfo: ConstraintSettingInfo,
        _ConstraintValueInfo: ConstraintValueInfo,
        _ConfigurationInfo: ConfigurationInfo,
        _PlatformInfo: PlatformInfo,
        _ExecutionPlatformInfo: ExecutionPlatformInfo,
        _ExecutionPlatformRegistrationInfo: ExecutionPlatformRegistrationInfo,
    }
    for record_type, name in public.items():
        if isinstance(p, record_type):
            return name
    fail("fake_dep: the fake knows only built-in providers, not", repr(p))

def _coerce(name, spec, value, targets, package):
    kind = spec.kind
    if kind == "default_only":
        return _coerce(name, spec.inner, spec.default, targets, package)
    if kind == "option":
        return None if value == None else _coerce(name, spec.inner, value, targets, package)
    if kind in ("dep", "exec_dep", "toolchain_dep"):
        dep = targets.get(value) if type(value) == "string" else value
        if dep == None:
            fail("attribute", name, ": unknown target", value)
        for p in spec.extra["providers"]:
            if p not in dep:
                fail("attribute", name, ": Attribute requires a dep that provides", repr(p))
        return dep
    if kind == "source":
        if _is_artifact(value):
            return value
        _check_type("attribute " + name, value, ["string"])
        if value.startswith("/") or ".." in value.split("/"):
            fail("attribute", name, ": a source path must be relative to the package, not", repr(value))
        return _source(value, package)
    if kind == "list":
        _check_type("attribute " + name, value, ["list"])
        return [_coerce(name, spec.inner, v, targets, package) for v in value]
    if kind == "dict":
        _check_type("attribute " + name, value, ["dict"])
        return {_coerce(name, spec.inner[0], k, targets, package): _coerce(name, spec.inner[1], v, targets, package) for k, v in value.items()}
    if kind == "enum":
        if value.lower() not in spec.extra["variants"]:
            fail("attribute `" + name + "`: " + repr(value) + " is not one of " + repr(spec.extra["variants"]))
        return value.lower()
    expected = {"string": "string", "bool": "bool", "int": "int"}[kind]
    _check_type("attribute " + name, value, [expected])
    return value

def fake_analyse(rule_call, label_text, given, targets, constraints = None):
    # The providers as plain data (see fake_providers).
    return fake_plain(fake_providers(rule_call, label_text, given, targets, constraints))

def fake_plain(providers):
    return [_plain_provider(p) for p in providers]

def fake_providers(rule_call, label_text, given, targets, constraints = None):
    # Analyses one target: its attributes coerced and checked against the rule's, its
    # implementation run, and its result checked as Buck2 checks it.
    impl = rule_call(_harness_impl = True)
    schema = rule_call(_harness_attrs = True)
    for name in given:
        if name not in schema and name != "name":
            fail("unknown attribute `" + name + "` of the rule")
    values = {"name": label_text.split(":")[-1]}
    package = label_text.split("//")[-1].partition(":")[0]
    for name, spec in schema.items():
        if name in given and spec.kind == "default_only":
            fail("attribute", name, "cannot be set (default_only)")
        value = _resolve_select(given.get(name, spec.default), constraints)
        if value == _NO_DEFAULT:
            fail("missing mandatory attribute `" + name + "`")
        values[name] = _coerce(name, spec, value, targets, package)
    package, _, name = label_text.removeprefix("//").partition(":")
    target_label = struct(_kind = "target_label", name = name, package = package, text = "root//" + package + ":" + name)
    label = struct(cell = "root", name = name, package = package, raw_target = lambda: target_label)
    actions = _make_actions(label)
    ctx = struct(attrs = struct(**values), actions = actions, label = label)
    providers = impl(ctx)
    if actions._unbound():
        fail("Artifact must be bound by now (missing an .as_output() call?):", actions._unbound())
    if type(providers) != "list":
        fail("rule implementation: expected a list of Provider objects, not", type(providers))
    seen = {}
    for p in providers:
        key = _provider_name(p)
        if key in seen:
            fail("provider", key, "returned twice")
        seen[key] = True
    if "DefaultInfo" not in seen:
        fail("rule implementation did not receive a `DefaultInfo` provider")
    for p in providers:
        if isinstance(p, _PlatformInfo) and p.label not in (str(target_label), target_label.text):
            fail("`PlatformInfo` label for `platform()` rule should name the platform target itself, not", repr(p.label))
    return providers

def _provider_name(p):
    return repr(p).split("(")[0].removeprefix("record[").removesuffix("]").removeprefix("_")

def _plain(value):
    if isinstance(value, _CmdArgs):
        return {"cmd_args": _render(value), "hidden": [_plain(h) for h in value.hidden]}
    if isinstance(value, RunInfo):
        return {"RunInfo": _plain(value.args)}
    if _is_artifact(value):
        return {"artifact": value.path}
    if type(value) == "list":
        return [_plain(v) for v in value]
    if type(value) == "dict":
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if type(value) == "struct" and getattr(value, "_kind", None) == "target_label":
        return value.text
    if _is_args_projection(value):
        return {"tset_projection": value.projection, "ordering": value.ordering, "cmd_args": _render(cmd_args(value))}
    if _is_tset(value):
        # Its values, in Buck2's default (preorder) traversal.
        return {"tset": [_plain(n.value) for n in _traverse(value._node, "preorder") if n.has_value]}
    if type(value) == "record":
        return _plain_provider(value)
    return value

def _plain_key(key):
    if type(key) == "struct" and getattr(key, "_kind", None) == "target_label":
        return key.text
    return str(key)

def _plain_provider(p):
    out = {"_provider": _provider_name(p)}
    for f in dir(p):
        out[f] = _plain(getattr(p, f))
    return out

# -- rule -------------------------------------------------------------------------------------
_IMPLICIT = ("name", "default_target_platform", "target_compatible_with", "compatible_with", "exec_compatible_with", "visibility", "within_view", "metadata", "tests", "modifiers")

def rule(*, impl, attrs, cfg = None, supports_incoming_transition = None, doc = "", is_configuration_rule = False, is_toolchain_rule = False, uses_plugins = []):
    for name in attrs:
        if name in _IMPLICIT:
            fail("User provided attribute", repr(name), "overrides internal attribute")
    if is_configuration_rule and is_toolchain_rule:
        fail("rule: is_configuration_rule and is_toolchain_rule are mutually exclusive")

    def rule_call(_harness_impl = False, _harness_attrs = False, **kwargs):
        if _harness_impl:
            return impl
        if _harness_attrs:
            return attrs
        if "name" not in kwargs:
            fail("missing `name` for a rule call")
        recorded = {k: v for k, v in kwargs.items() if type(v) in ("string", "int", "bool", "list", "dict")}
        recorded["_impl"] = str(impl).split(".")[-1]  # which rule: its impl function's name
        _py_target(kwargs["name"], recorded)
        return None

    return rule_call

# -- select() and configurations ----------------------------------------------------------
_Select = record(choices = dict)

def select(choices, /):
    if type(choices) != "dict":
        fail("select: expects a dict")
    for key in choices:
        if type(key) != "string":
            fail("select: keys must be strings, not", type(key))
    return _Select(choices = choices)

def _resolve_select(value, constraints):
    # Most specific matching key wins in Buck2; here a key is one constraint value label.
    # constraints == None is Buck2's <unspecified> platform (no target platform given):
    # there, a select() with any key but DEFAULT is an error.
    if not isinstance(value, _Select):
        return value
    if constraints == None:
        keys = [k for k in value.choices if k != "DEFAULT"]
        if keys:
            fail("Error getting configuration node of `" + keys[0] + "` within the `<unspecified>` configuration: Attempted to access the configuration data for the <unspecified> platform. This platform is used when the global default platform is unspecified and in that case configuration features (like `select()`) are unsupported.")
        return value.choices["DEFAULT"]
    # A cell-relative key ("//platforms:x", from a prelude .bzl's attribute default)
    # names a target of the .bzl's own cell; the fake matches it in any cell.
    matches = [k for k in value.choices if k != "DEFAULT" and (k in constraints or (k.startswith("//") and [c for c in constraints if c.endswith(k)]))]
    if len(matches) > 1:
        fail("select: ambiguous keys", matches)
    if matches:
        return value.choices[matches[0]]
    if "DEFAULT" in value.choices:
        return value.choices["DEFAULT"]
    fail("select: no key matches", constraints, "and there is no DEFAULT")

def _is_target_label(value):
    return type(value) == "struct" and getattr(value, "_kind", None) == "target_label"

_ConstraintSettingInfo = record(label = typing.Any, default = typing.Any)

def ConstraintSettingInfo(*, label, default = None):
    if not _is_target_label(label):
        fail("ConstraintSettingInfo: label must be a TargetLabel (ctx.label.raw_target())")
    return _ConstraintSettingInfo(label = label, default = default)

_ConstraintValueInfo = record(setting = typing.Any, label = typing.Any)

def ConstraintValueInfo(*, setting, label):
    if not isinstance(setting, _ConstraintSettingInfo):
        fail("ConstraintValueInfo: setting must be a ConstraintSettingInfo")
    return _ConstraintValueInfo(setting = setting, label = label)

_ConfigurationInfo = record(constraints = dict, values = dict)

def ConfigurationInfo(*, constraints, values):
    for setting, value in constraints.items():
        if not _is_target_label(setting) or not isinstance(value, _ConstraintValueInfo):
            fail("ConfigurationInfo: constraints maps setting TargetLabels to ConstraintValueInfo")
    for key in values:
        if len(key.split(".")) != 2:
            fail("ConfigurationInfo: values keys are section.key, not", repr(key))
    return _ConfigurationInfo(constraints = constraints, values = values)

_CommandExecutorConfig = record(local_enabled = bool, remote_enabled = bool, use_persistent_workers = bool, use_bazel_protocol_remote_persistent_workers = bool, remote_execution_properties = typing.Any, remote_execution_use_case = typing.Any, use_limited_hybrid = bool, allow_limited_hybrid_fallbacks = bool, remote_cache_enabled = typing.Any, allow_cache_uploads = bool, remote_output_paths = typing.Any)

def CommandExecutorConfig(*, local_enabled, remote_enabled, remote_cache_enabled = None, remote_dep_file_cache_enabled = False, remote_execution_properties = None, remote_execution_action_key = None, remote_execution_max_input_files_mebibytes = None, remote_execution_queue_time_threshold_s = None, remote_execution_use_case = None, use_limited_hybrid = False, allow_limited_hybrid_fallbacks = False, allow_hybrid_fallbacks_on_failure = False, use_windows_path_separators = False, use_persistent_workers = False, use_bazel_protocol_remote_persistent_workers = False, allow_cache_uploads = False, max_cache_upload_mebibytes = None, experimental_low_pass_filter = False, remote_output_paths = None, network_access = None, remote_execution_resource_units = None, remote_execution_dependencies = [], remote_execution_gang_workers = [], remote_execution_dynamic_image = None, meta_internal_extra_params = None, priority = None):
    if remote_enabled and (remote_execution_properties == None or remote_execution_use_case == None):
        fail("CommandExecutorConfig: MissingField: remote_enabled needs remote_execution_properties and remote_execution_use_case")
    if remote_output_paths not in (None, "strict", "compatibility", "output_paths"):
        fail("CommandExecutorConfig: Invalid remote_output_paths", repr(remote_output_paths))
    if remote_execution_properties != None and type(remote_execution_properties) != "dict":
        fail("CommandExecutorConfig: remote_execution_properties must be a dict")
    return _CommandExecutorConfig(local_enabled = local_enabled, remote_enabled = remote_enabled, use_persistent_workers = use_persistent_workers, use_bazel_protocol_remote_persistent_workers = use_bazel_protocol_remote_persistent_workers, remote_execution_properties = remote_execution_properties, remote_execution_use_case = remote_execution_use_case, use_limited_hybrid = use_limited_hybrid, allow_limited_hybrid_fallbacks = allow_limited_hybrid_fallbacks, remote_cache_enabled = remote_cache_enabled, allow_cache_uploads = allow_cache_uploads, remote_output_paths = remote_output_paths)

_PlatformInfo = record(label = str, configuration = typing.Any)

def PlatformInfo(*, label, configuration):
    if type(label) != "string":
        fail("PlatformInfo: label must be a string (str(ctx.label.raw_target())), not", type(label))
    if not isinstance(configuration, _ConfigurationInfo):
        fail("PlatformInfo: configuration must be a ConfigurationInfo")
    return _PlatformInfo(label = label, configuration = configuration)

_ExecutionPlatformInfo = record(label = typing.Any, configuration = typing.Any, executor_config = typing.Any)

def ExecutionPlatformInfo(*, label, configuration, executor_config):
    if not _is_target_label(label):
        fail("ExecutionPlatformInfo: label must be a TargetLabel, unlike PlatformInfo's")
    if not isinstance(configuration, _ConfigurationInfo) or not isinstance(executor_config, _CommandExecutorConfig):
        fail("ExecutionPlatformInfo: configuration must be a ConfigurationInfo and executor_config a CommandExecutorConfig")
    return _ExecutionPlatformInfo(label = label, configuration = configuration, executor_config = executor_config)

_ExecutionPlatformRegistrationInfo = record(platforms = list, fallback = typing.Any)

def ExecutionPlatformRegistrationInfo(*, platforms, fallback = None, exec_marker_constraint = None):
    for platform in platforms:
        if not isinstance(platform, _ExecutionPlatformInfo):
            fail("ExecutionPlatformRegistrationInfo: platforms must be ExecutionPlatformInfo values")
    return _ExecutionPlatformRegistrationInfo(platforms = platforms, fallback = fallback)

def read_root_config(section, key, default = None, /):
    return _py_read_root_config(section, key, default)
"""


#: What every evaluated file sees of the fake, as Buck2's globals. They come from one
#: frozen module (one load), so a provider type is the same object in every file.
EXPORTS = (
    "AnalysisContext", "AnalysisActions", "Provider", "Artifact", "Dependency", "Label", "Attr",
    "attrs", "provider", "provider_field", "DefaultInfo", "RunInfo", "WorkerInfo",
    "WorkerRunInfo", "cmd_args", "rule", "read_root_config", "fake_analyse", "fake_dep",
    "fake_dep_of", "fake_dep_from", "fake_providers", "fake_plain", "select",
    "ConstraintSettingInfo", "ConstraintValueInfo", "ConfigurationInfo",
    "CommandExecutorConfig", "ExecutionPlatformInfo", "ExecutionPlatformRegistrationInfo", "PlatformInfo",
    "fake_target_label", "fake_artifact", "glob", "transitive_set",
)  # fmt: skip
API_LOAD_ID = "@buck2_fake//:api.bzl"


def starlark_literal(value: Any) -> str:
    """A Starlark expression for a JSON-like Python value."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(starlark_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(k)}: {starlark_literal(v)}" for k, v in value.items())
            + "}"
        )
    return json.dumps(value)


#: Where the analyses a fake keeps are loaded from (a dependent's harness loads them).
ANALYSIS_LOAD_PREFIX = "@fake_analysis//:"


@dataclass(frozen=True)
class AnalysedDep:
    """A dependency on a target that the same fake analysed before (``Buck2Fake.dep``): the
    dependent gets that analysis's own providers, frozen, as Buck2 hands them over; so a
    transitive set shared by two dependencies is one node, as in Buck2."""

    label: str


@dataclass
class Analysis:
    """What analysing one target produced."""

    providers: list[dict[str, Any]]
    actions: list[dict[str, Any]]

    def provider(self, name: str) -> dict[str, Any]:
        matches = [p for p in self.providers if p["_provider"] == name]
        assert len(matches) == 1, f"{name} not among {[p['_provider'] for p in self.providers]}"
        return matches[0]

    def action(self, kind: str) -> dict[str, Any]:
        (match,) = [a for a in self.actions if a["kind"] == kind]
        return match


@dataclass
class Buck2Fake:
    """Loads .bzl files from this repository's cells and analyses targets."""

    root_config: dict[tuple[str, str], str] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    #: The JSON-able attributes of each target a BUCK file declared, by name.
    target_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cache: dict[Path, sl.FrozenModule] = field(default_factory=dict)
    _api: sl.FrozenModule | None = None
    _provider_names: set[str] | None = None
    _provider_loads: dict[str, str] | None = None
    _package: Path = REPO_ROOT
    _analysing: bool = False
    #: Which files read each (section, key) with read_root_config, as paths from the root.
    config_reads: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: The files being evaluated, innermost last (for what only a .bzl file may do).
    _evaluating: list[Path] = field(default_factory=list)
    _next_id: int = 0
    #: Each analysis kept for dependents: its frozen harness module, by number.
    _analysis_modules: dict[str, sl.FrozenModule] = field(default_factory=dict)
    #: Per analysed label: (its module's number, the names of the providers it returned).
    _analysed: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    #: Builds the artifacts a dynamic_output reads and returns their contents (a build
    #: runner executes the actions recorded so far; analysis tests give canned contents).
    dynamic_resolver: Callable[[list[str]], list[str]] | None = None

    def api(self) -> sl.FrozenModule:
        if self._api is None:
            module = sl.Module()
            module.add_callable("_py_action", lambda action: self.actions.append(action))
            module.add_callable("_py_dynamic", self._dynamic_contents)
            module.add_callable("_py_target", self._record_target)
            module.add_callable("_py_glob", self._glob)
            module.add_callable("_py_read_root_config", self._read_root_config)
            module.add_callable("_py_next_id", self._new_id)
            module.add_callable("_py_require_bzl", self._require_bzl)
            sl.eval(module, sl.parse("<buck2 fake>", FAKE_API, buck2_bzl_dialect()), GLOBALS)
            self._api = module.freeze()
        return self._api

    def _provider_files(self) -> list[Path]:
        """The .bzl files of the cells and the examples."""
        files = [p for cell in ("prelude", "toolchains") for p in CELLS[cell].rglob("*.bzl")]
        return files + list(REPO_ROOT.glob("examples/**/*.bzl"))

    def _provider_modules(self) -> dict[str, str]:
        if self._provider_loads is None:
            self._provider_loads = provider_modules(self._provider_files())
        return self._provider_loads

    def _providers(self) -> set[str]:
        """Every provider declared in the cells' .bzl files (see provider_annotations)."""
        if self._provider_names is None:
            self._provider_names = provider_names(self._provider_files())
        return self._provider_names

    def _dynamic_contents(self, paths: list[str]) -> list[str]:
        """What a dynamic_output's `dynamic` artifacts hold, from ``dynamic_resolver``."""
        if self.dynamic_resolver is None:
            raise RuntimeError(
                f"dynamic_output needs the contents of {paths}: give Buck2Fake a dynamic_resolver"
            )
        return self.dynamic_resolver(paths)

    def _new_id(self) -> int:
        """A number no other value of this fake has: the identity of a transitive set or
        a definition, which Buck2 compares by pointer."""
        self._next_id += 1
        return self._next_id

    def _require_bzl(self, function: str) -> None:
        """``function`` runs only while a .bzl file loads (transitive_set_definition.rs)."""
        if self._analysing:
            raise RuntimeError(
                "This function is unavailable during analysis (usual solution is to place "
                "the information on a toolchain)"
            )
        if self._evaluating and self._evaluating[-1].name == "BUCK":
            raise RuntimeError(f"`{function}()` can only be used in `bzl` files")

    def _read_root_config(self, section: str, key: str, default: str | None) -> str | None:
        if self._analysing:
            # Buck2: "This function is unavailable during analysis (usual solution is to
            # place the information on a toolchain)".
            raise RuntimeError("read_root_config() is unavailable during analysis")
        if self._evaluating:
            reader = self._evaluating[-1]
            where = reader.relative_to(REPO_ROOT) if reader.is_relative_to(REPO_ROOT) else reader
            self.config_reads.setdefault((section, key), set()).add(where.as_posix())
        return self.root_config.get((section, key), default)

    def _glob(self, include: list[str], exclude: list[str]) -> list[str]:
        """glob() in the package of the BUCK file being evaluated."""
        found: set[str] = set()
        for pattern in include:
            found |= {
                str(p.relative_to(self._package))
                for p in self._package.glob(pattern)
                if p.is_file()
            }
        for pattern in exclude:
            found -= {str(p.relative_to(self._package)) for p in self._package.glob(pattern)}
        return sorted(found)

    def _record_target(self, name: str, attrs: dict[str, Any]) -> None:
        self.targets.append(name)
        self.target_attrs[name] = attrs

    def _module(self) -> sl.Module:
        """A module that already has the fake's globals bound (by a load of its own, so
        that the file's own line numbers stay as they are)."""
        module = sl.Module()
        names = ", ".join(f'"{name}"' for name in EXPORTS)
        preamble = sl.parse(
            "<buck2 globals>", f'load("{API_LOAD_ID}", {names})\n', buck2_bzl_dialect()
        )
        sl.eval(module, preamble, GLOBALS, sl.FileLoader(lambda load_id: self.api()))
        return module

    def resolve(self, load_id: str, importer: Path, importer_cell: str) -> tuple[Path, str]:
        """A load() path: ``@cell//pkg:file.bzl``, ``//pkg:file.bzl`` (the importer's cell) or ``:file.bzl``."""
        if load_id.startswith(":"):
            return importer.parent / load_id[1:], importer_cell
        if load_id.startswith("@"):
            cell, _, rest = load_id[1:].partition("//")
        elif load_id.startswith("//"):
            cell, rest = importer_cell, load_id[2:]
        else:
            raise ValueError(f"bad load path {load_id!r}: Buck2 needs @cell//pkg:file.bzl")
        package, _, filename = rest.partition(":")
        return CELLS[cell] / package / filename, cell

    def eval_file(self, path: Path, cell: str, source: str | None = None) -> sl.FrozenModule:
        """Evaluates a .bzl file (or ``source`` as if it were at ``path``), or a BUCK file
        in the build-file dialect."""
        path = path.resolve()
        if source is None and path in self._cache:
            return self._cache[path]
        module = self._module()
        text = path.read_text() if source is None else source
        dialect = buck2_build_dialect() if path.name == "BUCK" else buck2_bzl_dialect()
        if path.name == "BUCK":
            self._package = path.parent

        def load(load_id: str) -> sl.FrozenModule:
            if load_id.startswith(ANALYSIS_LOAD_PREFIX):
                return self._analysis_modules[load_id.removeprefix(ANALYSIS_LOAD_PREFIX)]
            target, target_cell = self.resolve(load_id, path, cell)
            return self.eval_file(target, target_cell)

        if path.name != "BUCK":
            problems = unfreezable_captures(text, str(path))
            problems += provider_annotations(text, str(path), self._providers())
            problems += unbound_definitions(text, str(path))
            if problems:
                raise UnfreezableCapture("\n".join(problems))
        self._evaluating.append(path)
        try:
            sl.eval(module, sl.parse(str(path), text, dialect), GLOBALS, sl.FileLoader(load))
        finally:
            self._evaluating.pop()
        frozen = module.freeze()
        if source is None:
            self._cache[path] = frozen
        return frozen

    def value_of(self, bzl: Path, cell: str, name: str) -> object:
        """The value the .bzl file ``bzl`` of ``cell`` binds to ``name``, as Python."""
        probe = f'load(":{bzl.name}", "{name}")\ndef value():\n    return {name}\n'
        return self.eval_file(bzl.parent / "__value_probe__.bzl", cell, probe).call("value")

    def error_of(self, expression: str, where: Path) -> str:
        """The error a .bzl file that evaluates ``expression`` fails with (fails if none)."""
        try:
            self.eval_file(where / "case.bzl", "root", f"x = {expression}\n")
        except sl.StarlarkError as exc:
            return str(exc)
        raise AssertionError(f"{expression} was accepted; Buck2 rejects it")

    def dep(self, label: str) -> AnalysedDep:
        """A dependency on ``label``, analysed before by this fake, for ``analyse``'s targets."""
        if label not in self._analysed:
            raise KeyError(f"{label} was not analysed by this fake (analyse it first)")
        return AnalysedDep(label)

    def _dep_expression(
        self, dep: AnalysedDep, alias: str, loads: dict[str, dict[str, str]]
    ) -> str:
        """``fake_dep_from(...)`` over a kept analysis; adds what it loads to ``loads``."""
        number, names = self._analysed[dep.label]
        loads.setdefault(ANALYSIS_LOAD_PREFIX + number, {})[alias] = "providers"
        types = []
        for name in names:
            where = self._provider_modules().get(name)
            if where is not None:
                loads.setdefault(where, {})[f"_fake_type_{name}"] = name
                types.append(f"{json.dumps(name)}: _fake_type_{name}")
        return f"fake_dep_from({alias}, {{{', '.join(types)}}})"

    def analyse(
        self,
        bzl: str,
        rule_name: str,
        label: str,
        attrs: dict[str, str],
        targets: Mapping[str, str | AnalysedDep] | None = None,
        loads: dict[str, list[str]] | None = None,
        constraints: list[str] | None = None,
        harness_dir: Path = CELLS["root"],
    ) -> Analysis:
        """Analyses ``label``, a target of rule ``rule_name`` from ``bzl`` (``@cell//pkg:f.bzl``,
        or ``:f.bzl`` in ``harness_dir``, a directory of the root cell by default).

        ``attrs`` and ``targets`` (labels of deps, e.g. defaults) are Starlark expressions,
        which may use the fake's ``fake_dep(...)`` and the built-in providers; a target may
        also be ``self.dep(label)``, a target this fake analysed before. The analysis is
        kept (its providers frozen) for dependents.
        ``constraints`` are the constraint values of the platform the target is configured
        for; None is Buck2's ``<unspecified>`` platform, where a select() with keys other
        than DEFAULT fails (an exec dep, such as a worker tool, has the execution
        platform's: pass ``[]`` or its values)."""
        needed: dict[str, dict[str, str]] = {}
        for path, names in (loads or {}).items():
            needed.setdefault(path, {}).update({n: n for n in names})
        needed.setdefault(bzl, {})[rule_name] = rule_name
        known_items = []
        for index, (key, value) in enumerate((targets or {}).items()):
            if isinstance(value, AnalysedDep):
                value = self._dep_expression(value, f"_fake_dep_{index}", needed)
            known_items.append(f"{json.dumps(key)}: {value}")
        given = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in attrs.items()) + "}"
        known = "{" + ", ".join(known_items) + "}"
        header = "".join(
            f"load({json.dumps(path)}, "
            + ", ".join(f"{alias} = {json.dumps(name)}" for alias, name in names.items())
            + ")\n"
            for path, names in needed.items()
        )
        harness = (
            header + f"providers = fake_providers({rule_name}, {json.dumps(label)}, {given}, "
            f"{known}, {starlark_literal(constraints)})\n"
            "def plain():\n"
            "    return fake_plain(providers)\n"
        )
        # The .bzl files load first: read_root_config is allowed there, not in analysis.
        harness_path = harness_dir / "__harness__.bzl"
        for path in needed:
            if not path.startswith(ANALYSIS_LOAD_PREFIX):
                self.eval_file(*self.resolve(path, harness_path, "root"))
        first = len(self.actions)
        self._analysing = True
        try:
            module = self.eval_file(harness_path, "root", harness)
        finally:
            self._analysing = False
        providers: list[dict[str, Any]] = module.call("plain")  # type: ignore[assignment]
        number = str(len(self._analysis_modules))
        self._analysis_modules[number] = module
        self._analysed[label] = (number, [p["_provider"] for p in providers])
        return Analysis(providers, self.actions[first:])
