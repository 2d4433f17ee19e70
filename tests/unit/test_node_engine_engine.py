"""Engine loop logic with a fake transport: idempotency, rejections, outbox, shedder hook."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import pytest

from node_engine.engine import SHORT_SESSION_S, TAKEOVER_STREAK, Engine
from node_engine.mqtt import (
    CommandReceived,
    CommandRejected,
    Connected,
    Disconnected,
    LogsRejected,
    LogsRequested,
    Published,
)
from node_engine.runtimes.base import LogPiece, LogRead
from node_engine.state import Outbox, SeenCommands, TaskStore
from node_engine.supervisor import ShedDecision, Supervisor
from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.mqtt import (
    SESSION_TAKEN_OVER,
    DeployCommand,
    DeployMessage,
    LogsRequest,
    LogsRequestMessage,
    PresenceMessage,
    TerminateCommand,
    TerminateMessage,
    decode,
)
from tests.unit.test_node_engine_monitor import FakePsutil, _monitor
from tests.unit.test_node_engine_supervisor import FakeRuntime

NODE = "node1"


class FakeTransport:
    def __init__(self) -> None:
        self.connected = False
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.acked: list[int] = []
        self.started = False
        self.stopped_with = None
        self._mid = 0

    def start(self):
        self.started = True

    def publish(self, topic_name, payload, qos, retain=False):
        self._mid += 1
        self.published.append((topic_name, payload, qos, retain))
        return self._mid

    def ack(self, mid, qos, generation):
        self.acked.append(mid)

    def stop(self, final=None, timeout=3.0):
        self.stopped_with = final

    def decoded(self, channel):
        return [decode(p) for t, p, _, _ in self.published if t.endswith("/" + channel)]


class RecordingShedder:
    active = True

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def evaluate(self, sample, tasks):
        self.calls.append((sample, list(tasks)))
        return [ShedDecision(t.instance_id, "pause", "too hot", {"temp": 90}) for t in tasks]


@pytest.fixture
def engine(tmp_path):
    transport = FakeTransport()
    rt = FakeRuntime()
    store = TaskStore(tmp_path)
    eng = Engine(
        node_id=NODE,
        inbox=queue.SimpleQueue(),
        transport=transport,
        monitor=_monitor(tmp_path, FakePsutil()),
        supervisor_factory=lambda emit: Supervisor({Runtime.NATIVE: rt}, {}, store, emit),
        outbox=Outbox(tmp_path / "outbox.json"),
        seen=SeenCommands(tmp_path / "commands.json"),
        status_interval=1.0,
        runtimes=[Runtime.NATIVE],
    )
    eng.rt = rt  # type: ignore[attr-defined]
    return eng, transport


def go_online(eng: Any, transport: Any) -> None:
    transport.connected = True
    eng._handle(Connected(False, 1))


def deploy_msg(cid: str = "c1", instance: str = "i1") -> DeployMessage:
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "1"])
    return DeployMessage(
        id=cid, node_id=NODE, payload=DeployCommand(instance_id=instance, job_id="j", spec=spec)
    )


def test_repeated_command_is_acked_again_not_run_twice(engine):
    eng, transport = engine
    go_online(eng, transport)
    msg = deploy_msg()
    eng.process([CommandReceived(msg, 1, 1, 1), CommandReceived(msg, 2, 1, 1)])
    assert eng.rt.deploys == ["i1"]
    acks = [m for m in transport.decoded("events") if m.kind == "ack"]
    assert [(a.payload.accepted, a.payload.duplicate) for a in acks] == [
        (True, False),
        (True, True),
    ]
    assert transport.acked == [1, 2]
    # a DEPLOY with a new id for the running instance is not run twice either
    eng._handle(CommandReceived(deploy_msg("c2"), 3, 1, 1))
    assert eng.rt.deploys == ["i1"]


def test_rejected_message_is_counted_and_refused(engine):
    eng, transport = engine
    go_online(eng, transport)
    eng.process(
        [
            CommandRejected("invalid", "payload.spec: bad", "abc", "deploy", 5, 1, 1),
            CommandRejected("bad_json", "Expecting value", "unknown", "unknown", 6, 1, 1),
        ]
    )
    assert eng.messages_rejected == 2 and eng.rejected_by_reason == {"invalid": 1, "bad_json": 1}
    acks = [m.payload for m in transport.decoded("events")]
    assert [(a.command_id, a.accepted) for a in acks] == [("abc", False), ("unknown", False)]
    assert acks[0].reason == "invalid: payload.spec: bad"
    eng.tick()
    (status,) = transport.decoded("status")
    assert status.payload.messages_rejected == 2
    assert transport.acked == [5, 6]


def test_outbox_buffers_while_disconnected_and_drains_on_puback(engine, tmp_path):
    eng, transport = engine
    eng.process([CommandReceived(deploy_msg(), 1, 1, 1)])
    eng.process([CommandReceived(deploy_msg("c2", "i2"), 2, 1, 1)])
    assert transport.published == []  # disconnected: nothing handed to paho
    assert len(eng.outbox) == 2  # one ack per deploy, each carrying its task's RUNNING
    saved = json.loads((tmp_path / "outbox.json").read_text())
    assert len(saved["entries"]) == 2
    go_online(eng, transport)
    eng._flush()
    kinds = [m.kind for m in transport.decoded("events")]
    assert kinds == ["ack", "ack"]
    events = [m.payload.event for m in transport.decoded("events")]
    assert [(e.instance_id, e.state, e.previous, e.seq) for e in events if e] == [
        ("i1", TaskState.RUNNING, None, 1),
        ("i2", TaskState.RUNNING, None, 2),
    ]
    assert transport.decoded("presence")[0].payload.online is True
    eng._flush()  # in flight entries are not published twice
    assert len(transport.decoded("events")) == 2
    for mid in (2, 3):
        eng._handle(Published(mid))
    assert len(eng.outbox) == 0
    # a delivered entry is written away with the next append, or after OUTBOX_REMOVALS_S
    eng.commit()
    assert len(json.loads((tmp_path / "outbox.json").read_text())["entries"]) == 2
    eng._removals_saved -= 60
    eng.commit()
    assert json.loads((tmp_path / "outbox.json").read_text())["entries"] == []


def test_status_and_terminate(engine):
    eng, transport = engine
    go_online(eng, transport)
    eng._handle(CommandReceived(deploy_msg(), 1, 1, 1))
    eng.tick()
    status = transport.decoded("status")[-1].payload
    assert [t.instance_id for t in status.tasks] == ["i1"]
    assert status.runtimes == [Runtime.NATIVE] and status.cpu_percent == 30.0
    term = TerminateMessage(id="t1", node_id=NODE, payload=TerminateCommand(instance_id="i1"))
    eng._handle(CommandReceived(term, 2, 1, 1))
    eng._flush()
    assert reported(transport, "i1") == [
        ("ack", TaskState.RUNNING),
        ("ack", TaskState.TERMINATED),
    ]


def test_shedder_hook_called_each_tick(engine):
    eng, transport = engine
    go_online(eng, transport)
    shedder = RecordingShedder()
    eng.shedder = shedder
    eng._handle(CommandReceived(deploy_msg(), 1, 1, 1))
    eng.tick()
    assert len(shedder.calls) == 1 and shedder.calls[0][1][0].instance_id == "i1"
    status = transport.decoded("status")[-1].payload
    assert status.shedding is True and status.tasks[0].state is TaskState.PAUSED
    eng._flush()
    paused = [m.payload for m in transport.decoded("events") if m.kind == "task_event"][-1]
    assert paused.state is TaskState.PAUSED and paused.data.as_dict() == {"temp": 90}


def test_run_loop_stops_on_request_and_goes_offline(engine):
    eng, transport = engine
    thread = threading.Thread(target=eng.run)
    thread.start()
    eng.request_stop()
    thread.join(10)
    assert not thread.is_alive()
    assert transport.started
    topic_name, payload = transport.stopped_with
    presence = decode(payload)
    assert isinstance(presence, PresenceMessage)
    assert topic_name.endswith("/presence") and presence.payload.online is False


# ---------------------------------------------------------------- worker pool


class GatedRuntime(FakeRuntime):
    """FakeRuntime whose deploy / stop of chosen instances block until released.

    A gated stop first makes the task look exited (a process that died of SIGTERM while
    the stop still waits), so a poll that looked at it would see an exit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.gates: dict[tuple[str, str], threading.Event] = {}
        self.entered: dict[tuple[str, str], threading.Event] = {}
        self.threads: set[str] = set()

    def gate(self, action: str, instance_id: str) -> threading.Event:
        self.entered[(action, instance_id)] = threading.Event()
        gate = self.gates[(action, instance_id)] = threading.Event()
        return gate

    def wait_entered(self, action: str, instance_id: str) -> None:
        assert self.entered[(action, instance_id)].wait(5), f"{action} {instance_id} not called"

    def _pass(self, action: str, instance_id: str) -> None:
        self.threads.add(threading.current_thread().name)
        key = (action, instance_id)
        if key in self.gates:
            self.entered[key].set()
            assert self.gates[key].wait(10)

    def deploy(self, instance_id, spec):
        self._pass("deploy", instance_id)
        with self.lock:
            return super().deploy(instance_id, spec)

    def stop(self, handle, timeout_s=10.0):
        with self.lock:
            if ("stop", handle.instance_id) in self.gates and handle.instance_id in self.running:
                self.exit(handle.instance_id, -15)
        self._pass("stop", handle.instance_id)
        with self.lock:
            super().stop(handle, timeout_s)

    def status(self, handle):
        with self.lock:
            return super().status(handle)


