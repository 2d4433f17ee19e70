"""The cluster -> root reporter against a fake root (httpx MockTransport), real core thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.reporter import REGISTRATION_DOC, Reporter
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.settings import ClusterSettings
from schemas.cluster import ClusterRegistration, ClusterReport, PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import InstanceState, TaskSpec
from schemas.node import JoinRequest, Liveness, NodeInfo
from store import open_store
from tests.harness.procs import wait_until


class FakeRoot:
    """Just enough of the root's cluster API."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registrations: list[ClusterRegistration] = []
        self.reports: list[ClusterReport] = []
        self.down = False
        self.credential = "cred-1"
        self.cluster_id = "c-123"

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if self.down:
                raise httpx.ConnectError("root is down", request=request)
            auth = request.headers.get("authorization", "")
            if request.url.path == "/api/v1/clusters/register":
                if auth != "Bearer reg-token":
                    return httpx.Response(401)
                reg = ClusterRegistration.model_validate_json(request.content)
                self.registrations.append(reg)
                return httpx.Response(
                    201,
                    json={
                        "cluster_id": reg.cluster_id or self.cluster_id,
                        "credential": self.credential,
                        "report_interval_s": 0.5,
                    },
                )
            if request.url.path == f"/api/v1/clusters/{self.cluster_id}/report":
                if auth != f"Bearer {self.credential}":
                    return httpx.Response(401)
                self.reports.append(ClusterReport.model_validate_json(request.content))
                return httpx.Response(204)
            return httpx.Response(404)

    def changes(self) -> list[tuple[str, InstanceState]]:
        with self.lock:
            return [(c.instance_id, c.state) for r in self.reports for c in r.instances]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    metrics = Metrics()
    persister = Persister(store, metrics)
    persister.start()
    settings = ClusterSettings(
        name="c1",
        root_url="http://root.test",
        registration_token="reg-token",
        report_interval=5.0,
        url="http://cluster.test:8100",
        data_dir=tmp_path,
    )
    core = ClusterCore(
        settings=settings, store=store, persister=persister, metrics=metrics, publish=lambda m: True
    )
    core.start()
    root = FakeRoot()
    reporters: list[Reporter] = []

    def reporter() -> Reporter:
        rep = Reporter(
            settings=settings,
            core=core,
            client=RootClient("http://root.test", transport=httpx.MockTransport(root.handler)),
            store=store,
            persister=persister,
            metrics=metrics,
            api_token="api-tok",
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
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "1"])
    req = PlaceInstanceRequest(instance_id=iid, job_id="j1", job_name="job", spec=spec)
    core.call(lambda: core.place_instance(req)).result(5)


def force_ready(core: ClusterCore, node_id: str) -> None:
    def mark() -> None:
        core.nodes[node_id].liveness.on_status(time.monotonic())

    core.call(mark).result(5)


def test_register_report_and_prompt_changes(env: dict[str, Any]) -> None:
    core, root, store = env["core"], env["root"], env["store"]
    node = join(core, "a")
    force_ready(core, node)
    env["reporter"]()
    wait_until(lambda: root.reports, 5, "a first report")
    reg = root.registrations[0]
    assert reg.name == "c1" and str(reg.url).startswith("http://cluster.test:8100")
    assert reg.api_token is not None and reg.api_token.get_secret_value() == "api-tok"
    first = root.reports[0]
    assert first.full and first.archs == [Arch.ARM64] and first.labels == {"site": ["x"]}
    doc = store.get("meta", REGISTRATION_DOC)
    assert doc is not None and doc["cluster_id"] == "c-123"

    started = time.monotonic()
    place(core, "i1")
    wait_until(lambda: ("i1", InstanceState.ASSIGNED) in root.changes(), 3, "change reported")
    assert time.monotonic() - started < 1.5  # debounced (200 ms), not the full interval
    delta = next(r for r in root.reports if any(c.instance_id == "i1" for c in r.instances))
    assert not delta.full and delta.nodes_by_liveness == {Liveness.READY: 1}
    seqs = [r.seq for r in root.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_root_down_buffers_changes_and_delivers_later(env: dict[str, Any]) -> None:
    core, root = env["core"], env["root"]
    force_ready(core, join(core, "a"))
    env["reporter"]()
    wait_until(lambda: root.reports, 5, "a first report")
    root.down = True
    place(core, "i1")
    place(core, "i2")
    metrics = env["metrics"]
    wait_until(
        lambda: metrics.counter("edge_cluster_reports_total", {"result": "error"}) >= 1,
        5,
        "a failed report",
    )
    assert ("i1", InstanceState.ASSIGNED) not in root.changes()
    root.down = False
    wait_until(
        lambda: (
            {("i1", InstanceState.ASSIGNED), ("i2", InstanceState.ASSIGNED)} <= set(root.changes())
        ),
        10,
        "buffered changes delivered",
    )


def test_restart_reregisters_with_stored_identity(env: dict[str, Any]) -> None:
    root = env["root"]
    first = env["reporter"]()
    wait_until(lambda: root.reports, 5, "first report")
    first.stop()
    env["reporter"]()
    wait_until(lambda: len(root.registrations) == 2, 5, "second registration")
    again = root.registrations[1]
    assert again.cluster_id == "c-123"
    assert again.credential is not None and again.credential.get_secret_value() == "cred-1"


def test_revoked_credential_leads_to_new_registration(env: dict[str, Any]) -> None:
    core, root = env["core"], env["root"]
    env["reporter"]()
    wait_until(lambda: root.reports, 5, "first report")
    with root.lock:
        root.credential = "cred-2"  # the root rotated it: our reports get 401
    n = len(root.registrations)
    force_ready(core, join(core, "b"))  # a change wakes the reporter
    wait_until(lambda: len(root.registrations) > n, 10, "re-registration")
    wait_until(lambda: any(r.full for r in root.reports[1:]), 10, "reports flow again")
