"""The root's reconciler in one event loop: a real `RootService` on an in-memory SQLite
store, and clusters played by an httpx `MockTransport` whose answers the test gates.

Covers what the pipelined placements promise beyond test_root_scheduling.py: deferred
work is started highest priority first, shutdown cancels the calls in flight and
waits for the service calls under way, and old events are pruned in the background.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from root_orchestrator.bus import EventBus
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.reconciler import Reconciler
from root_orchestrator.records import EVENTS, INSTANCES
from root_orchestrator.service import RootService
from root_orchestrator.settings import RootSettings
from schemas.cluster import ClusterRegistration, ClusterReport, PlaceInstanceResponse
from schemas.job import JobSpec
from store import Store, open_store
from tests.integration.test_root_support import FakeCluster


class GatedCluster:
    """A cluster API on a MockTransport: records every placement, answers it (accepted,
    on node n1) once `gate` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.placed: list[str] = []
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/v1/instances":
            iid = json.loads(request.content)["instance_id"]
            self.placed.append(iid)
            await self.gate.wait()
            answer = PlaceInstanceResponse(
                accepted=True, instance_id=iid, node_id="n1", node_name="n1"
            )
            return httpx.Response(200, json=answer.model_dump(mode="json"))
        return httpx.Response(404, json={"detail": "unknown"})


def make_service(store: Store, **settings: Any) -> RootService:
    values: dict[str, Any] = {
        "store_url": "sqlite://:memory:",
        "operator_tokens": ["operator-token-1"],
        "registration_token": "registration-token-1",
        **settings,
    }
    service = RootService(store, RootSettings(**values), bus=EventBus(), metrics=RootMetrics())
    service.start()
    return service


def add_cluster(service: RootService) -> str:
    """Register cluster "a" (one roomy node) and take its first report."""
    fake = FakeCluster("a")  # only builds bodies; its server is never started
    fake.nodes[0].cpu, fake.nodes[0].memory_mib = 64.0, 65536
    reg = service.register_cluster(
        ClusterRegistration(name="a", url="http://cluster-a.test", api_token="cluster-a-token")
    )
    service.apply_report(reg.cluster_id, ClusterReport.model_validate(fake.report_body()))
    return reg.cluster_id


