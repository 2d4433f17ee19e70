"""The cluster -> root reporter against a fake root (httpx MockTransport), real core thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.reporter import REGISTRATION_DOC, Reporter
from cluster_orchestrator.root_client import (
    CredentialRefused,
    IdentityRefused,
    RegistrationTokenRefused,
    RootClient,
)
from cluster_orchestrator.settings import ClusterSettings
from schemas.cluster import ClusterRegistration, ClusterReport, PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import InstanceState, TaskSpec, TaskState
from schemas.mqtt import TaskEvent, TaskEventMessage
from schemas.node import JoinRequest, Liveness, NodeInfo
from store import open_store
from tests.harness.wait import wait_for


class FakeRoot:
    """Just enough of the root's cluster API.

    `registration_token` is the token it accepts; `identity_answer`, when set, is what
    it answers a registration that presents a cluster id (e.g. 403: identity refused);
    `hold` makes a report wait (in flight) until `release` is set.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registrations: list[ClusterRegistration] = []
        self.register_attempts: list[ClusterRegistration] = []
        self.reports: list[ClusterReport] = []
        self.received_at: list[float] = []
        self.down = False
        self.credential = "cred-1"
        self.cluster_id = "c-123"
        self.registration_token = "reg-token"
        self.identity_answer: httpx.Response | None = None
        self.report_interval_s = 0.5
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/report") and self.hold:
            self.entered.set()
            self.release.wait(10)
        with self.lock:
            if self.down:
                raise httpx.ConnectError("root is down", request=request)
            auth = request.headers.get("authorization", "")
            if request.url.path == "/api/v1/clusters/register":
                reg = ClusterRegistration.model_validate_json(request.content)
                self.register_attempts.append(reg)
                if auth != f"Bearer {self.registration_token}":
                    return httpx.Response(401, json={"detail": "missing or invalid bearer token"})
                if reg.cluster_id is not None and self.identity_answer is not None:
                    return self.identity_answer
                self.registrations.append(reg)
                return httpx.Response(
                    201,
                    json={
                        "cluster_id": reg.cluster_id or self.cluster_id,
                        "credential": self.credential,
                        "report_interval_s": self.report_interval_s,
                    },
                )
            if request.url.path.startswith("/api/v1/clusters/") and request.url.path.endswith(
                "/report"
            ):
                if auth != f"Bearer {self.credential}":
                    return httpx.Response(401)
                self.reports.append(ClusterReport.model_validate_json(request.content))
                self.received_at.append(time.monotonic())
                return httpx.Response(204)
            return httpx.Response(404)

    def changes(self) -> list[tuple[str, InstanceState]]:
        with self.lock:
            return [(c.instance_id, c.state) for r in self.reports for c in r.instances]

    def report_with(self, instance_id: str) -> int | None:
        """Index of the first report that carries a change of `instance_id`."""
        with self.lock:
            for i, report in enumerate(self.reports):
                if any(c.instance_id == instance_id for c in report.instances):
                    return i
        return None


@pytest.fixture
def cluster_settings() -> dict[str, Any]:
    """Extra cluster settings for one test (override with parametrize or indirect)."""
    return {}


@pytest.fixture
def env(tmp_path: Path, cluster_settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    metrics = Metrics()
    persister = Persister(store, metrics)
    persister.start()
    settings = ClusterSettings(
        **{
            "name": "c1",
            "root_url": "http://root.test",
            "registration_token": "reg-token",
            "report_interval": 5.0,
            "url": "http://cluster.test:8100",
            "data_dir": tmp_path,
            **cluster_settings,
        }
    )
    core = ClusterCore(
        settings=settings, store=store, persister=persister, metrics=metrics, publish=lambda m: True
    )
    core.start()
    root = FakeRoot()
    reporters: list[Reporter] = []

    def reporter(transport: httpx.BaseTransport | None = None) -> Reporter:
        rep = Reporter(
            settings=settings,
            core=core,
            client=RootClient(
                "http://root.test", transport=transport or httpx.MockTransport(root.handler)
            ),
            store=store,
            persister=persister,
            metrics=metrics,
            api_token="api-tok",
            first_backoff=0.05,
        )
        rep.start()
        reporters.append(rep)
        return rep

    yield {"core": core, "root": root, "reporter": reporter, "store": store, "metrics": metrics}
    for rep in reporters:
        rep.stop()
    core.stop()
    persister.stop()
    store.close()


def join(core: ClusterCore, name: str) -> str:
    info = NodeInfo(
        name=name,
        hostname=name,
        arch=Arch.ARM64,
        cpu_cores=4,
        memory_mib=2048,
        disk_mib=100,
        runtimes=[Runtime.NATIVE],
        labels={"site": "x"},
    )
    return core.call(lambda: core.join(JoinRequest(info=info))).result(5).node_id


def place(core: ClusterCore, iid: str) -> None:
    """Place an instance and let its node report it RUNNING (what the deploy's ack
    carries): the change the root hears of (the ASSIGNED of a fresh placement it has from
    the placement answer, not from a report)."""
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "1"])
    req = PlaceInstanceRequest(instance_id=iid, job_id="j1", job_name="job", spec=spec)

    def place_and_run() -> None:
        answer = core.place_instance(req)
        assert answer.accepted and answer.node_id is not None
        event = TaskEvent(instance_id=iid, state=TaskState.RUNNING)
        message = TaskEventMessage(node_id=answer.node_id, ts=time.time(), payload=event)
        core.handle(Inbound(message=message, retained=False, received_at=time.time()))

    core.call(place_and_run).result(5)


