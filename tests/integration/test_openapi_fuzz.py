"""Schemathesis over both OpenAPIs: no input gets a server error (5xx).

The root (``python -m root_orchestrator.main`` on a real SQLite file) and a cluster
orchestrator (with its own Mosquitto) run as real processes; every operation of each
one's ``/openapi.json`` gets valid (positive) and invalid (negative) requests,
authenticated with the right token, and every answer must be below 500 (the
`not_a_server_error` check). Bounded: a fixed number of examples per operation and
mode, derandomized so CI runs the same requests every time (``EDGE_FUZZ_EXAMPLES``
raises the bound for a deeper local run).

Safety: a positive registration names a cluster URL of Hypothesis's choosing, and the
root would call it; every registration body is pointed at a closed loopback port, so
nothing leaves the machine. The routes the root forwards to a cluster (nodes, logs)
may answer 502/503 (documented: the cluster cannot be reached); anything else >= 500
fails. Streams (``follow``, ``/events/stream``) are left out: they never end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode

from cluster_orchestrator.process import ClusterProcess, free_port
from tests.harness.system import REGISTRATION_TOKEN, RootProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "12"))
#: where fuzzed registrations point: a closed loopback port (connection refused)
NOWHERE = "http://127.0.0.1:9"
CLUSTER_OPERATOR_TOKEN = "fuzz-cluster-operator-token"
JOIN_TOKEN = "fuzz-join-token"

#: operations whose 502/503 means "the cluster behind it is unreachable" (documented)
FORWARDED = ("/nodes", "/logs")
#: operations left out: answers that stream until the client goes away
STREAMS = ("/api/v1/events/stream",)
#: status codes seen in this run (to check that the fuzzer reached the handlers)
SEEN: dict[int, int] = {}


@dataclass
class Target:
    """One running API: base URL, and the bearer token for each operation."""

    url: str
    operator_token: str
    special: dict[str, str] = field(default_factory=dict)  # path -> token
    path_parameters: dict[str, dict[str, str]] = field(default_factory=dict)

    def token_for(self, path: str) -> str:
        """The bearer token an operation takes."""
        return self.special.get(path, self.operator_token)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz-root")
    proc = RootProcess(workdir, settings={"reconcile_interval": 0.5}, log_level="WARNING")
    proc.start()
    try:
        reg = httpx.post(
            proc.url + "/api/v1/clusters/register",
            json={"name": "fuzz-site", "url": NOWHERE},
            headers={"authorization": f"Bearer {REGISTRATION_TOKEN}"},
            timeout=10,
        )
        assert reg.status_code == 200, reg.text
        cid, credential = reg.json()["cluster_id"], reg.json()["credential"]
        report_path = "/api/v1/clusters/{cluster_id}/report"
        yield Target(
            url=proc.url,
            operator_token=proc.operator_token,
            special={"/api/v1/clusters/register": REGISTRATION_TOKEN, report_path: credential},
            path_parameters={report_path: {"cluster_id": cid}},
        )
        assert proc.running(), f"the root died during the fuzz run:\n{proc.output()}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz-cluster")
    proc = ClusterProcess(
        workdir,
        broker_port=free_port(),
        operator_token=CLUSTER_OPERATOR_TOKEN,
        join_token=JOIN_TOKEN,
        name="fuzz-cluster",
        extra_args=["--start-broker"],
        log_level="WARNING",
    )
    proc.start(60.0)
    try:
        yield Target(
            url=proc.url,
            operator_token=CLUSTER_OPERATOR_TOKEN,
            special={"/api/v1/nodes/join": JOIN_TOKEN},
        )
        assert proc.proc is not None and proc.proc.poll() is None, "the cluster died"
    finally:
        proc.stop()


def _prepare(case: Any) -> None:
    """Keep a case on this machine and finite: loopback cluster URLs, no streaming."""
    if isinstance(case.query, dict):
        case.query.pop("follow", None)
    if case.path.endswith("/clusters/register") and isinstance(case.body, dict):
        if "url" in case.body:
            case.body["url"] = NOWHERE


def _runner(strategy: Any, url: str, token: str, forwarded: bool) -> Any:
    """A Hypothesis test that sends each generated case and checks the answer."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        _prepare(case)
        response = case.call(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        SEEN[response.status_code] = SEEN.get(response.status_code, 0) + 1
        if forwarded and response.status_code in (502, 503):
            return
        case.validate_response(response, checks=[not_a_server_error])

    return run


def _fuzz(target: Target) -> list[str]:
    """Run every operation in both modes; the failures, one line each."""
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in STREAMS:
            continue
        operations += 1
        token = target.token_for(operation.path)
        fixed = target.path_parameters.get(operation.path)
        forwarded = any(operation.path.endswith(s) or s + "/" in operation.path for s in FORWARDED)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)
            run = _runner(strategy, target.url, token, forwarded)
            try:
                run()
            except Unsatisfiable:
                continue  # nothing to make invalid (e.g. no parameters, no body)
            except (FailureGroup, AssertionError) as exc:
                first = str(exc).strip().splitlines()[:12]
                failures.append(f"{operation.label} [{mode.value}]: " + " | ".join(first))
    assert operations >= 5, f"only {operations} operations in {target.url}/openapi.json"
    return failures


def test_root_api_has_no_server_errors(root: Target) -> None:
    SEEN.clear()
    failures = _fuzz(root)
    print("root statuses", sorted(SEEN.items()))
    assert not failures, "\n".join(failures)


def test_cluster_api_has_no_server_errors(cluster: Target) -> None:
    SEEN.clear()
    failures = _fuzz(cluster)
    print("cluster statuses", sorted(SEEN.items()))
    assert not failures, "\n".join(failures)


def test_fuzz_reaches_the_server(root: Target, tmp_path: Path) -> None:
    """The fuzzer's requests do hit the root: a bad `since` is a named 422, not a 5xx."""
    r = httpx.get(
        root.url + "/api/v1/events",
        params={"since": str(2**70)},
        headers={"authorization": f"Bearer {root.operator_token}"},
        timeout=10,
    )
    assert r.status_code == 422 and "since" in r.text, r.text
