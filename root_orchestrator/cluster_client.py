"""HTTP client for cluster orchestrator APIs (root -> cluster).

The calls, each with the cluster's API token as bearer:

* ``POST {cluster}/api/v1/instances`` with a `PlaceInstanceRequest` ->
  `PlaceInstanceResponse` (accepted with a node, or rejected with reasons);
* ``DELETE {cluster}/api/v1/instances/{id}`` (2xx or 404: the instance is gone);
* ``GET {cluster}/api/v1/nodes``;
* ``GET {cluster}/api/v1/instances/{id}/logs`` -> `InstanceLogs` (read from the node;
  the cluster's 404/409/422/503 answers raise `ClusterRefused` with its text).
* ``POST {cluster}/api/v1/nodes/{id}/drain|cordon|uncordon`` (operator actions).

The transport is injectable (encode/httpx style) so tests can route calls anywhere.
Transport failures, timeouts, 5xx answers and answers that do not validate raise
`ClusterUnavailable`; a 4xx answer to a placement is a refusal, not an error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from schemas.cluster import (
    InstanceLogs,
    PlaceInstanceBatch,
    PlaceInstanceBatchResponse,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)

__all__ = ["BatchUnsupported", "ClusterClient", "ClusterRefused", "ClusterUnavailable"]

LOGS_NODE_TIMEOUT_S = 5.0
"""How long a cluster may wait for its node's answer to a logs request (plus margin)."""

API = "/api/v1"


class ClusterUnavailable(Exception):
    """The cluster could not be reached or did not answer sensibly."""


#: Extra read timeout per instance of a batch placement (the cluster decides each).
BATCH_S_PER_INSTANCE = 0.1


class BatchUnsupported(Exception):
    """The cluster has no batch placement route (an older version): place one by one."""


class ClusterRefused(Exception):
    """The cluster answered with a meaningful 4xx error (`status`, its `detail`)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    """A short description of an error answer (its `detail` when it is JSON)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] if text else response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:200]
    return str(body)[:200]


