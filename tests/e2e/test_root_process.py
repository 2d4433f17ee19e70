"""The `root-orchestrator` program as a real process, with a cluster played over HTTP.

Starts the console script with settings from the environment, drives it with an
HTTP client, stops it with SIGTERM and starts it again on the same SQLite file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.wait import wait_for
from tests.integration.test_root_support import (
    AUTH,
    OPERATOR_TOKEN,
    REGISTRATION_TOKEN,
    FakeCluster,
    free_port,
    job_body,
)

#: uvicorn re-raises SIGTERM after a graceful shutdown, so the status is -SIGTERM (or 0).
CLEAN_EXIT = (0, -signal.SIGTERM)


def _command() -> list[str]:
    script = Path(sys.executable).with_name("root-orchestrator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "root_orchestrator.main"]


class RootProcess:
    def __init__(self, tmp: Path, port: int, **env: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / f"root-{port}.log"
        self.env = {
            **os.environ,
            "EDGE_PORT": str(port),
            "EDGE_STORE_URL": f"sqlite:///{tmp / 'root.db'}",
            "EDGE_OPERATOR_TOKENS": OPERATOR_TOKEN,
            "EDGE_REGISTRATION_TOKEN": REGISTRATION_TOKEN,
            "EDGE_RECONCILE_INTERVAL": "0.2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RootProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                _command(), env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 20, "root /healthz")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError("root did not stop on SIGTERM") from None
        return int(self.proc.returncode)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    c = FakeCluster("edge-a").start()
    yield c
    c.stop()


def test_root_process_end_to_end(tmp_path: Path, cluster: FakeCluster) -> None:
    port = free_port()
    root = RootProcess(tmp_path, port).start()
    try:
        with httpx.Client(base_url=root.url, timeout=10) as http:
            assert http.get("/api/v1/jobs").status_code == 401
            cluster.register(http)
            cluster.report(http)
            r = http.post("/api/v1/jobs", json=job_body("e2e", replicas=2), headers=AUTH)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]

            def assigned() -> list[Any] | None:
                view = http.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json()
                done = [i for i in view["instances"] if i["state"] == "ASSIGNED"]
                return done if len(done) == 2 else None

            instances = wait_for(assigned, 15, "two instances ASSIGNED")
            assert {i["cluster_name"] for i in instances} == {"edge-a"}
            metrics = http.get("/metrics", headers=AUTH).text
            assert 'edge_root_instances{state="ASSIGNED"} 2' in metrics
    finally:
        assert root.stop() in CLEAN_EXIT, root.output()
        assert "Application shutdown complete" in root.output()

    placed = sorted(cluster.place_calls)
    root = RootProcess(tmp_path, port).start()
    try:
        with httpx.Client(base_url=root.url, timeout=10) as http:
            cluster.report(http)  # RUNNING

            def running() -> bool:
                view = http.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json()
                return bool(view["state"] == "RUNNING" and view["actual_replicas"] == 2)

            wait_for(running, 15, "job RUNNING after restart")
            assert sorted(cluster.place_calls) == placed  # nothing placed twice
    finally:
        assert root.stop() in CLEAN_EXIT, root.output()
        assert "Application shutdown complete" in root.output()


def test_root_refuses_to_start_without_operator_token(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EDGE_OPERATOR_TOKENS": "",
        "EDGE_STORE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "EDGE_PORT": str(free_port()),
    }
    done = subprocess.run(_command(), env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"operator token" in done.stderr
    bad = subprocess.run(
        [*_command(), "--cluster-lost-after", "1"],
        env={**env, "EDGE_OPERATOR_TOKENS": OPERATOR_TOKEN},
        capture_output=True,
        timeout=30,
    )
    assert bad.returncode == 2 and b"cluster_lost_after" in bad.stderr


def test_root_process_store_files_are_private(tmp_path: Path, cluster: FakeCluster) -> None:
    """A real start with the SQLite store under a permissive umask: the data directory
    it creates is 0700, the database and its -wal/-shm files 0600 (they hold cluster
    credentials)."""
    import stat

    data = tmp_path / "data"
    db = data / "root.db"
    old_umask = os.umask(0o022)
    try:
        root = RootProcess(tmp_path, free_port(), EDGE_STORE_URL=f"sqlite:///{db}").start()
    finally:
        os.umask(old_umask)
    try:
        with httpx.Client(base_url=root.url, timeout=10) as http:
            cluster.register(http)  # a credential is written to the store
            cluster.report(http)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in ("root.db", "root.db-wal", "root.db-shm"):
            path = data / name
            assert path.exists(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{name}: {oct(path.stat().st_mode)}"
    finally:
        assert root.stop() in CLEAN_EXIT, root.output()
