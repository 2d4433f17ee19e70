"""The edgectl command line against a fake root (CliRunner + httpx.MockTransport).

The fake root keeps short job dicts and answers with full bodies of the root's
response models (tests/unit/edgectl_docs.py), as a real root would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from edgectl import main as cli
from edgectl.client import RootClient
from edgectl.config import Target
from schemas.root_api import ClusterList, EventList, JobList
from tests.unit import edgectl_docs as docs

TOKEN = "op-token"


class FakeRoot:
    """Just enough of the operator API; a job becomes RUNNING on its second read."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.fail_replica = False
        self.actions: list[tuple[str, str, str]] = []
        self.bodies: dict[str, Any] = {}  # path -> the last JSON body sent
        self.broken: set[str] = set()  # paths answered with a body that lacks `state`
        self.raw: dict[str, Any] = {}  # path -> the body sent instead of the real one

    def _send(self, path: str, doc: Any, status: int = 200) -> httpx.Response:
        doc = self.raw.get(path, doc)
        if path in self.broken and isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if k != "state"}
        self.bodies[path] = doc
        return httpx.Response(status, json=doc)

    def _view(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        self.reads[job_id] = self.reads.get(job_id, 0) + 1
        if self.reads[job_id] >= 2 and job["state"] == "PENDING":
            if self.fail_replica:
                job["state"] = "FAILED"
                job["instances"] = [
                    {
                        "id": f"{job_id}-0-0",
                        "replica": 0,
                        "state": "FAILED",
                        "created_at": 1.0,
                        "reason": "executable not found: nope",
                    }
                ]
            else:
                job["state"] = "RUNNING"
                job["actual_replicas"] = job["desired_replicas"]
                job["instances"] = [
                    {
                        "id": f"{job_id}-{r}-{r}",
                        "replica": r,
                        "state": "RUNNING",
                        "created_at": 1.0,
                        "cluster_name": "c1",
                        "node_name": "c1-n1",
                    }
                    for r in range(job["desired_replicas"])
                ]
        return job

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"detail": "missing or invalid bearer token"})
        path = request.url.path
        if path == "/api/v1/jobs" and request.method == "POST":
            spec = json.loads(request.content)
            if spec.get("replicas", 1) < 0:
                return httpx.Response(
                    422,
                    json={
                        "detail": [
                            {
                                "loc": ["body", "replicas"],
                                "msg": "Input should be greater than or equal to 0",
                                "type": "greater_than_equal",
                            }
                        ]
                    },
                )
            job_id = f"j{len(self.jobs):03d}"
            self.jobs[job_id] = {
                "id": job_id,
                "name": spec["name"],
                "state": "PENDING",
                "desired_replicas": spec.get("replicas", 1),
                "actual_replicas": 0,
                "priority": 100,
                "runtime": spec["runtime"],
                "created_at": 1.0,
                "updated_at": 1.0,
                "spec": {"restart_policy": "never", **spec},
                "instances": [],
            }
            return self._send(path, docs.job_doc(self.jobs[job_id]), 201)
        if path == "/api/v1/jobs":
            page = JobList(jobs=[docs.summary(j) for j in self.jobs.values()])
            return self._send(path, page.model_dump(mode="json"))
        if path.startswith("/api/v1/jobs/"):
            ref = path.rsplit("/", 1)[1]
            found = next((i for i, j in self.jobs.items() if ref in (i, j["name"])), None)
            if found is None:
                return httpx.Response(404, json={"detail": f"no job {ref!r}"})
            job_id = found
            if request.method == "DELETE":
                self.jobs[job_id]["state"] = "TERMINATED"
                return self._send(path, docs.job_doc(self.jobs[job_id]), 202)
            return self._send(path, docs.job_doc(self._view(job_id)))
        if path == "/api/v1/clusters":
            clusters = ClusterList(
                clusters=[
                    docs.cluster(
                        id="cid1",
                        name="c1",
                        url="http://c1",
                        liveness="READY",
                        report={"nodes_by_liveness": {"READY": 1}},
                    ),
                    docs.cluster(id="cid2", name="c2", url="http://c2", liveness="UNREACHABLE"),
                ]
            )
            return self._send(path, clusters.model_dump(mode="json"))
        if path == "/api/v1/clusters/c1/nodes":
            node = docs.node_doc(id="n1", liveness="READY", info={"name": "c1-n1", "cpu_cores": 2})
            return self._send(path, {"cluster_id": "cid1", "cluster_name": "c1", "nodes": [node]})
        action = re.fullmatch(
            r"/api/v1/clusters/([^/]+)/nodes/([^/]+)/(drain|cordon|uncordon)", path
        )
        if action and request.method == "POST":
            cluster, node, verb = action.groups()
            self.actions.append((cluster, node, verb))
            result = docs.node_action(
                {
                    "cluster_id": "cid1",
                    "cluster_name": "c1",
                    "action": verb,
                    "node": {
                        "id": node,
                        "liveness": "READY",
                        "draining": verb == "drain",
                        "cordoned": verb == "cordon",
                        "info": {"name": "c1-n1"},
                    },
                    "moved": [{"instance_id": "j1-0-0", "node_id": "n2", "node_name": "c1-n2"}]
                    if verb == "drain"
                    else [],
                    "stuck": [{"instance_id": "j2-0-0", "reason": "no other node fits: pinned"}]
                    if verb == "drain"
                    else [],
                }
            )
            return self._send(path, result.model_dump(mode="json"))
        if path == "/api/v1/clusters/c2/nodes":
            return httpx.Response(502, json={"detail": "cluster c2 did not answer"})
        if path == "/api/v1/events":
            since = int(request.url.params.get("since", 0))
            events = [
                docs.event(seq=s, ts=1.0, kind="job.submitted", subject=f"j{s}")
                for s in range(1, 6)
                if s > since
            ]
            page = EventList(events=events, next_since=5)
            return self._send(path, page.model_dump(mode="json"))
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRoot:
    root = FakeRoot()

    def make_client(target: Target) -> RootClient:
        return RootClient(target.root_url, target.token, transport=httpx.MockTransport(root))

    monkeypatch.setattr(cli, "make_client", make_client)
    monkeypatch.setattr("edgectl.main.time.sleep", lambda s: None)
    monkeypatch.setenv("EDGE_ROOT_URL", "http://root.test")
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
    return root