class ClusterClient:
    """Calls cluster APIs; one shared connection pool for every cluster."""

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": "edge-root-orchestrator"},
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    @staticmethod
    def _headers(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _request(
        self,
        method: str,
        url: str,
        token: str | None,
        json: Any | None = None,
        *,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
        body: str | None = None,
    ) -> httpx.Response:
        """One call; `body` is a JSON text already serialized (by pydantic), `json` a
        value httpx serializes."""
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        headers = self._headers(token)
        if body is not None:
            headers["Content-Type"] = "application/json"
            extra["content"] = body.encode()
        try:
            return await self._client.request(
                method, url, headers=headers, json=json, params=params, **extra
            )
        except httpx.TimeoutException as exc:
            raise ClusterUnavailable(f"{method} {url}: timed out") from exc
        except httpx.HTTPError as exc:
            raise ClusterUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    async def place(
        self, base_url: str, token: str | None, request: PlaceInstanceRequest
    ) -> PlaceInstanceResponse:
        """Ask a cluster to place one instance (idempotent by instance id on its side)."""
        url = f"{base_url}{API}/instances"
        response = await self._request("POST", url, token, body=request.model_dump_json())
        if response.status_code >= 500:
            raise ClusterUnavailable(
                f"POST {url}: HTTP {response.status_code}: {_detail(response)}"
            )
        if response.status_code >= 400:
            return PlaceInstanceResponse(
                accepted=False,
                instance_id=request.instance_id,
                reasons={f"HTTP {response.status_code}": 1},
                explanation=f"cluster answered HTTP {response.status_code}: {_detail(response)}",
            )
        try:
            answer = PlaceInstanceResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ClusterUnavailable(
                f"POST {url}: invalid answer: {exc.error_count()} errors"
            ) from exc
        if answer.instance_id != request.instance_id:
            raise ClusterUnavailable(
                f"POST {url}: answer is about instance {answer.instance_id}, "
                f"not {request.instance_id}"
            )
        return answer

    async def place_batch(
        self, base_url: str, token: str | None, requests: list[PlaceInstanceRequest]
    ) -> list[PlaceInstanceResponse]:
        """Ask a cluster to place several instances in one call (one answer each, in
        order). BatchUnsupported if the cluster predates the batch route (404, 405).
        The cluster decides them one after the other: the read timeout grows by
        BATCH_S_PER_INSTANCE per instance."""
        url = f"{base_url}{API}/instances/batch"
        body = PlaceInstanceBatch(instances=requests).model_dump_json()
        timeout = httpx.Timeout(
            self._timeout, read=self._timeout + BATCH_S_PER_INSTANCE * len(requests)
        )
        response = await self._request("POST", url, token, body=body, timeout=timeout)
        if 400 <= response.status_code < 500:
            # 404/405: a cluster without the route; any other refusal is answered per
            # instance by the single route (with its reasons)
            raise BatchUnsupported(f"POST {url}: HTTP {response.status_code}")
        if not response.is_success:
            raise ClusterUnavailable(
                f"POST {url}: HTTP {response.status_code}: {_detail(response)}"
            )
        try:
            answer = PlaceInstanceBatchResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ClusterUnavailable(
                f"POST {url}: invalid answer: {exc.error_count()} errors"
            ) from exc
        ids = [r.instance_id for r in answer.results]
        if ids != [r.instance_id for r in requests]:
            raise ClusterUnavailable(f"POST {url}: the answers do not match the requests")
        return answer.results

    async def terminate(self, base_url: str, token: str | None, instance_id: str) -> None:
        """Ask a cluster to stop and forget an instance (404 counts as done)."""
        url = f"{base_url}{API}/instances/{instance_id}"
        response = await self._request("DELETE", url, token)
        if response.status_code == 404 or response.is_success:
            return
        raise ClusterUnavailable(f"DELETE {url}: HTTP {response.status_code}: {_detail(response)}")

    async def nodes(self, base_url: str, token: str | None) -> list[Any]:
        """The cluster's nodes as its API returns them (a list, or `{"nodes": [...]}`)."""
        url = f"{base_url}{API}/nodes"
        response = await self._request("GET", url, token)
        if not response.is_success:
            raise ClusterUnavailable(f"GET {url}: HTTP {response.status_code}: {_detail(response)}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ClusterUnavailable(f"GET {url}: answer is not JSON") from exc
        if isinstance(body, dict) and isinstance(body.get("nodes"), list):
            return list(body["nodes"])
        if isinstance(body, list):
            return body
        raise ClusterUnavailable(f"GET {url}: expected a list of nodes")

    async def logs(
        self,
        base_url: str,
        token: str | None,
        instance_id: str,
        *,
        tail: int = 100,
        cursor: str | None = None,
        wait_s: float = 0.0,
        max_bytes: int | None = None,
    ) -> InstanceLogs:
        """Read an instance's output through its cluster (which asks the node over MQTT).

        The read timeout covers the cluster's long poll (`wait_s`) and its wait for the
        node. `ClusterRefused` for the cluster's 404, 409, 422 and 503 answers (their
        text says what is wrong), `ClusterUnavailable` when it cannot be reached.
        """
        url = f"{base_url}{API}/instances/{quote(instance_id, safe='')}/logs"
        params: dict[str, Any] = {"tail": tail}
        if max_bytes is not None:
            params["max_bytes"] = max_bytes
        if cursor:
            params["cursor"] = cursor
            params["wait_s"] = wait_s
        timeout = httpx.Timeout(5.0, read=wait_s + LOGS_NODE_TIMEOUT_S + 5.0)
        response = await self._request("GET", url, token, params=params, timeout=timeout)
        if response.status_code in (404, 409, 422, 503):
            raise ClusterRefused(response.status_code, _detail(response))
        if not response.is_success:
            raise ClusterUnavailable(f"GET {url}: HTTP {response.status_code}: {_detail(response)}")
        try:
            return InstanceLogs.model_validate_json(response.content)
        except ValidationError as exc:
            raise ClusterUnavailable(
                f"GET {url}: invalid answer: {exc.error_count()} errors"
            ) from exc

    async def node_action(
        self, base_url: str, token: str | None, node_id: str, action: str
    ) -> dict[str, Any]:
        """``POST /nodes/{id}/{action}`` (drain, cordon, uncordon): the cluster's answer
        (``{"node": ..., "moved": ..., "stuck": ...}``); ClusterRefused for a 4xx."""
        url = f"{base_url}{API}/nodes/{node_id}/{action}"
        response = await self._request("POST", url, token)
        if 400 <= response.status_code < 500:
            raise ClusterRefused(response.status_code, _detail(response))
        if not response.is_success:
            raise ClusterUnavailable(
                f"POST {url}: HTTP {response.status_code}: {_detail(response)}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise ClusterUnavailable(f"POST {url}: answer is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("node"), dict):
            raise ClusterUnavailable(f"POST {url}: expected a node in the answer")
        return body
