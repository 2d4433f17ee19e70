"""edgectl's API client: error lines, paging, SSE, connection failures (httpx.MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgectl.client import (
    ApiError,
    ConnectionFailed,
    EdgectlError,
    RootClient,
    error_message,
    parse_sse,
)
from edgectl.config import resolve_data_dir, resolve_target
from tests.unit import edgectl_docs as docs

ROOT = "http://root.test"


def _response(status: int, body: Any = None, text: str | None = None) -> httpx.Response:
    request = httpx.Request("GET", ROOT + "/x")
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


VALIDATION = {
    "detail": [
        {"loc": ["body", "replicas"], "msg": "Input should be greater than or equal to 0"},
        {"loc": ["body", "resources", "cpu"], "msg": "Input should be a valid number"},
    ],
    "message": "body.replicas: Input should be greater than or equal to 0; ...",
}


@pytest.mark.parametrize(
    ("status", "body", "text", "body_name", "expected"),
    [
        (
            422,
            {"detail": VALIDATION["detail"][:1]},
            None,
            "spec",
            "spec.replicas: Input should be greater than or equal to 0",
        ),
        (
            422,
            VALIDATION,
            None,
            "spec",
            "spec.replicas: Input should be greater than or equal to 0; "
            "spec.resources.cpu: Input should be a valid number",
        ),
        (
            422,
            {"detail": [{"loc": ["body", "replicas"], "msg": "too big"}]},
            None,
            "",
            "replicas: too big",
        ),
        (
            422,
            {"detail": [{"loc": ["query", "limit"], "msg": "bad"}]},
            None,
            "spec",
            "query.limit: bad",
        ),
        (404, {"detail": "no job 'x'"}, None, "body", "no job 'x'"),
        (409, {"detail": "a job named web is active"}, None, "body", "a job named web is active"),
        (
            413,
            {"detail": "request body larger\n than 10 bytes"},
            None,
            "body",
            "request body larger than 10 bytes",
        ),
        (502, None, "Bad Gateway", "body", "Bad Gateway"),
        (500, None, "<html>" + "x" * 300, "body", "Internal Server Error"),
        (503, {"message": "store down"}, None, "body", "store down"),
    ],
)
def test_error_message_is_one_readable_line(
    status: int, body: Any, text: str | None, body_name: str, expected: str
) -> None:
    message = error_message(_response(status, body, text), body_name=body_name)
    assert message == expected
    assert "\n" not in message


def test_error_message_caps_the_field_list() -> None:
    detail = [{"loc": ["body", f"f{i}"], "msg": "bad"} for i in range(8)]
    message = error_message(_response(422, {"detail": detail}), body_name="spec")
    assert message.count("spec.f") == 5
    assert message.endswith("(and 3 more)")


class FakeRoot:
    """A tiny operator API: records requests, answers from a handler table."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.jobs = [
            docs.summary(id=f"j{i:03d}", name=f"job-{i}", state="RUNNING").model_dump(mode="json")
            for i in range(5)
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.headers.get("authorization") != "Bearer op-token":
            return httpx.Response(401, json={"detail": "missing or invalid bearer token"})
        if path == "/api/v1/jobs" and request.method == "POST":
            spec = json.loads(request.content)
            if spec.get("replicas", 1) < 0:
                return httpx.Response(
                    422,
                    json={
                        "detail": [
                            {
                                "loc": ["body", "replicas"],
                                "msg": "Input should be greater than or equal to 0",
                                "type": "greater_than_equal",
                            }
                        ]
                    },
                )
            return httpx.Response(201, json=docs.job_doc(id="j999", name=spec["name"], spec=spec))
        if path == "/api/v1/jobs":
            cursor = request.url.params.get("cursor")
            start = int(cursor) if cursor else 0
            page = self.jobs[start : start + 2]
            nxt = str(start + 2) if start + 2 < len(self.jobs) else None
            return httpx.Response(200, json={"jobs": page, "next_cursor": nxt})
        if path.startswith("/api/v1/jobs/") and request.method == "PATCH":
            patch = json.loads(request.content)
            return httpx.Response(
                200, json=docs.job_doc(id="j001", desired_replicas=patch["replicas"])
            )
        if path.startswith("/api/v1/jobs/"):
            return httpx.Response(404, json={"detail": f"no job {path.rsplit('/', 1)[1]!r}"})
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def fake() -> FakeRoot:
    return FakeRoot()


