"""The root's HTTP API against a real store (SQLite file, and MongoDB over the wire).

No clusters answer here except where a test registers one (its URL is never called):
these tests cover the API contract; scheduling is in test_root_scheduling.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from root_orchestrator.settings import RootSettings
from tests.fixtures.mongo import MONGO_PARAMS, mongo_url_for
from tests.harness.wait import wait_for
from tests.integration.test_root_support import (
    AUTH,
    OPERATOR_TOKEN,
    REG_AUTH,
    REGISTRATION_TOKEN,
    FakeClock,
    job_body,
)

STORE_PARAMS = [pytest.param("sqlite", id="sqlite"), *MONGO_PARAMS]


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: an SQLite file, or a private MongoDB database per server kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'root.db'}"
    return mongo_url_for(request, str(request.param))


def make_settings(store_url: str, **extra: Any) -> RootSettings:
    values: dict[str, Any] = {
        "store_url": store_url,
        "operator_tokens": [OPERATOR_TOKEN, "second-operator-token"],
        "registration_token": REGISTRATION_TOKEN,
        "reconcile_interval": 0.2,
        "max_body_bytes": 64 * 1024,
    }
    values.update(extra)
    return RootSettings(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(store_url: str, clock: FakeClock) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store_url), clock=clock)) as c:
        yield c


# ---------------------------------------------------------------------- auth


def _operator_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) for every operator route (from the OpenAPI document)."""
    out = []
    for path, item in client.get("/openapi.json").json()["paths"].items():
        if path.endswith("/register") or path.endswith("/report") or path == "/healthz":
            continue
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        for method in item:
            out.append((method.upper(), concrete))
    return out


def test_every_operator_route_needs_the_token(client: TestClient) -> None:
    routes = _operator_routes(client)
    paths = {p for _m, p in routes}
    assert {
        "/api/v1/jobs",
        "/api/v1/jobs/x1",
        "/api/v1/clusters",
        "/api/v1/clusters/x1",
        "/api/v1/clusters/x1/nodes",
        "/api/v1/events",
        "/api/v1/events/stream",
        "/metrics",
    } <= paths, paths
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-123"},
            {"Authorization": "Basic b3A6b3A="},
        ):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
    # the second configured token works too
    r = client.get("/api/v1/jobs", headers={"Authorization": "Bearer second-operator-token"})
    assert r.status_code == 200


