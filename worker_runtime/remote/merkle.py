"""Input roots as REAPI Merkle trees: files placed at relative paths become canonical
Directory messages (children sorted by name, one path segment each), with the digests of
every Directory and file, so that only what the server lacks is uploaded."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

from worker_runtime.digests import DigestCache
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.convention import TOOL_INPUT_PROPERTY, safe_relative_path


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def digest_key(digest: re_pb2.Digest) -> tuple[str, int]:
    return digest.hash, digest.size_bytes


@dataclass
class Blobs:
    """What an input root is made of: serialized Directories in memory, files on disk."""

    data: dict[tuple[str, int], bytes] = field(default_factory=dict)
    files: dict[tuple[str, int], Path] = field(default_factory=dict)

    def digests(self) -> list[re_pb2.Digest]:
        keys = set(self.data) | set(self.files)
        return [re_pb2.Digest(hash=h, size_bytes=s) for h, s in sorted(keys)]


@dataclass
class _Node:
    files: dict[str, re_pb2.FileNode] = field(default_factory=dict)
    dirs: dict[str, _Node] = field(default_factory=dict)


class MissingInputError(FileNotFoundError):
    """An input named by the request is not a readable regular file."""


def build_input_root(
    inputs: list[tuple[str, Path]],
    tools: set[str],
    cache: DigestCache,
    blobs: Blobs,
) -> re_pb2.Digest:
    """The root Directory's digest for ``inputs`` ((path in the root, file on disk));
    paths in ``tools`` get the ``bazel_tool_input`` node property. Adds every blob to
    ``blobs``. Directories given as inputs are walked."""
    root = _Node()
    for relative, local in _expand(inputs):
        path = safe_relative_path(relative, "input path")
        hex_digest = cache.digest(str(local))
        if hex_digest is None:
            raise MissingInputError(f"input {relative} ({local}) is missing or not a regular file")
        size = local.stat().st_size
        node = re_pb2.FileNode(
            name=path.rsplit("/", 1)[-1],
            digest=re_pb2.Digest(hash=hex_digest, size_bytes=size),
            is_executable=os.access(local, os.X_OK),
        )
        if relative in tools or path in tools:
            node.node_properties.properties.add(name=TOOL_INPUT_PROPERTY, value="")
        parent = root
        for part in path.split("/")[:-1]:
            parent = parent.dirs.setdefault(part, _Node())
        parent.files[node.name] = node
        blobs.files[(hex_digest, size)] = local
    return _store(root, blobs)


def _expand(inputs: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    out = []
    for relative, local in inputs:
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    out.append((f"{relative}/{path.relative_to(local).as_posix()}", path))
        else:
            out.append((relative, local))
    return out


def store_message(message: Message, blobs: Blobs) -> re_pb2.Digest:
    """Adds ``message``, serialized deterministically, to ``blobs``; returns its digest."""
    data = message.SerializeToString(deterministic=True)
    digest = digest_of(data)
    blobs.data[digest_key(digest)] = data
    return digest


def _store(node: _Node, blobs: Blobs) -> re_pb2.Digest:
    directory = re_pb2.Directory()
    for name in sorted(node.files):
        directory.files.append(node.files[name])
    for name in sorted(node.dirs):
        directory.directories.add(name=name, digest=_store(node.dirs[name], blobs))
    return store_message(directory, blobs)
