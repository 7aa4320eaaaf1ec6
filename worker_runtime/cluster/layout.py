"""Where a cluster lives: one directory holding PostgreSQL's data, the Unix sockets, the
BuildGrid config, the logs and the record of the processes started."""

from __future__ import annotations

import fcntl
import json
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from worker_runtime.atomic_files import write_atomically

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
#: The cluster directory unless --dir or $WORKER_RUNTIME_CLUSTER_DIR says otherwise.
DEFAULT_DIR = PROJECT_ROOT / ".cache" / "cluster"
#: BuildGrid's own virtualenv, made by scripts/bootstrap.sh (or $WORKER_RUNTIME_BUILDGRID_VENV).
DEFAULT_BUILDGRID_VENV = PROJECT_ROOT / ".cache" / "buildgrid-venv"
#: The instance name the embedded engine serves (and that its executors register with).
INSTANCE = "main"
#: Every instance name it serves: a second tenant, to show that tenants never share.
INSTANCES = (INSTANCE, "tenant-b")


@dataclass
class ClusterState:
    """The processes a cluster runs (PIDs), saved in state.json."""

    postgres_pid: int = 0
    buildgrid_pid: int = 0
    executor_pids: list[int] = field(default_factory=list)
    #: Each executor's Prometheus port on 127.0.0.1, in the order of executor_pids.
    executor_metrics_ports: list[int] = field(default_factory=list)
    #: The engine's TCP port on 127.0.0.1 (for clients without Unix sockets: Buck2's
    #: RE client connects over TCP only); 0 before it starts.
    tcp_port: int = 0
    #: The executors' isolation options given to `up` (`--sandbox`, `--limit-*`).
    executor_options: list[str] = field(default_factory=list)
    #: Each recorded PID's start time (/proc/PID/stat field 22), by PID: a PID reused by
    #: another process since is never taken for the one the cluster started.
    start_times: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterLayout:
    root: Path

    @classmethod
    def from_dir(cls, directory: str | None) -> ClusterLayout:
        chosen = directory or os.environ.get("WORKER_RUNTIME_CLUSTER_DIR") or str(DEFAULT_DIR)
        return cls(Path(chosen).resolve())

    @property
    def run_dir(self) -> Path:
        """Unix sockets (PostgreSQL's, BuildGrid's); owned by the postgres user when root."""
        return self.root / "run"

    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "buildgrid.yml"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def port_file(self) -> Path:
        """The engine's last TCP port, kept by `down` (state.json is not) so that the next
        `up` listens where clients were told to connect."""
        return self.root / "tcp-port"

    @property
    def buildgrid_socket(self) -> Path:
        return self.run_dir / "buildgrid.sock"

    @property
    def address(self) -> str:
        """What a REAPI client (or `bgd --remote`) connects to."""
        return f"unix://{self.buildgrid_socket}"

    @property
    def lock_file(self) -> Path:
        return self.root / "cluster.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the cluster's lock: one `up` or `down` at a time on a directory (a second
        waits for the first), so that no process is started twice or left untracked."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def database_url(self, driver: str, database: str) -> str:
        # The socket directory percent-encoded: a path may hold spaces, '&' or '#'.
        host = urllib.parse.quote(str(self.run_dir), safe="/")
        return f"postgresql+{driver}://postgres@/{database}?host={host}"

    def read_state(self) -> ClusterState:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return ClusterState()
        known = ClusterState.__dataclass_fields__
        return ClusterState(**{k: v for k, v in data.items() if k in known})

    def write_state(self, state: ClusterState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A reader (a concurrent `status`) sees the old state or the new one.
        write_atomically(self.state_file, json.dumps(asdict(state)).encode())
