"""HTTP client for the root orchestrator's cluster API (register, report).

Endpoints (built by the root against exactly these calls):

* ``POST {root}/api/v1/clusters/register`` with a `ClusterRegistration`, bearer = the
  registration token -> `ClusterRegistrationResponse` (cluster id + credential);
* ``POST {root}/api/v1/clusters/{cluster_id}/report`` with a `ClusterReport`, bearer =
  the credential -> any 2xx.

The transport is injectable (``httpx.MockTransport`` in tests). Errors are split
into `RootAuthError` (401/403: re-register) and `RootUnavailable` (network errors,
timeouts, 5xx and anything unexpected: retry later).
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from schemas.cluster import ClusterRegistration, ClusterRegistrationResponse, ClusterReport

__all__ = ["RootAuthError", "RootClient", "RootError", "RootUnavailable"]


class RootError(Exception):
    """Any failure talking to the root."""


class RootAuthError(RootError):
    """The root refused our token or credential (401/403)."""


class RootUnavailable(RootError):
    """The root cannot be reached or failed; try again later."""


class RootClient:
    """Synchronous client; one per reporter thread."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            transport=transport,
            timeout=timeout,
            headers={"user-agent": "edge-cluster-orchestrator"},
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _post(self, path: str, body: str, token: str) -> httpx.Response:
        try:
            response = self._client.post(
                path,
                content=body,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise RootUnavailable(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (401, 403):
            raise RootAuthError(f"POST {path}: {response.status_code}")
        if response.status_code >= 300:
            raise RootUnavailable(f"POST {path}: {response.status_code} {response.text[:200]}")
        return response

    def register(
        self, registration: ClusterRegistration, registration_token: str
    ) -> ClusterRegistrationResponse:
        """Register (or re-register) this cluster; returns its id and credential."""
        response = self._post(
            "/api/v1/clusters/register", registration.model_dump_json(), registration_token
        )
        try:
            return ClusterRegistrationResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise RootUnavailable(f"invalid registration response: {exc}") from exc

    def report(self, cluster_id: str, report: ClusterReport, credential: str) -> None:
        """Send one report."""
        self._post(f"/api/v1/clusters/{cluster_id}/report", report.model_dump_json(), credential)
