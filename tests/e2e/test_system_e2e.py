"""The whole system end to end, as real processes (issue 5).

One root, two clusters ``c1`` and ``c2`` (each a real ``cluster-orchestrator`` that
starts its own Mosquitto with dynamic security) and two native node engines per
cluster, all on loopback, launched by `tests.harness.system.LocalSystem`. The root's
store is SQLite or MongoDB (nx-27017, plus whatever else ``MONGO_PARAMS`` offers).

One system per backend is shared by the tests of this module (module-scoped fixture);
the tests that break it run last, in file order: restarting the root, then killing a
whole cluster. Every job runs a ``sleep`` with a unique argument, so its task processes
can be counted on this host. Waits are conditions with deadlines, generous because the
machine may be shared; every one of them can fail.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.mongo import MONGO_PARAMS, mongo_url_for
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.procs import count_processes, find_processes, unique_sleep_args
from tests.harness.system import (
    CLUSTER_TOKEN,
    JOIN_TOKEN,
    OPERATOR_TOKEN,
    REGISTRATION_TOKEN,
    LocalSystem,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

#: Root timings for the test: clusters report fully every second, are UNREACHABLE
#: after 4 s of silence and LOST after 6 s (defaults: 5, 15, 60).
ROOT_SETTINGS = {
    "reconcile_interval": 0.2,
    "report_interval": 1.0,
    "cluster_unreachable_after": 4.0,
    "cluster_lost_after": 6.0,
}
#: Deadline for anything that should take a second or two on an idle machine.
DEADLINE = 60.0

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    *[pytest.param(p.values[0], id=f"mongo-{p.id}") for p in MONGO_PARAMS],
]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=BACKENDS)
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    """Root (SQLite or MongoDB store) + clusters c1, c2 with two node engines each."""
    backend = str(request.param)
    store_url = None if backend == "sqlite" else mongo_url_for(request, backend)
    workdir = tmp_path_factory.mktemp(f"system-{backend}")
    system = LocalSystem(workdir, root_store_url=store_url, root_settings=ROOT_SETTINGS)
    try:
        system.start_root()
        system.add_cluster("c1", nodes=2, wait=False)
        system.add_cluster("c2", nodes=2, wait=False)
        for name in ("c1", "c2"):
            system.wait_nodes_ready(name, [f"{name}-n0", f"{name}-n1"], DEADLINE)
        system.wait_clusters_ready(timeout=DEADLINE)
        yield system
    finally:
        system.close()
    system.assert_clean()
    # every program stopped in order on SIGTERM (engines also stop their tasks)
    assert system.killed_at_close == [], system.killed_at_close


@pytest.fixture
def sleepers() -> Iterator[Callable[[], list[str]]]:
    """Unique ``sleep`` commands; any process still running one is killed afterwards."""
    made: list[list[str]] = []

    def make() -> list[str]:
        args = unique_sleep_args(3600)
        made.append(args)
        return args

    yield make
    for args in made:
        for proc in find_processes(args):
            with contextlib.suppress(Exception):
                proc.kill()


# ------------------------------------------------------------------ helpers


def submit(
    system: LocalSystem,
    name: str,
    command: list[str],
    replicas: int,
    **spec: Any,
) -> str:
    """POST a native job to the root; its id."""
    body = {
        "name": name,
        "runtime": "native",
        "command": command,
        "replicas": replicas,
        # memory only: every node shares this host's cores and reports its CPU use, so
        # on a machine saturated by other work every node would refuse even 0.01 core
        "resources": {"memory_mib": 8},
        **spec,
    }
    with system.root_client() as http:
        response = http.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def patch(system: LocalSystem, job_id: str, **body: Any) -> dict[str, Any]:
    """PATCH a job at the root."""
    with system.root_client() as http:
        response = http.patch(f"/api/v1/jobs/{job_id}", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_processes(args: list[str], count: int, timeout: float = DEADLINE) -> None:
    """Wait until exactly `count` task processes run `args` on this host."""
    wait_for(
        lambda: count_processes(args) == count,
        timeout,
        f"{count} processes of {args}",
        interval=0.2,
    )


def delete_and_wait(system: LocalSystem, job_id: str, args: list[str]) -> dict[str, Any]:
    """DELETE a job; wait until it is TERMINATED and no task process is left."""
    with system.root_client() as http:
        response = http.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text
    view = system.wait_job(
        job_id,
        lambda v: (
            v["state"] == "TERMINATED"
            and all(i["state"] in ("TERMINATED", "LOST") for i in v["instances"])
        ),
        DEADLINE,
        "TERMINATED",
    )
    wait_processes(args, 0)
    return view


def running_instances(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The RUNNING instances of a job view."""
    return [i for i in view["instances"] if i["state"] == "RUNNING"]