@pytest.fixture
def client(fake: FakeRoot) -> RootClient:
    return RootClient(ROOT, "op-token", transport=httpx.MockTransport(fake))


def test_submit_sends_the_spec_with_the_token(client: RootClient, fake: FakeRoot) -> None:
    job = client.submit_job({"name": "web", "runtime": "native", "command": ["x"]})
    assert job.id == "j999"
    request = fake.requests[-1]
    assert request.headers["authorization"] == "Bearer op-token"
    assert json.loads(request.content)["name"] == "web"


def test_submit_validation_error_names_the_spec_field(client: RootClient) -> None:
    with pytest.raises(ApiError) as err:
        client.submit_job({"name": "web", "replicas": -1})
    assert err.value.status == 422
    assert err.value.message == "422 spec.replicas: Input should be greater than or equal to 0"


def test_scale_error_and_body(client: RootClient, fake: FakeRoot) -> None:
    assert client.scale_job("job 1", 3).desired_replicas == 3
    assert json.loads(fake.requests[-1].content) == {"replicas": 3}
    assert fake.requests[-1].url.raw_path == b"/api/v1/jobs/job%201"


def test_list_jobs_follows_the_cursor(client: RootClient, fake: FakeRoot) -> None:
    jobs = client.list_jobs(state="RUNNING")
    assert [j.id for j in jobs] == [f"j{i:03d}" for i in range(5)]
    assert len(fake.requests) == 3
    assert fake.requests[0].url.params["state"] == "RUNNING"
    assert "cluster" not in fake.requests[0].url.params


def test_not_found_and_wrong_token() -> None:
    fake = FakeRoot()
    good = RootClient(ROOT, "op-token", transport=httpx.MockTransport(fake))
    with pytest.raises(ApiError, match=r"^404 no job 'nope'$"):
        good.get_job("nope")
    bad = RootClient(ROOT, "wrong", transport=httpx.MockTransport(fake))
    with pytest.raises(ApiError) as err:
        bad.list_jobs()
    assert err.value.status == 401
    assert err.value.hint is not None and "token" in err.value.hint


def test_connection_refused_suggests_local_up() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = RootClient(ROOT, "t", transport=httpx.MockTransport(refuse))
    with pytest.raises(ConnectionFailed) as err:
        client.list_clusters()
    assert err.value.message == f"cannot reach the root orchestrator at {ROOT} (connection refused)"
    assert err.value.hint is not None and "edgectl local up" in err.value.hint


def test_a_real_refused_connection() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionFailed, match="connection refused"):
        RootClient(f"http://127.0.0.1:{port}", "t").list_jobs()


def test_parse_sse() -> None:
    lines = [
        ": stream open",
        "",
        "id: 1",
        "event: job.submitted",
        'data: {"seq": 1}',
        "",
        ": keep-alive",
        "",
        "id: 2",
        "data: line one",
        "data: line two",
        "",
        "data: unterminated",
    ]
    events = list(parse_sse(iter(lines)))
    assert [(e.id, e.event, e.data) for e in events] == [
        ("1", "job.submitted", '{"seq": 1}'),
        ("2", "message", "line one\nline two"),
        (None, "message", "unterminated"),
    ]


def _event(seq: int) -> str:
    return docs.event(seq=seq, kind="job.state").model_dump_json()


