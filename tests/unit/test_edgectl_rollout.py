"""edgectl's rollout helpers: update bodies, the --wait verdict, the plan table (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from edgectl import output
from edgectl.jobs import rollout_verdict, update_body
from schemas.job import JobSpec
from schemas.root_api import UpdatePlan
from tests.unit import edgectl_docs as docs

CURRENT = {
    "name": "web",
    "runtime": "native",
    "command": ["sleep", "60"],
    "env": {},
    "replicas": 3,
    "resources": {"cpu": 0.5, "memory_mib": 256, "disk_mib": 0, "accelerators": {}},
}

BODY_CASES = [
    ("same file: nothing to send", dict(CURRENT), {}),
    ("a changed field is sent", {**CURRENT, "env": {"A": "1"}}, {"env": {"A": "1"}}),
    ("fields the file leaves out stay", {"name": "web", "replicas": 5}, {"replicas": 5}),
    (
        "a partial sub-object is sent whole (the root decides)",
        {"name": "web", "resources": {"cpu": 0.5}},
        {"resources": {"cpu": 0.5}},
    ),
    ("numbers compare by value", {"name": "web", "replicas": 3.0}, {}),
]


@pytest.mark.parametrize(("wanted", "body"), [pytest.param(*c[1:], id=c[0]) for c in BODY_CASES])
def test_update_body(wanted: dict[str, Any], body: dict[str, Any]) -> None:
    assert update_body(JobSpec.model_validate(CURRENT), wanted) == body


def _job(state: str, **rollout: Any) -> dict[str, Any]:
    doc = {
        "state": state,
        "from_version": 1,
        "to_version": 2,
        "replicas": 3,
        "updated": 1,
        "healthy": 1,
        "unavailable": 0,
        **rollout,
    }
    return {"name": "web", "job_version": 2, "latest_version": 2, "rollout": doc}


VERDICT_CASES = [
    ("progressing", _job("progressing", waiting="replica 1: PENDING"), "waiting", "1/3 updated"),
    ("complete", _job("complete", updated=3, healthy=3), "done", "version 2 rolled out"),
    (
        "rolling back is still on its way",
        _job("rolling_back", reason="instance x FAILED"),
        "waiting",
        "rolling back to version 1",
    ),
    (
        "rolled back: the reason",
        _job("rolled_back", reason="rolled back to version 1: instance x FAILED: exit code 3"),
        "failed",
        "exit code 3",
    ),
    ("stopped", _job("failed", reason="no progress for 120s"), "failed", "no progress"),
    ("cancelled", _job("cancelled", reason="job deleted"), "failed", "cancelled"),
    (
        "superseded by a newer change",
        {**_job("progressing", to_version=3), "latest_version": 3},
        "failed",
        "superseded by version 3",
    ),
]


@pytest.mark.parametrize(
    ("job", "verdict", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in VERDICT_CASES]
)
def test_rollout_verdict(job: dict[str, Any], verdict: str, fragment: str) -> None:
    got, message = rollout_verdict(docs.job(job), 2)
    assert got == verdict and fragment in message, message


def test_plan_view_fits_80_columns() -> None:
    long_id = "j0123456789abcdef012-12-345"
    plan = {
        "job_id": "j0123456789abcdef012",
        "spec": {"name": "detector", "runtime": "native", "command": ["sleep", "60"]},
        "name": "detector",
        "current_version": 4,
        "new_version": 5,
        "changed": ["image", "env", "resources", "constraints"],
        "replicas": 2,
        "strategy": {"max_surge": 1, "max_unavailable": 1, "min_healthy_s": 5},
        "replaced": [long_id],
        "outcome": "complete",
        "batches": [
            {
                "step": 1,
                "start": [0],
                "stop": [
                    {
                        "instance_id": long_id,
                        "replica": 1,
                        "job_version": 4,
                        "why": "stopped to make room for version 5 (max_unavailable 1)",
                    }
                ],
                "available_at_least": 1,
                "instances_at_most": 3,
            }
        ],
        "placements": [
            {
                "replica": 0,
                "outcome": "pending",
                "explanation": "pending: 3 clusters considered: 2 clusters: no single node "
                "fits (needs 8 cpu, 16384 MiB), 1 cluster: runtime docker missing",
            }
        ],
        "pending": [0],
        "notes": ["a note that is long enough to wrap on a narrow terminal, surely it is"],
    }
    console = Console(width=80, record=True, highlight=False)
    console.print(output.plan_view(UpdatePlan.model_validate(plan)))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert long_id in text  # ids are never folded
    assert "1 replica(s) would stay PENDING: 0" in text
    assert "detector version 4 -> 5 (image, env, resources, constraints changed)" in text
