"""Who may register a cluster name: takeover refused, operator approval, name-bound tokens.

The real root app on a real store (an SQLite file, and MongoDB over the wire), driven
over HTTP; a fake clock makes a cluster go silent (UNREACHABLE, LOST) without waiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from tests.fixtures.mongo import MONGO_PARAMS, mongo_url_for
from tests.integration.test_root_api import make_settings
from tests.integration.test_root_support import AUTH, REG_AUTH, FakeClock, wait_for

STORE_PARAMS = [pytest.param("sqlite", id="sqlite"), *MONGO_PARAMS]
REG = {"name": "c1", "url": "http://127.0.0.1:9", "api_token": "cluster-api-token"}


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'root.db'}"
    return mongo_url_for(request, str(request.param))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(store_url: str, clock: FakeClock) -> Iterator[TestClient]:
    settings = make_settings(store_url, cluster_unreachable_after=10.0, cluster_lost_after=30.0)
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


def register(client: TestClient, body: dict[str, Any], token_headers: dict[str, str] = REG_AUTH):
    return client.post("/api/v1/clusters/register", json=body, headers=token_headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(client: TestClient, cid: str, credential: str) -> int:
    r = client.post(
        f"/api/v1/clusters/{cid}/report", json={"ts": 1.0, "seq": 1}, headers=bearer(credential)
    )
    return r.status_code


def silent(client: TestClient, clock: FakeClock, cid: str, liveness: str, seconds: float) -> None:
    """Let the cluster be silent until the root marks it `liveness`."""
    clock.advance(seconds)
    wait_for(
        lambda: client.get(f"/api/v1/clusters/{cid}", headers=AUTH).json()["liveness"] == liveness,
        10,
        f"cluster {liveness}",
    )


@pytest.mark.parametrize("liveness,seconds", [("UNREACHABLE", 12), ("LOST", 40)])
def test_takeover_of_a_silent_cluster_is_refused(
    client: TestClient, clock: FakeClock, liveness: str, seconds: float
) -> None:
    r = register(client, REG)
    assert r.status_code == 200, r.text
    cid, cred = r.json()["cluster_id"], r.json()["credential"]
    silent(client, clock, cid, liveness, seconds)

    # the attack: the shared registration token and the name, no identity
    attacker = {**REG, "url": "http://127.0.0.1:8", "api_token": "attacker-token"}
    r = register(client, attacker)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert cid in detail and liveness in detail and "reset-identity" in detail
    assert "registration-tokens" in detail
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'edge_root_cluster_registrations_total{result="refused_takeover"} 1' in metrics
    # ... nor with a made-up id, nor with the real id and a guessed credential
    r = register(client, {**attacker, "cluster_id": "cmadeup"})
    assert r.status_code == 409, r.text
    r = register(client, {**attacker, "cluster_id": cid, "credential": "guess"})
    assert r.status_code == 403 and "wrong credential" in r.json()["detail"]

    # the record is untouched: same URL and API token, the real credential still works
    view = client.get(f"/api/v1/clusters/{cid}", headers=AUTH).json()
    assert view["url"] == "http://127.0.0.1:9" and view["liveness"] == liveness
    assert report(client, cid, cred) == 200
    # the real cluster re-registers with its identity and keeps both
    r = register(client, {**REG, "cluster_id": cid, "credential": cred})
    assert r.status_code == 200 and r.json()["cluster_id"] == cid
    assert r.json()["credential"] == cred
    events = client.get("/api/v1/events", params={"cluster_id": cid}, headers=AUTH).json()
    assert not any(e["data"].get("new_identity") for e in events["events"])


def test_operator_reset_lets_the_next_registration_take_the_record(
    client: TestClient, clock: FakeClock
) -> None:
    r = register(client, REG)
    cid, old_cred = r.json()["cluster_id"], r.json()["credential"]
    silent(client, clock, cid, "UNREACHABLE", 12)
    # the reset needs the operator token
    assert client.post(f"/api/v1/clusters/{cid}/reset-identity").status_code == 401
    assert client.post("/api/v1/clusters/nope/reset-identity", headers=AUTH).status_code == 404
    r = client.post("/api/v1/clusters/c1/reset-identity", json={"ttl_s": 60}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["identity_reset_until"] == pytest.approx(clock() + 60)
    # the old credential stops working at once (reports and re-registration)
    assert report(client, cid, old_cred) == 401
    r = register(client, {**REG, "cluster_id": cid, "credential": old_cred})
    assert r.status_code == 403

    # the cluster with a new disk registers afresh: it gets the old record
    r = register(client, {**REG, "url": "http://127.0.0.1:7"})
    assert r.status_code == 200, r.text
    assert r.json()["cluster_id"] == cid
    new_cred = r.json()["credential"]
    assert new_cred != old_cred and report(client, cid, new_cred) == 200
    view = client.get(f"/api/v1/clusters/{cid}", headers=AUTH).json()
    assert view["url"] == "http://127.0.0.1:7" and view["identity_reset_until"] is None
    kinds = [e["kind"] for e in client.get("/api/v1/events", headers=AUTH).json()["events"]]
    assert "cluster.identity_reset" in kinds
    # the approval is spent: a second fresh registration is refused again
    silent(client, clock, cid, "UNREACHABLE", 12)
    assert register(client, REG).status_code == 409


def test_identity_reset_expires(client: TestClient, clock: FakeClock) -> None:
    cid = register(client, REG).json()["cluster_id"]
    r = client.post(f"/api/v1/clusters/{cid}/reset-identity", json={"ttl_s": 5}, headers=AUTH)
    assert r.status_code == 200
    clock.advance(6)
    r = register(client, REG)
    assert r.status_code == 409 and "reset-identity" in r.json()["detail"]
    for bad in ({"ttl_s": 0}, {"ttl_s": 10**9}, {"ttl_s": "x"}, {"other": 1}):
        r = client.post(f"/api/v1/clusters/{cid}/reset-identity", json=bad, headers=AUTH)
        assert r.status_code == 422, (bad, r.text)


def test_name_bound_token_registers_only_its_name(client: TestClient, clock: FakeClock) -> None:
    assert client.post("/api/v1/registration-tokens", json={"name": "c2"}).status_code == 401
    r = client.post("/api/v1/registration-tokens", json={"name": "c2"}, headers=AUTH)
    assert r.status_code == 201, r.text
    created = r.json()
    token, token_id = created["token"], created["id"]
    assert created["name"] == "c2" and created["expires_at"] == pytest.approx(clock() + 86400)
    # shown once: the list has no token
    listed = client.get("/api/v1/registration-tokens", headers=AUTH).json()["tokens"]
    assert [t["id"] for t in listed] == [token_id] and token not in str(listed)

    # another name: refused, and the reason says which name it is for
    r = register(client, {**REG, "name": "c3"}, bearer(token))
    assert r.status_code == 401 and "'c2'" in r.json()["detail"]
    r = register(client, {**REG, "name": "c2"}, bearer(token))
    assert r.status_code == 200, r.text
    cid, cred = r.json()["cluster_id"], r.json()["credential"]
    used = client.get("/api/v1/registration-tokens", headers=AUTH).json()["tokens"][0]
    assert used["used_by"] == cid and used["used_at"] is not None

    # used: the cluster it registered re-registers with it (after a restart)...
    r = register(
        client, {**REG, "name": "c2", "cluster_id": cid, "credential": cred}, bearer(token)
    )
    assert r.status_code == 200 and r.json()["cluster_id"] == cid
    # ... but it registers nothing else, not even its name afresh
    r = register(client, {**REG, "name": "c2"}, bearer(token))
    assert r.status_code == 401 and cid in r.json()["detail"]
    # a wrong secret with a real token id is just a wrong token
    r = register(client, {**REG, "name": "c2"}, bearer(token_id + ".wrong"))
    assert r.status_code == 401
    # deleted: it authenticates nothing
    assert client.delete(f"/api/v1/registration-tokens/{token_id}", headers=AUTH).status_code == 200
    assert client.delete(f"/api/v1/registration-tokens/{token_id}", headers=AUTH).status_code == 404
    r = register(
        client, {**REG, "name": "c2", "cluster_id": cid, "credential": cred}, bearer(token)
    )
    assert r.status_code == 401


def test_name_bound_token_is_an_approval_to_take_a_known_name(
    client: TestClient, clock: FakeClock
) -> None:
    cid = register(client, REG).json()["cluster_id"]
    silent(client, clock, cid, "UNREACHABLE", 12)
    token = client.post(
        "/api/v1/registration-tokens", json={"name": "c1", "ttl_s": 30}, headers=AUTH
    ).json()["token"]
    r = register(client, {**REG, "url": "http://127.0.0.1:7"}, bearer(token))
    assert r.status_code == 200 and r.json()["cluster_id"] == cid
    # and only once
    silent(client, clock, cid, "UNREACHABLE", 12)
    assert register(client, REG, bearer(token)).status_code == 401


def test_name_bound_token_expires_unused(client: TestClient, clock: FakeClock) -> None:
    token = client.post(
        "/api/v1/registration-tokens", json={"name": "c4", "ttl_s": 10}, headers=AUTH
    ).json()["token"]
    clock.advance(11)
    r = register(client, {**REG, "name": "c4"}, bearer(token))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    listed = client.get("/api/v1/registration-tokens", headers=AUTH).json()["tokens"]
    assert listed[0]["expired"] is True
    for bad in ({"name": "Not A Name"}, {"name": "c5", "ttl_s": -1}, {}):
        r = client.post("/api/v1/registration-tokens", json=bad, headers=AUTH)
        assert r.status_code == 422, (bad, r.text)


def test_shared_token_still_registers_new_names(client: TestClient) -> None:
    r = register(client, {**REG, "name": "fresh"})
    assert r.status_code == 200
    r = register(client, {**REG, "name": "fresh-2"})
    assert r.status_code == 200


def test_only_hashes_of_secrets_are_stored(tmp_path: Path, clock: FakeClock) -> None:
    """The store file holds no cluster credential and no name-bound token in clear."""
    db = tmp_path / "root.db"
    with TestClient(create_app(make_settings(f"sqlite:///{db}"), clock=clock)) as c:
        cred = register(c, REG).json()["credential"]
        token = c.post("/api/v1/registration-tokens", json={"name": "c9"}, headers=AUTH).json()[
            "token"
        ]
        r = register(c, {**REG, "name": "c9"}, bearer(token))
        assert r.status_code == 200
        second = r.json()["credential"]
    con = sqlite3.connect(db)
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    assert cred not in dump and second not in dump and token not in dump
    assert token.split(".", 1)[1] not in dump
    # the API token the root presents to the cluster must be kept (it calls the cluster)
    assert "cluster-api-token" in dump


def test_edgectl_reset_identity_and_tokens(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgectl clusters reset-identity` and `edgectl clusters token ...` on the real app."""
    from typer.testing import CliRunner

    from edgectl import main as cli
    from edgectl.client import RootClient
    from edgectl.config import Target
    from tests.integration.test_root_support import OPERATOR_TOKEN

    settings = make_settings(f"sqlite:///{tmp_path / 'root.db'}")
    with TestClient(create_app(settings, clock=clock)) as tc:
        transport = tc._transport

        def make_client(target: Target) -> RootClient:
            return RootClient(target.root_url, target.token, transport=transport)

        monkeypatch.setattr(cli, "make_client", make_client)
        monkeypatch.setenv("EDGE_ROOT_URL", "http://testserver")
        monkeypatch.setenv("EDGE_TOKEN", OPERATOR_TOKEN)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
        runner = CliRunner()

        def edgectl(*args: str) -> Any:
            return runner.invoke(cli.app, list(args), prog_name="edgectl")

        cid = register(tc, REG).json()["cluster_id"]
        res = edgectl("clusters", "reset-identity", "c1", "--ttl", "120")
        assert res.exit_code == 0, res.output
        assert "identity reset" in res.output and cid in res.output
        assert register(tc, REG).json()["cluster_id"] == cid  # the approval took effect
        res = edgectl("clusters", "reset-identity", "nope")
        assert res.exit_code != 0 and "nope" in res.output

        res = edgectl("clusters", "token", "create", "c7", "--ttl", "600")
        assert res.exit_code == 0, res.output
        token = res.output.strip().splitlines()[-1]
        r = register(tc, {**REG, "name": "c7"}, bearer(token))
        assert r.status_code == 200, r.text
        res = edgectl("clusters", "token", "ls")
        assert res.exit_code == 0 and "c7" in res.output and "used by" in res.output
        assert token not in res.output
        token_id = token.split(".", 1)[0]
        res = edgectl("clusters", "token", "rm", token_id)
        assert res.exit_code == 0 and "deleted" in res.output