def pooled_engine(tmp_path, *, workers: int = 2, shutdown_wait: float = 5.0, rt=None):
    """An engine with a worker pool on the state in `tmp_path` (loaded, as at a start)."""
    transport = FakeTransport()
    rt = rt or GatedRuntime()
    store = TaskStore(tmp_path)
    store.load()
    eng = Engine(
        node_id=NODE,
        inbox=queue.SimpleQueue(),
        transport=transport,
        monitor=_monitor(tmp_path, FakePsutil()),
        supervisor_factory=lambda emit: Supervisor({Runtime.NATIVE: rt}, {}, store, emit),
        outbox=Outbox(tmp_path / "outbox.json"),
        seen=SeenCommands(tmp_path / "commands.json"),
        status_interval=1.0,
        runtimes=[Runtime.NATIVE],
        workers=workers,
        shutdown_wait=shutdown_wait,
    )
    go_online(eng, transport)
    return eng, transport, rt


def pump(eng: Any, predicate: Any, timeout: float = 5.0, what: str = "") -> None:
    """Run the loop's batch handling on what arrives until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {what or predicate}"
        try:
            items = [eng.inbox.get(timeout=min(left, 0.05))]
        except queue.Empty:
            continue
        while True:
            try:
                items.append(eng.inbox.get_nowait())
            except queue.Empty:
                break
        eng.process(items)


def acks(transport: FakeTransport, command_id: str | None = None) -> list[Any]:
    out = [m.payload for m in transport.decoded("events") if m.kind == "ack"]
    return [a for a in out if command_id is None or a.command_id == command_id]


def task_events(transport: FakeTransport, instance_id: str) -> list[TaskState]:
    return [
        m.payload.state
        for m in transport.decoded("events")
        if m.kind == "task_event" and m.payload.instance_id == instance_id
    ]


def reported(transport: FakeTransport, instance_id: str) -> list[tuple[str, TaskState]]:
    """Every state change of an instance on the wire, in order, and what carried it: a
    `task_event`, or the ack of the command that caused it (`CommandAck.event`)."""
    out = []
    for m in transport.decoded("events"):
        event = m.payload if m.kind == "task_event" else m.payload.event
        if event is not None and event.instance_id == instance_id:
            out.append((m.kind, event.state))
    return out


def terminate_msg(cid: str, instance: str = "i1") -> TerminateMessage:
    return TerminateMessage(id=cid, node_id=NODE, payload=TerminateCommand(instance_id=instance))


def test_slow_stop_runs_off_the_loop_while_ticks_and_deploys_go_on(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path)
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["x"], restart_policy="always")
    slow = DeployMessage(
        id="c1", node_id=NODE, payload=DeployCommand(instance_id="slow", job_id="j", spec=spec)
    )
    eng.process([CommandReceived(slow, 1, 1, 1)])
    pump(eng, lambda: acks(transport, "c1"), what="deploy ack")
    release = rt.gate("stop", "slow")
    eng.process([CommandReceived(terminate_msg("t1", "slow"), 2, 1, 1)])
    rt.wait_entered("stop", "slow")
    for _ in range(3):  # the status keeps going, and the stopping task is not restarted
        eng.tick()
    statuses = transport.decoded("status")
    assert len(statuses) == 3
    assert [t.state for t in statuses[-1].payload.tasks] == [TaskState.RUNNING]
    eng.process([CommandReceived(deploy_msg("c2", "other"), 3, 1, 1)])
    pump(eng, lambda: acks(transport, "c2"), what="the other deploy's ack")
    assert acks(transport, "c2")[0].accepted and acks(transport, "t1") == []
    assert 2 not in transport.acked  # the TERMINATE is not acknowledged before its outcome
    release.set()
    pump(eng, lambda: acks(transport, "t1"), what="terminate ack")
    assert acks(transport, "t1")[0].accepted and 2 in transport.acked
    # one message per fact: each command's ack carries the state it left the task in
    assert reported(transport, "slow") == [
        ("ack", TaskState.RUNNING),
        ("ack", TaskState.TERMINATED),
    ]
    assert rt.deploys == ["slow", "other"]  # the exit seen during the stop restarted nothing
    assert "slow" not in eng.supervisor.tasks
    assert rt.threads and threading.current_thread().name not in rt.threads


def test_terminate_during_deploy_waits_then_stops(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path)
    release = rt.gate("deploy", "i1")
    eng.process([CommandReceived(deploy_msg("c1"), 1, 1, 1)])
    rt.wait_entered("deploy", "i1")
    # a second DEPLOY (new id) for the STARTING instance is answered at once
    eng.process([CommandReceived(deploy_msg("c2"), 2, 1, 1)])
    (dup,) = acks(transport, "c2")
    assert dup.accepted and dup.reason == "instance already present (STARTING)"
    assert transport.acked == [2]
    eng.process([CommandReceived(terminate_msg("t1"), 3, 1, 1)])
    assert acks(transport, "c1") == [] and acks(transport, "t1") == []
    release.set()
    pump(eng, lambda: acks(transport, "t1"), what="terminate ack")
    assert acks(transport, "c1")[0].accepted and acks(transport, "t1")[0].accepted
    assert sorted(transport.acked) == [1, 2, 3]
    assert reported(transport, "i1") == [
        ("ack", TaskState.RUNNING),
        ("ack", TaskState.TERMINATED),
    ]
    assert acks(transport, "c2")[0].event is None  # "already present": nothing changed
    assert rt.running == {} and rt.stops == ["i1"] and rt.deploys == ["i1"]


def test_duplicate_delivery_while_in_progress_runs_once_and_is_answered_twice(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path)
    release = rt.gate("deploy", "i1")
    msg = deploy_msg("c1")
    eng.process([CommandReceived(msg, 1, 1, 1)])
    rt.wait_entered("deploy", "i1")
    eng.process([CommandReceived(msg, 2, 1, 2)])  # redelivered (after a reconnect)
    assert acks(transport) == [] and transport.acked == []
    release.set()
    pump(eng, lambda: len(transport.acked) == 2, what="both deliveries answered")
    assert [(a.accepted, a.duplicate) for a in acks(transport, "c1")] == [
        (True, False),
        (True, True),
    ]
    assert rt.deploys == ["i1"]


def test_deploy_refused_by_the_runtime_in_the_pool(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path)
    rt.fail_next = "executable not found: x"
    eng.process([CommandReceived(deploy_msg("c1"), 1, 1, 1)])
    pump(eng, lambda: acks(transport, "c1"), what="ack")
    (ack,) = acks(transport, "c1")
    assert not ack.accepted and ack.reason == "executable not found: x"
    assert ack.event is not None and ack.event.state is TaskState.FAILED
    assert ack.event.reason == "executable not found: x" and ack.event.previous is None
    assert task_events(transport, "i1") == []


def test_group_commit_one_write_per_batch_and_nothing_acked_before_it_is_on_disk(
    tmp_path, monkeypatch
):
    import node_engine.state as state_mod

    writes: list[str] = []
    real_write = state_mod.atomic_write

    def counting_write(path, data, mode=0o600, **kw):
        writes.append(path.name)
        real_write(path, data, mode, **kw)

    monkeypatch.setattr(state_mod, "atomic_write", counting_write)
    eng, transport, rt = pooled_engine(tmp_path, workers=16)
    real_ack = transport.ack

    def checked_ack(mid, qos, generation):  # what a PUBACK acknowledges is already on disk
        seen = json.loads((tmp_path / "commands.json").read_text())["commands"]
        assert f"c{mid}" in {c["id"] for c in seen}
        outbox = (tmp_path / "outbox.json").read_text()
        assert f'\\"command_id\\":\\"c{mid}\\"' in outbox
        real_ack(mid, qos, generation)

    transport.ack = checked_ack  # type: ignore[method-assign]
    gates = [rt.gate("deploy", f"i{n}") for n in range(16)]
    eng.process([CommandReceived(deploy_msg(f"c{n}", f"i{n}"), n, 1, 1) for n in range(16)])
    assert writes == ["tasks.json"]  # 16 STARTING records: once (STARTING is not sent)
    for n in range(16):
        rt.wait_entered("deploy", f"i{n}")  # 16 runtime calls at once
    assert transport.acked == []
    for gate in gates:
        gate.set()
    wait = time.monotonic() + 5
    while eng.inbox.qsize() < 16:
        assert time.monotonic() < wait, "the 16 results did not arrive"
        time.sleep(0.01)
    pump(eng, lambda: len(transport.acked) == 16, what="16 acks")
    assert writes == ["tasks.json", "tasks.json", "commands.json", "outbox.json"]
    assert all(a.accepted for a in acks(transport)) and len(acks(transport)) == 16


def test_shutdown_abandons_a_stuck_deploy_and_the_next_start_adopts_it(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path, workers=1, shutdown_wait=0.2)
    release = rt.gate("deploy", "i1")
    thread = threading.Thread(target=eng.run)
    thread.start()
    eng.inbox.put(CommandReceived(deploy_msg("c1"), 1, 1, 1))
    rt.wait_entered("deploy", "i1")
    started = time.monotonic()
    eng.request_stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 3
    assert transport.acked == [] and acks(transport) == []  # the broker will redeliver
    assert transport.stopped_with is not None
    saved = json.loads((tmp_path / "tasks.json").read_text())["tasks"]["i1"]
    assert saved["state"] == "STARTING" and saved["handle"] is None
    release.set()  # the abandoned call finishes: nobody applies it
    wait_until = time.monotonic() + 5
    while "i1" not in rt.running:
        assert time.monotonic() < wait_until
        time.sleep(0.01)
    # the next start: the task is adopted, not started twice, and the command answered
    eng2, transport2, _ = pooled_engine(tmp_path, rt=rt)
    eng2.supervisor.recover()
    eng2.process([CommandReceived(deploy_msg("c1"), 1, 1, 2)])
    assert task_events(transport2, "i1") == [TaskState.RUNNING]  # adopted: no STARTING
    (ack,) = acks(transport2, "c1")
    assert ack.accepted and ack.reason == "instance already present (RUNNING)"
    assert rt.deploys == ["i1"]


def test_shutdown_applies_calls_that_finish_within_the_wait(tmp_path):
    eng, transport, rt = pooled_engine(tmp_path, workers=1, shutdown_wait=10.0)
    release = rt.gate("deploy", "i1")
    thread = threading.Thread(target=eng.run)
    thread.start()
    eng.inbox.put(CommandReceived(deploy_msg("c1"), 1, 1, 1))
    rt.wait_entered("deploy", "i1")
    eng.request_stop()
    timer = threading.Timer(0.2, release.set)
    timer.start()
    thread.join(10)
    assert not thread.is_alive()
    assert transport.acked == [1] and acks(transport, "c1")[0].accepted
    saved = json.loads((tmp_path / "tasks.json").read_text())["tasks"]["i1"]
    assert saved["state"] == "RUNNING" and saved["handle"]["pid"]


# ------------------------------------------------------------------ logs requests


def logs_request(instance: str = "i1", *, rid: str = "r1", age: float = 0.0) -> LogsRequested:
    now = time.time()
    message = LogsRequestMessage(
        id=rid, node_id=NODE, ts=now, payload=LogsRequest(instance_id=instance, expires_at=now + 6)
    )
    return LogsRequested(message, time.monotonic() - age)


def logs_replies(transport: Any, deadline: float = 5.0) -> list[Any]:
    """Wait for the logs answer the log server publishes (from its own thread)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        chunks = [m.payload for m in transport.decoded("logs")]
        if chunks and chunks[-1].last:
            return chunks
        time.sleep(0.01)
    raise AssertionError(f"no logs answer: {transport.published}")


