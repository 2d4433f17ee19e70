"""The root's store writer (write-behind, group commit) and the service on top of it.

Real SQLite files; a `GatedStore` wrapper only holds `put_many` back until the test
releases it, so that the writes queued meanwhile are known to share one commit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from root_orchestrator.bus import EventBus
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.persister import Persister
from root_orchestrator.records import EVENTS, INSTANCES, JOBS, InstanceRecord, placement_to_doc
from root_orchestrator.service import RootService
from root_orchestrator.settings import RootSettings
from schemas.job import InstanceState, JobSpec
from schemas.root_api import PlacementInfo
from store import InvalidInput, Store, StoreError, open_store
from tests.harness.wait import wait_for


class GatedStore:
    """A real store whose `put_many` waits for `gate` (and counts its calls); `fail`
    makes the next calls raise."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail: list[Exception] = []

    def put_many(self, writes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        self.entered.set()
        assert self.gate.wait(20), "gate never opened"
        if self.fail:
            raise self.fail.pop(0)
        self.calls.append(len(writes))
        self.inner.put_many(writes)

    def put(
        self, collection: str, doc: Mapping[str, Any], expected_version: int | None = None
    ) -> int:
        if self.fail:
            raise self.fail.pop(0)
        return self.inner.put(collection, doc, expected_version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'root.db'}"


def test_writes_from_many_callers_share_one_commit(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    first = writer.put(JOBS, "j0", {"n": 0})
    assert gated.entered.wait(5)  # the writer holds j0 at the gate
    marks: list[int] = []
    done: list[int] = []

    def caller(n: int) -> None:
        mark = writer.put(JOBS, f"j{n}", {"n": n})
        marks.append(mark)
        writer.wait(mark)
        done.append(n)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(1, 21)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(marks) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not done, "a caller returned before its write was committed"
    gated.gate.set()
    for t in threads:
        t.join(10)
    writer.wait(first)
    assert sorted(done) == list(range(1, 21))
    assert gated.calls == [1, 20]  # j0 alone, then the 20 queued meanwhile in one call
    reopened = open_store(db)  # another connection: the rows are committed
    assert reopened.count(JOBS) == 21
    assert writer.stop()


def test_a_document_written_twice_in_a_batch_is_written_once(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    writer.put(INSTANCES, "held", {"v": 0})
    assert gated.entered.wait(5)
    for v in range(5):
        writer.put(INSTANCES, "i1", {"v": v})
    writer.delete(INSTANCES, "held")
    writer.put(INSTANCES, "held", {"v": "again"})
    mark = writer.mark()
    assert writer.get(INSTANCES, "i1") == {"_id": "i1", "v": 4}  # seen before it lands
    gated.gate.set()
    writer.wait(mark)
    assert gated.calls == [1, 1, 1]  # held; i1 once (then the delete ends the run); held
    assert gated.inner.get(INSTANCES, "i1")["v"] == 4  # type: ignore[index]
    assert gated.inner.get(INSTANCES, "held")["v"] == "again"  # type: ignore[index]
    writer.stop()


def test_events_are_published_once_durable_and_in_order(db: str) -> None:
    gated = GatedStore(open_store(db))
    published: list[int] = []
    writer = Persister(gated, publish=lambda doc: published.append(doc["seq"]))  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    for seq in range(1, 51):
        writer.event(EVENTS, {"_id": f"ev{seq:012d}", "seq": seq})
    assert gated.entered.wait(5)
    time.sleep(0.05)  # would be enough for a wrong writer to publish early
    assert published == []
    gated.gate.set()
    writer.wait(writer.mark())
    assert published == list(range(1, 51))
    writer.stop()


def test_a_refused_write_fails_its_waiter_and_the_rest_lands(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.fail = [InvalidInput("bad document"), InvalidInput("bad document")]
    mark = writer.put(JOBS, "bad", {"x": 1})
    with pytest.raises(InvalidInput):
        writer.wait(mark)
    good = writer.put(JOBS, "good", {"x": 2})
    writer.wait(good, since=mark)  # its own writes only: the bad one is not its
    assert gated.inner.get(JOBS, "good") is not None
    writer.stop()


def test_a_store_outage_is_waited_out_and_the_write_lands(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.fail = [StoreError("database is locked")] * 3  # put_many, then the single puts
    mark = writer.put(JOBS, "j1", {"x": 1})
    writer.wait(mark, timeout=10)
    assert gated.inner.get(JOBS, "j1") is not None
    writer.stop()


def test_a_waiter_gives_up_with_a_store_error_and_the_write_stays_queued(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    mark = writer.put(JOBS, "j1", {"x": 1})
    with pytest.raises(StoreError, match="not durable within"):
        writer.wait(mark, timeout=0.2)
    gated.gate.set()
    writer.wait(mark)
    assert gated.inner.get(JOBS, "j1") is not None
    writer.stop()


def _spec(name: str) -> JobSpec:
    return JobSpec.model_validate(
        {"name": name, "runtime": "native", "command": ["sleep", "1"], "replicas": 2}
    )


def test_the_service_lock_is_free_while_a_call_waits_for_its_writes(db: str) -> None:
    """submit_job waits for its commit outside the lock: other calls go on meanwhile,
    and the job is in the store when submit_job returns."""
    gated = GatedStore(open_store(db))
    settings = RootSettings(
        store_url=db, operator_tokens=["operator-token-1"], registration_token="registration-1"
    )
    service = RootService(gated, settings, bus=EventBus(), metrics=RootMetrics())  # type: ignore[arg-type]
    service.start()
    gated.gate.clear()
    result: list[str] = []
    submitter = threading.Thread(
        target=lambda: result.append(service.submit_job(_spec("held"))[0].id)
    )
    submitter.start()
    assert gated.entered.wait(5)
    started = time.monotonic()
    assert service.list_clusters().clusters == []  # takes the lock
    service.pending_count()
    assert time.monotonic() - started < 1.0
    assert result == []  # not answered before its writes are durable
    gated.gate.set()
    submitter.join(10)
    assert result
    doc = open_store(db).get(JOBS, result[0])
    assert doc is not None and doc["name"] == "held"
    assert open_store(db).count(INSTANCES, {"job_id": result[0]}) == 2
    service.stop()


def test_a_restarted_service_finds_what_calls_answered_for(db: str) -> None:
    settings = RootSettings(
        store_url=db, operator_tokens=["operator-token-1"], registration_token="registration-1"
    )
    store = open_store(db)
    service = RootService(store, settings, bus=EventBus(), metrics=RootMetrics())
    service.start()
    ids = [service.submit_job(_spec(f"j{n}"), idempotency_key=f"k{n}")[0].id for n in range(30)]
    # no stop(): as if the process died right after the last answer
    again = RootService(open_store(db), settings, bus=EventBus(), metrics=RootMetrics())
    again.start()
    assert [again.get_job(i).id for i in ids] == ids
    assert all(len(again.get_job(i).instances) == 2 for i in ids)
    # the idempotency keys are durable too: a retry returns the same job
    view, created = again.submit_job(_spec("j7"), idempotency_key="k7")
    assert (view.id, created) == (ids[7], False)
    service.stop()
    again.stop()


# ---------------------------------------------------------------------- async waits


def _service(db: str, store: Any) -> RootService:
    settings = RootSettings(
        store_url=db, operator_tokens=["operator-token-1"], registration_token="registration-1"
    )
    service = RootService(store, settings, bus=EventBus(), metrics=RootMetrics())
    service.start()
    return service


async def _until(check: Any, timeout: float = 5.0) -> None:
    """Poll `check` on the loop (which must stay free to run) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_an_async_wait_ends_only_after_the_commit_and_leaves_the_loop_free(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    mark = writer.put(JOBS, "j1", {"x": 1})
    assert gated.entered.wait(5)

    async def main() -> None:
        waiter = asyncio.ensure_future(writer.wait_async(mark))
        ticks = 0
        while ticks < 10:  # the loop runs other work while the commit is held back
            await asyncio.sleep(0)
            ticks += 1
        assert not waiter.done(), "answered before the commit"
        gated.gate.set()
        await asyncio.wait_for(waiter, 10)
        assert gated.inner.get(JOBS, "j1") is not None  # committed when the wait ended
        await writer.wait_async(mark)  # already durable: returns at once

    asyncio.run(main())
    writer.stop()


def test_an_async_wait_gives_up_with_a_store_error_and_fails_with_its_write(db: str) -> None:
    gated = GatedStore(open_store(db))
    writer = Persister(gated)  # type: ignore[arg-type]
    writer.start()
    gated.gate.clear()
    mark = writer.put(JOBS, "j1", {"x": 1})

    async def main() -> None:
        with pytest.raises(StoreError, match="not durable within"):
            await writer.wait_async(mark, timeout=0.1)
        gated.gate.set()
        await writer.wait_async(mark)
        gated.fail = [InvalidInput("bad document"), InvalidInput("bad document")]
        bad = writer.put(JOBS, "bad", {"x": 1})
        with pytest.raises(InvalidInput):
            await writer.wait_async(bad, since=mark)

    asyncio.run(main())
    assert gated.inner.get(JOBS, "j1") is not None
    writer.stop()


def test_submit_async_answers_and_wakes_the_reconciler_only_once_durable(db: str) -> None:
    """The async facade runs the call on the loop and awaits the commit: no answer
    and no kick before it, the lock and the loop free meanwhile."""
    gated = GatedStore(open_store(db))
    service = _service(db, gated)
    kicks: list[int] = []
    service.add_listener(lambda: kicks.append(1))
    gated.gate.clear()

    async def main() -> None:
        task = asyncio.ensure_future(service.submit_job_async(_spec("held")))
        await _until(gated.entered.is_set)
        assert not task.done(), "answered before its writes are durable"
        assert kicks == []
        assert service.pending_count() == 2  # the lock is free
        gated.gate.set()
        view, created = await asyncio.wait_for(task, 10)
        assert created and kicks == [1]
        doc = open_store(db).get(JOBS, view.id)  # another connection: committed
        assert doc is not None and doc["name"] == "held"
        assert open_store(db).count(INSTANCES, {"job_id": view.id}) == 2

    asyncio.run(main())
    service.stop()


def test_the_writes_of_one_hold_of_the_service_lock_share_one_commit(db: str) -> None:
    gated = GatedStore(open_store(db))
    service = _service(db, gated)
    st = service.state
    writer = st.persister
    writer.wait(writer.mark())
    wait_for(lambda: writer.idle, 5, "the writer asleep")  # not just finishing a batch
    before = len(gated.calls)
    gated.entered.clear()
    with st.lock:
        with st.lock:  # reentrant: only the outermost release wakes the writer
            for n in range(5):
                writer.put(JOBS, f"x{n}", {"n": n})
        assert not gated.entered.wait(0.05), "the writer was woken under the lock"
    writer.wait(writer.mark(), timeout=5)
    assert gated.calls[before:] == [5]
    with st.lock:  # a wait under the lock (never done by the service) still ends
        writer.wait(writer.put(JOBS, "y", {"n": 0}), timeout=5)
    service.stop()


def test_an_instance_document_holds_every_field() -> None:
    record = InstanceRecord(
        id="j1-0-0",
        job_id="j1",
        replica=0,
        state=InstanceState.RUNNING,
        created_at=1.0,
        updated_at=2.0,
        placement=PlacementInfo(
            at=2.0, outcome="scheduled", cluster_id="c1", explanation="placed on c1"
        ),
    )
    doc = record.to_doc()
    expected = {f.name: getattr(record, f.name) for f in fields(record)}
    expected["_id"] = expected.pop("id")
    expected.pop("version")  # the store's
    expected["state"] = record.state.value
    expected["placement"] = placement_to_doc(record.placement)
    assert doc == expected
    assert InstanceRecord.from_doc({**doc, "_version": 3}).to_doc() == doc