def test_stream_events_reads_sse_and_passes_the_cursor() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = (
            ": stream open\n\n"
            f"id: 8\nevent: job.state\ndata: {_event(8)}\n\n"
            ": keep-alive\n\n"
            f"id: 9\nevent: job.state\ndata: {_event(9)}\n\n"
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    client = RootClient(ROOT, "t", transport=httpx.MockTransport(handler))
    events = list(client.stream_events(since=7, reconnect=False, filters={"job_id": "j1"}))
    assert [e.seq for e in events] == [8, 9]
    assert seen[0].url.params["since"] == "7"
    assert seen[0].url.params["job_id"] == "j1"
    assert seen[0].url.path == "/api/v1/events/stream"


def test_a_streamed_event_that_is_no_event_record_is_a_clear_error() -> None:
    body = 'id: 8\ndata: {"seq": 8, "kind": "job.state"}\n\n'
    client = RootClient(
        ROOT,
        "t",
        transport=httpx.MockTransport(lambda r: httpx.Response(200, text=body)),
    )
    with pytest.raises(EdgectlError) as err:
        next(iter(client.stream_events(reconnect=False)))
    assert err.value.message == (
        "the root answered GET /api/v1/events/stream with an unexpected EventRecord: "
        "id: Field required"
    )


def test_stream_error_status_is_an_api_error() -> None:
    client = RootClient(
        ROOT,
        "t",
        transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "no"})),
    )
    with pytest.raises(ApiError, match=r"^401 no$"):
        next(iter(client.stream_events(reconnect=False)))


# ----------------------------------------------------------------------------- config


def test_target_lookup_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "local.json").write_text(
        json.dumps({"root_url": "http://127.0.0.1:9000", "token": "local-token"})
    )
    env = {"HOME": str(tmp_path)}
    # local.json only
    t = resolve_target(None, None, data, env)
    assert (t.root_url, t.token) == ("http://127.0.0.1:9000", "local-token")
    assert t.url_source.endswith("local.json")
    # environment beats local.json; a different URL gets no local token
    t = resolve_target(None, None, data, {**env, "EDGE_ROOT_URL": "http://other:1"})
    assert (t.root_url, t.token, t.url_source) == ("http://other:1", None, "EDGE_ROOT_URL")
    t = resolve_target(None, None, data, {**env, "EDGE_TOKEN": "env-token"})
    assert (t.root_url, t.token, t.token_source) == (
        "http://127.0.0.1:9000",
        "env-token",
        "EDGE_TOKEN",
    )
    # flags beat everything
    t = resolve_target("http://flag:2/", "flag-token", data, {**env, "EDGE_ROOT_URL": "http://x:3"})
    assert (t.root_url, t.token) == ("http://flag:2", "flag-token")
    # the same URL as local.json by flag still gets its token
    t = resolve_target("http://127.0.0.1:9000", None, data, env)
    assert t.token == "local-token"
    # EDGE_DATA_DIR is used when --data-dir is not given
    t = resolve_target(None, None, None, {**env, "EDGE_DATA_DIR": str(data)})
    assert t.token == "local-token"


def test_no_root_configured_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EdgectlError) as err:
        resolve_target(None, None, tmp_path, {"HOME": str(tmp_path)})
    assert "no root orchestrator to talk to" in err.value.message
    assert err.value.hint is not None and "edgectl local up" in err.value.hint
    with pytest.raises(EdgectlError, match="http:// or https://"):
        resolve_target("root:8000", None, tmp_path, {})


def test_default_data_dir(tmp_path: Path) -> None:
    assert resolve_data_dir(None, {"HOME": "/home/u"}) == Path("/home/u/.local/share/edge")
    assert resolve_data_dir(None, {"HOME": "/h", "XDG_DATA_HOME": "/x"}) == Path("/x/edge")
    assert resolve_data_dir(None, {"EDGE_DATA_DIR": "/d", "HOME": "/h"}) == Path("/d")
    assert resolve_data_dir(tmp_path / "a", {"EDGE_DATA_DIR": "/d"}) == tmp_path / "a"


def test_stream_reconnects_from_the_last_seq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgectl.client.time.sleep", lambda s: None)
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("since"))
        if len(calls) == 2:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        seq = 5 if len(calls) == 1 else 6
        return httpx.Response(200, text=f"id: {seq}\ndata: {_event(seq)}\n\n")

    retries: list[str] = []
    client = RootClient(ROOT, "t", transport=httpx.MockTransport(handler))
    stream = client.stream_events(on_retry=retries.append)
    assert [next(stream).seq, next(stream).seq] == [5, 6]
    assert calls == [None, "5", "5"]
    assert retries == [
        f"event stream lost (cannot reach the root orchestrator at {ROOT} (connection refused)); "
        "reconnecting"
    ]