runner = CliRunner()


def run(*args: str, input: str | None = None) -> Any:
    return runner.invoke(cli.app, list(args), input=input, prog_name="edgectl")


def _job_file(tmp_path: Path, **spec: Any) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(
        json.dumps({"name": "web", "runtime": "native", "command": ["sleep", "9"], **spec})
    )
    return str(path)


def test_submit_wait_then_json(fake: FakeRoot, tmp_path: Path) -> None:
    result = run(
        "jobs",
        "submit",
        "-f",
        _job_file(tmp_path, replicas=2),
        "--wait",
        "--settle",
        "0.5",
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["state"] == "RUNNING"
    assert [i["state"] for i in job["instances"]] == ["RUNNING", "RUNNING"]
    # progress goes to stderr, stdout stays machine-readable
    assert "every replica is running; settling" in result.stderr


def test_submit_wait_reports_a_clear_failure(fake: FakeRoot, tmp_path: Path) -> None:
    fake.fail_replica = True
    result = run("jobs", "submit", "-f", _job_file(tmp_path), "--wait")
    assert result.exit_code == 1
    assert "error: job web: replica 0 FAILED: executable not found: nope" in result.stderr


def test_api_error_is_one_line_and_non_zero(fake: FakeRoot) -> None:
    body = json.dumps({"name": "web", "runtime": "native", "command": ["x"], "replicas": -1})
    result = run("jobs", "submit", "-f", "-", input=body)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: 422 spec.replicas: Input should be greater than or equal to 0"
    )
    assert result.stdout == ""
    result = run("jobs", "get", "nope")
    assert (result.exit_code, result.stderr.strip()) == (1, "error: 404 no job 'nope'")


def test_wrong_token(fake: FakeRoot) -> None:
    result = run("jobs", "ls", "--token", "wrong-token")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: 401 missing or invalid bearer token"
    assert lines[1].startswith("hint: check the operator token")


