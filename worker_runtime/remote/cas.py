"""Content-addressable storage over REAPI: FindMissingBlobs, then BatchUpdateBlobs in
batches within the server's limit and ByteStream for larger blobs; reads the same way.
Every call has a deadline."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from worker_runtime.atomic_files import atomic_writer, write_atomically
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from worker_runtime.remote.channels import MAX_MESSAGE_BYTES
from worker_runtime.remote.merkle import Blobs, digest_key, digest_of

T = TypeVar("T")

#: Room for the per-blob framing of a batch request (digest, field tags).
PER_BLOB_OVERHEAD = 256
#: ByteStream chunk size.
CHUNK = 1 << 20
#: Used when the server advertises no batch limit.
DEFAULT_BATCH_LIMIT = 4 << 20
#: The largest batch, whatever the server advertises: the channel's message limit, less
#: room for the request's own framing.
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES - (1 << 20)
#: A ByteStream transfer gets the call's deadline plus the time its blob takes at this
#: rate: one deadline for every size would fail a large blob on a slow link every time.
SLOWEST_TRANSFER_BYTES_PER_S = 8 << 20


def resource_name(instance: str, rest: str) -> str:
    """A ByteStream resource name: ``{instance}/{rest}``, or ``rest`` alone for the
    default instance (no leading slash, which servers that check each part refuse)."""
    return f"{instance}/{rest}" if instance else rest


def runs_within(items: Iterable[T], size_of: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """``items`` in runs whose sizes add up to at most ``limit`` (a larger one alone): the
    batches a reader takes at a time, so that no more than ``limit`` is in memory."""
    run: list[T] = []
    size = 0
    for item in items:
        if run and size + size_of(item) > limit:
            yield run
            run, size = [], 0
        run.append(item)
        size += size_of(item)
    if run:
        yield run


class CasError(RuntimeError):
    """A CAS call failed; the message names the call and the blob."""


class BlobMissing(CasError):
    """The server does not have blobs (NOT_FOUND): the client must upload them again."""

    def __init__(self, *digests: re_pb2.Digest) -> None:
        named = ", ".join(f"{d.hash}/{d.size_bytes}" for d in digests)
        super().__init__(
            f"blob {named} is not in the CAS"
            if len(digests) == 1
            else f"{len(digests)} blobs are not in the CAS: {named}"
        )
        self.digests = digests


#: google.rpc.Code NOT_FOUND: a blob the server does not have.
_NOT_FOUND = 5


def checked(digest: re_pb2.Digest, data: bytes) -> bytes:
    """``data`` if it is the blob ``digest`` names, else a CasError: what a server sends
    is kept (the executor's blob cache) and run, so a truncated or corrupt read must not
    pass for the blob."""
    actual = digest_of(data)
    _check(digest, actual.size_bytes, actual.hash)
    return data


def _check(digest: re_pb2.Digest, size: int, sha256: str) -> None:
    """A CasError unless ``size`` and ``sha256``, those of what was read, are the blob's."""
    if size != digest.size_bytes:
        raise CasError(
            f"blob {digest.hash}/{digest.size_bytes} came back as {size} bytes: "
            "the server sent a truncated or wrong blob"
        )
    if sha256 != digest.hash:
        raise CasError(
            f"blob {digest.hash}/{digest.size_bytes} came back with other contents (SHA-256 "
            f"{sha256}): the server sent a corrupt or wrong blob"
        )


class Cas:
    def __init__(
        self,
        channel: grpc.Channel,
        instance: str,
        batch_limit: int,
        timeout_s: float = 60.0,
        present_ttl_s: float = 600.0,
    ) -> None:
        self.instance = instance
        # No batch past what the channel itself carries (a server advertising more would
        # get requests, and send answers, the channel refuses).
        self.batch_limit = min(batch_limit or DEFAULT_BATCH_LIMIT, MAX_BATCH_BYTES)
        self.timeout_s = timeout_s
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)
        #: Blobs this client uploaded or saw present within ``present_ttl_s``: no
        #: FindMissingBlobs for them. A server that evicted one makes the request fail;
        #: forget() and retry. (0: every upload asks, as an executor's must: a result
        #: naming an evicted output is a failure its client cannot retry.)
        self._present: dict[tuple[str, int], float] = {}
        self._present_ttl_s = present_ttl_s

    def forget(self) -> None:
        self._present.clear()

    def _known(self, digest: re_pb2.Digest, now: float) -> bool:
        seen = self._present.get(digest_key(digest))
        return seen is not None and now - seen < self._present_ttl_s

    def find_missing(self, digests: list[re_pb2.Digest]) -> list[re_pb2.Digest]:
        missing: list[re_pb2.Digest] = []
        for start in range(0, len(digests), 10_000):
            response = self._cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(
                    instance_name=self.instance, blob_digests=digests[start : start + 10_000]
                ),
                timeout=self.timeout_s,
            )
            missing.extend(response.missing_blob_digests)
        return missing

    def upload_missing(self, blobs: Blobs) -> int:
        """Uploads the blobs the server lacks; returns how many were sent."""
        now = time.monotonic()
        unknown = [d for d in blobs.digests() if d.size_bytes > 0 and not self._known(d, now)]
        missing = self.find_missing(unknown) if unknown else []
        missing_keys = {digest_key(d) for d in missing}
        for digest in unknown:
            if digest_key(digest) not in missing_keys:
                self._present[digest_key(digest)] = now
        batch: list[tuple[re_pb2.Digest, bytes]] = []
        size = 0
        for digest in missing:
            key = digest_key(digest)
            if digest.size_bytes + PER_BLOB_OVERHEAD > self.batch_limit:
                self._write(digest, blobs.files.get(key), blobs.data.get(key))
                continue
            data = blobs.data.get(key)
            if data is None:
                data = blobs.files[key].read_bytes()
            if size + len(data) + PER_BLOB_OVERHEAD > self.batch_limit:
                self._batch_update(batch)
                batch, size = [], 0
            batch.append((digest, data))
            size += len(data) + PER_BLOB_OVERHEAD
        if batch:
            self._batch_update(batch)
        for digest in missing:
            self._present[digest_key(digest)] = now
        if len(self._present) > 200_000:
            self._present.clear()
        return len(missing)

    def _batch_update(self, batch: list[tuple[re_pb2.Digest, bytes]]) -> None:
        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance)
        for digest, data in batch:
            request.requests.add(digest=digest, data=data)
        response = self._cas.BatchUpdateBlobs(request, timeout=self.timeout_s)
        for answer in response.responses:
            if answer.status.code != 0:
                raise CasError(
                    f"BatchUpdateBlobs refused {answer.digest.hash}/{answer.digest.size_bytes}: "
                    f"{answer.status.message} (code {answer.status.code})"
                )

    def _write(self, digest: re_pb2.Digest, path: Path | None, data: bytes | None) -> None:
        name = resource_name(
            self.instance, f"uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"
        )

        def chunks() -> Iterator[bytestream_pb2.WriteRequest]:
            offset = 0
            source = open(path, "rb") if path is not None else None  # noqa: SIM115
            try:
                while True:
                    piece = source.read(CHUNK) if source else (data or b"")[offset : offset + CHUNK]
                    last = offset + len(piece) >= digest.size_bytes
                    yield bytestream_pb2.WriteRequest(
                        resource_name=name if offset == 0 else "",
                        write_offset=offset,
                        finish_write=last,
                        data=piece,
                    )
                    offset += len(piece)
                    if last or not piece:
                        return
            finally:
                if source:
                    source.close()

        response = self._bytestream.Write(
            chunks(), timeout=self.transfer_timeout_s(digest.size_bytes)
        )
        if response.committed_size not in (digest.size_bytes, -1):
            raise CasError(
                f"ByteStream.Write of {digest.hash}/{digest.size_bytes} committed "
                f"{response.committed_size} bytes"
            )

    def get_tree(self, root: re_pb2.Digest) -> list[re_pb2.Directory]:
        """Every Directory of the tree under ``root``, the root first, in one GetTree
        stream (the server walks the levels itself)."""
        request = re_pb2.GetTreeRequest(instance_name=self.instance, root_digest=root)
        found: list[re_pb2.Directory] = []
        for page in self._cas.GetTree(request, timeout=self.timeout_s):
            found.extend(page.directories)
        return found

    def read_many(self, digests: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        """Several blobs, the small ones in as few BatchReadBlobs calls as the limit allows."""
        found: dict[tuple[str, int], bytes] = {}
        small: dict[tuple[str, int], re_pb2.Digest] = {}
        for digest in digests:
            key = digest_key(digest)
            if digest.size_bytes == 0:
                found[key] = b""
            elif digest.size_bytes + PER_BLOB_OVERHEAD > self.batch_limit:
                found[key] = self.read(digest)
            elif key not in found:
                small.setdefault(key, digest)
        batch: list[re_pb2.Digest] = []
        size = 0
        pending: list[re_pb2.Digest | None] = [*small.values(), None]
        for entry in pending:
            if entry is None or size + entry.size_bytes + PER_BLOB_OVERHEAD > self.batch_limit:
                if batch:
                    response = self._cas.BatchReadBlobs(
                        re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=batch),
                        timeout=self.timeout_s,
                    )
                    # Every blob the server lacks is named at once: a client then
                    # uploads them all before it tries again.
                    absent = [a.digest for a in response.responses if a.status.code == _NOT_FOUND]
                    if absent:
                        raise BlobMissing(*absent)
                    for answer in response.responses:
                        if answer.status.code != 0:
                            raise CasError(
                                f"blob {answer.digest.hash}/{answer.digest.size_bytes} could not "
                                f"be read: {answer.status.message} (code {answer.status.code})"
                            )
                        key = digest_key(answer.digest)
                        if key in small:
                            found[key] = checked(small[key], bytes(answer.data))
                    left_out = [d for d in batch if digest_key(d) not in found]
                    if left_out:
                        raise CasError(
                            f"the server's BatchReadBlobs answer left out {len(left_out)} of "
                            f"the blobs asked for, {left_out[0].hash}/{left_out[0].size_bytes} "
                            "first"
                        )
                batch, size = [], 0
            if entry is not None:
                batch.append(entry)
                size += entry.size_bytes + PER_BLOB_OVERHEAD
        return found

    def read(self, digest: re_pb2.Digest) -> bytes:
        if digest.size_bytes == 0:
            return b""
        if self.batched(digest):
            return self.read_many([digest])[digest_key(digest)]  # one BatchReadBlobs
        return checked(digest, b"".join(self._stream(digest)))

    def batched(self, digest: re_pb2.Digest) -> bool:
        """Whether the blob is read (and written) in batch calls, not with ByteStream."""
        return digest.size_bytes + PER_BLOB_OVERHEAD <= self.batch_limit

    def _stream(self, digest: re_pb2.Digest) -> Iterator[bytes]:
        """The pieces of a blob read with ByteStream (BlobMissing if the server lacks it)."""
        name = resource_name(self.instance, f"blobs/{digest.hash}/{digest.size_bytes}")
        try:
            for piece in self._bytestream.Read(
                bytestream_pb2.ReadRequest(resource_name=name),
                timeout=self.transfer_timeout_s(digest.size_bytes),
            ):
                yield piece.data
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise BlobMissing(digest) from None
            raise

    def read_file(self, digest: re_pb2.Digest, target: Path, mode: int = 0o644) -> None:
        """Writes the blob to ``target`` atomically, checked against its digest. One past
        the batch limit goes from ByteStream to the file as it comes, never whole in
        memory (a few large inputs at once could take the executor's memory)."""
        if self.batched(digest):
            write_atomically(target, self.read(digest), mode)
            return
        hasher = hashlib.sha256()
        size = 0
        with atomic_writer(target, mode) as out:
            for piece in self._stream(digest):
                hasher.update(piece)
                size += len(piece)
                out.write(piece)
            _check(digest, size, hasher.hexdigest())  # before the rename: a bad read is not kept

    def transfer_timeout_s(self, size_bytes: int) -> float:
        """The deadline of a ByteStream call moving ``size_bytes``."""
        return self.timeout_s + size_bytes / SLOWEST_TRANSFER_BYTES_PER_S

    def read_to(
        self,
        digest: re_pb2.Digest,
        target: Path,
        executable: bool = False,
        data: bytes | None = None,
    ) -> None:
        """Writes the blob (or ``data``, already read) to ``target`` atomically (a
        temporary file, then a rename)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o755 if executable else 0o644
        if data is None:
            self.read_file(digest, target, mode)
        else:
            write_atomically(target, data, mode)
