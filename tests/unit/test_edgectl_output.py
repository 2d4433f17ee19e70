"""edgectl's rendering (tables, explain, events) and job files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgectl import output
from edgectl.client import EdgectlError
from edgectl.jobs import load_job_file
from schemas.resources import Resources
from tests.unit import edgectl_docs as docs

NOW = 1_700_000_000.0


def render(renderable: Any, width: int = 200) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("ago", "expected"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (119, "119s"),
        (120, "2m"),
        (7199, "119m"),
        (7200, "2h"),
        (172_799, "47h"),
        (172_800, "2d"),
    ],
)
def test_age(ago: float, expected: str) -> None:
    assert output.age(NOW - ago, NOW) == expected


def test_age_unknown_and_future() -> None:
    assert output.age(None, NOW) == "-"
    assert output.age(0, NOW) == "-"
    assert output.age(NOW + 50, NOW) == "0s"


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        (None, "-"),
        ({}, "-"),
        ({"cpu": 0.5, "memory_mib": 256}, "cpu 0.5, mem 256Mi"),
        ({"cpu": 2, "memory_mib": 1536, "disk_mib": 20480}, "cpu 2, mem 1.5Gi, disk 20Gi"),
        ({"accelerators": {"nvidia-gpu": 1}}, "nvidia-gpu x1"),
    ],
)
def test_resources(res: Any, expected: str) -> None:
    assert output.resources(None if res is None else Resources.model_validate(res)) == expected


def _job(**over: Any) -> dict[str, Any]:
    job = {
        "id": "j0001",
        "name": "detector",
        "state": "DEGRADED",
        "desired_replicas": 2,
        "actual_replicas": 1,
        "priority": 500,
        "runtime": "native",
        "created_at": NOW - 300,
        "updated_at": NOW - 10,
        "reason": "pending: no candidate fits: 2 clusters: no single node fits",
        "instance_counts": {"RUNNING": 1, "PENDING": 1, "FAILED": 1},
        "spec": {
            "name": "detector",
            "runtime": "native",
            "command": ["/bin/sh", "-c", "sleep 1"],
            "resources": {"cpu": 1, "memory_mib": 512},
            "restart_policy": "on-failure",
            "max_restarts": 3,
            "constraints": {"labels": {"camera": "yes"}, "arch": ["arm64", "amd64"]},
        },
        "instances": [
            {
                "id": "j0001-0-0",
                "replica": 0,
                "state": "FAILED",
                "exit_code": 3,
                "reason": "task failed",
                "cluster_name": "c1",
                "node_name": "c1-n1",
                "created_at": NOW - 300,
                "updated_at": NOW - 200,
                "restarts": 0,
            },
            {
                "id": "j0001-0-1",
                "replica": 0,
                "state": "RUNNING",
                "exit_code": 3,
                "reason": "task running on c1-n2",
                "cluster_id": "cid1",
                "cluster_name": "c1",
                "node_name": "c1-n2",
                "created_at": NOW - 200,
                "updated_at": NOW - 100,
                "restarts": 1,
                "placement": {
                    "outcome": "scheduled",
                    "cluster_id": "cid1",
                    "cluster_name": "c1",
                    "explanation": "chose c1 (score 81.3) among 2 feasible",
                    "decision": {
                        "chosen": {"id": "cid1", "name": "c1", "score": 81.3},
                        "policy": "spread",
                        "considered": 3,
                        "feasible": 2,
                        "scores": [
                            {"id": "cid1", "score": 81.25, "breakdown": {"least_allocated": 90.04}},
                            {"id": "cid2", "score": 60.0, "breakdown": {"least_allocated": 70}},
                        ],
                        "rejections": {"no single node fits": 1},
                        "rejected": {"no single node fits": ["cid3"]},
                    },
                },
            },
            {
                "id": "j0001-1-0",
                "replica": 1,
                "state": "PENDING",
                "created_at": NOW - 300,
                "updated_at": NOW - 5,
                "reason": "pending: no candidate fits",
                "placement": {
                    "outcome": "pending",
                    "explanation": "pending: no candidate fits: 1 cluster: no single node fits",
                    "decision": {
                        "chosen": None,
                        "policy": "spread",
                        "considered": 1,
                        "feasible": 0,
                        "scores": [],
                        "rejections": {"no single node fits": 3},
                        "rejected": {"no single node fits": ["cid3"]},
                    },
                    "cluster_rejections": [
                        {
                            "cluster_id": "cid2",
                            "cluster_name": "c2",
                            "reasons": {"insufficient memory": 3},
                            "explanation": "3 nodes: insufficient memory",
                        }
                    ],
                },
            },
        ],
    }
    job.update(over)
    return job


def test_jobs_table() -> None:
    text = render(output.jobs_table([docs.summary(_job())], NOW))
    header, _, row = text.splitlines()[:3]
    assert header.split() == ["NAME", "ID", "STATE", "READY", "PRIO", "RUNTIME", "AGE", "REASON"]
    assert row.split()[:7] == ["detector", "j0001", "DEGRADED", "1/2", "500", "native", "5m"]
    assert "no single node fits" in row


def test_job_view_hides_ended_instances_unless_asked() -> None:
    text = render(output.job_view(docs.job(_job()), NOW))
    assert "1/2 running" in text
    assert "cpu 1, mem 512Mi" in text
    assert "on-failure (max 3)" in text
    assert "camera=yes, arch=arm64|amd64" in text
    assert "j0001-0-1" in text and "c1/c1-n2" in text
    assert "j0001-0-0" not in text
    assert "1 ended instances not shown" in text
    # an exit code belongs to ended instances only
    assert "exit code" not in text
    full = render(output.job_view(docs.job(_job()), NOW, ended=True))
    assert "j0001-0-0" in full
    assert "task failed (exit code 3)" in full


def test_explain_view_names_clusters_scores_and_rejections() -> None:
    names = {"cid1": "c1", "cid2": "c2", "cid3": "c3"}
    text = render(output.explain_view(docs.job(_job()), names))
    assert "replica 0 (j0001-0-1): RUNNING on c1/c1-n2" in text
    assert "c1 (chosen)" in text and "81.2" in text  # rounded to one decimal
    assert "least_allocated 90" in text
    assert "spread: 3 considered, 2 feasible" in text
    # rejected candidates by reason, with their names
    rejected = [line for line in text.splitlines() if "no single node fits" in line]
    assert any("c3" in line and "(+2 more)" in line for line in rejected)
    # a cluster's refusal with its nodes' reasons
    assert any(
        "c2" in line and "3 nodes: insufficient memory" in line for line in text.splitlines()
    )
    assert "j0001-0-0" not in text  # ended instances have nothing to explain


def test_explain_view_without_decisions() -> None:
    text = render(output.explain_view(docs.job(id="j", name="x", state="PENDING"), {}))
    assert "no placement decision recorded" in text


def test_clusters_table() -> None:
    cluster = {
        "id": "cid1",
        "name": "c1",
        "url": "http://127.0.0.1:8100",
        "liveness": "READY",
        "seconds_since_report": 1.4,
        "instances": {"RUNNING": 3},
        "report": {
            "nodes_by_liveness": {"READY": 2, "NOT_READY": 1},
            "total": {"cpu": 12, "memory_mib": 12288},
            "free": {"cpu": 7.5, "memory_mib": 6144},
        },
    }
    never = {"id": "cid2", "name": "c2", "url": "u", "liveness": "UNREACHABLE"}
    views = [docs.cluster(cluster), docs.cluster(never)]
    rows = render(output.clusters_table(views, NOW)).splitlines()
    assert rows[2].split() == [
        "c1",
        "cid1",
        "READY",
        "2/3",
        "7.5/12",
        "6.0Gi/12Gi",
        "3",
        "1s",
        "ago",
        "http://127.0.0.1:8100",
    ]
    assert rows[3].split() == ["c2", "cid2", "UNREACHABLE", "-", "-", "-", "0", "never", "u"]


def test_nodes_table() -> None:
    node = {
        "id": "n1",
        "liveness": "READY",
        "draining": True,
        "info": {
            "name": "pi-1",
            "arch": "arm64",
            "cpu_cores": 4,
            "memory_mib": 3792,
            "runtimes": ["native", "docker"],
            "labels": {"zone": "hall"},
        },
        "status": {
            "cpu_percent": 12.4,
            "memory": {"used_percent": 40.2},
            "max_temperature_c": 61.5,
            "tasks": [{"state": "RUNNING"}, {"state": "SUCCEEDED"}],
        },
    }
    joined = {"id": "n2", "liveness": "NOT_READY", "info": {"name": "pi-2", "cpu_cores": 2}}
    rows = render(
        output.nodes_table([("c1", docs.node(node)), ("c1", docs.node(joined))])
    ).splitlines()
    assert rows[2].split() == [
        "c1",
        "pi-1",
        "n1",
        "READY",
        "draining",
        "arm64",
        "4",
        "cores,",
        "12%",
        "3.7Gi,",
        "40%",
        "62C",
        "1/2",
        "native,docker",
        "zone=hall",
    ]
    assert rows[3].split()[:4] == ["c1", "pi-2", "n2", "NOT_READY"]


def test_event_line() -> None:
    event = {
        "seq": 42,
        "ts": NOW,
        "kind": "instance.state",
        "subject": "j1-0-0",
        "state": "RUNNING",
        "cluster_id": "cid1",
        "node_id": "n42",
        "reason": "task running on pi-7",
    }
    line = output.event_line(docs.event(event), {"cid1": "c1"}).plain
    assert line.split()[0] == "42"
    assert "instance.state" in line
    assert "j1-0-0 RUNNING @c1/n42  task running on pi-7" in line
    plain = output.event_line(docs.event(seq=1, kind="job.submitted", subject="j1")).plain
    assert plain.split()[0] == "1" and plain.split()[2:] == ["job.submitted", "j1"]


def test_print_json_is_plain_json() -> None:
    buf = io.StringIO()
    output.print_json({"a": [1, 2], "b": "x"}, file=buf)
    assert json.loads(buf.getvalue()) == {"a": [1, 2], "b": "x"}


# ----------------------------------------------------------------------------- job files


def test_load_job_file_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "job.yaml"
    y.write_text("name: web\nruntime: native\ncommand: [sleep, '5']\n")
    assert load_job_file(str(y)) == {"name": "web", "runtime": "native", "command": ["sleep", "5"]}
    j = tmp_path / "job.json"
    j.write_text(json.dumps({"name": "web", "replicas": 2}))
    assert load_job_file(str(j))["replicas"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: [unclosed\n", "is not valid YAML or JSON"),
        ("- a\n- b\n", "must hold one job spec"),
        ("", "must hold one job spec"),
    ],
)
def test_load_job_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(EdgectlError, match=message):
        load_job_file(str(path))
    with pytest.raises(EdgectlError, match="not found"):
        load_job_file(str(tmp_path / "missing.yaml"))


def test_examples_are_valid_job_specs() -> None:
    from schemas.job import JobSpec

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        JobSpec.model_validate(load_job_file(str(path)))