def test_connection_refused_suggests_local_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run("clusters", "ls", "--root-url", f"http://127.0.0.1:{port}", "--token", "t")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: cannot reach the root orchestrator at "
        f"http://127.0.0.1:{port} (connection refused)",
        "hint: start a local system with `edgectl local up`, or point --root-url / "
        "EDGE_ROOT_URL at a running root",
    ]


def test_no_root_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("EDGE_ROOT_URL", "EDGE_TOKEN", "EDGE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run("jobs", "ls")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no root orchestrator to talk to")
    assert "edgectl local up" in result.stderr


def test_tables_and_json(fake: FakeRoot, tmp_path: Path) -> None:
    assert run("jobs", "ls").stderr.strip() == "no jobs"
    assert run("jobs", "submit", "-f", _job_file(tmp_path)).exit_code == 0
    table = run("jobs", "ls").stdout
    assert "web" in table and "j000" in table and "NAME" in table
    assert json.loads(run("jobs", "ls", "-o", "json").stdout)["jobs"][0]["name"] == "web"
    assert "c1" in run("clusters", "ls").stdout
    assert json.loads(run("clusters", "ls", "-o", "json").stdout)["clusters"][1]["name"] == "c2"
    got = run("jobs", "get", "web", "-o", "json")
    assert json.loads(got.stdout)["id"] == "j000"
    rm = run("jobs", "rm", "web", "--wait", "-o", "json")
    assert rm.exit_code == 0 and json.loads(rm.stdout)["state"] == "TERMINATED"


