"""HTTP client of the root orchestrator's operator API (``/api/v1``), as edgectl uses it.

Every failure becomes an :class:`EdgectlError` whose message is one readable line
(``422 spec.replicas: Input should be greater than or equal to 0``), so the command
line can print it and exit non-zero. The httpx transport is injectable: tests pass an
``httpx.MockTransport``.

Answers are read as the models of schemas/root_api.py (the root's response models;
the nodes a cluster reports as schemas/cluster_api.py ``NodeDetail``); an answer that
does not fit is an EdgectlError naming the field, exit status 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.cluster_api import NodeDetail
from schemas.root_api import (
    ClusterList,
    ClusterView,
    EventList,
    EventRecord,
    JobList,
    JobSummary,
    JobView,
    NodeActionResult,
    NodeList,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenView,
    UpdatePlan,
    VersionList,
)

_Model = TypeVar("_Model", bound=BaseModel)
_T = TypeVar("_T")

__all__ = [
    "ApiError",
    "ConnectionFailed",
    "EdgectlError",
    "RootClient",
    "SseEvent",
    "error_message",
    "parse_sse",
]

#: Seconds of silence after which an event stream is considered dead (the root sends a
#: keep-alive comment every 15 s).
STREAM_READ_TIMEOUT_S = 45.0
_PAGE = 1000


class EdgectlError(Exception):
    """A failure to report on one line; ``exit_code`` is the command's exit status."""

    def __init__(self, message: str, *, exit_code: int = 1, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


class ApiError(EdgectlError):
    """The root answered with an error status."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{status} {message}".rstrip(), hint=hint)
        self.status = status
        self.detail = message


class ConnectionFailed(EdgectlError):
    """The root could not be reached at all."""


def _field_path(loc: list[Any], body_name: str) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = [body_name, *parts[1:]] if body_name else parts[1:]
    return ".".join(parts) or body_name or "request"


def error_message(response: httpx.Response, *, body_name: str = "body") -> str:
    """One line for an error answer of the root: status, then what was wrong.

    A validation error (422) lists each field at fault (``spec.replicas: Input ...``):
    the leading ``body`` of each location is replaced by ``body_name`` (``spec`` for a
    submitted job). Other errors give the ``detail`` text, or the reason phrase.
    """
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        payload = None
    text = ""
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if isinstance(detail, list) and detail:
            items = []
            for item in detail[:5]:
                if isinstance(item, dict):
                    loc = item.get("loc")
                    path = _field_path(loc if isinstance(loc, list) else [], body_name)
                    items.append(f"{path}: {item.get('msg', '')}".rstrip(": "))
                else:
                    items.append(str(item))
            text = "; ".join(items)
            if len(detail) > 5:
                text += f" (and {len(detail) - 5} more)"
        elif isinstance(detail, str):
            text = detail
        elif isinstance(payload.get("message"), str):
            text = payload["message"]
    if not text:
        body = response.text.strip().splitlines()
        text = body[0][:200] if body and payload is None and len(body[0]) < 200 else ""
    if not text:
        text = response.reason_phrase or "error"
    return " ".join(text.split())


def _hint(status: int) -> str | None:
    if status == 401:
        return (
            "check the operator token (--token, EDGE_TOKEN, or the local.json written by "
            "`edgectl local up`)"
        )
    return None


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its id, event name and data."""

    id: str | None
    event: str
    data: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-sent events from a stream of text lines (comments and retries ignored)."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event_id, name, "\n".join(data))
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "data":
            data.append(value)
        elif key == "id":
            event_id = value
        elif key == "event":
            name = value
    if data:
        yield SseEvent(event_id, name, "\n".join(data))


class RootClient:
    """The operator API of one root orchestrator (bearer token auth).

    ``transport`` replaces the network (``httpx.MockTransport`` in tests). Methods return
    the API's answers as models of schemas/root_api.py (see docs/api.md) and raise
    :class:`ApiError` / :class:`ConnectionFailed`, or :class:`EdgectlError` for an
    answer that does not fit its model.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"user-agent": "edgectl"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RootClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- plumbing -----

    def _unreachable(self, exc: httpx.TransportError) -> ConnectionFailed:
        if isinstance(exc, httpx.ConnectError):
            text = str(exc)
            what = "connection refused" if "refused" in text.lower() else text or "connect error"
        elif isinstance(exc, httpx.TimeoutException):
            what = "timed out"
        else:
            what = str(exc) or type(exc).__name__
        return ConnectionFailed(
            f"cannot reach the root orchestrator at {self.base_url} ({what})",
            hint="start a local system with `edgectl local up`, or point --root-url / "
            "EDGE_ROOT_URL at a running root",
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body_name: str = "body",
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One call; the decoded JSON answer, or ApiError / ConnectionFailed."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=json_body, params=clean)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise ApiError(
                response.status_code,
                error_message(response, body_name=body_name),
                hint=_hint(response.status_code),
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise EdgectlError(
                f"the root answered {method} {path} with something that is not JSON"
            ) from exc

    def typed(self, model: type[_Model], method: str, path: str, **kwargs: Any) -> _Model:
        """`request`, read as `model` (schemas/root_api.py); an answer that does not fit
        is an EdgectlError naming the field (another root version, or not a root)."""
        return self.parse(model, self.request(method, path, **kwargs), f"{method} {path}")

    @staticmethod
    def parse(model: type[_T], doc: Any, what: str, name: str | None = None) -> _T:
        """`doc` (the JSON answer to `what`, e.g. ``GET /api/v1/jobs``) read as `model`;
        an EdgectlError naming the first field that does not fit."""
        try:
            return TypeAdapter(model).validate_python(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            title = name or getattr(model, "__name__", str(model))
            raise EdgectlError(
                f"the root answered {what} with an unexpected {title}: {where}: {first['msg']}"
            ) from None

    @staticmethod
    def _ref(value: str) -> str:
        return quote(value, safe="")

    # ----- jobs -----

    def submit_job(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> JobView:
        """``POST /jobs``: the new job."""
        try:
            response = self._http.post(
                "/api/v1/jobs",
                json=dict(spec),
                headers={"idempotency-key": idempotency_key} if idempotency_key else None,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise ApiError(
                response.status_code,
                error_message(response, body_name="spec"),
                hint=_hint(response.status_code),
            )
        try:
            doc = response.json()
        except ValueError as exc:
            raise EdgectlError(
                "the root answered POST /api/v1/jobs with something that is not JSON"
            ) from exc
        return self.parse(JobView, doc, "POST /api/v1/jobs")

    def list_jobs(
        self, *, state: str | None = None, cluster: str | None = None
    ) -> list[JobSummary]:
        """Every job (all pages), oldest first."""
        jobs: list[JobSummary] = []
        cursor: str | None = None
        while True:
            page = self.typed(
                JobList,
                "GET",
                "/api/v1/jobs",
                params={"state": state, "cluster": cluster, "limit": _PAGE, "cursor": cursor},
            )
            jobs.extend(page.jobs)
            cursor = page.next_cursor
            if not cursor:
                return jobs

    def get_job(self, job: str) -> JobView:
        """``GET /jobs/{job}`` (id or name)."""
        return self.typed(JobView, "GET", f"/api/v1/jobs/{self._ref(job)}")

    def scale_job(self, job: str, replicas: int) -> JobView:
        """``PATCH /jobs/{job}`` with a replica count."""
        return self.typed(
            JobView,
            "PATCH",
            f"/api/v1/jobs/{self._ref(job)}",
            json_body={"replicas": replicas},
            body_name="",
        )

    def update_job(self, job: str, changes: Mapping[str, Any]) -> JobView:
        """``PATCH /jobs/{job}`` with spec fields: the job (a new version rolls out when
        what runs changes)."""
        return self.typed(
            JobView,
            "PATCH",
            f"/api/v1/jobs/{self._ref(job)}",
            json_body=dict(changes),
            body_name="spec",
        )

    def plan_update(self, job: str, changes: Mapping[str, Any]) -> UpdatePlan:
        """``POST /jobs/{job}/plan``: the dry run of an update (nothing changes)."""
        return self.typed(
            UpdatePlan,
            "POST",
            f"/api/v1/jobs/{self._ref(job)}/plan",
            json_body=dict(changes),
            body_name="spec",
        )

    def job_versions(self, job: str) -> VersionList:
        """``GET /jobs/{job}/versions``: the kept versions of its spec, newest first."""
        return self.typed(VersionList, "GET", f"/api/v1/jobs/{self._ref(job)}/versions")

    def delete_job(self, job: str) -> JobView:
        """``DELETE /jobs/{job}``: the job, now TERMINATING."""
        return self.typed(JobView, "DELETE", f"/api/v1/jobs/{self._ref(job)}")

    # ----- logs -----

    def _logs_path(self, job: str, instance_id: str) -> str:
        return f"/api/v1/jobs/{self._ref(job)}/instances/{self._ref(instance_id)}/logs"

    def instance_logs(self, job: str, instance_id: str, *, tail: int = 100) -> str:
        """``GET /jobs/{job}/instances/{id}/logs``: the last `tail` lines as text."""
        try:
            response = self._http.get(self._logs_path(job, instance_id), params={"tail": tail})
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise ApiError(
                response.status_code, error_message(response), hint=_hint(response.status_code)
            )
        return response.text

    def follow_logs(
        self, job: str, instance_id: str, *, tail: int = 100, lines: bool = False
    ) -> Iterator[str]:
        """``...?follow=1``: the text as it comes (whole lines with `lines`), until the
        instance ends (the root's last line says how) or the connection is lost
        (EdgectlError). No read timeout: a task may be silent for a long time."""
        timeout = httpx.Timeout(10.0, read=None)
        params = {"tail": tail, "follow": 1}
        try:
            with self._http.stream(
                "GET", self._logs_path(job, instance_id), params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        response.status_code,
                        error_message(response),
                        hint=_hint(response.status_code),
                    )
                if lines:
                    yield from response.iter_lines()
                else:
                    yield from response.iter_text()
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from exc
        except httpx.TransportError as exc:
            raise EdgectlError(
                f"log stream of {instance_id} lost ({self._unreachable(exc).message})"
            ) from exc

    # ----- clusters and nodes -----

    def list_clusters(self) -> list[ClusterView]:
        """Every registered cluster."""
        return self.typed(ClusterList, "GET", "/api/v1/clusters").clusters

    def reset_cluster_identity(self, cluster: str, ttl_s: float) -> ClusterView:
        """``POST /clusters/{cluster}/reset-identity``: approve a new identity."""
        return self.typed(
            ClusterView,
            "POST",
            f"/api/v1/clusters/{self._ref(cluster)}/reset-identity",
            json_body={"ttl_s": ttl_s},
        )

    def create_registration_token(self, name: str, ttl_s: float | None) -> RegistrationTokenCreated:
        """``POST /registration-tokens``: a token bound to one cluster name (shown once)."""
        return self.typed(
            RegistrationTokenCreated,
            "POST",
            "/api/v1/registration-tokens",
            json_body={"name": name, "ttl_s": ttl_s},
        )

    def list_registration_tokens(self) -> list[RegistrationTokenView]:
        """``GET /registration-tokens`` (without the tokens)."""
        page = self.typed(RegistrationTokenList, "GET", "/api/v1/registration-tokens")
        return page.tokens

    def delete_registration_token(self, token_id: str) -> RegistrationTokenView:
        """``DELETE /registration-tokens/{id}``."""
        return self.typed(
            RegistrationTokenView,
            "DELETE",
            f"/api/v1/registration-tokens/{self._ref(token_id)}",
        )

    def cluster_nodes(self, cluster: str) -> tuple[NodeList, list[NodeDetail]]:
        """``GET /clusters/{cluster}/nodes`` (fetched live from the cluster): the answer
        and its nodes read as the cluster API's NodeDetail."""
        path = f"/api/v1/clusters/{self._ref(cluster)}/nodes"
        page = self.typed(NodeList, "GET", path)
        nodes = self.parse(list[NodeDetail], page.nodes, f"GET {path}", "NodeDetail")
        return page, nodes

    def action_node(self, result: NodeActionResult, what: str = "a node action") -> NodeDetail:
        """The node of a node action's answer (`what`: the request) as a NodeDetail."""
        return self.parse(NodeDetail, result.node, what, "NodeDetail")

    def node_action(self, cluster: str, node: str, action: str) -> NodeActionResult:
        """``POST /clusters/{cluster}/nodes/{node}/{action}`` (drain, cordon, uncordon);
        its `node` is checked to be a NodeDetail (`action_node` reads it as one)."""
        path = f"/api/v1/clusters/{self._ref(cluster)}/nodes/{self._ref(node)}/{action}"
        result = self.typed(NodeActionResult, "POST", path)
        self.action_node(result, f"POST {path}")
        return result

    # ----- events -----

    def events(
        self,
        *,
        since: int = 0,
        limit: int = _PAGE,
        filters: Mapping[str, str | None] | None = None,
    ) -> EventList:
        """One page of events after ``since`` (``next_since`` continues it).

        ``filters``: ``kind``, ``category``, ``job_id``, ``instance_id``, ``cluster_id``,
        ``subject`` (None values are left out).
        """
        return self.typed(
            EventList,
            "GET",
            "/api/v1/events",
            params={"since": since, "limit": limit, **(filters or {})},
        )

    def stream_events(
        self,
        *,
        since: int | None = None,
        reconnect: bool = True,
        max_backoff_s: float = 10.0,
        filters: Mapping[str, str | None] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> Iterator[EventRecord]:
        """Live events (SSE), oldest first, after ``since`` (default: from now on); a
        data line that is not an EventRecord is an EdgectlError.

        A dropped stream is reopened with the last seen ``seq``, so nothing is missed,
        after a growing pause (at most ``max_backoff_s``); ``reconnect=False`` ends instead.
        A refused connection before any event raises ConnectionFailed; later losses are
        told to ``on_retry`` (one line) before each new attempt.
        """
        last = since
        delay = 0.5
        received = False
        while True:
            params = {k: v for k, v in (filters or {}).items() if v is not None}
            if last is not None:
                params["since"] = str(last)
            timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S)
            try:
                with self._http.stream(
                    "GET", "/api/v1/events/stream", params=params, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(
                            response.status_code,
                            error_message(response),
                            hint=_hint(response.status_code),
                        )
                    delay = 0.5
                    for sse in parse_sse(response.iter_lines()):
                        try:
                            doc = json.loads(sse.data)
                        except ValueError:
                            continue
                        if not isinstance(doc, dict):
                            continue
                        event = self.parse(EventRecord, doc, "GET /api/v1/events/stream")
                        last = event.seq
                        received = True
                        yield event
            except httpx.TransportError as exc:
                if not reconnect or (not received and isinstance(exc, httpx.ConnectError)):
                    raise self._unreachable(exc) from exc
                if on_retry is not None:
                    on_retry(f"event stream lost ({self._unreachable(exc).message}); reconnecting")
            if not reconnect:
                return
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)

    def health(self) -> Any:
        """``GET /healthz`` (no token needed)."""
        return self.request("GET", "/healthz")
