"""What the prelude cell exports. Loaded names are not re-exported in Buck2: bind each again."""

load("//worker:providers.bzl", _WorkerToolInfo = "WorkerToolInfo")
load("//worker:runtime_command.bzl", _runtime_command = "runtime_command")
load("//worker:worker_tool.bzl", _worker_tool = "worker_tool")

WorkerToolInfo = _WorkerToolInfo
runtime_command = _runtime_command
worker_tool = _worker_tool