def spec(name: str, priority: int = 0, replicas: int = 1) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "runtime": "native",
            "command": ["sleep", "600"],
            "replicas": replicas,
            "priority": priority,
            "resources": {"cpu": 0.1, "memory_mib": 16},
        }
    )


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` in the event loop until it holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.fixture
def store() -> Store:
    return open_store("sqlite://:memory:")


def test_deferred_placements_start_highest_priority_first(store: Store) -> None:
    """With one slot, work waiting for it is started by priority, not by arrival."""

    async def scenario() -> None:
        service = make_service(store)
        add_cluster(service)
        cluster = GatedCluster()
        client = ClusterClient(transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=60.0, max_parallel=1)
        reconciler.start()
        try:
            first, _ = service.submit_job(spec("first"))
            await until(lambda: cluster.placed, what="first placement call")
            low, _ = service.submit_job(spec("low", priority=1))
            high, _ = service.submit_job(spec("high", priority=50))
            await until(lambda: reconciler.deferred == 2, what="a pass deferring both")
            assert len(cluster.placed) == 1 and reconciler.in_flight == 1
            cluster.gate.set()  # answers from now on; the freed slot starts the rest
            await until(lambda: len(cluster.placed) == 3, 5, what="all placement calls")
            order = [iid.split("-", 1)[0] for iid in cluster.placed]
            assert order == [first.id, high.id, low.id]
            await until(lambda: reconciler.in_flight == 0, what="no call in flight")
        finally:
            await reconciler.stop()
            await client.aclose()

    run(scenario)


def test_stop_cancels_calls_in_flight_and_the_instance_stays_scheduled(store: Store) -> None:
    async def scenario() -> None:
        service = make_service(store)
        cluster_id = add_cluster(service)
        cluster = GatedCluster()  # never answers
        client = ClusterClient(timeout=30.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        reconciler.start()
        job, _ = service.submit_job(spec("held", replicas=3))
        await until(lambda: len(cluster.placed) == 3, what="3 placement calls")
        started = time.monotonic()
        await reconciler.stop()
        assert time.monotonic() - started < 5.0  # not the 30 s cluster timeout
        assert reconciler.in_flight == 0
        await client.aclose()
        # the decision was stored before the call: a restarted root resumes it
        docs = store.find(INSTANCES, {"job_id": job.id})
        assert sorted(d["_id"] for d in docs) == sorted(cluster.placed)
        assert {(d["state"], d["cluster_id"]) for d in docs} == {("SCHEDULED", cluster_id)}

    run(scenario)


def test_a_cancelled_service_call_still_runs_to_its_end(store: Store) -> None:
    """Shutdown must not return (and close the store) while a service method runs."""

    async def scenario() -> None:
        reconciler = Reconciler(make_service(store), ClusterClient(), RootMetrics(), interval=60.0)
        entered, release, ended = threading.Event(), threading.Event(), threading.Event()

        def slow_service_method() -> None:
            entered.set()
            release.wait(10)
            ended.set()

        task = asyncio.create_task(reconciler._call(slow_service_method))
        await until(entered.is_set, what="the method to start")
        task.cancel()
        for _ in range(10):  # loop iterations in which a wrong implementation would end
            await asyncio.sleep(0)
        assert not task.done(), "the call ended while its method was still running"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()

    run(scenario)


def test_old_events_are_pruned_in_the_background(store: Store) -> None:
    async def scenario() -> None:
        service = make_service(store, event_retention=1000)
        for n in range(1200):  # one event each (job.submitted); no instance, no cluster
            service.submit_job(spec(f"j{n}", replicas=0))
        assert store.count(EVENTS) == 1200
        client = ClusterClient()
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        reconciler.start()
        try:
            await until(lambda: store.count(EVENTS) == 1000, what="events pruned to 1000")
            newest = store.find(EVENTS, order_by="seq", descending=True, limit=1)
            assert newest[0]["seq"] == service.latest_seq()  # the newest are kept
        finally:
            await reconciler.stop()
            await client.aclose()

    run(scenario)


class BatchCluster:
    """A cluster API on a MockTransport with the batch route (or without it): records
    the calls; refuses the ids in `refuse`."""

    def __init__(self, *, batch: bool = True, refuse: set[str] | None = None) -> None:
        self.batch = batch
        self.refuse = refuse or set()
        self.single_calls: list[str] = []
        self.batch_calls: list[list[str]] = []
        self.transport = httpx.MockTransport(self.handle)

    def answer(self, iid: str) -> dict[str, Any]:
        if iid in self.refuse:
            answer = PlaceInstanceResponse(
                accepted=False, instance_id=iid, reasons={"insufficient memory": 1}
            )
        else:
            answer = PlaceInstanceResponse(
                accepted=True, instance_id=iid, node_id="n1", node_name="n1"
            )
        return answer.model_dump(mode="json")

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/v1/instances/batch" and self.batch:
            ids = [b["instance_id"] for b in json.loads(request.content)["instances"]]
            self.batch_calls.append(ids)
            return httpx.Response(200, json={"results": [self.answer(i) for i in ids]})
        if request.method == "POST" and path == "/api/v1/instances":
            iid = json.loads(request.content)["instance_id"]
            self.single_calls.append(iid)
            return httpx.Response(202, json=self.answer(iid))
        return httpx.Response(404, json={"detail": "Not Found"})


def _states(service: RootService, job_id: str) -> list[str]:
    return sorted(i.state.value for i in service.get_job(job_id).instances)


def test_many_placements_go_out_in_batches(store: Store) -> None:
    """A job of 60 replicas: its placements reach the cluster in batch calls of at
    most BATCH_MAX, not one call each, and every instance is ASSIGNED."""
    from root_orchestrator.reconciler import BATCH_MAX

    async def scenario() -> None:
        service = make_service(store)
        add_cluster(service)
        cluster = BatchCluster()
        client = ClusterClient(timeout=10.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        reconciler.start()
        try:
            job, _ = service.submit_job(spec("many", replicas=60))
            await until(lambda: _states(service, job.id) == ["ASSIGNED"] * 60, what="60 ASSIGNED")
        finally:
            await reconciler.stop()
            await client.aclose()
        sent = [iid for call in cluster.batch_calls for iid in call]
        assert len(sent) == len(set(sent)) == 60
        assert cluster.single_calls == []
        assert 60 / BATCH_MAX <= len(cluster.batch_calls) < 60
        assert all(len(call) <= BATCH_MAX for call in cluster.batch_calls)

    run(scenario)


def test_a_cluster_without_the_batch_route_gets_one_call_each(store: Store) -> None:
    async def scenario() -> None:
        service = make_service(store)
        add_cluster(service)
        cluster = BatchCluster(batch=False)
        client = ClusterClient(timeout=10.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        reconciler.start()
        try:
            job, _ = service.submit_job(spec("older-cluster", replicas=20))
            await until(lambda: _states(service, job.id) == ["ASSIGNED"] * 20, what="20 ASSIGNED")
        finally:
            await reconciler.stop()
            await client.aclose()
        assert sorted(cluster.single_calls) == sorted(
            i.id for i in service.get_job(job.id).instances
        )
        assert cluster.batch_calls == []

    run(scenario)


def test_refusals_in_a_batch_leave_those_instances_pending_with_the_reason(
    store: Store,
) -> None:
    async def scenario() -> None:
        service = make_service(store)
        add_cluster(service)
        cluster = BatchCluster()
        client = ClusterClient(timeout=10.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        job, _ = service.submit_job(spec("partly", replicas=10))
        cluster.refuse = {i.id for i in service.get_job(job.id).instances if i.replica < 3}
        reconciler.start()
        try:
            await until(
                lambda: _states(service, job.id) == ["ASSIGNED"] * 7 + ["PENDING"] * 3,
                what="7 ASSIGNED, 3 PENDING",
            )
        finally:
            await reconciler.stop()
            await client.aclose()
        for inst in service.get_job(job.id).instances:
            if inst.id in cluster.refuse:
                assert "insufficient memory" in inst.reason

    run(scenario)


def test_a_silent_cluster_is_marked_when_due_not_a_reconcile_interval_later(
    store: Store,
) -> None:
    """With a 60 s reconcile interval, a cluster that stops reporting is LOST (and its
    instance replaced) right after `cluster_lost_after`, because the pass is scheduled
    for the moment its silence crosses the threshold."""

    async def scenario() -> None:
        service = make_service(
            store,
            report_interval=0.2,
            cluster_unreachable_after=0.5,
            cluster_lost_after=0.8,
            reconcile_interval=60.0,
        )
        cluster_id = add_cluster(service)
        cluster = BatchCluster()
        client = ClusterClient(timeout=10.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=60.0)
        reconciler.start()
        try:
            job, _ = service.submit_job(spec("watched"))
            await until(lambda: _states(service, job.id) == ["ASSIGNED"], what="ASSIGNED")
            started = time.monotonic()  # no report from now on
            await until(
                lambda: service.get_cluster(cluster_id).liveness.value == "LOST",
                timeout=5.0,
                what="cluster LOST",
            )
            assert time.monotonic() - started < 3.0
            await until(lambda: "LOST" in _states(service, job.id), what="instance LOST")
        finally:
            await reconciler.stop()
            await client.aclose()

    run(scenario)


class DeleteGatedCluster(GatedCluster):
    """GatedCluster that also answers DELETEs, each once `delete_gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.delete_gate = asyncio.Event()
        self.deletes: list[str] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE" and request.url.path.startswith("/api/v1/instances/"):
            self.deletes.append(request.url.path.rsplit("/", 1)[1])
            await self.delete_gate.wait()
            return httpx.Response(204)
        return await super().handle(request)