def force_ready(core: ClusterCore, node_id: str) -> None:
    def mark() -> None:
        core.nodes[node_id].liveness.on_status(time.monotonic())

    core.call(mark).result(5)


def test_register_report_and_prompt_changes(env: dict[str, Any]) -> None:
    core, root, store = env["core"], env["root"], env["store"]
    node = join(core, "a")
    force_ready(core, node)
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "a first report")
    reg = root.registrations[0]
    assert reg.name == "c1" and str(reg.url).startswith("http://cluster.test:8100")
    assert reg.api_token is not None and reg.api_token.get_secret_value() == "api-tok"
    first = root.reports[0]
    assert first.full and first.archs == [Arch.ARM64] and first.labels == {"site": ["x"]}
    doc = store.get("meta", REGISTRATION_DOC)
    assert doc is not None and doc["cluster_id"] == "c-123"

    started = time.monotonic()
    place(core, "i1")
    wait_for(lambda: ("i1", InstanceState.RUNNING) in root.changes(), 3, "change reported")
    assert time.monotonic() - started < 1.5  # at once, not at the full interval
    delta = next(r for r in root.reports if any(c.instance_id == "i1" for c in r.instances))
    assert not delta.full and delta.nodes_by_liveness == {Liveness.READY: 1}
    seqs = [r.seq for r in root.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_root_down_buffers_changes_and_delivers_later(env: dict[str, Any]) -> None:
    core, root = env["core"], env["root"]
    force_ready(core, join(core, "a"))
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "a first report")
    root.down = True
    place(core, "i1")
    place(core, "i2")
    metrics = env["metrics"]
    wait_for(
        lambda: metrics.counter("edge_cluster_reports_total", {"result": "error"}) >= 1,
        5,
        "a failed report",
    )
    assert ("i1", InstanceState.RUNNING) not in root.changes()
    root.down = False
    wait_for(
        lambda: (
            {("i1", InstanceState.RUNNING), ("i2", InstanceState.RUNNING)} <= set(root.changes())
        ),
        10,
        "buffered changes delivered",
    )


def test_restart_reregisters_with_stored_identity(env: dict[str, Any]) -> None:
    root = env["root"]
    first = env["reporter"]()
    wait_for(lambda: root.reports, 5, "first report")
    first.stop()
    env["reporter"]()
    wait_for(lambda: len(root.registrations) == 2, 5, "second registration")
    again = root.registrations[1]
    assert again.cluster_id == "c-123"
    assert again.credential is not None and again.credential.get_secret_value() == "cred-1"


def test_revoked_credential_leads_to_new_registration(env: dict[str, Any]) -> None:
    core, root = env["core"], env["root"]
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "first report")
    with root.lock:
        root.credential = "cred-2"  # the root rotated it: our reports get 401
    n = len(root.registrations)
    force_ready(core, join(core, "b"))  # a change wakes the reporter
    wait_for(lambda: len(root.registrations) > n, 10, "re-registration")
    wait_for(lambda: any(r.full for r in root.reports[1:]), 10, "reports flow again")


# ------------------------------------------------------------------ latency first


def quiet_root(env: dict[str, Any]) -> FakeRoot:
    """The fake root with full reports far apart, so only change reports happen."""
    root: FakeRoot = env["root"]
    root.report_interval_s = 30.0
    return root


def test_change_right_after_a_report_is_not_held_back(env: dict[str, Any]) -> None:
    """The old fixed debounce made such a change wait ~100 ms; now it waits ~5 ms."""
    core, root = env["core"], quiet_root(env)
    force_ready(core, join(core, "a"))
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "a first report")
    latencies = []
    for i in range(7):
        n = len(root.reports)
        started = time.monotonic()
        place(core, f"i{i}")  # right after the previous report went out
        wait_for(lambda i=i: root.report_with(f"i{i}") is not None, 5, f"i{i} reported")
        latencies.append(root.received_at[root.report_with(f"i{i}") or 0] - started)
        assert len(root.reports) == n + 1
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies  # median, robust to a hiccup


