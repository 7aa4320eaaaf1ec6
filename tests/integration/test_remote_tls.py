"""Remote execution over TLS with bearer tokens, end to end: a BuildGrid server that
listens only on TLS (127.0.0.1, a self-signed certificate) and accepts only JWTs signed
with its secret, an executor that reaches it the same way, and the runtime with routing
`remote` and `remote.tls_ca_file` / `remote.credentials_file`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.clusters import private_cluster
from tests.conftest import REPO_ROOT
from tests.integration.test_remote import TEST_WORKER, action, runtime
from worker_runtime.cluster import buildgrid
from worker_runtime.cluster.commands import free_port, tenant_arguments
from worker_runtime.cluster.layout import ClusterLayout
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.remote.channels import open_channel, parse_endpoint
from workers_dev.emulator import WorkerSpawnError, make_command

INSTANCE = "secure"


@dataclass(frozen=True)
class SecureEngine:
    endpoint: str
    ca_file: Path
    token_file: Path
    secret: bytes
    directory: Path


def jwt_hs256(secret: bytes, claims: dict[str, object]) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(signature)}"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test server's certificate (Debian: openssl)"
    key, cert = directory / "server.key", directory / "server.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def wait_answering(endpoint: str, ca_file: Path, token_file: Path, log: Path) -> None:
    channel = open_channel(parse_endpoint(endpoint, False, str(ca_file), str(token_file)))
    stub = re_grpc.CapabilitiesStub(channel)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                stub.GetCapabilities(
                    re_pb2.GetCapabilitiesRequest(instance_name=INSTANCE), timeout=1
                )
                return
            except grpc.RpcError:
                time.sleep(0.2)
    finally:
        channel.close()
    raise AssertionError(f"the TLS server never answered; its log: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def secure_engine() -> Iterator[SecureEngine]:
    """A second BuildGrid server on the cluster's database, reachable only over TLS with
    a valid token, serving instance `secure`, and one executor connected the same way."""
    with private_cluster("--executors", "0") as directory:
        layout = ClusterLayout(directory)
        tls = directory / "tls"
        tls.mkdir()
        key, cert = self_signed_certificate(tls)
        secret = b"test-secret-" + directory.name.encode()
        (tls / "jwt.secret").write_bytes(secret)
        token_file = tls / "token"
        token_file.write_text(jwt_hs256(secret, {"sub": "ci", "exp": int(time.time()) + 7200}))
        token_file.chmod(0o600)  # a multi-tenant executor refuses a token others may read
        port = free_port()
        endpoint = f"grpcs://127.0.0.1:{port}"
        server = f"""  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: false
    credentials:
      tls-server-key: {key}
      tls-server-cert: {cert}"""
        authorization = f"method: jwt\nsecret: {tls / 'jwt.secret'}\nalgorithm: hs256"
        config = directory / "secure.yml"
        config.write_text(
            buildgrid.config_text(layout, buildgrid.flavour(), (INSTANCE,), server, authorization)
        )
        log = layout.logs / "secure-buildgrid.log"
        with open(log, "ab") as out:
            server_process = subprocess.Popen(
                [str(buildgrid.bgd()), "server", "start", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        executor_process = None
        try:
            wait_answering(endpoint, cert, token_file, log)
            with open(layout.logs / "secure-executor.log", "ab") as out:
                executor_process = subprocess.Popen(
                    [sys.executable, "-m", "worker_runtime", "executor", "--server", endpoint,
                     "--tls-ca-file", str(cert), "--credentials-file", str(token_file),
                     "--instance", INSTANCE, "--bot-id", "secure-executor",
                     "--workdir", str(directory / "secure-executor"),
                     *tenant_arguments(layout)],
                    cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            yield SecureEngine(endpoint, cert, token_file, secret, directory)
        finally:
            if executor_process is not None:
                buildgrid.stop(executor_process.pid)
                executor_process.wait()
            buildgrid.stop(server_process.pid)
            server_process.wait()


def secure_project(tmp_path: Path, engine: SecureEngine, **remote: object) -> Path:
    root = tmp_path / "project"
    (root / "tools").mkdir(parents=True)
    shutil.copy(TEST_WORKER, root / "tools" / "worker.py")
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text(f"secure {tmp_path}\n")
    settings: dict[str, object] = {
        "endpoint": engine.endpoint,
        "instance_name": INSTANCE,
        "tls_ca_file": str(engine.ca_file),
        "credentials_file": str(engine.token_file),
    }
    settings.update(remote)
    config = {
        "command": ["python3", "tools/worker.py"],
        "protocol": "json",
        "tool_inputs": ["tools/worker.py"],
        "routing": "remote",
        "remote": settings,
        "daemon": False,
    }
    (root / "worker.json").write_text(json.dumps(config))
    return root


def run_one(root: Path) -> tuple[int, str]:
    with runtime(root) as worker:
        env = action(root, "s", ["--out", "out/s.txt", "src/a.txt"], ["src/a.txt"], ["out/s.txt"])
        response = worker.execute(make_command(["@s.args"], env=env))
    return response.exit_code, response.stderr


def test_a_request_runs_remotely_over_tls_with_a_bearer_token(
    tmp_path: Path, secure_engine: SecureEngine
) -> None:
    root = secure_project(tmp_path, secure_engine)
    code, stderr = run_one(root)
    assert code == 0, stderr
    text = (root / "out" / "s.txt").read_text()
    assert text.startswith(f"secure {tmp_path}\npid=")  # run by the TLS executor's worker


def test_a_token_the_server_refuses_is_a_clear_error(
    tmp_path: Path, secure_engine: SecureEngine
) -> None:
    forged = tmp_path / "forged-token"
    forged.write_text(jwt_hs256(b"not-the-secret", {"sub": "x", "exp": int(time.time()) + 600}))
    root = secure_project(tmp_path, secure_engine, credentials_file=str(forged))
    code, stderr = run_one(root)
    assert code == 125
    assert "UNAUTHENTICATED" in stderr and "remote_credentials_file" in stderr
    assert not (root / "out" / "s.txt").exists()


def test_an_expired_token_is_refused_and_a_renewed_one_is_picked_up(
    tmp_path: Path, secure_engine: SecureEngine
) -> None:
    token = tmp_path / "token"
    token.write_text(jwt_hs256(secure_engine.secret, {"sub": "x", "exp": int(time.time()) - 60}))
    root = secure_project(tmp_path, secure_engine, credentials_file=str(token))
    with runtime(root) as worker:  # one runtime: the file is read again, not restarted
        env = action(root, "s", ["--out", "out/s.txt", "src/a.txt"], ["src/a.txt"], ["out/s.txt"])
        refused = worker.execute(make_command(["@s.args"], env=env))
        assert refused.exit_code == 125
        assert "UNAUTHENTICATED" in refused.stderr and "expired" in refused.stderr.lower()
        renewed = {"sub": "x", "exp": int(time.time()) + 600}
        token.write_text(jwt_hs256(secure_engine.secret, renewed))
        accepted = worker.execute(make_command(["@s.args"], env=env))
        assert accepted.exit_code == 0, accepted.stderr


def test_a_server_certificate_not_signed_by_a_trusted_ca_is_refused(
    tmp_path: Path, secure_engine: SecureEngine
) -> None:
    root = secure_project(tmp_path, secure_engine, tls_ca_file="")  # the system's roots
    code, stderr = run_one(root)
    assert code == 125
    assert "did not answer GetCapabilities" in stderr and "CERTIFICATE_VERIFY_FAILED" in stderr


def test_a_token_over_a_plain_channel_is_a_clear_error_at_the_start(
    tmp_path: Path, secure_engine: SecureEngine
) -> None:
    """Refused as the worker starts (Buck2: it exited before connecting, saying why), not
    at each request, which `fallback_local` would have run locally with a note."""
    endpoint = secure_engine.endpoint.replace("grpcs://", "grpc://")
    root = secure_project(tmp_path, secure_engine, endpoint=endpoint, tls_ca_file="")
    with pytest.raises(WorkerSpawnError, match="exited before connecting") as refused:
        run_one(root)
    message = str(refused.value)
    assert "`credentials_file` is set but the endpoint" in message and "grpcs://" in message