def test_nodes_ls_reports_unreachable_clusters(fake: FakeRoot) -> None:
    result = run("nodes", "ls", "-o", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [n["info"]["name"] for n in doc["nodes"]] == ["c1-n1"]
    assert doc["nodes"][0]["cluster_name"] == "c1"
    assert doc["unreachable_clusters"] == ["c2"]
    assert "warning: cluster c2: 502 cluster c2 did not answer" in result.stderr
    one = run("nodes", "ls", "--cluster", "c1")
    assert one.exit_code == 0 and "c1-n1" in one.stdout


def test_nodes_drain_cordon_uncordon(fake: FakeRoot) -> None:
    drained = run("nodes", "drain", "c1-n1")  # found by name across clusters (c2 is down)
    assert drained.exit_code == 0, drained.output
    assert fake.actions == [("cid1", "n1", "drain")]
    assert "warning: cluster c2" in drained.stderr
    out = " ".join(drained.stdout.split())
    assert "j1-0-0 c1-n2 (n2)" in out and "j2-0-0 no other node fits: pinned" in out
    assert run("nodes", "cordon", "n1", "-o", "json").exit_code == 0  # by id
    assert run("nodes", "uncordon", "c1-n1", "--cluster", "c1").exit_code == 0
    assert fake.actions[1:] == [("cid1", "n1", "cordon"), ("c1", "c1-n1", "uncordon")]
    missing = run("nodes", "drain", "nope")
    assert missing.exit_code == 1
    assert "no node 'nope' in any cluster; not asked: c2 (unreachable)" in missing.stderr


def test_find_node_by_id_then_name_and_ambiguity() -> None:
    from edgectl.client import EdgectlError
    from edgectl.nodes import find_node

    nodes = [
        ("cid1", "c1", docs.node(id="n1", info={"name": "pi"})),
        ("cid2", "c2", docs.node(id="n2", info={"name": "pi"})),
        ("cid2", "c2", docs.node(id="pi", info={"name": "other"})),
    ]
    assert find_node(nodes, "n2").cluster_name == "c2"
    assert find_node(nodes, "pi").node_id == "pi"  # an id wins over names
    with pytest.raises(EdgectlError, match=r"2 nodes match 'pi-x'|no node"):
        find_node(nodes, "pi-x")
    with pytest.raises(EdgectlError) as info:
        find_node(nodes[:2], "pi")
    assert info.value.message == "2 nodes match 'pi': c1/pi (n1), c2/pi (n2)"


def test_events_tail_and_json_lines(fake: FakeRoot) -> None:
    result = run("events", "--tail", "2", "-o", "json")
    assert result.exit_code == 0
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [4, 5]
    table = run("events", "--since", "3").stdout.splitlines()
    assert [line.split()[0] for line in table] == ["4", "5"]


def _indented(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def test_json_output_is_the_roots_body_byte_for_byte(fake: FakeRoot, tmp_path: Path) -> None:
    submitted = run("jobs", "submit", "-f", _job_file(tmp_path, replicas=2), "-o", "json")
    assert submitted.stdout == _indented(fake.bodies["/api/v1/jobs"])
    got = run("jobs", "get", "web", "-o", "json")
    assert got.stdout == _indented(fake.bodies["/api/v1/jobs/web"])
    listed = run("jobs", "ls", "-o", "json")
    assert listed.stdout == _indented({"jobs": fake.bodies["/api/v1/jobs"]["jobs"]})
    clusters = run("clusters", "ls", "-o", "json")
    assert clusters.stdout == _indented(fake.bodies["/api/v1/clusters"])
    nodes = run("nodes", "ls", "--cluster", "c1", "-o", "json")
    page = fake.bodies["/api/v1/clusters/c1/nodes"]
    expected = [
        {**n, "cluster_id": page["cluster_id"], "cluster_name": page["cluster_name"]}
        for n in page["nodes"]
    ]
    assert nodes.stdout == _indented({"nodes": expected, "unreachable_clusters": []})
    cordoned = run("nodes", "cordon", "n1", "--cluster", "c1", "-o", "json")
    assert cordoned.stdout == _indented(fake.bodies["/api/v1/clusters/c1/nodes/n1/cordon"])
    events = run("events", "-o", "json")
    lines = [json.dumps(e) for e in fake.bodies["/api/v1/events"]["events"]]
    assert events.stdout.splitlines() == lines


def test_an_answer_that_is_no_model_is_a_clear_error(fake: FakeRoot, tmp_path: Path) -> None:
    assert run("jobs", "submit", "-f", _job_file(tmp_path)).exit_code == 0
    fake.broken.add("/api/v1/jobs/web")
    result = run("jobs", "get", "web")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.strip() == (
        "error: the root answered GET /api/v1/jobs/web with an unexpected JobView: "
        "state: Field required"
    )
    fake.raw["/api/v1/jobs"] = {"jobs": [{"id": "j1"}]}
    listed = run("jobs", "ls", "-o", "json")
    assert (listed.exit_code, listed.stdout) == (1, "")
    assert listed.stderr.strip() == (
        "error: the root answered GET /api/v1/jobs with an unexpected JobList: "
        "jobs.0.name: Field required"
    )
    node = docs.node_doc(id="n1", info={"name": "c1-n1"})
    fake.raw["/api/v1/clusters/c1/nodes"] = {
        "cluster_id": "cid1",
        "cluster_name": "c1",
        "nodes": [{**node, "liveness": "SLEEPY"}],
    }
    nodes = run("nodes", "ls", "--cluster", "c1")
    assert nodes.exit_code == 1
    assert nodes.stderr.startswith(
        "error: the root answered GET /api/v1/clusters/c1/nodes with an unexpected "
        "NodeDetail: 0.liveness: Input should be"
    )


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        out.append(path)
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            out += _commands(command, path)
    return out


def test_every_command_has_help() -> None:
    group = typer.main.get_command(cli.app)
    commands = _commands(group)
    expected = {
        ("jobs", "submit"),
        ("jobs", "ls"),
        ("jobs", "get"),
        ("jobs", "scale"),
        ("jobs", "rm"),
        ("jobs", "explain"),
        ("clusters", "ls"),
        ("nodes", "ls"),
        ("events",),
        ("local", "up"),
        ("local", "down"),
        ("local", "status"),
    }
    assert expected <= set(commands)
    for path in commands:
        result = run(*path, "--help")
        assert result.exit_code == 0, path
        assert "Usage: edgectl " + " ".join(path) in result.stdout
    assert run("--version").stdout.startswith("edgectl ")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "edgectl.md").read_text()
    for path in expected:
        assert f"edgectl {' '.join(path)}" in docs, path