def metric(system: LocalSystem, name: str) -> float:
    """Sum of a root metric's samples (any labels)."""
    with system.root_client() as http:
        text = http.get("/metrics").text
    pattern = re.compile(r"^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def wait_settled_after(system: LocalSystem, since: float) -> None:
    """Wait until every live cluster sent the root a (full, 1 s period) report after
    wall time `since` + 1.5 s, and the root ran at least 10 reconcile passes since
    it started: anything the root would duplicate or delete has been acted on."""
    live = [n for n, c in system.clusters.items() if not c.killed]

    def settled() -> bool:
        clusters = system.root_clusters()
        reported = all(
            (clusters[n].get("last_report_at") or 0) > since + 1.5
            and clusters[n]["liveness"] == "READY"
            for n in live
        )
        return reported and metric(system, "edge_root_reconcile_duration_seconds_count") >= 10

    wait_for(settled, DEADLINE, "full reports and reconcile passes", context=system.logs)


# ------------------------------------------------------------------ tests


def test_submit_replicas_until_running_with_placement(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    args = sleepers()
    job_id = submit(system, "e2e-three", args, replicas=3, resources={"cpu": 0.01, "memory_mib": 8})
    view = system.wait_running(job_id, 3, DEADLINE)
    wait_processes(args, 3)

    # visible in the list and with its placement explanation
    with system.root_client() as http:
        listed = http.get("/api/v1/jobs", params={"name": "e2e-three"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["state"] == "RUNNING" and listed[0]["actual_replicas"] == 3
    assert view["placement"]["outcome"] == "scheduled"
    assert view["placement"]["explanation"].startswith("chose ")
    assert view["placement"]["decision"]["considered"] == 2
    instances = running_instances(view)
    assert sorted(i["replica"] for i in instances) == [0, 1, 2]
    for inst in instances:
        assert inst["cluster_name"] in ("c1", "c2") and inst["node_name"]
        assert inst["node_name"].startswith(inst["cluster_name"] + "-")
        assert inst["placement"]["outcome"] == "scheduled"
        assert inst["placement"]["cluster_name"] == inst["cluster_name"]
        assert "feasible" in inst["placement"]["explanation"]
    # the clusters agree: each instance is RUNNING there, on the node the root shows
    for inst in instances:
        with system.clusters[inst["cluster_name"]].client() as http:
            there = http.get(f"/api/v1/instances/{inst['id']}").json()
        assert there["state"] == "RUNNING" and there["node_name"] == inst["node_name"]

    delete_and_wait(system, job_id, args)


def test_scale_up_and_down_starts_and_stops_processes(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    args = sleepers()
    job_id = submit(system, "e2e-scale", args, replicas=3)
    system.wait_running(job_id, 3, DEADLINE)
    wait_processes(args, 3)

    assert patch(system, job_id, replicas=5)["desired_replicas"] == 5
    view = system.wait_running(job_id, 5, DEADLINE)
    wait_processes(args, 5)
    assert sorted(i["replica"] for i in running_instances(view)) == [0, 1, 2, 3, 4]

    patch(system, job_id, replicas=1)
    view = system.wait_job(
        job_id,
        lambda v: (
            v["state"] == "RUNNING"
            and [i["replica"] for i in v["instances"] if i["state"] not in ("TERMINATED",)] == [0]
        ),
        DEADLINE,
        "scaled down to replica 0",
    )
    wait_processes(args, 1)
    assert view["actual_replicas"] == 1
    terminated = [i for i in view["instances"] if i["state"] == "TERMINATED"]
    assert sorted(i["replica"] for i in terminated) == [1, 2, 3, 4]

    delete_and_wait(system, job_id, args)


def test_delete_terminates_every_instance(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    args = sleepers()
    job_id = submit(system, "e2e-delete", args, replicas=3)
    system.wait_running(job_id, 3, DEADLINE)
    wait_processes(args, 3)
    view = delete_and_wait(system, job_id, args)
    assert view["deleted_at"] is not None and view["actual_replicas"] == 0
    assert {i["state"] for i in view["instances"]} == {"TERMINATED"}
    # the root's TERMINATED is the cluster's 202 to DELETE; the cluster's is the node's ack
    for inst in view["instances"]:

        def terminated(inst: dict[str, Any] = inst) -> bool:
            with system.clusters[inst["cluster_name"]].client() as http:
                there = http.get(f"/api/v1/instances/{inst['id']}").json()
            return bool(there["state"] == "TERMINATED")

        wait_for(terminated, DEADLINE, f"{inst['id']} TERMINATED in its cluster")
    with system.root_client() as http:  # the name is free again
        assert (
            http.get("/api/v1/jobs", params={"name": "e2e-delete", "state": "RUNNING"}).json()[
                "jobs"
            ]
            == []
        )


def test_job_that_fits_nowhere_is_pending_until_capacity_appears(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    # more memory than any node has: PENDING with the reasons
    huge_args = sleepers()
    huge = submit(
        system, "e2e-huge", huge_args, replicas=1, resources={"memory_mib": 32 * 1024 * 1024}
    )
    view = system.wait_job(
        huge, lambda v: "insufficient memory" in v["reason"], DEADLINE, "pending with reasons"
    )
    assert view["state"] == "PENDING" and view["actual_replicas"] == 0
    assert view["reason"] == "pending: no candidate fits: 2 clusters: insufficient memory"
    assert view["placement"]["outcome"] == "pending"
    assert view["placement"]["decision"]["rejections"] == {"insufficient memory": 2}
    assert [i["state"] for i in view["instances"]] == ["PENDING"]
    delete_and_wait(system, huge, huge_args)

    # a label no node carries yet: PENDING until a node with it joins
    args = sleepers()
    job_id = submit(system, "e2e-gpu", args, replicas=1, constraints={"labels": {"gpu": "yes"}})
    view = system.wait_job(
        job_id, lambda v: v["reason"].startswith("pending"), DEADLINE, "pending with reasons"
    )
    assert view["state"] == "PENDING"
    assert view["placement"]["decision"]["rejections"], view["placement"]
    assert count_processes(args) == 0
    system.add_node("c2", "c2-gpu", labels={"gpu": "yes"}, timeout=DEADLINE)
    view = system.wait_running(job_id, 1, DEADLINE)
    (inst,) = running_instances(view)
    assert (inst["cluster_name"], inst["node_name"]) == ("c2", "c2-gpu")
    wait_processes(args, 1)
    delete_and_wait(system, job_id, args)


def test_job_naming_its_cluster_lands_there(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    for cluster in ("c1", "c2"):
        args = sleepers()
        job_id = submit(
            system, f"e2e-pinned-{cluster}", args, replicas=3, constraints={"cluster": cluster}
        )
        view = system.wait_running(job_id, 3, DEADLINE)
        wait_processes(args, 3)
        assert {i["cluster_name"] for i in running_instances(view)} == {cluster}
        assert {i["placement"]["outcome"] for i in running_instances(view)} == {"forwarded"}
        delete_and_wait(system, job_id, args)

    # a cluster that does not exist: PENDING with that reason, never placed elsewhere
    args = sleepers()
    job_id = submit(system, "e2e-pinned-nowhere", args, replicas=1, constraints={"cluster": "c9"})
    view = system.wait_job(job_id, lambda v: "c9" in v["reason"], DEADLINE, "pending on c9")
    assert view["state"] == "PENDING"
    assert [i["state"] for i in view["instances"]] == ["PENDING"]
    delete_and_wait(system, job_id, args)


def test_wrong_token_gets_401_everywhere(system: LocalSystem, tmp_path: Path) -> None:
    wrong = {"authorization": "Bearer not-the-right-token"}
    cluster = system.clusters["c1"]
    cluster_id = system.root_clusters()["c1"]["id"]
    root, api = system.root.url, "/api/v1"
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        # root operator API
        ("GET", f"{root}{api}/jobs", None),
        ("POST", f"{root}{api}/jobs", {"name": "x", "runtime": "native", "command": ["true"]}),
        ("GET", f"{root}{api}/clusters", None),
        ("GET", f"{root}{api}/events", None),
        ("GET", f"{root}/metrics", None),
        # root cluster API
        ("POST", f"{root}{api}/clusters/register", {"name": "evil", "url": "http://x:1"}),
        ("POST", f"{root}{api}/clusters/{cluster_id}/report", {"ts": 1.0, "seq": 1}),
        # cluster API
        ("GET", f"{cluster.url}{api}/nodes", None),
        ("GET", f"{cluster.url}{api}/instances", None),
        ("DELETE", f"{cluster.url}{api}/instances/whatever", None),
        ("GET", f"{cluster.url}/metrics", None),
        # node join
        ("POST", f"{cluster.url}{api}/nodes", {"info": {"name": "evil"}}),
    ]
    tokens: list[dict[str, str]] = [{}, wrong]
    with httpx.Client(timeout=10) as http:
        for headers in tokens:
            for method, url, body in calls:
                response = http.request(method, url, json=body, headers=headers)
                assert response.status_code == 401, (method, url, headers, response.text)
        # tokens are not interchangeable between the APIs
        swapped = [
            ("GET", f"{root}{api}/jobs", CLUSTER_TOKEN),
            ("GET", f"{root}{api}/jobs", REGISTRATION_TOKEN),
            ("POST", f"{root}{api}/clusters/{cluster_id}/report", OPERATOR_TOKEN),
            ("GET", f"{cluster.url}{api}/nodes", JOIN_TOKEN),
            ("GET", f"{cluster.url}{api}/nodes", OPERATOR_TOKEN),
            ("POST", f"{cluster.url}{api}/nodes", CLUSTER_TOKEN),
        ]
        for method, url, token in swapped:
            body = {"ts": 1.0, "seq": 1} if method == "POST" else None
            response = http.request(
                method, url, json=body, headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, (method, url, response.text)
        # the right tokens work
        ok = http.get(f"{root}{api}/jobs", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert ok.status_code == 200
        ok = http.get(
            f"{cluster.url}{api}/nodes", headers={"authorization": f"Bearer {CLUSTER_TOKEN}"}
        )
        assert ok.status_code == 200

    # a real node engine with a wrong join token is refused and gives up
    engine = NodeEngineProcess(
        system.workdir / "wrong-token-node",
        cluster.url,
        join_token="not-the-join-token",
        name="intruder",
        runtimes=("native",),
    )
    engine.start()
    try:
        code = engine.wait(DEADLINE)
    finally:
        engine.kill()
    assert code != 0 and "HTTP 401" in engine.output(), engine.output()
    assert engine.identity() is None
    with cluster.client() as http:
        names = [n["info"]["name"] for n in http.get(f"{api}/nodes").json()["nodes"]]
    assert "intruder" not in names


def test_root_restart_loses_and_duplicates_nothing(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    stable_args = sleepers()
    stable = submit(system, "e2e-stable", stable_args, replicas=3)
    before = system.wait_running(stable, 3, DEADLINE)
    wait_processes(stable_args, 3)
    stable_ids = sorted(i["id"] for i in running_instances(before))

    # a clean stop (SIGTERM) and start on the same store
    restarted_at = time.time()
    system.restart_root(kill=False)
    view = system.job(stable)
    assert sorted(i["id"] for i in running_instances(view)) == stable_ids
    assert view["state"] == "RUNNING"
    wait_settled_after(system, restarted_at)
    view = system.wait_running(stable, 3, DEADLINE)
    assert sorted(i["id"] for i in running_instances(view)) == stable_ids
    assert count_processes(stable_args) == 3

    # a crash (SIGKILL) mid-placement: the clusters are frozen (SIGSTOP) so that the
    # root has decided and sent its placements but has no answer yet
    fresh_args = sleepers()
    frozen = [c.process.proc for c in system.clusters.values() if c.process.proc]
    try:
        for proc in frozen:
            proc.send_signal(signal.SIGSTOP)
        fresh = submit(system, "e2e-fresh", fresh_args, replicas=3)
        system.wait_job(
            fresh,
            lambda v: [i["state"] for i in v["instances"]] == ["SCHEDULED"] * 3,
            DEADLINE,
            "3 instances SCHEDULED (placements in flight)",
        )
        system.root.kill()
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)
    restarted_at = time.time()
    system.start_root()
    with system.root_client() as http:
        names = {j["name"] for j in http.get("/api/v1/jobs").json()["jobs"]}
    assert {"e2e-stable", "e2e-fresh"} <= names
    view = system.wait_running(fresh, 3, DEADLINE)
    wait_processes(fresh_args, 3)
    wait_settled_after(system, restarted_at)
    fresh_view = system.wait_running(fresh, 3, DEADLINE)
    assert sorted(i["replica"] for i in running_instances(fresh_view)) == [0, 1, 2]
    assert count_processes(fresh_args) == 3
    stable_view = system.wait_running(stable, 3, DEADLINE)
    assert sorted(i["id"] for i in running_instances(stable_view)) == stable_ids
    assert count_processes(stable_args) == 3
    # and the clusters hold exactly these instances, each once
    for name, cluster in system.clusters.items():
        with cluster.client() as http:
            there = http.get("/api/v1/instances", params={"state": "RUNNING"}).json()
        mine = {i["id"] for i in there["instances"] if i["job_id"] in (stable, fresh)}
        expected = {
            i["id"]
            for i in running_instances(stable_view) + running_instances(fresh_view)
            if i["cluster_name"] == name
        }
        assert mine == expected, name

    delete_and_wait(system, stable, stable_args)
    delete_and_wait(system, fresh, fresh_args)


def test_killing_a_whole_cluster_moves_its_instances(
    system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    args = sleepers()
    job_id = submit(system, "e2e-failover", args, replicas=4)
    view = system.wait_running(job_id, 4, DEADLINE)
    wait_processes(args, 4)
    by_cluster: dict[str, list[str]] = {}
    for inst in running_instances(view):
        by_cluster.setdefault(inst["cluster_name"], []).append(inst["id"])
    victim = max(by_cluster, key=lambda name: len(by_cluster[name]))
    survivor = "c2" if victim == "c1" else "c1"
    moved = set(by_cluster[victim])
    assert moved

    killed_at = time.monotonic()
    system.kill_cluster(victim)
    wait_processes(args, 4 - len(moved), 10)  # the site's tasks are gone with it

    view = system.wait_job(
        job_id,
        lambda v: (
            v["state"] == "RUNNING"
            and len(running_instances(v)) == 4
            and {i["cluster_name"] for i in running_instances(v)} == {survivor}
        ),
        DEADLINE,
        f"every replica RUNNING in {survivor}",
    )
    elapsed = time.monotonic() - killed_at
    wait_processes(args, 4)
    print(f"failover of {len(moved)} instance(s) from {victim}: {elapsed:.1f}s")
    assert sorted(i["replica"] for i in running_instances(view)) == [0, 1, 2, 3]
    lost = {i["id"] for i in view["instances"] if i["state"] == "LOST"}
    assert lost == moved
    clusters = system.root_clusters()
    assert clusters[victim]["liveness"] == "LOST"
    assert clusters[survivor]["liveness"] == "READY"
    delete_and_wait(system, job_id, args)
