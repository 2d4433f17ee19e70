"""`edgectl jobs update / history / get` against the real root app (in process, real
SQLite store) and a `FakeCluster` over real HTTP.

edgectl's HTTP client is pointed at the app through the TestClient's transport, so
every request goes through the root's real routes and service. A driver thread plays
time and the cluster while `--wait` follows a rollout: it reports the fake cluster's
instances RUNNING (or FAILED, for a version told to fail) and moves the root's clock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgectl import main as cli
from edgectl.client import RootClient
from edgectl.config import Target
from root_orchestrator.app import create_app
from schemas.cluster import InstanceChange
from schemas.job import InstanceState
from tests.harness.wait import wait_for
from tests.integration.test_root_rollout import (
    STRATEGY,
    get_job,
    live,
    running,
    running_job,
    settings,
)
from tests.integration.test_root_support import (
    OPERATOR_TOKEN,
    FakeClock,
    FakeCluster,
    FakeNode,
)

runner = CliRunner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster("a")
    fake.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def root(
    tmp_path: Path, clock: FakeClock, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    with TestClient(create_app(settings(f"sqlite:///{tmp_path / 'root.db'}"), clock=clock)) as tc:
        transport = tc._transport  # the app itself, in process

        def make_client(target: Target) -> RootClient:
            return RootClient(target.root_url, target.token, transport=transport)

        monkeypatch.setattr(cli, "make_client", make_client)
        monkeypatch.setenv("EDGE_ROOT_URL", "http://testserver")
        monkeypatch.setenv("EDGE_TOKEN", OPERATOR_TOKEN)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
        monkeypatch.delenv("COLUMNS", raising=False)
        cluster.register(tc)
        cluster.report(tc)
        yield tc


def run(*args: str) -> Any:
    return runner.invoke(cli.app, list(args), prog_name="edgectl")


def job_file(tmp_path: Path, **spec: Any) -> str:
    doc = {
        "name": "web",
        "runtime": "native",
        "command": ["sleep", "600"],
        "replicas": 3,
        "resources": {"cpu": 0.5, "memory_mib": 256},
        "update": STRATEGY,
    }
    doc.update(spec)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(doc))
    return str(path)


class Driver:
    """A thread that plays the cluster and time: full reports, the clock moving on;
    instances of `fail_version` are reported FAILED (exit code 3) once placed."""

    def __init__(self, root: TestClient, cluster: FakeCluster, clock: FakeClock) -> None:
        self.root, self.cluster, self.clock = root, cluster, clock
        self.fail_version: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            failing = [
                iid
                for iid, req in list(self.cluster.placed.items())
                if self.fail_version is not None and req.job_version == self.fail_version
            ]
            if failing:
                changes = [
                    InstanceChange(
                        instance_id=iid,
                        job_id=self.cluster.placed[iid].job_id,
                        state=InstanceState.FAILED,
                        reason="task exited with code 3",
                        exit_code=3,
                        ts=time.time(),
                    )
                    for iid in failing
                ]
                self.cluster.report(self.root, changes=changes, full=False)
                for iid in failing:
                    self.cluster.placed.pop(iid, None)
                    self.cluster.node_of.pop(iid, None)
            self.cluster.report(self.root)
            self.clock.advance(0.5)
            self.stop.wait(0.02)

    def __enter__(self) -> Driver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_dry_run_prints_a_plan_in_80_columns_and_changes_nothing(
    root: TestClient, cluster: FakeCluster, clock: FakeClock, tmp_path: Path
) -> None:
    view = running_job(root, cluster, clock)
    path = job_file(tmp_path, env={"COLOR": "blue"})
    result = run("jobs", "update", "-f", path, "--dry-run")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "web version 1 -> 2 (env changed)" in text
    header = next(line for line in text.splitlines() if line.startswith("STEP"))
    assert header.split() == ["STEP", "DO", "REP", "INSTANCE", "VER", "WHY", "AVAIL", "MAX"]
    assert "max_unavailable" in text and "new one healthy" in text
    old_ids = {i["id"] for i in running(view)}
    assert any(iid in text for iid in old_ids)  # instance ids are not folded
    assert "dry run: nothing was changed" in text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    after = get_job(root, view["id"])
    assert after["job_version"] == 1 and after["rollout"] is None
    assert after["spec"]["env"] == {}

    result = run("jobs", "update", "-f", path, "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["new_version"] == 2 and plan["changed"] == ["env"]
    assert len(plan["batches"]) == 4 and [p["cluster_name"] for p in plan["placements"]] == [
        "a",
        "a",
        "a",
    ]


def test_update_wait_follows_the_rollout_to_complete(
    root: TestClient, cluster: FakeCluster, clock: FakeClock, tmp_path: Path
) -> None:
    job_id = running_job(root, cluster, clock)["id"]
    path = job_file(tmp_path, env={"COLOR": "green"})
    with Driver(root, cluster, clock):
        result = run("jobs", "update", "-f", path, "--wait", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert "version 2 rolling out (env changed)" in result.stderr
    assert "version 2 rolled out (3/3 updated" in result.stderr
    done = get_job(root, job_id)
    assert len(running(done, 2)) == 3 and live(done) == running(done, 2)

    # the same file again: nothing to change
    result = run("jobs", "update", "-f", path)
    assert result.exit_code == 0 and "no change" in result.stderr

    result = run("jobs", "get", "web")
    assert result.exit_code == 0
    assert "version" in result.stdout and "complete  1 -> 2  3/3 updated" in result.stdout
    result = run("jobs", "history", "web")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "STATE", "CREATED"]
    assert lines[2].split()[:2] == ["2*", "current"] and "env" in lines[2]
    assert lines[3].split()[:2] == ["1", "superseded"]


def test_update_wait_exits_non_zero_when_the_version_rolls_back(
    root: TestClient, cluster: FakeCluster, clock: FakeClock, tmp_path: Path
) -> None:
    job_id = running_job(root, cluster, clock)["id"]
    path = job_file(tmp_path, command=["sh", "-c", "exit 3"])
    with Driver(root, cluster, clock) as driver:
        driver.fail_version = 2
        result = run("jobs", "update", "-f", path, "--wait", "--timeout", "60")
    assert result.exit_code == 1, result.output
    assert "error: job web: rolled back to version 1" in result.stderr
    assert "FAILED" in result.stderr and "exit" in result.stderr
    back = wait_for(lambda: (v := get_job(root, job_id))["job_version"] == 1 and v)
    assert back["spec"]["command"] == ["sleep", "600"]


def test_update_errors_name_the_field(
    root: TestClient, cluster: FakeCluster, clock: FakeClock, tmp_path: Path
) -> None:
    running_job(root, cluster, clock)
    result = run("jobs", "update", "-f", job_file(tmp_path, max_restarts=-1))
    assert result.exit_code == 1
    assert "error: 422 spec.max_restarts: Input should be greater than or equal to 0" in (
        result.stderr
    )
    result = run("jobs", "update", "-f", job_file(tmp_path, name="nope"), "--dry-run")
    assert result.exit_code == 1 and "404" in result.stderr and "nope" in result.stderr
    result = run(
        "jobs", "update", "-f", job_file(tmp_path, update={"max_surge": 0, "max_unavailable": 0})
    )
    assert result.exit_code == 1 and "cannot both be 0" in result.stderr
