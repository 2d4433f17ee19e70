"""Any id or name in a URL gets 404 or 422, never a 5xx, at the root and the cluster.

Real apps with real stores (the root on SQLite and MongoDB, the cluster on SQLite with
its own dynsec Mosquitto): every route with a path parameter, found in the OpenAPI
document, is called with over-long, control-character, non-ASCII and punctuation
values; so are the id filters of the list routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from cluster_orchestrator.app import create_app as create_cluster_app
from cluster_orchestrator.settings import ClusterSettings
from root_orchestrator.app import create_app as create_root_app
from tests.fixtures.broker import BrokerHandle
from tests.integration.test_root_api import make_settings, store_url  # noqa: F401
from tests.integration.test_root_support import AUTH, REG_AUTH, FakeClock, job_body

BAD_VALUES = [
    "x" * 65,
    "j" * 513,
    "n" * 5000,
    "\x00",
    "a\x00b",
    "\n",
    "tab\there",
    "ü",
    "名前",
    "🙂" * 40,
    "a b",
    "'; DROP TABLE c_jobs; --",
    '"quoted"',
    "$where",
    "{}",
    "a.b",
    "%",
    "\\",
    "-",
    "_",
    "UPPER",
]

CLUSTER_OPERATOR = "cluster-operator-token"


def _routes(client: TestClient, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(method, path template) of every route with a path parameter."""
    out = []
    for path, item in client.get("/openapi.json").json()["paths"].items():
        if "{" not in path or any(s in path for s in skip):
            continue
        out.extend((method.upper(), path) for method in item)
    return out


def _call(
    client: TestClient, method: str, template: str, value: str, headers: dict[str, str]
) -> Any:
    path = re.sub(r"\{[^}]+\}", quote(value, safe=""), template)
    # a valid body where one is read (PATCH /jobs/{job}, POST /jobs/{job}/plan, an empty
    # reset-identity), so that only the path parameter can be at fault
    body: Any = None
    if method in ("PATCH", "POST"):
        body = {"replicas": 1} if "/jobs/" in template else {}
    return client.request(method, path, headers=headers, json=body)


def _assert_clean(response: Any, method: str, template: str, value: str) -> None:
    shown = repr(value[:20]) + (f"...({len(value)} chars)" if len(value) > 20 else "")
    assert response.status_code in (404, 422), (
        method,
        template,
        shown,
        response.status_code,
        response.text[:300],
    )
    detail = response.json()["detail"]
    if response.status_code == 422:  # names the parameter at fault
        assert isinstance(detail, list) and detail[0]["loc"][0] in ("path", "query"), detail
    else:
        assert isinstance(detail, str) and "store" not in detail, detail


@pytest.fixture
def root(store_url: str) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_root_app(make_settings(store_url), clock=FakeClock())) as client:
        yield client


def test_root_path_ids_give_404_or_422(root: TestClient) -> None:
    # something to find, so that lookups by name and id reach the store
    assert root.post("/api/v1/jobs", json=job_body(), headers=AUTH).status_code == 201
    reg = {"name": "site-a", "url": "http://127.0.0.1:9", "api_token": "cluster-token"}
    assert root.post("/api/v1/clusters/register", json=reg, headers=REG_AUTH).status_code == 200
    routes = _routes(root, skip=("/report",))
    templates = {t for _m, t in routes}
    assert {"/api/v1/jobs/{job}", "/api/v1/clusters/{cluster}/nodes"} <= templates, templates
    for method, template in routes:
        for value in BAD_VALUES:
            _assert_clean(_call(root, method, template, value, AUTH), method, template, value)


def test_root_report_route_refuses_bad_cluster_ids(root: TestClient) -> None:
    for value in BAD_VALUES:
        r = root.post(
            f"/api/v1/clusters/{quote(value, safe='')}/report",
            json={"ts": 1.0, "seq": 0},
            headers={"Authorization": "Bearer some-credential"},
        )
        assert r.status_code in (401, 404, 422), (repr(value[:20]), r.status_code, r.text[:200])


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/events", ("job_id", "instance_id", "cluster_id", "subject", "kind")),
        ("/api/v1/jobs", ("name", "cluster", "cursor")),
    ],
)
def test_root_filters_never_fail(root: TestClient, path: str, params: tuple[str, ...]) -> None:
    for param in params:
        for value in BAD_VALUES:
            r = root.get(path, params={param: value}, headers=AUTH)
            assert r.status_code in (200, 422), (param, repr(value[:20]), r.status_code, r.text)
            if r.status_code == 422:
                assert r.json()["detail"][0]["loc"] == ["query", param]


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[TestClient]:
    settings = ClusterSettings(
        name="c1",
        data_dir=tmp_path / "cluster",
        broker_port=mosquitto_broker.port,
        broker_admin_password=mosquitto_broker.admin_password,
        operator_token=CLUSTER_OPERATOR,
        join_token="join-token-1",
    )
    with TestClient(create_cluster_app(settings)) as client:
        yield client


def test_cluster_path_ids_give_404_or_422(cluster: TestClient) -> None:
    headers = {"Authorization": f"Bearer {CLUSTER_OPERATOR}"}
    routes = _routes(cluster)
    templates = {t for _m, t in routes}
    assert {"/api/v1/nodes/{node_id}", "/api/v1/instances/{instance_id}"} <= templates
    for method, template in routes:
        for value in BAD_VALUES:
            _assert_clean(_call(cluster, method, template, value, headers), method, template, value)
    for path, params in (
        ("/api/v1/events", ("instance_id", "node_id", "kind")),
        ("/api/v1/instances", ("node_id", "job_id")),
    ):
        for param in params:
            for value in BAD_VALUES:
                r = cluster.get(path, params={param: value}, headers=headers)
                assert r.status_code in (200, 422), (path, param, repr(value[:20]), r.text)
