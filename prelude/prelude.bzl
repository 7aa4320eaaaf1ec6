"""What the prelude cell exports. Loaded names are not re-exported in Buck2: bind each again."""

load("//haskell:haskell_binary.bzl", _haskell_binary = "haskell_binary")
load("//haskell:haskell_library.bzl", _haskell_library = "haskell_library")
load("//haskell:haskell_providers.bzl", _HaskellLibraryInfo = "HaskellLibraryInfo")
load("//haskell:haskell_toolchain.bzl", _haskell_toolchain = "haskell_toolchain")
load("//haskell:haskell_toolchain_providers.bzl", _HaskellToolchainInfo = "HaskellToolchainInfo")
load("//java:java_binary.bzl", _java_binary = "java_binary")
load("//java:java_library.bzl", _java_library = "java_library")
load("//java:java_providers.bzl", _JavaLibraryInfo = "JavaLibraryInfo")
load("//java:java_toolchain.bzl", _java_toolchain = "java_toolchain")
load("//java:java_toolchain_providers.bzl", _JavaToolchainInfo = "JavaToolchainInfo")
load("//worker:host_command.bzl", _host_command = "host_command")
load("//worker:worker_run.bzl", _ENVELOPE_ENV = "ENVELOPE_ENV", _worker_run = "worker_run")
load("//worker:worker_settings.bzl", _worker_settings = "worker_settings")
load("//worker:worker_settings_providers.bzl", _WorkerSettingsInfo = "WorkerSettingsInfo")
load("//worker:worker_tool.bzl", _routing_select = "routing_select", _worker_tool = "worker_tool")
load("//worker:worker_tool_providers.bzl", _WorkerToolInfo = "WorkerToolInfo")

WorkerSettingsInfo = _WorkerSettingsInfo
WorkerToolInfo = _WorkerToolInfo
host_command = _host_command
worker_settings = _worker_settings
worker_tool = _worker_tool
worker_run = _worker_run
ENVELOPE_ENV = _ENVELOPE_ENV
routing_select = _routing_select

JavaLibraryInfo = _JavaLibraryInfo
JavaToolchainInfo = _JavaToolchainInfo
java_binary = _java_binary
java_library = _java_library
java_toolchain = _java_toolchain

HaskellLibraryInfo = _HaskellLibraryInfo
HaskellToolchainInfo = _HaskellToolchainInfo
haskell_binary = _haskell_binary
haskell_library = _haskell_library
haskell_toolchain = _haskell_toolchain
