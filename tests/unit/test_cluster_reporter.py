"""Pure parts of reporting to the root: when a change report starts, and what each
answer of the root means to the cluster (`root_client` error classes)."""

from __future__ import annotations

import math

import httpx
import pytest
from pydantic import SecretStr

from cluster_orchestrator.reporter import COALESCE_S, change_report_at
from cluster_orchestrator.root_client import (
    CredentialRefused,
    IdentityRefused,
    RegistrationTokenRefused,
    RootClient,
    RootError,
    RootUnavailable,
)
from schemas.cluster import ClusterRegistration, ClusterReport

NOW = 100.0


@pytest.mark.parametrize(
    ("quiet", "last_started", "min_spacing", "expected"),
    [
        pytest.param(True, -math.inf, 0.0, NOW + COALESCE_S, id="first-change-coalesces-only"),
        pytest.param(True, NOW - 0.001, 0.0, NOW + COALESCE_S, id="right-after-a-report"),
        pytest.param(False, NOW - 0.001, 0.0, NOW, id="piled-up-while-in-flight-goes-at-once"),
        pytest.param(False, NOW - 0.05, 0.1, NOW + 0.05, id="min-spacing-delays"),
        pytest.param(True, NOW - 0.5, 0.1, NOW + COALESCE_S, id="min-spacing-already-elapsed"),
        pytest.param(True, NOW - 0.099, 0.1, NOW + COALESCE_S, id="coalescing-covers-spacing"),
    ],
)
def test_change_report_start(
    quiet: bool, last_started: float, min_spacing: float, expected: float
) -> None:
    at = change_report_at(NOW, quiet=quiet, last_started=last_started, min_spacing=min_spacing)
    assert at == pytest.approx(expected)


def test_coalescing_delay_is_tiny() -> None:
    """Latency first: the delay a lone change pays stays in the milliseconds."""
    assert 0 < COALESCE_S <= 0.01


REGISTRATION = ClusterRegistration(name="c1", url="http://c1:8100")
WITH_IDENTITY = REGISTRATION.model_copy(
    update={"cluster_id": "c-123", "credential": SecretStr("cred-1")}
)
TOKEN_DETAIL = {"detail": "missing or invalid bearer token"}  # the root's auth dependency
CREDENTIAL_DETAIL = {"detail": "wrong credential for this cluster id"}


def client_answering(status: int, body: object | None = None) -> RootClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status, json=body)

    return RootClient("http://root.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "body", "identity", "error"),
    [
        pytest.param(401, TOKEN_DETAIL, True, RegistrationTokenRefused, id="401-token-keeps-id"),
        pytest.param(401, TOKEN_DETAIL, False, RegistrationTokenRefused, id="401-token-fresh"),
        pytest.param(401, None, True, RegistrationTokenRefused, id="401-no-body"),
        pytest.param(401, CREDENTIAL_DETAIL, True, RegistrationTokenRefused, id="401-is-the-token"),
        pytest.param(
            401, CREDENTIAL_DETAIL, False, RegistrationTokenRefused, id="401-credential-no-id"
        ),
        pytest.param(403, {"detail": "x"}, True, IdentityRefused, id="403-identity-proposed"),
        pytest.param(404, {"detail": "unknown"}, True, IdentityRefused, id="404-unknown-id"),
        pytest.param(410, None, True, IdentityRefused, id="410-gone"),
        pytest.param(403, None, False, RegistrationTokenRefused, id="403-without-identity"),
        pytest.param(404, None, False, RootUnavailable, id="404-without-identity"),
        pytest.param(409, {"detail": "name taken"}, True, RootUnavailable, id="409-name-taken"),
        pytest.param(500, None, True, RootUnavailable, id="500"),
        pytest.param(0, None, True, RootUnavailable, id="connection-refused"),
        pytest.param(200, {"nope": 1}, True, RootUnavailable, id="invalid-answer"),
    ],
)
def test_register_errors_say_what_was_refused(
    status: int, body: object | None, identity: bool, error: type[RootError]
) -> None:
    client = client_answering(status, body)
    with pytest.raises(RootError) as info:
        client.register(WITH_IDENTITY if identity else REGISTRATION, "reg-token")
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(401, CredentialRefused, id="401"),
        pytest.param(403, CredentialRefused, id="403"),
        pytest.param(404, RootUnavailable, id="404"),
        pytest.param(503, RootUnavailable, id="503"),
        pytest.param(0, RootUnavailable, id="connection-refused"),
    ],
)
def test_report_errors(status: int, error: type[RootError]) -> None:
    report = ClusterReport(ts=1.0, seq=1, full=True)
    with pytest.raises(RootError) as info:
        client_answering(status, {"detail": "x"}).report("c-123", report, "cred")
    assert type(info.value) is error


def test_register_success_and_report_success() -> None:
    answer = {"cluster_id": "c-9", "credential": "cred-9", "report_interval_s": 2.0}
    response = client_answering(201, answer).register(REGISTRATION, "reg-token")
    assert response.cluster_id == "c-9" and response.credential.get_secret_value() == "cred-9"
    client_answering(204).report("c-9", ClusterReport(ts=1.0, seq=1, full=True), "cred-9")