def test_logs_request_is_read_off_the_loop_and_is_not_a_command(engine):
    eng, transport = engine
    go_online(eng, transport)
    eng.process([CommandReceived(deploy_msg(), 1, 1, 1)])
    readers: list[str] = []

    def read_logs(instance_id, handle, *, tail=100, cursor=None, max_bytes=262144):
        readers.append(threading.current_thread().name)
        assert instance_id == "i1" and handle is not None and tail == 100
        return LogRead([LogPiece(b"hello\n", "n6")], "n6")

    eng.rt.read_logs = read_logs
    events_before = len(transport.decoded("events"))
    outbox_before = len(eng.outbox)
    acked_before = list(transport.acked)
    eng.process([logs_request()])
    (chunk,) = logs_replies(transport)
    assert (chunk.request_id, chunk.text, chunk.cursor, chunk.state) == (
        "r1",
        "hello\n",
        "n6",
        TaskState.RUNNING,
    )
    assert readers and readers[0].startswith("logs-")  # not the loop thread
    assert eng.seen.get("r1") is None  # never in the command idempotency list
    assert len(transport.decoded("events")) == events_before  # no ack, nothing in the outbox
    assert len(eng.outbox) == outbox_before and transport.acked == acked_before
    topic_name, _, qos, retain = transport.published[-1]
    assert topic_name == f"edge/v1/nodes/{NODE}/logs" and qos == 0 and not retain


