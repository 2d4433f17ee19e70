"""Every edgectl table fits an 80-column terminal with realistic, long data.

Rendered with a rich Console of width 80 (and 60 for good measure): no line is wider
than the terminal, and every id is shown whole on one line (copyable).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from edgectl import output
from schemas.root_api import ClusterView, EventRecord, JobView, NodeActionResult
from tests.unit import edgectl_docs as docs

NOW = 1_700_000_000.0
JOB_ID = "j0190a1b2c3d4e5f6a7"  # 19 characters, as the root makes them
LONG_NAME = "inference-camera-pipeline-for-the-north-loading-dock-ab12"  # 58
NODE_NAME = "raspberry-pi-5-north-loading-dock-camera-rack-02"
CLUSTER_NAME = "factory-floor-west-building-7"
REASON = (
    "no cluster fits: 2 clusters: insufficient memory (largest free 512Mi, needs 2Gi); "
    "1 cluster: label zone=dock missing"
)


def instance(replica: int, restarts: int, state: str = "RUNNING", **over: Any) -> dict[str, Any]:
    return {
        "id": f"{JOB_ID}-{replica}-{restarts}",
        "job_id": JOB_ID,
        "replica": replica,
        "state": state,
        "cluster_id": "c5f3a9e1b2d4c6a8e",
        "cluster_name": CLUSTER_NAME,
        "node_id": "n0a1b2c3d4e5f6a7b",
        "node_name": NODE_NAME,
        "reason": "task running; started by the node engine after pulling the image",
        "restarts": restarts,
        "created_at": NOW - 4000,
        "updated_at": NOW - 30,
        **over,
    }


def job(**over: Any) -> JobView:
    instances = [
        instance(0, 12),
        instance(1, 3, "FAILED", reason="exited with code 3", exit_code=3),
        instance(10, 0, "PENDING", reason=REASON, cluster_name=None, node_name=None),
    ]
    placement = {
        "at": NOW - 10,
        "outcome": "pending",
        "explanation": REASON,
        "decision": {
            "policy": "spread",
            "considered": 3,
            "feasible": 2,
            "chosen": {"id": "c5f3a9e1b2d4c6a8e"},
            "scores": [
                {
                    "id": "c5f3a9e1b2d4c6a8e",
                    "score": 81.234,
                    "breakdown": {"least_allocated": 90.1, "spread": 70.0, "thermal": 55.5},
                },
                {"id": "c0000000000000002", "score": 60, "breakdown": {"least_allocated": 60}},
            ],
            "rejections": {"insufficient memory (largest free 512Mi, needs 2Gi)": 4},
            "rejected": {
                "insufficient memory (largest free 512Mi, needs 2Gi)": [
                    "c0000000000000003",
                    "c0000000000000004",
                ]
            },
        },
        "cluster_rejections": [
            {
                "cluster_id": "c0000000000000002",
                "cluster_name": "warehouse-south-annex-cold-storage",
                "reasons": {"insufficient memory": 3, "label zone=dock missing": 2},
            }
        ],
    }
    for inst in instances:
        if inst["state"] != "FAILED":
            inst["placement"] = placement
    return docs.job(
        {
            "id": JOB_ID,
            "name": LONG_NAME,
            "state": "DEGRADED",
            "desired_replicas": 11,
            "actual_replicas": 1,
            "priority": 100,
            "runtime": "docker",
            "created_at": NOW - 90000,
            "reason": REASON,
            "spec": {
                "runtime": "docker",
                "image": "registry.example.internal/vision/camera-inference:2024.11.3-arm64",
                "command": ["python", "-m", "camera.infer", "--model", "/models/yolo.onnx"],
                "resources": {"cpu": 1.5, "memory_mib": 2048, "accelerators": {"npu": 1}},
                "restart_policy": "on-failure",
                "max_restarts": 5,
                "constraints": {"labels": {"zone": "dock", "camera": "yes"}, "arch": ["arm64"]},
            },
            "instance_counts": {"RUNNING": 1, "FAILED": 1, "PENDING": 1},
            "instances": instances,
            "placement": placement,
            **over,
        }
    )


def cluster(i: int) -> ClusterView:
    return docs.cluster(
        {
            "id": f"c5f3a9e1b2d4c6a8{i}",
            "name": f"{CLUSTER_NAME}-{i}",
            "url": f"https://cluster-{i}.factory-floor-west.example.internal:8100",
            "liveness": "UNREACHABLE" if i == 2 else "READY",
            "seconds_since_report": 1234.5,
            "instances": {"RUNNING": 120},
            "report": {
                "nodes_by_liveness": {"READY": 40, "NOT_READY": 2},
                "nodes_cordoned": 3,
                "total": {"cpu": 160, "memory_mib": 655360},
                "free": {"cpu": 37.5, "memory_mib": 123456},
            },
        }
    )


def node(i: int) -> dict[str, Any]:
    return {
        "id": f"n0a1b2c3d4e5f6a7{i}",
        "liveness": "NOT_READY" if i == 2 else "READY",
        "cordoned": True,
        "draining": i == 1,
        "info": {
            "name": f"{NODE_NAME}-{i}",
            "arch": "arm64",
            "cpu_cores": 4,
            "memory_mib": 7812,
            "runtimes": ["native", "docker"],
            "labels": {"zone": "dock", "camera": "yes", "rack": "north-02"},
        },
        "status": {
            "cpu_percent": 99.4,
            "memory": {"used_percent": 87.2},
            "max_temperature_c": 81.5,
            "tasks": [{"state": "RUNNING"}] * 12,
        },
    }


def events() -> list[EventRecord]:
    return [
        docs.event(e)
        for e in [
            {
                "seq": 123456,
                "ts": NOW,
                "kind": "instance.state",
                "subject": f"{JOB_ID}-10-12",
                "state": "PENDING",
                "cluster_id": "c5f3a9e1b2d4c6a8e",
                "node_id": "n0a1b2c3d4e5f6a7b",
                "reason": REASON,
            },
            {
                "seq": 7,
                "ts": NOW,
                "kind": "scheduling.rejected",
                "subject": JOB_ID,
                "reason": REASON,
            },
        ]
    ]


def local_doc() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = {
        "state": "running",
        "data_dir": "/home/operator/.local/share/edge/systems/a-very-long-name-for-a-demo",
        "root_url": "http://127.0.0.1:48123",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "url": "http://127.0.0.1:48124",
                "broker": "127.0.0.1:48125",
                "nodes": [f"{NODE_NAME}-{i}" for i in range(4)],
            }
        ],
        "supervisor": {"pid": 4194303, "log": "/home/operator/.local/share/edge/logs/edgectl.log"},
    }
    procs = [
        {
            "name": f"node-{NODE_NAME}-{i}",
            "kind": "node-engine",
            "pid": 4194300 + i,
            "alive": i != 1,
            "log": f"/home/operator/.local/share/edge/logs/node-{NODE_NAME}-{i}.log",
        }
        for i in range(3)
    ]
    return doc, procs


def node_action() -> NodeActionResult:
    return docs.node_action(
        {
            "cluster_id": "c5f3a9e1b2d4c6a8e",
            "cluster_name": CLUSTER_NAME,
            "action": "drain",
            "node": node(1),
            "moved": [
                {
                    "instance_id": f"{JOB_ID}-{r}-12",
                    "node_id": "n0a1b2c3d4e5f6a70",
                    "node_name": f"{NODE_NAME}-0",
                }
                for r in range(3)
            ],
            "stuck": [{"instance_id": f"{JOB_ID}-9-0", "reason": REASON}],
        }
    )


def _render(renderable: Any, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderable)
    return buf.getvalue().splitlines()


VIEWS = {
    "jobs ls": lambda: output.jobs_table(
        [docs.summary(job().model_dump()), docs.summary(job(name="web", reason="").model_dump())]
        * 3,
        NOW,
    ),
    "jobs get": lambda: output.job_view(job(), NOW, ended=True),
    "jobs explain": lambda: output.explain_view(job(), {"c5f3a9e1b2d4c6a8e": CLUSTER_NAME}),
    "clusters ls": lambda: output.clusters_table([cluster(i) for i in range(3)], NOW),
    "nodes ls": lambda: output.nodes_table((CLUSTER_NAME, docs.node(node(i))) for i in range(3)),
    "events": lambda: output.Group(*(output.event_view(e, {}) for e in events())),
    "local status": lambda: output.local_view(*local_doc(), running=True),
    "nodes drain": lambda: output.node_action_view(node_action(), docs.node(node(1))),
    "replicas (jobs submit --wait)": lambda: output.replicas_table(job().instances, NOW),
}

IDS = [
    JOB_ID,
    f"{JOB_ID}-0-12",
    f"{JOB_ID}-10-0",
    "c5f3a9e1b2d4c6a80",
    "n0a1b2c3d4e5f6a70",
]


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("name", list(VIEWS))
def test_fits_the_terminal(name: str, width: int) -> None:
    lines = _render(VIEWS[name](), width)
    assert lines, name
    too_wide = [(cell_len(line), line) for line in lines if cell_len(line) > width]
    assert not too_wide, "\n".join(lines)


@pytest.mark.parametrize("name", list(VIEWS))
def test_ids_stay_whole_at_80_columns(name: str) -> None:
    wide = "\n".join(_render(VIEWS[name](), 400))
    narrow = _render(VIEWS[name](), 80)
    for ident in IDS:
        if ident in wide:  # every id the wide view shows is on one line at 80 columns too
            assert any(ident in line for line in narrow), (ident, "\n".join(narrow))


def test_narrow_tables_keep_the_essentials() -> None:
    jobs = "\n".join(_render(VIEWS["jobs ls"](), 80))
    assert all(h in jobs for h in ("NAME", "ID", "STATE", "READY"))
    assert "RUNTIME" not in jobs  # dropped first
    nodes = "\n".join(_render(VIEWS["nodes ls"](), 80))
    assert all(h in nodes for h in ("NAME", "ID", "LIVENESS")) and "cordoned" in nodes
    clusters = "\n".join(_render(VIEWS["clusters ls"](), 80))
    assert "3 cordoned" in clusters.replace("\n", " ") or "cordoned" in clusters
    # at a wide terminal nothing is dropped
    wide = "\n".join(_render(VIEWS["jobs ls"](), 250))
    assert all(h in wide for h in ("PRIO", "RUNTIME", "AGE", "REASON"))
