"""Root scheduler and reconciler against clusters played by real HTTP servers.

Each `FakeCluster` is a small FastAPI app in uvicorn on a free port implementing the
cluster API the root calls (place, delete, nodes) with scriptable answers; the
tests send the clusters' reports to the root themselves. The root's clock is a
`FakeClock` so liveness is decided without waiting; everything else is waited on
with deadlines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from root_orchestrator.settings import RootSettings
from schemas.cluster import InstanceChange
from schemas.job import InstanceState
from tests.harness.wait import wait_for
from tests.integration.test_root_support import (
    AUTH,
    OPERATOR_TOKEN,
    REGISTRATION_TOKEN,
    FakeClock,
    FakeCluster,
    FakeNode,
    ServerThread,
    job_body,
)


def settings_for(path: Path, **extra: Any) -> RootSettings:
    values: dict[str, Any] = {
        "store_url": f"sqlite:///{path / 'root.db'}?synchronous=normal",
        "operator_tokens": [OPERATOR_TOKEN],
        "registration_token": REGISTRATION_TOKEN,
        "reconcile_interval": 0.1,
        "cluster_unreachable_after": 10.0,
        "cluster_lost_after": 30.0,
        "cluster_timeout": 5.0,
    }
    values.update(extra)
    return RootSettings(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clusters() -> Iterator[dict[str, FakeCluster]]:
    started = {name: FakeCluster(name).start() for name in ("a", "b")}
    yield started
    for cluster in started.values():
        cluster.stop()


@pytest.fixture
def root(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path), clock=clock)) as client:
        yield client


def submit(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    return dict(r.json())


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    r = client.get(f"/api/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


def active(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        i
        for i in view["instances"]
        if i["state"] not in ("SUCCEEDED", "FAILED", "TERMINATED", "LOST")
    ]


def wait_job(
    client: TestClient, job_id: str, predicate: Any, what: str, timeout: float = 10.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        view = job(client, job_id)
        return view if predicate(view) else None

    return wait_for(check, timeout, what)


def all_assigned(n: int, cluster: str | None = None) -> Any:
    def pred(view: dict[str, Any]) -> bool:
        live = active(view)
        return len(live) == n and all(
            i["state"] == "ASSIGNED" and (cluster is None or i["cluster_name"] == cluster)
            for i in live
        )

    return pred


def events(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/events", params={"limit": 1000, **params}, headers=AUTH)
    return list(r.json()["events"])


def cluster_view(client: TestClient, name: str) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/clusters/{name}", headers=AUTH).json())


# ---------------------------------------------------------------------- placement


def test_accept_path(root: TestClient, clusters: dict[str, FakeCluster]) -> None:
    a = clusters["a"]
    a.register(root)
    a.report(root)
    created = submit(root, job_body("web", replicas=2))
    view = wait_job(root, created["id"], all_assigned(2, "a"), "2 instances ASSIGNED on a")
    ids = sorted(i["id"] for i in active(view))
    assert sorted(a.placed) == ids and a.bad_auth == 0
    for inst in active(view):
        assert inst["node_id"] == "a-n1" and inst["cluster_id"] == a.cluster_id
        assert inst["placement"]["outcome"] == "scheduled"
        assert inst["placement"]["explanation"].startswith("chose a")
    assert view["placement"]["cluster_name"] == "a"
    # the request carried the job's task spec and ids
    sent = a.placed[ids[0]]
    assert sent.job_id == created["id"] and sent.spec.command == ["sleep", "600"]

    a.report(root)  # lists both RUNNING
    view = wait_job(root, created["id"], lambda v: v["state"] == "RUNNING", "job RUNNING")
    assert view["actual_replicas"] == 2
    states = [e["state"] for e in events(root, instance_id=ids[0], kind="instance.state")]
    assert states == ["PENDING", "SCHEDULED", "ASSIGNED", "RUNNING"]
    nodes = root.get("/api/v1/clusters/a/nodes", headers=AUTH)
    assert nodes.status_code == 200 and [n["id"] for n in nodes.json()["nodes"]] == ["a-n1"]
    assert cluster_view(root, "a")["instances"] == {"RUNNING": 2}
    listed = root.get("/api/v1/jobs", params={"cluster": "a"}, headers=AUTH).json()
    assert [j["id"] for j in listed["jobs"]] == [created["id"]]


def test_rejected_then_next_cluster(root: TestClient, clusters: dict[str, FakeCluster]) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]  # spread prefers a
    a.mode = "reject"
    a.reject_reasons = {"insufficient memory": 3}
    for c in (a, b):
        c.register(root)
        c.report(root)
    created = submit(root, job_body("web"))
    view = wait_job(root, created["id"], all_assigned(1, "b"), "instance on b")
    iid = active(view)[0]["id"]
    assert a.place_calls == [iid] and b.place_calls == [iid]
    assert a.placed == {} and list(b.placed) == [iid]
    placement = active(view)[0]["placement"]
    assert placement["cluster_name"] == "b"
    assert [r["cluster_name"] for r in placement["cluster_rejections"]] == ["a"]
    assert placement["cluster_rejections"][0]["reasons"] == {"insufficient memory": 3}
    assert "cluster a refused: 3 nodes: insufficient memory" in placement["explanation"]
    rejected = events(root, kind="scheduling.rejected")
    assert [e["cluster_id"] for e in rejected] == [a.cluster_id]


def test_fits_nowhere_stays_pending_then_starts_on_capacity(
    root: TestClient, clusters: dict[str, FakeCluster]
) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [FakeNode("a-n1", memory_mib=1024), FakeNode("a-n2", memory_mib=1024)]
    b.nodes = [FakeNode("b-n1", memory_mib=8192)]
    b.mode = "reject"
    b.reject_reasons = {"insufficient memory": 1}
    for c in (a, b):
        c.register(root)
        c.report(root)
    created = submit(root, job_body("big", resources={"cpu": 1, "memory_mib": 2048}))

    def pending_with_both(view: dict[str, Any]) -> bool:
        inst = active(view)[0]
        info = inst["placement"] or {}
        return (
            inst["state"] == "PENDING"
            and info.get("outcome") == "pending"
            and "no single node fits" in info.get("explanation", "")
            and "cluster b refused" in info.get("explanation", "")
        )

    view = wait_job(root, created["id"], pending_with_both, "PENDING with combined reasons")
    assert view["state"] == "PENDING"
    assert "no single node fits" in view["reason"] and "cluster b refused" in view["reason"]
    info = active(view)[0]["placement"]
    assert info["decision"]["rejections"] == {"no single node fits": 1}
    assert a.place_calls == []  # the root never sent it where no node fits
    pending_events = events(root, kind="scheduling.pending", job_id=created["id"])
    assert pending_events

    # a report shows a node that can take it: the pending instance is placed at once
    a.nodes.append(FakeNode("a-n3", memory_mib=4096))
    a.report(root)
    view = wait_job(root, created["id"], all_assigned(1, "a"), "placed on a after report")
    assert view["state"] == "PENDING"  # assigned, not yet running
    assert len(b.place_calls) == 1  # the refusing cluster was not hammered meanwhile


def test_cluster_named_job_goes_there_without_scheduling(
    root: TestClient, clusters: dict[str, FakeCluster]
) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [FakeNode("a-n1", cpu=64, memory_mib=65536)]
    b.nodes = [FakeNode("b-n1", cpu=0.1, memory_mib=64)]  # root scheduling would refuse b
    for c in (a, b):
        c.register(root)
        c.report(root)
    pinned = job_body(
        "pinned", constraints={"cluster": "b"}, resources={"cpu": 2, "memory_mib": 2048}
    )
    created = submit(root, pinned)
    view = wait_job(root, created["id"], all_assigned(1, "b"), "forwarded to b")
    inst = active(view)[0]
    assert inst["placement"]["outcome"] == "forwarded"
    assert inst["placement"]["decision"] is None
    assert a.place_calls == [] and b.place_calls == [inst["id"]]
    assert b.placed[inst["id"]].constraints.cluster == "b"

    # a job naming a cluster that is not registered waits for it
    later = submit(root, job_body("later", constraints={"cluster": "c"}))
    view = wait_job(
        root,
        later["id"],
        lambda v: "not registered" in v["reason"],
        "pending: cluster c not registered",
    )
    c = FakeCluster("c").start()
    try:
        c.register(root)
        view = wait_job(root, later["id"], all_assigned(1, "c"), "placed on c once registered")
    finally:
        c.stop()


def test_burst_is_spread_by_reservations(
    root: TestClient, clusters: dict[str, FakeCluster]
) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [
        FakeNode("a-n1", cpu=1.0, memory_mib=1024),
        FakeNode("a-n2", cpu=1.0, memory_mib=1100),
    ]
    b.nodes = [
        FakeNode("b-n1", cpu=1.0, memory_mib=1024),
        FakeNode("b-n2", cpu=1.0, memory_mib=1024),
    ]
    for c in (a, b):
        c.register(root)
        c.report(root)
    created = submit(root, job_body("burst", replicas=4, resources={"cpu": 1, "memory_mib": 512}))
    view = wait_job(root, created["id"], all_assigned(4), "4 instances assigned")
    per_cluster: dict[str, int] = {}
    for inst in active(view):
        per_cluster[inst["cluster_name"]] = per_cluster.get(inst["cluster_name"], 0) + 1
    assert per_cluster == {"a": 2, "b": 2}  # no report in between: reservations did it
    # a fifth replica fits nowhere until a report frees capacity
    r = root.patch(f"/api/v1/jobs/{created['id']}", json={"replicas": 5}, headers=AUTH)
    assert r.status_code == 200
    view = wait_job(
        root,
        created["id"],
        lambda v: any(i["state"] == "PENDING" and i["placement"] for i in active(v)),
        "fifth replica pending",
    )
    assert "insufficient cpu" in view["reason"]


def reconciler_of(client: TestClient) -> Any:
    return client.app.state.deps.reconciler  # type: ignore[attr-defined]


def test_slow_cluster_does_not_delay_placement_elsewhere(
    tmp_path: Path, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    """A placement call a cluster sits on does not hold up a job another cluster takes.

    Cluster a takes the POST and does not answer until released (the root waits up
    to cluster_timeout, 30 s here); a job that only b can take must be ASSIGNED on b
    meanwhile, and the held instance must not be sent again by the passes that run
    while its call is in flight.
    """
    a, b = clusters["a"], clusters["b"]
    a.mode = "hold"
    a.nodes = [FakeNode("a-n1", cpu=1, memory_mib=512)]
    b.nodes = [FakeNode("b-n1", cpu=4, memory_mib=4096)]
    settings = settings_for(tmp_path, cluster_timeout=30.0)
    with TestClient(create_app(settings, clock=clock)) as root:
        for c in (a, b):
            c.register(root)
            c.report(root)
        slow = submit(root, job_body("slow", constraints={"cluster": "a"}))
        wait_for(lambda: a.place_calls, 10, "placement request at a")
        held = a.place_calls[0]

        started = time.monotonic()
        fast = submit(root, job_body("fast", resources={"cpu": 1, "memory_mib": 1024}))
        view = wait_job(root, fast["id"], all_assigned(1, "b"), "fast job on b", timeout=5)
        elapsed = time.monotonic() - started
        assert active(view)[0]["placement"]["outcome"] == "scheduled"  # chosen by the root
        # a still holds its call: the fast job did not wait for it
        slow_inst = active(job(root, slow["id"]))[0]
        assert slow_inst["id"] == held and slow_inst["state"] == "SCHEDULED"
        assert elapsed < 5.0

        # passes keep running while the call is in flight, and never send it twice
        reconciler = reconciler_of(root)
        start = reconciler.passes
        wait_for(lambda: reconciler.passes >= start + 3, 10, "3 passes during the call")
        assert a.place_calls == [held] and reconciler.in_flight == 1

        a.release()
        view = wait_job(root, slow["id"], all_assigned(1, "a"), "slow job accepted by a")
        assert [i["id"] for i in active(view)] == [held]
        assert a.place_calls == [held] and list(a.placed) == [held]
        assert b.place_calls == [active(job(root, fast["id"]))[0]["id"]]
        wait_for(lambda: reconciler.in_flight == 0, 10, "no call in flight")
        metrics = root.get("/metrics", headers=AUTH).text
        assert 'edge_root_cluster_request_duration_seconds_count{operation="place"} 2' in metrics


def test_placements_in_flight_are_bounded_and_a_finished_call_starts_the_next(
    tmp_path: Path, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    """max_parallel_placements bounds the calls in flight; work left over is started
    when a call ends (not at the next period: the period here is 60 s)."""
    a, b = clusters["a"], clusters["b"]
    a.mode = "hold"
    settings = settings_for(
        tmp_path, max_parallel_placements=1, reconcile_interval=60.0, cluster_timeout=30.0
    )
    with TestClient(create_app(settings, clock=clock)) as root:
        reconciler = reconciler_of(root)
        for c in (a, b):
            c.register(root)
            c.report(root)
        first = submit(root, job_body("first", constraints={"cluster": "a"}))
        wait_for(lambda: a.place_calls, 10, "placement request at a")
        second = submit(root, job_body("second", constraints={"cluster": "b"}))
        wait_for(lambda: reconciler.deferred == 1, 10, "a pass deferring the second job")
        assert b.place_calls == [] and reconciler.in_flight == 1  # the only slot is taken
        assert active(job(root, second["id"]))[0]["state"] == "PENDING"

        a.release()
        wait_job(root, first["id"], all_assigned(1, "a"), "first on a")
        wait_job(root, second["id"], all_assigned(1, "b"), "second on b", timeout=5)
        assert len(a.place_calls) == 1 and len(b.place_calls) == 1


# ---------------------------------------------------------------------- reconcile


def test_scale_down_terminates_highest_replicas_and_delete_ends_terminated(
    root: TestClient, clusters: dict[str, FakeCluster]
) -> None:
    a = clusters["a"]
    a.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]
    a.register(root)
    a.report(root)
    created = submit(root, job_body("svc", replicas=3))
    view = wait_job(root, created["id"], all_assigned(3, "a"), "3 assigned")
    by_replica = {i["replica"]: i["id"] for i in active(view)}
    a.report(root)
    wait_job(root, created["id"], lambda v: v["state"] == "RUNNING", "RUNNING")

    root.patch(f"/api/v1/jobs/{created['id']}", json={"replicas": 1}, headers=AUTH)
    view = wait_job(root, created["id"], lambda v: len(active(v)) == 1, "scaled to 1")
    assert sorted(a.deletes) == sorted([by_replica[1], by_replica[2]])
    assert active(view)[0]["id"] == by_replica[0]
    assert view["state"] == "RUNNING" and view["desired_replicas"] == 1

    root.delete(f"/api/v1/jobs/{created['id']}", headers=AUTH)
    view = wait_job(root, created["id"], lambda v: v["state"] == "TERMINATED", "TERMINATED")
    assert by_replica[0] in a.deletes and a.placed == {}
    assert {i["state"] for i in view["instances"]} == {"TERMINATED"}
    # the cluster's later report of the TERMINATED instances changes nothing
    a.report(
        root,
        changes=[
            InstanceChange(
                instance_id=by_replica[0],
                job_id=created["id"],
                state=InstanceState.TERMINATED,
                ts=time.time(),
            )
        ],
    )
    assert job(root, created["id"])["state"] == "TERMINATED"


def test_failed_instance_is_replaced_per_restart_policy(
    root: TestClient, clusters: dict[str, FakeCluster]
) -> None:
    a = clusters["a"]
    a.register(root)
    a.report(root)
    created = submit(root, job_body("flaky", restart_policy="on-failure", max_restarts=1))
    view = wait_job(root, created["id"], all_assigned(1), "assigned")
    first = active(view)[0]["id"]
    fail = InstanceChange(
        instance_id=first,
        job_id=created["id"],
        state=InstanceState.FAILED,
        exit_code=3,
        reason="exit 3",
        ts=time.time(),
        node_id="a-n1",
    )
    a.report(root, changes=[fail], full=False)
    view = wait_job(
        root,
        created["id"],
        lambda v: any(i["id"] != first for i in active(v)) and all_assigned(1)(v),
        "replacement assigned",
    )
    second = active(view)[0]
    assert second["replica"] == 0 and second["restarts"] == 1
    old = next(i for i in view["instances"] if i["id"] == first)
    assert old["state"] == "FAILED" and old["exit_code"] == 3
    fail2 = InstanceChange(
        instance_id=second["id"],
        job_id=created["id"],
        state=InstanceState.FAILED,
        exit_code=1,
        ts=time.time(),
    )
    a.report(root, changes=[fail2], full=False)
    view = wait_job(root, created["id"], lambda v: v["state"] == "FAILED", "job FAILED")
    assert active(view) == []  # max_restarts reached: no third instance


def test_silent_cluster_unreachable_lost_moved_and_cleaned_up(
    root: TestClient, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]  # spread prefers a
    for c in (a, b):
        c.register(root)
        c.report(root)
    created = submit(root, job_body("mover"))
    view = wait_job(root, created["id"], all_assigned(1, "a"), "on a")
    old = active(view)[0]["id"]
    a.report(root)
    wait_job(root, created["id"], lambda v: v["state"] == "RUNNING", "RUNNING on a")

    clock.advance(15)  # > unreachable_after (10)
    b.report(root)
    wait_for(lambda: cluster_view(root, "a")["liveness"] == "UNREACHABLE", 10, "a UNREACHABLE")
    assert cluster_view(root, "b")["liveness"] == "READY"
    assert [i["id"] for i in active(job(root, created["id"]))] == [old]  # not moved yet

    clock.advance(20)  # 35 s > lost_after (30)
    b.report(root)
    wait_for(lambda: cluster_view(root, "a")["liveness"] == "LOST", 10, "a LOST")
    view = wait_job(root, created["id"], all_assigned(1, "b"), "moved to b")
    moved = active(view)[0]
    assert moved["id"] != old and moved["replica"] == 0
    lost = next(i for i in view["instances"] if i["id"] == old)
    assert lost["state"] == "LOST" and "cluster a lost" in lost["reason"]
    assert a.deletes == []

    # a comes back still running the old instance: the root deletes it there
    a.report(root)
    wait_for(lambda: old in a.deletes, 10, "DELETE of the moved instance on a")
    assert cluster_view(root, "a")["liveness"] == "READY"
    assert a.placed == {}
    kinds = [e["kind"] for e in events(root, cluster_id=a.cluster_id)]
    assert "cluster.stray_deleted" in kinds
    states = [e["state"] for e in events(root, subject=a.cluster_id, kind="cluster.liveness")]
    assert states == ["UNREACHABLE", "LOST", "READY"]
    # the job kept exactly one live instance throughout
    assert len(active(job(root, created["id"]))) == 1


def test_job_lost_grace_moves_instances_of_an_unreachable_cluster(
    root: TestClient, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    a, b = clusters["a"], clusters["b"]
    a.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]
    for c in (a, b):
        c.register(root)
        c.report(root)
    quick = submit(root, job_body("quick", lost_grace_s=12))
    patient = submit(root, job_body("patient"))
    wait_job(root, quick["id"], all_assigned(1, "a"), "quick on a")
    wait_job(root, patient["id"], all_assigned(1, "a"), "patient on a")
    clock.advance(13)  # a UNREACHABLE (10) and past quick's grace (12), not LOST (30)
    b.report(root)
    wait_job(root, quick["id"], all_assigned(1, "b"), "quick moved to b")
    assert cluster_view(root, "a")["liveness"] == "UNREACHABLE"
    assert active(job(root, patient["id"]))[0]["cluster_name"] == "a"


# ---------------------------------------------------------------------- restart


def test_restart_resumes_without_duplicating(
    tmp_path: Path, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    a = clusters["a"]
    a.nodes = [FakeNode("a-n1", cpu=16, memory_mib=16384)]
    settings = settings_for(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as root:
        a.register(root)
        a.report(root)
        created = submit(root, job_body("durable", replicas=3))
        view = wait_job(root, created["id"], all_assigned(3, "a"), "3 assigned")
        ids = sorted(i["id"] for i in view["instances"])
    with TestClient(create_app(settings, clock=clock)) as root:
        reconciler = root.app.state.deps.reconciler  # type: ignore[attr-defined]
        start = reconciler.passes
        wait_for(lambda: reconciler.passes >= start + 3, 10, "3 reconcile passes")
        a.report(root)
        view = wait_job(root, created["id"], lambda v: v["state"] == "RUNNING", "RUNNING")
        assert sorted(i["id"] for i in view["instances"]) == ids
        assert sorted(a.place_calls) == ids and sorted(a.placed) == ids


def test_restart_with_a_placement_in_flight(
    tmp_path: Path, clusters: dict[str, FakeCluster], clock: FakeClock
) -> None:
    a = clusters["a"]
    a.mode = "hold"  # the cluster takes the request but does not answer
    settings = settings_for(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as root:
        a.register(root)
        a.report(root)
        created = submit(root, job_body("inflight"))
        wait_for(lambda: a.place_calls, 10, "placement request at a")
        iid = a.place_calls[0]
        assert active(job(root, created["id"]))[0]["state"] == "SCHEDULED"
    a.mode = "accept"
    a.release()
    with TestClient(create_app(settings, clock=clock)) as root:
        view = wait_job(root, created["id"], all_assigned(1, "a"), "assigned after restart")
        assert [i["id"] for i in view["instances"]] == [iid]
        assert set(a.place_calls) == {iid} and list(a.placed) == [iid]


# ---------------------------------------------------------------------- event stream


def test_event_stream_follows_live(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as http,
    ):
        first = http.post("/api/v1/jobs", json=job_body("before")).json()
        seen: list[dict[str, Any]] = []
        with http.stream("GET", "/api/v1/events/stream", params={"since": 0}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            submitted_second = False
            deadline = time.monotonic() + 10
            event_id = None
            for line in lines:
                assert time.monotonic() < deadline, "stream too slow"
                if line.startswith("id: "):
                    event_id = int(line[4:])
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    assert data["seq"] == event_id
                    seen.append(data)
                    if data["kind"] == "job.submitted" and not submitted_second:
                        submitted_second = True
                        http.post("/api/v1/jobs", json=job_body("after"))
                    if data["kind"] == "job.submitted" and data["job_id"] != first["id"]:
                        break
        seqs = [e["seq"] for e in seen]
        assert seqs == sorted(seqs) and seqs[0] == 1
        assert [e["kind"] for e in seen].count("job.submitted") == 2
        # reconnect with Last-Event-ID and a filter: only newer matching events
        with http.stream(
            "GET",
            "/api/v1/events",
            params={"follow": "true", "kind": "job.submitted"},
            headers={"Last-Event-ID": "0"},
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["job_id"] == first["id"]
                    break
        r = http.get("/api/v1/events/stream", headers={"Authorization": "Bearer nope-nope"})
        assert r.status_code == 401
