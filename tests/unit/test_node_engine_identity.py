"""Join handshake: refusals, retries with backoff + jitter, stored identity."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from node_engine.identity import (
    HttpResult,
    Joiner,
    JoinRefused,
    JoinUnavailable,
    backoff_delay,
    engine_id,
    load_identity,
    refusal_message,
    save_identity,
)
from schemas.common import Arch
from schemas.node import JoinRequest, JoinResponse, MqttConnectInfo, NodeInfo

INFO = NodeInfo(name="n1", hostname="h", arch=Arch.AMD64, cpu_cores=4, memory_mib=1024, disk_mib=10)
RESPONSE = JoinResponse(
    node_id="node1",
    node_secret=SecretStr("s3cret"),
    cluster_name="c1",
    mqtt=MqttConnectInfo(
        host="127.0.0.1",
        port=1883,
        username="node-node1",
        password=SecretStr("pw"),
        client_id="node-node1",
    ),
    status_interval_s=1.0,
)


class ScriptedPost:
    def __init__(self, results: list[Any]) -> None:
        self.results = list(results)
        self.calls: list[Any] = []

    def __call__(self, url, body, headers, timeout):
        self.calls.append((url, json.loads(body), headers))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def ok() -> HttpResult:
    return HttpResult(201, RESPONSE.model_dump_json().encode())


def test_join_sends_bearer_and_parses_response():
    post = ScriptedPost([ok()])
    joiner = Joiner("http://c:1/", SecretStr("tok"), post=post)
    resp = joiner.join(JoinRequest(info=INFO))
    assert resp.node_id == "node1" and resp.node_secret.get_secret_value() == "s3cret"
    url, body, headers = post.calls[0]
    assert url == "http://c:1/api/v1/nodes"
    assert headers["Authorization"] == "Bearer tok"
    assert body["info"]["name"] == "n1" and body["node_id"] is None


@pytest.mark.parametrize("status", [401, 403, 422, 404])
def test_refusals_are_not_retried(status):
    body = json.dumps({"detail": "invalid join token"}).encode()
    post = ScriptedPost([HttpResult(status, body)])
    with pytest.raises(JoinRefused) as info:
        Joiner("http://c", SecretStr("bad"), post=post, sleep=lambda s: None).join(
            JoinRequest(info=INFO)
        )
    assert info.value.status == status and "invalid join token" in info.value.message
    assert len(post.calls) == 1


def test_fastapi_validation_detail_is_readable():
    detail = {"detail": [{"loc": ["body", "info", "name"], "msg": "bad name", "type": "x"}]}
    post = ScriptedPost([HttpResult(422, json.dumps(detail).encode())])
    with pytest.raises(JoinRefused) as info:
        Joiner("http://c", None, post=post).attempt(JoinRequest(info=INFO))
    assert info.value.message == "body.info.name: bad name"


def test_unreachable_and_5xx_are_retried_with_capped_backoff():
    post = ScriptedPost(
        [
            JoinUnavailable("refused"),
            HttpResult(503, b""),
            JoinUnavailable("x"),
            HttpResult(500, b"oops"),
            JoinUnavailable("y"),
            JoinUnavailable("z"),
            ok(),
        ]
    )
    sleeps: list[float] = []
    joiner = Joiner(
        "http://c",
        SecretStr("t"),
        post=post,
        sleep=sleeps.append,
        rng=random.Random(1),
        base_delay=1.0,
        max_delay=8.0,
    )
    assert joiner.join(JoinRequest(info=INFO)).node_id == "node1"
    assert len(sleeps) == 6
    ceilings = [1, 2, 4, 8, 8, 8]
    for delay, ceiling in zip(sleeps, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_limited_attempts_raise_unavailable():
    post = ScriptedPost([JoinUnavailable("down")])
    with pytest.raises(JoinUnavailable):
        Joiner("http://c", None, post=post).join(JoinRequest(info=INFO), attempts=1)


def test_backoff_delay_bounds():
    rng = random.Random(0)
    for attempt in range(40):
        d = backoff_delay(attempt, 0.5, 30.0, rng)
        assert 0 < d <= 30.0


def test_identity_round_trip_mode_0600(tmp_path):
    assert load_identity(tmp_path) is None
    save_identity(tmp_path, RESPONSE)
    path = tmp_path / "identity.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["node_secret"] == "s3cret"
    assert load_identity(tmp_path) == RESPONSE
    path.write_text('{"node_id": "x"}')
    assert load_identity(tmp_path) is None


def test_engine_id_is_stable(tmp_path):
    first = engine_id(tmp_path)
    assert first == engine_id(tmp_path) and first.startswith("e")


# ---------------------------------------------------------------- rejoin and refusals


def refusal(status: int, detail: str, reason: str | None = None) -> HttpResult:
    body: dict[str, Any] = {"detail": detail}
    if reason is not None:
        body["reason"] = reason
    return HttpResult(status, json.dumps(body).encode())


def stored_request() -> JoinRequest:
    return JoinRequest(info=INFO, node_id="node1", node_secret=SecretStr("s3cret"))


def test_rejoin_sends_the_stored_identity_and_the_token_only_when_set():
    post = ScriptedPost([ok(), ok()])
    Joiner("http://c", SecretStr("tok"), post=post).attempt(stored_request())
    Joiner("http://c", None, post=post).attempt(stored_request())
    (_, with_token, headers), (_, without_token, bare) = post.calls
    assert with_token["node_id"] == "node1" and with_token["node_secret"] == "s3cret"
    assert headers["Authorization"] == "Bearer tok"
    assert without_token == with_token and "Authorization" not in bare


def test_refusal_carries_reason_and_presented_node_id():
    post = ScriptedPost([refusal(403, "node node1 was removed", "node_removed")])
    with pytest.raises(JoinRefused) as info:
        Joiner("http://c", None, post=post, sleep=lambda s: None).join(stored_request())
    exc = info.value
    assert (exc.status, exc.reason, exc.node_id, exc.rejoin) == (403, "node_removed", "node1", True)
    assert exc.message == "node node1 was removed" and "rejoin of node node1" in str(exc)
    assert len(post.calls) == 1  # a refused rejoin is final, not retried
    post = ScriptedPost([HttpResult(401, b"not json")])
    with pytest.raises(JoinRefused) as info:
        Joiner("http://c", SecretStr("t"), post=post).attempt(JoinRequest(info=INFO))
    assert (info.value.reason, info.value.node_id, info.value.rejoin) == (None, None, False)


@pytest.mark.parametrize(
    ("status", "reason", "node_id", "expect"),
    [
        (401, "join_token_invalid", None, ["refused the join (HTTP 401)", "check the join token"]),
        (422, None, None, ["refused the join (HTTP 422)"]),
        (
            403,
            "node_removed",
            "node1",
            ["refused the rejoin of node node1", "removed this node", "delete /s/identity.json"],
        ),
        (403, "node_secret_wrong", "node1", ["does not match", "delete that file"]),
        (403, None, "node1", ["does not match"]),
        (401, "node_unknown", "node1", ["does not know this node", "EDGE_NODE_JOIN_TOKEN"]),
        (401, None, "node1", ["check the join token"]),
        (422, None, "node1", ["refused the rejoin of node node1 with its stored identity"]),
    ],
)
def test_refusal_message_says_what_to_do(status, reason, node_id, expect):
    exc = JoinRefused(status, "the detail", reason=reason, node_id=node_id)
    text = refusal_message(exc, "http://c:8100", Path("/s"))
    assert text.startswith("node-engine: the cluster at http://c:8100 refused the ")
    assert f"(HTTP {status}): the detail" in text
    for part in expect:
        assert part in text, (part, text)
    if status == 422:
        assert " - " not in text  # no advice invented for a validation error
