"""Rolling updates end to end, as real processes (issue 11).

One root (SQLite), one cluster ``c1`` (a real ``cluster-orchestrator`` with its own
dynamic-security Mosquitto) and two native node engines, from
`tests.harness.system.LocalSystem`. Every job runs ``sleep`` with unique arguments so
its task processes can be counted on this host.

What must hold during a rollout is checked twice: a thread samples ``GET /jobs/{id}``
while it runs, and afterwards the job's event log is replayed transition by
transition (the root emits every instance state change, and every "being stopped",
in order), so a moment with too few RUNNING replicas cannot slip between samples.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.procs import count_processes, find_processes, unique_sleep_args
from tests.harness.system import OPERATOR_TOKEN, REPO_ROOT, LocalSystem, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ROOT_SETTINGS = {"reconcile_interval": 0.2, "report_interval": 1.0}
DEADLINE = 90.0
STRATEGY = {"max_unavailable": 1, "max_surge": 1, "min_healthy_s": 1.0, "progress_deadline_s": 60}
ENDED = ("SUCCEEDED", "FAILED", "TERMINATED", "LOST")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    workdir = tmp_path_factory.mktemp("rollout-system")
    system = LocalSystem(workdir, root_settings=ROOT_SETTINGS)
    try:
        system.start_root()
        system.add_cluster("c1", nodes=2, wait=False)
        system.wait_nodes_ready("c1", ["c1-n0", "c1-n1"], DEADLINE)
        system.wait_clusters_ready(timeout=DEADLINE)
        yield system
    finally:
        system.close()
    system.assert_clean()


@pytest.fixture
def sleeps() -> Iterator[list[list[str]]]:
    made: list[list[str]] = []
    yield made
    for args in made:
        for proc in find_processes(args):
            with contextlib.suppress(Exception):
                proc.kill()


def spec(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "native",
        "command": command,
        "replicas": 3,
        # memory only: the nodes share this host's cores (see test_system_e2e)
        "resources": {"memory_mib": 8},
        "update": STRATEGY,
        **extra,
    }


def submit_running(system: LocalSystem, body: dict[str, Any]) -> dict[str, Any]:
    with system.root_client() as http:
        response = http.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    view = system.wait_running(job_id, 3, DEADLINE)
    wait_for(
        lambda: count_processes(body["command"]) == 3,
        DEADLINE,
        "3 task processes",
        interval=0.2,
    )
    return view


def edgectl(
    system: LocalSystem, *args: str, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """Run the real edgectl command line against the system's root."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgectl.main",
            *args,
            "--root-url",
            system.root.url,
            "--token",
            OPERATOR_TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": str(system.workdir)},
    )


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def job_events(system: LocalSystem, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since = 0
    with system.root_client() as http:
        while True:
            page = http.get(
                "/api/v1/events", params={"job_id": job_id, "since": since, "limit": 1000}
            ).json()
            events += page["events"]
            if len(page["events"]) < 1000:
                return events
            since = page["next_since"]


def replay(events: list[dict[str, Any]], version: int) -> tuple[list[str], int]:
    """Walk the job's events in order; from the change to `version` on, check that at
    least 2 instances are RUNNING (and not being stopped) and at most 4 are active.

    Returns the violations and how many transitions were checked."""
    state: dict[str, tuple[str, bool]] = {}
    checking = False
    checked = 0
    violations: list[str] = []
    for event in events:
        kind, iid = event["kind"], event.get("instance_id")
        if kind == "job.updated" and (event["data"].get("version") or {}).get("to") == version:
            checking = True
        elif kind == "instance.state" and iid:
            _old, stopping = state.get(iid, ("", False))
            if event["state"] in ENDED:
                state.pop(iid, None)
            else:
                state[iid] = (event["state"], stopping)
        elif kind == "instance.terminating" and iid and iid in state:
            state[iid] = (state[iid][0], True)
        else:
            continue
        if checking:
            checked += 1
            up = sum(1 for s, stopping in state.values() if s == "RUNNING" and not stopping)
            if up < 2:
                violations.append(f"seq {event['seq']}: {up} RUNNING after {kind} {iid}")
            if len(state) > 4:
                violations.append(f"seq {event['seq']}: {len(state)} active after {kind} {iid}")
        if kind == "job.rollout" and event["state"] in ("complete", "rolled_back"):
            break
    return violations, checked


class Sampler:
    """A thread that samples the root's view of the job until stopped."""

    def __init__(self, system: LocalSystem, job_id: str) -> None:
        self.system, self.job_id = system, job_id
        self.samples = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.system.root_client() as http:
            while not self._stop.is_set():
                view = http.get(f"/api/v1/jobs/{self.job_id}").json()
                self.samples += 1
                active = [i for i in view["instances"] if i["state"] not in ENDED]
                up = [i for i in active if i["state"] == "RUNNING" and not i["terminating"]]
                if len(up) < 2 or len(active) > 4:
                    self.violations.append(
                        f"{len(up)} RUNNING, {len(active)} active: "
                        f"{[(i['id'], i['state'], i['terminating']) for i in active]}"
                    )
                self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_rolling_update_keeps_the_budget_and_ends_on_the_new_version(
    system: LocalSystem, sleeps: list[list[str]], tmp_path: Path
) -> None:
    old_cmd, new_cmd = unique_sleep_args(3600), unique_sleep_args(3600)
    sleeps += [old_cmd, new_cmd]
    view = submit_running(system, spec("roll", old_cmd))
    job_id = view["id"]
    path = write(tmp_path / "roll.json", spec("roll", new_cmd, env={"COLOR": "blue"}))

    with Sampler(system, job_id) as sampler:
        result = edgectl(system, "jobs", "update", "-f", path, "--wait", "--timeout", "150")
    assert result.returncode == 0, result.stdout + result.stderr + system.logs()
    assert "version 2 rolling out (command, env changed)" in result.stderr
    assert "version 2 rolled out (3/3 updated" in result.stderr
    assert sampler.violations == [] and sampler.samples > 10, sampler.violations[:3]

    done = system.job(job_id)
    active = [i for i in done["instances"] if i["state"] not in ENDED]
    assert sorted(i["replica"] for i in active) == [0, 1, 2]
    assert all(i["state"] == "RUNNING" and i["job_version"] == 2 for i in active), active
    ended_old = [i for i in done["instances"] if i["job_version"] == 1]
    assert len(ended_old) == 3 and all(i["state"] == "TERMINATED" for i in ended_old)
    assert done["job_version"] == 2 and done["rollout"]["state"] == "complete"
    assert done["spec"]["env"] == {"COLOR": "blue"}
    # on the hosts: the old processes are gone, three new ones run
    wait_for(lambda: count_processes(old_cmd) == 0, DEADLINE, "old processes gone")
    assert count_processes(new_cmd) == 3

    violations, checked = replay(job_events(system, job_id), 2)
    assert violations == [] and checked >= 12, (violations, checked)


def test_a_failing_version_rolls_back_to_the_old_one(
    system: LocalSystem, sleeps: list[list[str]], tmp_path: Path
) -> None:
    old_cmd = unique_sleep_args(3600)
    sleeps.append(old_cmd)
    view = submit_running(system, spec("fail", old_cmd))
    job_id = view["id"]
    old_ids = {i["id"] for i in view["instances"] if i["state"] == "RUNNING"}
    path = write(tmp_path / "fail.json", spec("fail", ["sh", "-c", "exit 3"]))

    result = edgectl(system, "jobs", "update", "-f", path, "--wait", "--timeout", "150")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled back to version 1" in result.stderr and "FAILED" in result.stderr

    done = system.wait_job(
        job_id,
        lambda v: (
            len([i for i in v["instances"] if i["state"] == "RUNNING"]) == 3
            and not [i for i in v["instances"] if i["state"] not in ENDED and i["job_version"] != 1]
        ),
        DEADLINE,
        "3 RUNNING at version 1",
    )
    assert done["job_version"] == 1 and done["spec"]["command"] == old_cmd
    assert done["rollout"]["state"] == "rolled_back"
    reason = done["rollout"]["reason"]
    assert "FAILED" in reason and "code 3" in reason, reason
    failed = [i for i in done["instances"] if i["job_version"] == 2 and i["state"] == "FAILED"]
    assert failed and all(i["exit_code"] == 3 for i in failed)
    # max_unavailable 1: one old replica was stopped and came back at version 1
    running_now = {i["id"] for i in done["instances"] if i["state"] == "RUNNING"}
    assert len(running_now - old_ids) == 1
    assert count_processes(old_cmd) == 3
    versions = {v["version"]: v["state"] for v in done["versions"]}
    assert versions == {2: "failed", 1: "current"}

    events = job_events(system, job_id)
    rollouts = [e for e in events if e["kind"] == "job.rollout"]
    back = next(e for e in rollouts if e["state"] == "rolling_back")
    assert "FAILED" in back["reason"] and "code 3" in back["reason"]
    assert rollouts[-1]["state"] == "rolled_back"
    violations, _checked = replay(events, 2)
    assert violations == [], violations


def test_dry_run_prints_a_plan_and_changes_nothing(
    system: LocalSystem, sleeps: list[list[str]], tmp_path: Path
) -> None:
    cmd = unique_sleep_args(3600)
    sleeps.append(cmd)
    view = submit_running(system, spec("plan", cmd))
    job_id = view["id"]
    before_events = job_events(system, job_id)
    path = write(tmp_path / "plan.json", spec("plan", cmd, env={"MODE": "fast"}))

    result = edgectl(system, "jobs", "update", "-f", path, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "plan version 1 -> 2 (env changed)" in out
    assert "dry run: nothing was changed" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for iid in (i["id"] for i in view["instances"] if i["state"] == "RUNNING"):
        assert iid in out  # every old instance appears in a stop row
    assert out.count(" c1 ") >= 3  # each new replica placed on the only cluster

    result = edgectl(system, "jobs", "update", "-f", path, "--dry-run", "-o", "json")
    plan = json.loads(result.stdout)
    assert plan["new_version"] == 2 and plan["pending"] == []
    assert [p["cluster_name"] for p in plan["placements"]] == ["c1", "c1", "c1"]

    after = system.job(job_id)
    assert after["job_version"] == 1 and after["rollout"] is None and after["spec"]["env"] == {}
    assert {i["id"] for i in after["instances"]} == {i["id"] for i in view["instances"]}
    assert job_events(system, job_id) == before_events
    assert count_processes(cmd) == 3
