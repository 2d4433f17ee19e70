"""Runtime calls off the engine loop: a real engine process, real Mosquitto, native tasks.

A task that ignores SIGTERM takes `stop_timeout` to stop; meanwhile the engine must keep
publishing its status (the cluster marks a silent node NOT_READY after 3 intervals) and
handle other commands. Many deploys at once run in parallel. An engine stopped in the
middle of a stop finishes it after its restart. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from typing import Any

import psutil
import pytest

from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.mqtt import Channel, DeployCommand, DeployMessage, encode, topic
from tests.harness import FakeCluster
from tests.harness.procs import count_processes, unique_sleep_args
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STATUS_INTERVAL = 0.5  # the harness engines' --status-interval


@pytest.fixture
def cluster(mosquitto_broker):
    with FakeCluster(mosquitto_broker) as c:
        yield c


def stubborn_task() -> tuple[TaskSpec, str]:
    """A native task that ignores SIGTERM (so only SIGKILL ends it), and its marker."""
    marker = uuid.uuid4().hex
    script = f'trap "" TERM; while :; do sleep 0.1; done; : {marker}'
    return TaskSpec(runtime=Runtime.NATIVE, command=["sh", "-c", script]), marker


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
    return found


def status_times(svc: Any, node_id: str, since: float, until: float) -> list[float]:
    with svc._cond:
        received = list(svc.received)
    return [
        r.at
        for r in received
        if r.message.kind == "status" and r.message.node_id == node_id and since <= r.at <= until
    ]


def arrival(svc: Any, predicate: Any) -> float:
    with svc._cond:
        received = list(svc.received)
    return next(r.at for r in received if predicate(r.message))


def test_status_and_commands_keep_flowing_while_a_task_ignores_sigterm(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node", extra_args=["--stop-timeout", "4"])
    svc, node_id = cluster.service, engine.node_id
    spec, marker = stubborn_task()
    svc.deploy(node_id, "stubborn", spec)
    cluster.wait_state(engine, "stubborn", TaskState.RUNNING)
    wait_for(lambda: processes_with(marker), 5, "stubborn task process")

    started = time.monotonic()
    term_id = svc.terminate(node_id, "stubborn", reason="scale down")
    other_argv = unique_sleep_args()
    try:
        other_id = svc.deploy(
            node_id, "other", TaskSpec(runtime=Runtime.NATIVE, command=other_argv)
        )
        assert svc.wait_ack(node_id, other_id, timeout=3).payload.accepted
        cluster.wait_state(engine, "other", TaskState.RUNNING, timeout=3)
        other_running = time.monotonic()
        assert svc.event_with_state(node_id, "stubborn", TaskState.TERMINATED) is None, (
            "the DEPLOY had to wait for the stop"
        )
        assert other_running - started < 2.5

        done = cluster.wait_state(engine, "stubborn", TaskState.TERMINATED, timeout=20)
        assert done.payload.reason == "scale down"
        ack = svc.wait_ack(node_id, term_id, timeout=5)
        assert ack.payload.accepted and not ack.payload.duplicate
        acked = arrival(svc, lambda m: m.kind == "ack" and m.payload.command_id == term_id)
        assert acked - started >= 3.5, "the TERMINATE is acknowledged once the task is gone"
        stopped = acked  # the TERMINATED travels in the TERMINATE's ack
        times = status_times(svc, node_id, started - STATUS_INTERVAL, stopped)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 6 and max(gaps) < 3 * STATUS_INTERVAL, gaps
        assert not processes_with(marker)
        # the stopping task was not seen as exited: no FAILED, no restart
        states = [e.payload.state for e in svc.task_events(node_id, "stubborn")]
        assert states == [TaskState.RUNNING, TaskState.TERMINATED]  # each in its command's ack
    finally:
        for proc in processes_with(marker):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        engine.stop_quietly()


def test_sixteen_deploys_at_once(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    argvs = {f"i{n}": unique_sleep_args() for n in range(16)}
    messages = [
        DeployMessage(
            node_id=node_id,
            payload=DeployCommand(
                instance_id=iid, job_id="j", spec=TaskSpec(runtime=Runtime.NATIVE, command=argv)
            ),
        )
        for iid, argv in argvs.items()
    ]
    try:
        started = time.monotonic()
        infos = [
            svc._client.publish(topic(node_id, Channel.COMMANDS), encode(m), qos=1)
            for m in messages
        ]
        for info in infos:
            info.wait_for_publish(10)

        def all_running(s: Any) -> bool:
            return all(
                s.ack_for(node_id, m.id)
                and s.event_with_state(node_id, m.payload.instance_id, TaskState.RUNNING)
                for m in messages
            )

        svc.wait_for(all_running, 20, "16 tasks RUNNING")
        elapsed = time.monotonic() - started
        assert all(svc.ack_for(node_id, m.id).payload.accepted for m in messages)
        for argv in argvs.values():
            assert count_processes(argv) == 1
        seqs = [e.payload.seq for e in svc.task_events(node_id)]
        assert len(seqs) == 16 and len(set(seqs)) == 16  # one RUNNING each, in its ack
        print(f"16 concurrent deploys: all RUNNING after {elapsed * 1000:.0f} ms")
        assert elapsed < 10
    finally:
        engine.stop_quietly()


def test_engine_stopped_during_a_stop_finishes_it_after_restart(cluster, tmp_path):
    state = tmp_path / "node"
    engine = cluster.engine(state, extra_args=["--stop-timeout", "60"])
    svc, node_id = cluster.service, engine.node_id
    spec, marker = stubborn_task()
    try:
        svc.deploy(node_id, "stubborn", spec)
        cluster.wait_state(engine, "stubborn", TaskState.RUNNING)
        term_id = svc.terminate(node_id, "stubborn", reason="going away")

        def stopping() -> bool:
            with contextlib.suppress(OSError, ValueError, KeyError):
                tasks = json.loads((state / "tasks.json").read_text())["tasks"]
                return bool(tasks["stubborn"]["stopping"] == "terminate")
            return False

        wait_for(stopping, 10, "the stop intent persisted")
        asked = time.monotonic()
        assert engine.terminate(timeout=20) == 0
        assert time.monotonic() - asked < 12, "shutdown waits for the stop only briefly"
        assert "abandoning 1 runtime call" in engine.output()
        assert processes_with(marker), "the stop was abandoned (SIGTERM is ignored)"
        assert svc.ack_for(node_id, term_id) is None

        engine.extra_args = ["--stop-timeout", "1"]
        engine.start()
        cluster.wait_online(engine)
        done = cluster.wait_state(engine, "stubborn", TaskState.TERMINATED, timeout=20)
        assert done.payload.reason == "going away"
        wait_for(lambda: not processes_with(marker), 10, "stubborn task killed")
        # the TERMINATE the broker delivers again is answered now
        assert svc.wait_ack(node_id, term_id, timeout=10).payload.accepted
        assert svc.starts(node_id, "stubborn") == 1
    finally:
        for proc in processes_with(marker):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        engine.stop_quietly()
