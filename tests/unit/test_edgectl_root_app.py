"""edgectl against a real root app (in process, SQLite) with one registered fake cluster:
every answer parses into its model, and `-o json` prints the root's body byte for byte."""

from __future__ import annotations

import json
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
from root_orchestrator.settings import RootSettings
from tests.harness.wait import wait_for
from tests.integration.test_root_support import (
    AUTH,
    OPERATOR_TOKEN,
    REGISTRATION_TOKEN,
    FakeClock,
    FakeCluster,
    job_body,
)

runner = CliRunner()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Any]]:
    settings = RootSettings(
        store_url=f"sqlite:///{tmp_path / 'root.db'}",
        operator_tokens=[OPERATOR_TOKEN],
        registration_token=REGISTRATION_TOKEN,
        reconcile_interval=0.2,
    )
    cluster = FakeCluster("c1").start()
    try:
        with TestClient(create_app(settings, clock=FakeClock())) as http:  # still time
            cluster.register(http)
            assert cluster.report(http).status_code == 200

            def make_client(target: Target) -> RootClient:
                return RootClient(target.root_url, target.token, transport=http._transport)

            monkeypatch.setattr(cli, "make_client", make_client)
            monkeypatch.setenv("EDGE_ROOT_URL", "http://testserver")
            monkeypatch.setenv("EDGE_TOKEN", OPERATOR_TOKEN)
            monkeypatch.setenv("HOME", str(tmp_path))
            monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
            yield http, cluster
    finally:
        cluster.stop()


def _indented(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _run(*args: str) -> Any:
    result = runner.invoke(cli.app, list(args), prog_name="edgectl")
    assert result.exit_code == 0, result.output
    return result


def test_json_output_is_the_real_roots_body(root: tuple[TestClient, Any], tmp_path: Path) -> None:
    http, _ = root
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job_body("web", replicas=2)))
    _run("jobs", "submit", "-f", str(spec))
    wait_for(
        lambda: http.get("/api/v1/jobs/web", headers=AUTH).json()["instances"][0]["placement"],
        timeout=10,
        what="the root to place the job",
    )

    def body(path: str) -> Any:
        return http.get(path, headers=AUTH).json()

    assert _run("jobs", "get", "web", "-o", "json").stdout == _indented(body("/api/v1/jobs/web"))
    jobs = body("/api/v1/jobs?limit=1000")
    assert _run("jobs", "ls", "-o", "json").stdout == _indented({"jobs": jobs["jobs"]})
    assert _run("clusters", "ls", "-o", "json").stdout == _indented(body("/api/v1/clusters"))
    events = [json.dumps(e) for e in body("/api/v1/events?limit=1000")["events"]]
    assert _run("events", "-o", "json").stdout.splitlines() == events
    history = _run("jobs", "history", "web", "-o", "json").stdout
    assert history == _indented(body("/api/v1/jobs/web/versions"))
    job = body("/api/v1/jobs/web")
    keys = ("id", "replica", "state", "cluster_name", "node_name", "placement")
    explained = {
        **{k: job[k] for k in ("id", "name", "state", "reason", "placement")},
        "instances": [{k: i[k] for k in keys} for i in job["instances"]],
    }
    assert _run("jobs", "explain", "web", "-o", "json").stdout == _indented(explained)
    # and the tables render from the same models
    for args in (("jobs", "ls"), ("jobs", "get", "web"), ("jobs", "explain", "web")):
        assert "web" in _run(*args).stdout
    assert "c1" in _run("clusters", "ls").stdout
