"""The executor's local copy of what it read from the CAS, per instance: Directory
messages in memory, file blobs on disk. An action's input root is then read from the
engine only for what this executor has not seen: its tree in one GetTree call (a level
at a time where the server lacks GetTree), its files in batches of up to 64 MiB (one past
the server's batch limit streamed to disk), instead of one call per file and directory.
Every action carries its worker's files (a few hundred class files for the javac
worker), so without it each action paid a round trip per file.

Files are copied from the cache into an action's directory, never linked: an action that
wrote to an input in place would otherwise change the cached copy. Both stores are
bounded; the least recently used entries go first. Blobs are content-addressed and the
cache is per instance (tenant), so one tenant's uploads never reach another's actions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc

from worker_runtime.atomic_files import write_atomically
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.cas import Cas, runs_within
from worker_runtime.remote.merkle import digest_key, digest_of

#: Disk the file cache of one instance may use, and Directory messages kept in memory.
MAX_FILE_BYTES = 2 << 30
MAX_DIRECTORIES = 20_000
#: The inputs of an action read in batches of at most this many bytes at a time.
READ_CHUNK_BYTES = 64 << 20


class BlobCache:
    def __init__(
        self,
        cas: Cas,
        root: Path,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_directories: int = MAX_DIRECTORIES,
    ) -> None:
        self.cas = cas
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.max_directories = max_directories
        self._lock = threading.Lock()
        self._directories: OrderedDict[tuple[str, int], re_pb2.Directory] = OrderedDict()
        #: Directories whose message here passed the runner's checks: a directory every
        #: action carries (a worker's few hundred files) is checked once, not per action.
        self._checked: set[tuple[str, int]] = set()
        #: Cached files by digest, least recently used first; their sizes sum to _bytes.
        self._files: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._bytes = 0
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_instance(cls, cas: Cas, workdir: Path) -> BlobCache:
        """The cache of ``cas``'s instance under ``workdir`` (a directory per instance)."""
        name = hashlib.sha256(cas.instance.encode()).hexdigest()[:16]
        return cls(cas, workdir / "blobs" / name)

    def prefetch_tree(self, root: re_pb2.Digest) -> None:
        """Reads the tree under ``root`` in one GetTree call unless its root is known.
        The server returns Directory messages without their digests; each is keyed by the
        digest of its canonical encoding, as REAPI requires of a Directory's digest. One
        that encodes otherwise is simply read again, by ``directories``."""
        with self._lock:
            if digest_key(root) in self._directories:
                return
        try:
            nodes = self.cas.get_tree(root)
        except grpc.RpcError:
            return  # a server without GetTree: the level-by-level reads do the work
        with self._lock:
            for node in nodes:
                key = digest_key(digest_of(node.SerializeToString(deterministic=True)))
                self._directories[key] = node
                self._checked.discard(key)
            self._evict_directories()

    def directories(self, digests: Sequence[re_pb2.Digest]) -> list[re_pb2.Directory]:
        """The Directory messages of ``digests``, in order; the unseen ones in one batch.
        Those found here are taken at once: another action's reads may evict them while
        the unseen ones come."""
        known: dict[tuple[str, int], re_pb2.Directory] = {}
        missing = []
        with self._lock:
            for digest in digests:
                key = digest_key(digest)
                node = self._directories.get(key)
                if node is None:
                    missing.append(digest)
                else:
                    self._directories.move_to_end(key)
                    known[key] = node
        fetched = self.cas.read_many(missing) if missing else {}
        with self._lock:
            for key, data in fetched.items():
                node = re_pb2.Directory()
                node.ParseFromString(data)
                self._directories[key] = node
                self._checked.discard(key)
                known[key] = node
            self._evict_directories()
        return [known[digest_key(digest)] for digest in digests]

    def checked(self, digest: re_pb2.Digest, node: re_pb2.Directory) -> bool:
        """Whether ``node``, this cache's message for ``digest``, passed the checks."""
        key = digest_key(digest)
        with self._lock:
            return key in self._checked and self._directories.get(key) is node

    def mark_checked(self, digest: re_pb2.Digest, node: re_pb2.Directory) -> None:
        """Records that ``node`` passed the checks, if it is still this cache's message
        for ``digest`` (one read again meanwhile is checked again)."""
        key = digest_key(digest)
        with self._lock:
            if self._directories.get(key) is node:
                self._checked.add(key)

    def _evict_directories(self) -> None:
        while len(self._directories) > self.max_directories:
            key, _ = self._directories.popitem(last=False)
            self._checked.discard(key)

    def place(
        self,
        files: Iterable[tuple[re_pb2.Digest, Path, bool]],
        check: Callable[[], None] = lambda: None,
    ) -> None:
        """Writes each (digest, target, executable) to its target: from the local copy,
        the blobs not yet here read first, in batches of up to READ_CHUNK_BYTES, one past
        the server's batch limit streamed to disk (inputs are never all in memory).
        ``check`` is called before each read from the server (it raises to stop: an
        action cancelled while its inputs come)."""
        wanted = list(files)
        with self._lock:
            unseen = {digest_key(d): d for d, _, _ in wanted if digest_key(d) not in self._files}
        batched = [d for d in unseen.values() if self.cas.batched(d)]
        streamed = [d for d in unseen.values() if not self.cas.batched(d)]
        for chunk in runs_within(batched, lambda digest: digest.size_bytes, READ_CHUNK_BYTES):
            check()
            for key, data in self.cas.read_many(chunk).items():
                self._store(key, data)
        for digest in streamed:
            check()
            key = digest_key(digest)
            self.cas.read_file(digest, self._path(key), 0o600)
            self._account(key, digest.size_bytes)
        for digest, target, executable in wanted:
            key = digest_key(digest)
            source = self._path(key)
            with self._lock:
                if key in self._files:
                    self._files.move_to_end(key)
            try:
                shutil.copyfile(source, target)
            except FileNotFoundError:  # evicted meanwhile by another action's blobs
                self.cas.read_file(digest, target)
            os.chmod(target, 0o755 if executable else 0o644)

    def _path(self, key: tuple[str, int]) -> Path:
        return self.root / f"{key[0]}-{key[1]}"

    def _store(self, key: tuple[str, int], data: bytes) -> None:
        write_atomically(self._path(key), data, 0o600)
        self._account(key, len(data))

    def _account(self, key: tuple[str, int], size: int) -> None:
        """Counts a blob just written to the store, evicting the least recently used
        past the bound."""
        with self._lock:
            if key not in self._files:
                self._files[key] = size
                self._bytes += size
            evicted = []
            while self._bytes > self.max_file_bytes and len(self._files) > 1:
                old, size = self._files.popitem(last=False)
                self._bytes -= size
                evicted.append(old)
        for old in evicted:
            self._path(old).unlink(missing_ok=True)