def test_logs_request_for_an_unknown_instance_expired_or_invalid(engine):
    eng, transport = engine
    go_online(eng, transport)
    eng.process([logs_request("nope", rid="r2")])
    (chunk,) = logs_replies(transport)
    assert chunk.error_code == "unknown_instance" and "nope" in chunk.error
    before = len(transport.published)
    eng.process([logs_request("nope", rid="r3", age=30.0)])  # older than its validity
    assert len(transport.published) == before and eng.log_server.expired == 1
    eng.process([LogsRejected("invalid", "payload.tail: too big", "r4", "i1")])
    chunk = transport.decoded("logs")[-1].payload
    assert (chunk.request_id, chunk.error_code) == ("r4", "invalid")
    assert eng.messages_rejected == 1 and not transport.decoded("events")


# ------------------------------------------------------------------ session takeover


def presences(transport: Any) -> list[tuple[bool, str]]:
    return [(m.payload.online, m.payload.reason) for m in transport.decoded("presence")]


def test_a_takeover_reported_by_the_broker_is_counted_and_told_to_the_cluster(engine):
    eng, transport = engine
    go_online(eng, transport)
    transport.connected = False
    eng._handle(Disconnected("Session taken over", taken_over=True))
    assert eng.session_takeovers == 1
    go_online(eng, transport)
    transport.connected = False
    eng._handle(Disconnected("Unspecified error"))  # one ordinary drop: not a takeover
    go_online(eng, transport)
    assert eng.session_takeovers == 1
    assert presences(transport) == [(True, ""), (True, SESSION_TAKEN_OVER), (True, "")]