def test_health_needs_no_token_and_docs_exist(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/api/v1/jobs" in spec["paths"] and "/api/v1/clusters/register" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_cluster_api_rejects_unknown_or_wrong_credentials(client: TestClient) -> None:
    reg = {"name": "site-a", "url": "http://127.0.0.1:9", "api_token": "cluster-token"}
    for headers in ({}, AUTH, {"Authorization": "Bearer nope-nope-nope"}):
        r = client.post("/api/v1/clusters/register", json=reg, headers=headers)
        assert r.status_code == 401 and "www-authenticate" in r.headers
    r = client.post("/api/v1/clusters/register", json=reg, headers=REG_AUTH)
    assert r.status_code == 200
    cid, cred = r.json()["cluster_id"], r.json()["credential"]
    report = {"ts": 1.0, "seq": 1}
    for path, headers in (
        (f"/api/v1/clusters/{cid}/report", {}),
        (f"/api/v1/clusters/{cid}/report", {"Authorization": "Bearer wrong-credential"}),
        (f"/api/v1/clusters/{cid}/report", REG_AUTH),
        (f"/api/v1/clusters/{cid}/report", AUTH),
        ("/api/v1/clusters/cunknown/report", {"Authorization": f"Bearer {cred}"}),
    ):
        r = client.post(path, json=report, headers=headers)
        assert r.status_code == 401, (path, headers, r.text)
        assert "www-authenticate" in r.headers
    r = client.post(
        f"/api/v1/clusters/{cid}/report", json=report, headers={"Authorization": f"Bearer {cred}"}
    )
    assert r.status_code == 200 and r.json()["liveness"] == "READY"
    # a re-registration naming the id with a wrong credential is refused with 403 (the
    # registration token was right: the cluster must learn its identity is gone)
    bad = {**reg, "cluster_id": cid, "credential": "not-the-credential"}
    r = client.post("/api/v1/clusters/register", json=bad, headers=REG_AUTH)
    assert r.status_code == 403 and "wrong credential" in r.text
    # ... and with a wrong registration token it is a 401, whatever the body says
    r = client.post(
        "/api/v1/clusters/register",
        json=bad,
        headers={"Authorization": "Bearer wrong-registration"},
    )
    assert r.status_code == 401


# ---------------------------------------------------------------------- jobs


def test_submit_get_list_patch_delete(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json=job_body("web", replicas=2, priority=500), headers=AUTH)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] == "PENDING" and job["desired_replicas"] == 2
    assert job["actual_replicas"] == 0
    assert [i["state"] for i in job["instances"]] == ["PENDING", "PENDING"]
    assert [i["replica"] for i in job["instances"]] == [0, 1]
    assert job["spec"]["command"] == ["sleep", "600"]

    got = client.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()
    assert got["id"] == job["id"]
    # the latest placement explains why it is pending (no cluster registered)
    wait = got["placement"] or {}
    assert got["state"] == "PENDING"
    by_name = client.get("/api/v1/jobs/web", headers=AUTH)
    assert by_name.status_code == 200 and by_name.json()["id"] == job["id"]
    assert client.get("/api/v1/jobs/nope", headers=AUTH).status_code == 404
    del wait

    r = client.patch(
        f"/api/v1/jobs/{job['id']}", json={"replicas": 3, "priority": 10}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert r.json()["desired_replicas"] == 3 and r.json()["priority"] == 10
    assert sorted(i["replica"] for i in r.json()["instances"]) == [0, 1, 2]

    r = client.patch(f"/api/v1/jobs/{job['id']}", json={"replicas": 1}, headers=AUTH)
    states = {i["replica"]: i["state"] for i in r.json()["instances"]}
    assert states[0] == "PENDING"
    assert [i for i in r.json()["instances"] if i["state"] == "TERMINATED"]

    r = client.delete(f"/api/v1/jobs/{job['id']}", headers=AUTH)
    assert r.status_code == 202
    # no cluster had any instance: everything ends at once
    got = client.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()
    assert got["state"] == "TERMINATED" and got["desired_replicas"] == 0
    assert {i["state"] for i in got["instances"]} == {"TERMINATED"}
    assert (
        client.patch(f"/api/v1/jobs/{job['id']}", json={"replicas": 2}, headers=AUTH).status_code
        == 409
    )
    # the name is free again
    assert client.post("/api/v1/jobs", json=job_body("web"), headers=AUTH).status_code == 201


def test_validation_errors_name_the_field(client: TestClient) -> None:
    cases = [
        (job_body(replicas=-1), "replicas"),
        (job_body(name="Not_A_DNS_Name"), "name"),
        (job_body(resources={"cpu": -1}), "cpu"),
        ({**job_body(), "unknown_field": 1}, "unknown_field"),
        ({"name": "x", "runtime": "docker"}, "image"),
    ]
    for body, field in cases:
        r = client.post("/api/v1/jobs", json=body, headers=AUTH)
        assert r.status_code == 422, r.text
        text = json.dumps(r.json())
        assert field in text, (field, text)
        assert "input" not in r.json()["detail"][0]
    r = client.patch("/api/v1/jobs/x", json={"replicas": 5000}, headers=AUTH)
    assert r.status_code == 422 and "replicas" in r.json()["message"]
    r = client.post(
        "/api/v1/jobs", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    headers = {**AUTH, "Idempotency-Key": "submit-42"}
    first = client.post("/api/v1/jobs", json=job_body("batch"), headers=headers)
    again = client.post("/api/v1/jobs", json=job_body("batch"), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(client.get("/api/v1/jobs", headers=AUTH).json()["jobs"]) == 1
    other = client.post("/api/v1/jobs", json=job_body("batch", replicas=2), headers=headers)
    assert other.status_code == 409
    # without a key, a second active job with the same name is a conflict
    assert client.post("/api/v1/jobs", json=job_body("batch"), headers=AUTH).status_code == 409


def test_list_filters_and_pagination(client: TestClient) -> None:
    ids = []
    for n in range(5):
        r = client.post(
            "/api/v1/jobs", json=job_body(f"job{n}", replicas=0 if n % 2 else 1), headers=AUTH
        )
        ids.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params, headers=AUTH).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids  # submission order, no duplicates, nothing missed
    stopped = client.get("/api/v1/jobs", params={"state": "STOPPED"}, headers=AUTH).json()
    assert sorted(j["name"] for j in stopped["jobs"]) == ["job1", "job3"]
    named = client.get("/api/v1/jobs", params={"name": "job2"}, headers=AUTH).json()
    assert [j["id"] for j in named["jobs"]] == [ids[2]]
    none = client.get("/api/v1/jobs", params={"cluster": "nowhere"}, headers=AUTH).json()
    assert none["jobs"] == []
    assert client.get("/api/v1/jobs", params={"state": "BOGUS"}, headers=AUTH).status_code == 422


# ---------------------------------------------------------------------- clusters


def test_register_report_and_views(client: TestClient) -> None:
    reg = {
        "name": "site-a",
        "url": "http://127.0.0.1:9/",
        "api_token": "cluster-api-token",
        "labels": {"region": "eu"},
        "location": "lab",
    }
    r = client.post("/api/v1/clusters/register", json=reg, headers=REG_AUTH)
    assert r.status_code == 200
    cid, cred = r.json()["cluster_id"], r.json()["credential"]
    assert r.json()["report_interval_s"] > 0
    report = {
        "ts": 10.0,
        "seq": 1,
        "nodes_by_liveness": {"READY": 2},
        "total": {"cpu": 8, "memory_mib": 8192},
        "free": {"cpu": 6, "memory_mib": 4096},
        "largest_free_cpu": 4,
        "largest_free_memory_mib": 2048,
        "nodes": [
            {"free": {"cpu": 4, "memory_mib": 2048}, "arch": "amd64", "runtimes": ["native"]}
        ],
        "runtimes": ["native"],
        "archs": ["amd64"],
    }
    r = client.post(
        f"/api/v1/clusters/{cid}/report", json=report, headers={"Authorization": f"Bearer {cred}"}
    )
    assert r.status_code == 200
    listed = client.get("/api/v1/clusters", headers=AUTH).json()["clusters"]
    assert [c["id"] for c in listed] == [cid]
    one = client.get(f"/api/v1/clusters/{cid}", headers=AUTH).json()
    assert one["liveness"] == "READY" and one["report"]["free"]["memory_mib"] == 4096
    assert one["url"] == "http://127.0.0.1:9" and one["labels"] == {"region": "eu"}
    assert one["has_api_token"] is True
    assert client.get("/api/v1/clusters/site-a", headers=AUTH).json()["id"] == cid
    assert client.get("/api/v1/clusters/nope", headers=AUTH).status_code == 404
    # secrets never come back
    everything = json.dumps(listed) + json.dumps(one)
    assert cred not in everything and "cluster-api-token" not in everything
    events = client.get("/api/v1/events", headers=AUTH).text
    assert cred not in events and "cluster-api-token" not in events

    # re-registration with id + credential keeps both
    again = {**reg, "cluster_id": cid, "credential": cred, "url": "http://127.0.0.1:10"}
    r = client.post("/api/v1/clusters/register", json=again, headers=REG_AUTH)
    assert r.status_code == 200 and r.json()["cluster_id"] == cid
    assert r.json()["credential"] == cred
    # a new cluster cannot take the name of a READY one
    r = client.post("/api/v1/clusters/register", json={**reg, "api_token": "x"}, headers=REG_AUTH)
    assert r.status_code == 409
    # nodes are fetched from the cluster: nothing listens there -> 502
    r = client.get(f"/api/v1/clusters/{cid}/nodes", headers=AUTH)
    assert r.status_code == 502 and "site-a" in r.json()["detail"]


def test_report_validation_and_limits(client: TestClient) -> None:
    r = client.post(
        "/api/v1/clusters/register",
        json={"name": "b", "url": "http://127.0.0.1:9"},
        headers=REG_AUTH,
    )
    cid, cred = r.json()["cluster_id"], r.json()["credential"]
    bad = {"ts": -1, "seq": 1}
    r = client.post(
        f"/api/v1/clusters/{cid}/report", json=bad, headers={"Authorization": f"Bearer {cred}"}
    )
    assert r.status_code == 422 and "ts" in r.json()["message"]
    # without the right credential, even a bad body gets 401 (auth comes first)
    r = client.post(
        f"/api/v1/clusters/{cid}/report",
        json=bad,
        headers={"Authorization": "Bearer wrong-credential"},
    )
    assert r.status_code == 401


# ---------------------------------------------------------------------- events


def _placement_tried(client: TestClient, job_id: str) -> bool:
    """True once the reconciler has tried to place every instance of a job."""
    view = client.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json()
    return bool(view["instances"]) and all(i["placement"] for i in view["instances"])


def test_events_cursor_and_filters(client: TestClient) -> None:
    a = client.post("/api/v1/jobs", json=job_body("a", replicas=2), headers=AUTH).json()
    b = client.post("/api/v1/jobs", json=job_body("b"), headers=AUTH).json()
    # The reconciler records a `scheduling.pending` event per instance ("no cluster is
    # registered") in its own time: wait for those before reading the log, else a page
    # read later sees events the first read did not (the flake seen on nx). After
    # that, with no cluster and a frozen clock, nothing adds events.
    wait_for(lambda: all(_placement_tried(client, j["id"]) for j in (a, b)), 10, "placement tries")
    everything = client.get("/api/v1/events", params={"limit": 1000}, headers=AUTH).json()
    seqs = [e["seq"] for e in everything["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert everything["next_since"] == seqs[-1]
    kinds = [e["kind"] for e in everything["events"]]
    assert {"job.submitted", "instance.state"} <= set(kinds)
    assert kinds.count("scheduling.pending") == 3  # one per instance, not one per pass
    # paging with the cursor sees every event exactly once
    got: list[int] = []
    since = 0
    while True:
        page = client.get(
            "/api/v1/events", params={"since": since, "limit": 2}, headers=AUTH
        ).json()
        if not page["events"]:
            break
        got += [e["seq"] for e in page["events"]]
        since = page["next_since"]
    assert got == seqs
    only_a = client.get(
        "/api/v1/events", params={"job_id": a["id"], "kind": "instance.state"}, headers=AUTH
    ).json()["events"]
    assert len(only_a) == 2 and all(e["job_id"] == a["id"] for e in only_a)
    assert {e["state"] for e in only_a} == {"PENDING"}
    jobs_only = client.get("/api/v1/events", params={"category": "job"}, headers=AUTH).json()
    assert {e["kind"].split(".")[0] for e in jobs_only["events"]} == {"job"}
    # every instance transition is an event: delete and count TERMINATED transitions
    client.delete(f"/api/v1/jobs/{a['id']}", headers=AUTH)
    ended = client.get(
        "/api/v1/events", params={"job_id": a["id"], "since": since}, headers=AUTH
    ).json()["events"]
    assert (
        sum(1 for e in ended if e["state"] == "TERMINATED" and e["kind"] == "instance.state") == 2
    )
    assert any(e["kind"] == "job.deleted" for e in ended)


# ---------------------------------------------------------------------- metrics, limits

_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? (?P<value>-?[0-9.e+-]+|\+Inf|-Inf|NaN)$'
)


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text format strictly; return {series: value}."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _h, _t, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name = match.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"sample without TYPE: {line!r}"
        series = line.rsplit(" ", 1)[0]
        assert series not in samples, f"duplicate series {series}"
        samples[series] = float(match.group("value").replace("+Inf", "inf"))
    return samples


def test_metrics_text_parses(client: TestClient) -> None:
    client.post("/api/v1/jobs", json=job_body("m", replicas=2), headers=AUTH)
    client.get("/api/v1/jobs", headers=AUTH)
    client.get("/api/v1/jobs/unknown", headers=AUTH)
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(r.text)
    assert samples['edge_root_jobs{state="PENDING"}'] == 1
    assert samples['edge_root_instances{state="PENDING"}'] == 2
    assert samples['edge_root_clusters{liveness="READY"}'] == 0
    assert (
        samples['edge_root_http_requests_total{method="POST",route="/api/v1/jobs",status="201"}']
        == 1
    )
    assert (
        samples[
            'edge_root_http_requests_total{method="GET",route="/api/v1/jobs/{job}",status="404"}'
        ]
        == 1
    )
    assert any(k.startswith("edge_root_http_request_duration_seconds_bucket") for k in samples)
    assert "edge_root_scheduling_latency_seconds" in r.text


def test_request_size_limit(client: TestClient) -> None:
    big = job_body("big", env={"X": "a" * 4000})
    big["command"] = ["x" * 4000] * 40  # ~160 KB > 64 KiB limit
    r = client.post("/api/v1/jobs", json=big, headers=AUTH)
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"name": "big", "runtime": "native", "command": ["'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"]}'

    r = client.post(
        "/api/v1/jobs", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert client.get("/api/v1/jobs", headers=AUTH).json()["jobs"] == []


def test_state_survives_restart(store_url: str, clock: FakeClock) -> None:
    settings = make_settings(store_url)
    with TestClient(create_app(settings, clock=clock)) as c:
        job = c.post("/api/v1/jobs", json=job_body("keep", replicas=2), headers=AUTH).json()
        r = c.post(
            "/api/v1/clusters/register",
            json={"name": "s", "url": "http://127.0.0.1:9"},
            headers=REG_AUTH,
        )
        cid = r.json()["cluster_id"]
        last = c.get("/api/v1/events", params={"limit": 1000}, headers=AUTH).json()["next_since"]
    with TestClient(create_app(settings, clock=clock)) as c:
        again = c.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()
        assert sorted(i["id"] for i in again["instances"]) == sorted(
            i["id"] for i in job["instances"]
        )
        assert c.get(f"/api/v1/clusters/{cid}", headers=AUTH).status_code == 200
        c.post("/api/v1/jobs", json=job_body("more"), headers=AUTH)
        events = c.get("/api/v1/events", params={"since": last}, headers=AUTH).json()["events"]
        assert events and events[0]["seq"] == last + 1  # the log continues, no reuse
