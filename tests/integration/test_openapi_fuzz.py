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
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode

from tests.harness.cluster_process import ClusterProcess, free_port
from tests.harness.system import REGISTRATION_TOKEN, RootProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "40"))
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
    registering = case.path.endswith("/clusters/register")
    if registering and isinstance(case.body, dict) and "url" in case.body:
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
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
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


#: values Hypothesis rarely draws: NUL bytes, over-long strings, integers past 64 bits,
#: non-ASCII digits (``"²".isdigit()`` is true, ``int("²")`` fails)
EDGES = ["\x00", "a\x00b", "n" * 5000, str(2**64), str(-(2**64)), "²", "1e400"]


def _edges(target: Target) -> list[str]:
    """Every path and query parameter of every operation, set to each edge value."""
    spec = httpx.get(target.url + "/openapi.json", timeout=10).json()
    bad: list[str] = []
    with httpx.Client(base_url=target.url, timeout=30) as http:
        for path, item in spec["paths"].items():
            if path in STREAMS:
                continue
            for method, op in item.items():
                params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
                headers = {"authorization": f"Bearer {target.token_for(path)}"}
                for param in params:
                    if param["name"] == "follow":
                        continue
                    for value in EDGES:
                        concrete, query = path, {}
                        for other in params:
                            if other["in"] == "path":
                                text = value if other is param else "x1"
                                concrete = concrete.replace(
                                    "{" + other["name"] + "}", quote(text, safe="")
                                )
                        if param["in"] == "query":
                            query[param["name"]] = value
                        body = {} if method in ("post", "patch", "put") else None
                        r = http.request(
                            method.upper(), concrete, params=query, json=body, headers=headers
                        )
                        if r.status_code >= 500 and not (
                            r.status_code in (502, 503) and any(f in path for f in FORWARDED)
                        ):
                            bad.append(f"{method.upper()} {path} {param['name']}={value[:12]!r}")
    return bad


def test_root_edge_values_are_4xx(root: Target) -> None:
    bad = _edges(root)
    assert not bad, bad
    # and the one the issue reported, with the field named
    r = httpx.get(
        root.url + "/api/v1/events",
        params={"since": str(2**70)},
        headers={"authorization": f"Bearer {root.operator_token}"},
        timeout=10,
    )
    assert r.status_code == 422 and "since" in r.json()["message"], r.text
    # a Last-Event-ID that str.isdigit() likes but int() does not: the stream opens
    with httpx.stream(
        "GET",
        root.url + "/api/v1/events/stream",
        headers={"authorization": f"Bearer {root.operator_token}", "last-event-id": b"\xb2"},
        timeout=10,
    ) as stream:
        assert stream.status_code == 200


def test_cluster_edge_values_are_4xx(cluster: Target) -> None:
    bad = _edges(cluster)
    assert not bad, bad


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"ts":1,"seq":' + str(2**70) + "}", "seq"),
        ('{"ts":1e400,"seq":1}', "ts"),
        ('{"ts":Infinity,"seq":1}', "ts"),
        ('{"ts":1,"seq":1,"total":{"cpu":1,"memory_mib":' + str(2**64) + "}}", "memory_mib"),
        (
            '{"ts":1,"seq":1,"instances":[{"instance_id":"i1","job_id":"j1","state":"RUNNING",'
            '"ts":1,"exit_code":' + str(2**64) + "}]}",
            "exit_code",
        ),
        (
            '{"ts":1,"seq":1,"instances":[{"instance_id":"i1","job_id":"j1","state":"RUNNING",'
            '"ts":1,"data":{"a.b":1}}]}',
            "data",
        ),
        ('{"ts":1,"seq":1,"labels":{"a\\u0000":["x"]}}', "labels"),
    ],
)
def test_report_values_a_store_cannot_hold_are_422(root: Target, body: str, field: str) -> None:
    """A report the store could not hold is refused at the edge, naming the field."""
    path = "/api/v1/clusters/{cluster_id}/report"
    cid = root.path_parameters[path]["cluster_id"]
    r = httpx.post(
        root.url + path.format(cluster_id=cid),
        content=body,
        headers={
            "authorization": f"Bearer {root.token_for(path)}",
            "content-type": "application/json",
        },
        timeout=10,
    )
    assert r.status_code == 422 and field in r.json()["message"], r.text
