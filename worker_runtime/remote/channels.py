"""gRPC channels to a Remote Execution API server, for the runtime's client and for the
executor: plain (a Unix socket or loopback) or TLS (``grpcs://``), with the server's CA
from a PEM file or the system's roots, and a bearer token read from a credentials file
(re-read when the file changes, so a rotated token is picked up without a restart)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from worker_runtime.config import endpoint_problem

#: Responses up to this size (ActionResults with many outputs, Trees).
MAX_MESSAGE_BYTES = 64 << 20


class ChannelConfigError(ValueError):
    """The endpoint, CA file or credentials file is unusable; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    #: host:port or unix:///path (as gRPC takes it).
    target: str
    tls: bool = False
    #: PEM roots to trust instead of the system's (a private CA, a self-signed server).
    ca_file: str = ""
    #: A file holding the bearer token (sent as `authorization: Bearer <token>`).
    credentials_file: str = ""


def parse_endpoint(
    endpoint: str, tls: bool = False, ca_file: str = "", credentials_file: str = ""
) -> Endpoint:
    """``grpcs://host:port`` is TLS; ``grpc://host:port``, ``unix:///path`` and a bare
    ``host:port`` are plain unless ``tls`` is set."""
    problem = endpoint_problem(endpoint, tls, ca_file, credentials_file)
    if problem is not None:
        raise ChannelConfigError(problem)
    secure = endpoint.startswith("grpcs://") or tls
    target = endpoint.removeprefix("grpcs://").removeprefix("grpc://")
    return Endpoint(target, secure, ca_file, credentials_file)


class _TokenFile(grpc.AuthMetadataPlugin):
    """Sends the token in the credentials file with every call; re-reads it when the
    file's mtime or size changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def token(self) -> str:
        stat = os.stat(self.path)
        with self._lock:
            if self._stamp != (stat.st_mtime_ns, stat.st_size):
                token = Path(self.path).read_text(encoding="utf-8").strip()
                self._token = token.removeprefix("Bearer ").strip()
                self._stamp = (stat.st_mtime_ns, stat.st_size)
            return self._token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self.token()
        except OSError as exc:
            callback((), ChannelConfigError(f"cannot read credentials file {self.path}: {exc}"))
            return
        callback((("authorization", f"Bearer {token}"),), None)


#: The longest wait between attempts to reconnect to a server out of reach. gRPC's own
#: (120 s) would leave an executor idle for up to two minutes after its server came back
#: from a restart, and a client's requests failing as long.
MAX_RECONNECT_BACKOFF_MS = 5_000

#: A connection silent this long is pinged (HTTP/2 PING), and dropped if the ping is not
#: answered within KEEPALIVE_TIMEOUT_S: a stream waiting on a long action would otherwise
#: wait on a frozen server, or a peer gone without closing the connection, until its
#: deadline (two hours by default). Five minutes is the shortest interval gRPC's and
#: Go's servers accept by default; pinging more often gets a GOAWAY (too_many_pings).
KEEPALIVE_S = 300.0
KEEPALIVE_TIMEOUT_S = 20.0


def open_channel(endpoint: Endpoint, keepalive_s: float = KEEPALIVE_S) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(min(KEEPALIVE_TIMEOUT_S, keepalive_s) * 1000)),
        # Any ping (a flow-control one too, which holds the keepalive ping back while it
        # is unanswered) unanswered this long ends the connection: gRPC's own default
        # once keepalive is on (60 s), kept longer than the keepalive timeout so that
        # the keepalive check, which takes any bytes read for an answer, stays armed.
        ("grpc.http2.ping_timeout_ms", int(3 * min(KEEPALIVE_TIMEOUT_S, keepalive_s) * 1000)),
        # Pings while a call is open, however long no data has come (the default stops
        # after two), and none on an idle channel.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if not endpoint.tls:
        return grpc.insecure_channel(endpoint.target, options=options)
    roots = None
    if endpoint.ca_file:
        try:
            roots = Path(endpoint.ca_file).read_bytes()
        except OSError as exc:
            raise ChannelConfigError(
                f"cannot read the TLS CA file {endpoint.ca_file}: {exc.strerror}"
            ) from None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if endpoint.credentials_file:
        plugin = _TokenFile(endpoint.credentials_file)
        try:
            plugin.token()
        except OSError as exc:
            raise ChannelConfigError(
                f"cannot read the credentials file {endpoint.credentials_file}: {exc.strerror}"
            ) from None
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(plugin, name="credentials_file")
        )
    return grpc.secure_channel(endpoint.target, credentials, options=options)