def test_a_delete_that_ends_while_a_pass_reads_its_work_is_not_sent_again(
    store: Store,
) -> None:
    """The pass's work is read before a DELETE's answer is applied; the DELETE task
    ends before the pass starts its calls: the stale step must not go out twice."""

    async def scenario() -> None:
        service = make_service(store)
        add_cluster(service)
        cluster = DeleteGatedCluster()
        client = ClusterClient(timeout=30.0, transport=cluster.transport)
        reconciler = Reconciler(service, client, RootMetrics(), interval=0.05)
        real_pass_work = service.pass_work_async
        stale_served = asyncio.Event()

        async def pass_work_async(*, sweep: bool) -> Any:
            work = await real_pass_work(sweep=sweep)
            if cluster.deletes and not stale_served.is_set():
                # the work names the DELETE in flight; let it end and be recorded
                cluster.delete_gate.set()
                await until(lambda: reconciler.in_flight == 0, what="the DELETE to end")
                stale_served.set()
            return work

        service.pass_work_async = pass_work_async  # type: ignore[method-assign]
        reconciler.start()
        job, _ = service.submit_job(spec("gone"))
        await until(lambda: len(cluster.placed) == 1, what="the placement")
        await until(
            lambda: service.get_job(job.id).instances[0].state.value == "ASSIGNED",
            what="ASSIGNED",
        )
        service.delete_job(job.id)
        await until(stale_served.is_set, what="a pass with stale work")
        passes = reconciler.passes
        await until(lambda: reconciler.passes >= passes + 3, what="three more passes")
        await reconciler.stop()
        await client.aclose()
        assert cluster.deletes == cluster.placed  # one DELETE, for the one instance
        assert service.get_job(job.id).state.value == "TERMINATED"

    run(scenario)
