"""edgectl's client returns the API models of schemas/root_api.py, and `-o json` prints
exactly the JSON the root answered (CliRunner + httpx.MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgectl import main as cli
from edgectl.client import EdgectlError, RootClient
from edgectl.config import Target
from schemas.root_api import RegistrationTokenCreated, RegistrationTokenView

TOKEN = "op-token"

TOKENS: list[dict[str, Any]] = [
    {
        "id": "t1",
        "name": "site-a",
        "created_at": 1.5,
        "expires_at": 86401.5,
        "used_by": "c1",
        "used_at": 2.0,
        "expired": False,
    },
    {
        "id": "t2",
        "name": "site-b",
        "created_at": 3.0,
        "expires_at": None,
        "used_by": None,
        "used_at": None,
        "expired": False,
    },
]


def _root(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/api/v1/registration-tokens" and request.method == "GET":
        return httpx.Response(200, json={"tokens": TOKENS})
    if path == "/api/v1/registration-tokens" and request.method == "POST":
        body = json.loads(request.content)
        return httpx.Response(201, json={**TOKENS[1], "name": body["name"], "token": "ert_secret"})
    if path == "/api/v1/registration-tokens/t1" and request.method == "DELETE":
        return httpx.Response(200, json=TOKENS[0])
    if path == "/api/v1/registration-tokens/bad":
        return httpx.Response(200, json={"id": "bad"})
    return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def client() -> RootClient:
    return RootClient("http://root.test", TOKEN, transport=httpx.MockTransport(_root))


def test_client_returns_models(client: RootClient) -> None:
    tokens = client.list_registration_tokens()
    assert all(isinstance(t, RegistrationTokenView) for t in tokens)
    assert [t.used_by for t in tokens] == ["c1", None]
    created = client.create_registration_token("site-c", None)
    assert isinstance(created, RegistrationTokenCreated) and created.token == "ert_secret"
    assert created.name == "site-c"
    gone = client.delete_registration_token("t1")
    assert gone.id == "t1" and gone.model_dump(mode="json") == TOKENS[0]


def test_an_answer_that_does_not_fit_names_the_field(client: RootClient) -> None:
    with pytest.raises(EdgectlError) as info:
        client.delete_registration_token("bad")
    assert "RegistrationTokenView" in info.value.message and "name" in info.value.message


def test_json_output_is_the_roots_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def make_client(target: Target) -> RootClient:
        return RootClient(target.root_url, target.token, transport=httpx.MockTransport(_root))

    monkeypatch.setattr(cli, "make_client", make_client)
    monkeypatch.setenv("EDGE_ROOT_URL", "http://root.test")
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["clusters", "token", "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == json.dumps({"tokens": TOKENS}, indent=2) + "\n"
    table = runner.invoke(cli.app, ["clusters", "token", "ls"])
    assert "t1  site-a  used by c1" in table.stdout and "t2  site-b  unused" in table.stdout
    gone = runner.invoke(cli.app, ["clusters", "token", "rm", "t1", "-o", "json"])
    assert gone.stdout == json.dumps(TOKENS[0], indent=2) + "\n"
