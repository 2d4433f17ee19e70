"""HTTP client for the root orchestrator's cluster API (register, report).

Endpoints (built by the root against exactly these calls):

* ``POST {root}/api/v1/clusters/register`` with a `ClusterRegistration`, bearer = the
  registration token -> `ClusterRegistrationResponse` (cluster id + credential);
* ``POST {root}/api/v1/clusters/{cluster_id}/report`` with a `ClusterReport`, bearer =
  the credential -> any 2xx.

The transport is injectable (``httpx.MockTransport`` in tests). Errors:

* `RootAuthError` — the root refused a token or credential; one subclass per meaning,
  because each calls for a different reaction:

  - `RegistrationTokenRefused`: ``register`` answered 401, the registration token is
    missing or wrong. The stored cluster identity is *not* at fault: keep it, retry
    with backoff, tell the operator;
  - `IdentityRefused`: ``register`` refused the cluster id and credential we
    presented (403, 404 or 410; the root answers 403 to a known id with a wrong
    credential). Only then register as a new cluster;
  - `CredentialRefused`: a report answered 401/403, the credential is not (or no
    longer) accepted: register again, with the stored identity;

* `RootUnavailable` — network errors, timeouts, 5xx and anything unexpected (409 on
  register included: the name is held by another READY cluster): retry later.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from schemas.cluster import ClusterRegistration, ClusterRegistrationResponse, ClusterReport

__all__ = [
    "CredentialRefused",
    "IdentityRefused",
    "RegistrationTokenRefused",
    "RootAuthError",
    "RootClient",
    "RootError",
    "RootUnavailable",
]

#: ``register`` statuses that mean "the identity you presented is refused".
IDENTITY_REFUSED_STATUSES = frozenset({403, 404, 410})


class RootError(Exception):
    """Any failure talking to the root."""


class RootAuthError(RootError):
    """The root refused our token or credential (see the subclasses)."""


class RegistrationTokenRefused(RootAuthError):
    """``register`` answered 401: the registration token is missing or wrong."""


class IdentityRefused(RootAuthError):
    """``register`` refused the stored cluster id and credential we presented."""


class CredentialRefused(RootAuthError):
    """A report was refused (401/403): the credential is unknown or wrong."""


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
        """POST JSON with a bearer token; `RootUnavailable` only for transport errors."""
        try:
            return self._client.post(
                path,
                content=body,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise RootUnavailable(f"POST {path}: {type(exc).__name__}: {exc}") from exc

    def register(
        self, registration: ClusterRegistration, registration_token: str
    ) -> ClusterRegistrationResponse:
        """Register (or re-register) this cluster; returns its id and credential.

        With an identity presented (``cluster_id`` set), 403/404/410 is `IdentityRefused`
        (the root answers 403 to a known id with a wrong credential); a 401 (or a 403
        without an identity) is `RegistrationTokenRefused`, which keeps the stored
        identity; other failures are `RootUnavailable`.
        """
        path = "/api/v1/clusters/register"
        response = self._post(path, registration.model_dump_json(), registration_token)
        code = response.status_code
        if code < 300:
            try:
                return ClusterRegistrationResponse.model_validate_json(response.content)
            except ValidationError as exc:
                raise RootUnavailable(f"invalid registration response: {exc}") from exc
        detail = _detail(response)
        text = f"POST {path}: {code} {detail}".rstrip()
        if registration.cluster_id is not None and code in IDENTITY_REFUSED_STATUSES:
            raise IdentityRefused(text)
        if code in (401, 403):
            raise RegistrationTokenRefused(text)
        raise RootUnavailable(text)

    def report(self, cluster_id: str, report: ClusterReport, credential: str) -> None:
        """Send one report; `CredentialRefused` on 401/403, `RootUnavailable` otherwise."""
        path = f"/api/v1/clusters/{cluster_id}/report"
        response = self._post(path, report.model_dump_json(), credential)
        code = response.status_code
        if code < 300:
            return
        text = f"POST {path}: {code} {_detail(response)}".rstrip()
        if code in (401, 403):
            raise CredentialRefused(text)
        raise RootUnavailable(text)


def _detail(response: httpx.Response) -> str:
    """The ``detail`` of a JSON error body (FastAPI's shape), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])[:600]
    return response.text[:200]