def test_connections_closed_again_and_again_within_seconds_are_a_takeover(engine):
    """Mosquitto 2.0.11 closes the older connection without a reason code: the pattern
    of both clients reconnecting (each connection lasting about a second) gives it away."""
    eng, transport = engine
    for _ in range(TAKEOVER_STREAK - 1):
        go_online(eng, transport)
        eng._handle(Disconnected("Unspecified error"))
    assert eng.session_takeovers == 0
    go_online(eng, transport)
    eng._handle(Disconnected("Unspecified error"))
    assert eng.session_takeovers == 1
    go_online(eng, transport)
    assert presences(transport)[-1] == (True, SESSION_TAKEN_OVER)
    # a connection that lasted ends the streak: its drop is an ordinary one
    eng._connected_at = time.monotonic() - SHORT_SESSION_S - 1
    eng._handle(Disconnected("Unspecified error"))
    go_online(eng, transport)
    eng._handle(Disconnected("Unspecified error"))
    assert eng.session_takeovers == 1


def test_the_transport_turns_a_deeply_nested_command_into_a_rejection(tmp_path):
    """Issue 15: the engine's paho thread must not die on a 2,000-deep message, nor on
    what reads the rejected message's envelope fields."""
    from types import SimpleNamespace

    from node_engine.mqtt import MqttTransport
    from schemas.mqtt import Channel, topic
    from schemas.node import MqttConnectInfo

    sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
    info = MqttConnectInfo(
        host="127.0.0.1", port=1, username="node-node1", password="pw", client_id="node-node1"
    )
    transport = MqttTransport(info, NODE, sink, will_payload=b"{}")
    deep = b'{"v":1,"kind":"deploy","id":"c1","payload":' + b"[" * 2000 + b"]" * 2000 + b"}"
    msg = SimpleNamespace(payload=deep, topic=topic(NODE, Channel.COMMANDS), mid=7, qos=1)
    transport._on_message(None, None, msg)
    item = sink.get_nowait()
    assert isinstance(item, CommandRejected)
    assert (item.reason, item.command_id, item.mid) == ("bad_json", "unknown", 7)
