"""Run a cluster orchestrator as a child process (tests and benchmarks).

Secrets (tokens, the broker admin password) travel in the child's environment as
``EDGE_*`` variables, never on its command line, where ``ps`` would show them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.harness.child import ChildProcess, python_path

__all__ = ["ClusterProcess", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ClusterProcess(ChildProcess):
    """One ``cluster-orchestrator`` process; output goes to ``<data_dir>/orchestrator.log``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        broker_port: int,
        broker_admin_password: str | None = None,
        broker_host: str = "127.0.0.1",
        broker_admin_username: str = "admin",
        operator_token: str = "operator-token",
        join_token: str = "join-token",
        name: str = "cluster",
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.host = host
        self.port = port or free_port(host)
        self.name = name
        self.operator_token = operator_token
        self.join_token = join_token
        self._admin_username = broker_admin_username
        self._admin_password = broker_admin_password
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_level = log_level
        super().__init__(self.data_dir / "orchestrator.log")

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command line (no secrets)."""
        return [
            sys.executable,
            "-m",
            "cluster_orchestrator.main",
            "--name",
            self.name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--broker-host",
            self.broker_host,
            "--broker-port",
            str(self.broker_port),
            "--broker-admin-username",
            self._admin_username,
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> ClusterProcess:
        """Start and wait until ``/healthz`` answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = python_path(REPO_ROOT, env.get("PYTHONPATH"))
        env["EDGE_OPERATOR_TOKEN"] = self.operator_token
        env["EDGE_JOIN_TOKEN"] = self.join_token
        if self._admin_password is not None:
            env["EDGE_BROKER_ADMIN_PASSWORD"] = self._admin_password
        env.update(self.env)
        self._spawn(self.argv(), env, self.data_dir)
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until ``/healthz`` is 200 (raises with the log tail otherwise)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"cluster-orchestrator exited with {self.proc.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"cluster-orchestrator not healthy after {timeout}s:\n{self.output()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for the API with the operator token (caller closes it)."""
        return httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"authorization": f"Bearer {token or self.operator_token}"},
        )

    def output(self, tail: int | None = 60) -> str:
        """The last lines of the process log."""
        return super().output(tail)

    def __enter__(self) -> ClusterProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET a JSON document from the API with the operator token."""
        with self.client() as client:
            response = client.get(path, **kwargs)
            response.raise_for_status()
            return response.json()