def test_changes_made_while_a_report_is_in_flight_go_together_next(env: dict[str, Any]) -> None:
    core, root = env["core"], quiet_root(env)
    force_ready(core, join(core, "a"))
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "a first report")
    root.hold = True
    place(core, "first")
    assert root.entered.wait(5), "the report of 'first' is in flight"
    for i in range(5):
        place(core, f"i{i}")
    root.hold = False
    root.release.set()
    wait_for(lambda: all(root.report_with(f"i{i}") is not None for i in range(5)), 5, "sent")
    held = root.report_with("first")
    assert held is not None
    assert {root.report_with(f"i{i}") for i in range(5)} == {held + 1}  # one report, the next


@pytest.mark.parametrize("cluster_settings", [{"report_debounce": 0.3}])
def test_report_debounce_keeps_change_reports_apart(env: dict[str, Any]) -> None:
    core, root = env["core"], quiet_root(env)
    force_ready(core, join(core, "a"))
    env["reporter"]()
    wait_for(lambda: root.reports, 5, "a first report")
    for i in range(3):
        place(core, f"i{i}")
        wait_for(lambda i=i: root.report_with(f"i{i}") is not None, 5, f"i{i} reported")
    gaps = [b - a for a, b in zip(root.received_at, root.received_at[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.25, gaps


# ------------------------------------------------------------------ registration refusals


def stored_identity(env: dict[str, Any]) -> tuple[str, str]:
    doc = env["store"].get("meta", REGISTRATION_DOC)
    assert doc is not None
    return doc["cluster_id"], doc["credential"]


def test_wrong_registration_token_keeps_the_identity(env: dict[str, Any]) -> None:
    root = env["root"]
    first = env["reporter"]()
    wait_for(lambda: root.reports, 5, "first report")
    first.stop()
    with root.lock:
        root.registration_token = "rotated-at-the-root"  # our token is now wrong: 401
    second = env["reporter"]()
    wait_for(lambda: len(root.register_attempts) >= 4, 10, "retries with backoff")
    assert not second.registered and second.cluster_id == "c-123"
    assert "registration token" in second.last_error and "c-123" in second.last_error
    with root.lock:
        attempts = list(root.register_attempts[1:])
    assert all(a.cluster_id == "c-123" for a in attempts)  # never a fresh registration
    assert stored_identity(env) == ("c-123", "cred-1")
    n = len(root.reports)
    with root.lock:
        root.registration_token = "reg-token"  # fixed at the root
    wait_for(lambda: second.registered and len(root.reports) > n, 10, "back")
    assert root.registrations[-1].cluster_id == "c-123"
    assert stored_identity(env) == ("c-123", "cred-1")


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.Response(403, json={"detail": "not yours"}), id="403"),
        pytest.param(httpx.Response(404, json={"detail": "unknown cluster"}), id="404"),
    ],
)
def test_refused_identity_registers_a_new_cluster(
    env: dict[str, Any], answer: httpx.Response
) -> None:
    root = env["root"]
    first = env["reporter"]()
    wait_for(lambda: root.reports, 5, "first report")
    first.stop()
    with root.lock:
        root.identity_answer = answer
        root.cluster_id, root.credential = "c-new", "cred-new"
    second = env["reporter"]()
    wait_for(lambda: second.registered, 10, "registered again")
    # fresh, then our stored id (refused), then fresh again
    assert [r.cluster_id for r in root.register_attempts] == [None, "c-123", None]
    assert second.cluster_id == "c-new"
    wait_for(lambda: stored_identity(env) == ("c-new", "cred-new"), 5, "new identity stored")
    wait_for(lambda: any(r.full for r in root.reports[1:]), 10, "reports flow as c-new")


def test_against_the_real_root_service(env: dict[str, Any], tmp_path: Path) -> None:
    """The real root's answers classify as intended: a wrong token keeps the identity,
    a wrong credential for a known id is an identity refusal."""
    from fastapi.testclient import TestClient

    from root_orchestrator.app import create_app
    from root_orchestrator.settings import RootSettings

    settings = RootSettings(
        store_url=f"sqlite:///{tmp_path / 'root.db'}",
        operator_tokens=["operator-token-1"],
        registration_token="registration-token-1",
    )
    with TestClient(create_app(settings)) as root_app:

        def forward(request: httpx.Request) -> httpx.Response:
            response = root_app.request(
                request.method, request.url.path, content=request.content, headers=request.headers
            )
            return httpx.Response(response.status_code, content=response.content)

        client = RootClient("http://root.test", transport=httpx.MockTransport(forward))
        reg = ClusterRegistration(name="c1", url="http://c1:8100")
        first = client.register(reg, "registration-token-1")
        known = reg.model_copy(
            update={"cluster_id": first.cluster_id, "credential": first.credential}
        )
        again = client.register(known, "registration-token-1")
        assert again.cluster_id == first.cluster_id
        with pytest.raises(RegistrationTokenRefused):
            client.register(known, "wrong-registration-token")
        wrong = known.model_copy(update={"credential": SecretStr("not-the-credential")})
        with pytest.raises(IdentityRefused):
            client.register(wrong, "registration-token-1")
        with pytest.raises(CredentialRefused):
            client.report(first.cluster_id, ClusterReport(ts=1.0, seq=1, full=True), "nope")
