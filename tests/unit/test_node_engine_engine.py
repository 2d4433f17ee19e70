"""Engine loop logic with a fake transport: idempotency, rejections, outbox, shedder hook."""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import pytest

from node_engine.engine import Engine
from node_engine.mqtt import CommandReceived, CommandRejected, Connected, Published
from node_engine.state import Outbox, SeenCommands, TaskStore
from node_engine.supervisor import ShedDecision, Supervisor
from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.mqtt import (
    DeployCommand,
    DeployMessage,
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
    eng._handle(CommandReceived(msg, 1, 1, 1))
    eng._handle(CommandReceived(msg, 2, 1, 1))
    eng._flush()
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
    eng._handle(CommandRejected("invalid", "payload.spec: bad", "abc", "deploy", 5, 1, 1))
    eng._handle(CommandRejected("bad_json", "Expecting value", "unknown", "unknown", 6, 1, 1))
    eng._flush()
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
    eng._handle(CommandReceived(deploy_msg(), 1, 1, 1))
    eng._flush()
    assert transport.published == []  # disconnected: nothing handed to paho
    assert len(eng.outbox) == 3  # STARTING, RUNNING, ack
    saved = json.loads((tmp_path / "outbox.json").read_text())
    assert len(saved["entries"]) == 3
    go_online(eng, transport)
    eng._flush()
    kinds = [m.kind for m in transport.decoded("events")]
    assert kinds == ["task_event", "task_event", "ack"]
    seqs = [m.payload.seq for m in transport.decoded("events") if m.kind == "task_event"]
    assert seqs == [1, 2]
    assert transport.decoded("presence")[0].payload.online is True
    eng._flush()  # in flight entries are not published twice
    assert len(transport.decoded("events")) == 3
    for mid in (2, 3, 4):
        eng._handle(Published(mid))
    assert len(eng.outbox) == 0


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
    events = [m.payload for m in transport.decoded("events") if m.kind == "task_event"]
    assert events[-1].state is TaskState.TERMINATED


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
    assert paused.state is TaskState.PAUSED and paused.data == {"temp": 90}


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
