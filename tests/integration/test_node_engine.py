"""The node engine as a real subprocess against a real Mosquitto (dynsec) and native tasks.

The cluster side is the harness in tests/harness: a join endpoint issuing per-node MQTT
credentials through dynsec and a service MQTT client. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from typing import Any

import psutil
import pytest

from schemas.common import Runtime
from schemas.job import RestartPolicy, TaskSpec, TaskState
from schemas.mqtt import DeployCommand, DeployMessage, LogsChunkMessage, TaskEventMessage
from schemas.resources import Resources
from tests.harness import FakeCluster
from tests.harness.procs import count_processes, find_processes, unique_sleep_args
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def cluster(mosquitto_broker):
    with FakeCluster(mosquitto_broker) as c:
        yield c


@pytest.fixture
def cleanup_procs():
    """Kill leftover task processes (tasks outlive the engine by design)."""
    argvs: list[list[str]] = []
    yield argvs
    for argv in argvs:
        for proc in find_processes(argv):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def native(argv: list[str], **kw: Any) -> TaskSpec:
    return TaskSpec(runtime=Runtime.NATIVE, command=argv, **kw)


def wait_status(
    cluster: Any, engine: Any, predicate: Any, timeout: float = 15.0, what: str = "status"
) -> Any:
    def check(s):
        st = s.last_status(engine.node_id)
        return st if st is not None and predicate(st.payload) else None

    return cluster.service.wait_for(check, timeout, what)


def task_in(status: Any, instance_id: str) -> Any:
    return next((t for t in status.tasks if t.instance_id == instance_id), None)


# ---------------------------------------------------------------- join


def test_join_rejoin_keeps_id_and_sigterm_leaves_tasks(cluster, tmp_path, cleanup_procs):
    state = tmp_path / "node"
    engine = cluster.engine(state, name="edge-1", extra_args=["--label", "zone=lab"])
    node_id = engine.node_id
    first = cluster.join.joins[0]
    assert first.node_id is None and first.info.name == "edge-1"
    assert first.info.labels == {"zone": "lab"} and first.info.runtimes == [Runtime.NATIVE]
    assert stat.S_IMODE(os.stat(state / "identity.json").st_mode) == 0o600
    # 0711 (not listable) when native tasks run as another user, to reach their workdirs
    switching = os.geteuid() == 0 and _user_exists("edge-task")
    assert stat.S_IMODE(os.stat(state).st_mode) == (0o711 if switching else 0o700)
    presence = cluster.service.wait_for(lambda s: s.presence(node_id), 5, "presence")
    assert presence.payload.online

    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    cluster.service.deploy(node_id, "keep", native(argv))
    cluster.wait_state(engine, "keep", TaskState.RUNNING)
    (proc,) = wait_for(lambda: find_processes(argv), 5, "task process")

    assert engine.terminate() == 0
    cluster.service.wait_for(
        lambda s: not s.presence(node_id).payload.online, 10, "offline presence"
    )
    assert proc.is_running(), "SIGTERM must leave tasks running"
    assert "tasks keep running" in engine.output()

    engine.start()
    assert cluster.wait_online(engine) == node_id
    second = cluster.join.joins[1]
    assert second.node_id == node_id and second.node_secret is not None
    status = wait_status(cluster, engine, lambda st: task_in(st, "keep") is not None)
    assert task_in(status.payload, "keep").pid is not None
    assert count_processes(argv) == 1 and proc.is_running()
    cluster.service.wait_for(lambda s: s.presence(node_id).payload.online, 5, "online again")


def test_bad_join_token_exits_nonzero_with_clear_message(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node", join_token="wrong-token", wait_online=False)
    assert engine.wait(20) == 3
    out = engine.output()
    assert "refused the join (HTTP 401)" in out and "check the join token" in out
    assert "wrong-token" not in out
    assert engine.identity() is None


def test_join_retries_while_cluster_answers_5xx(cluster, tmp_path):
    cluster.join.fail_status = 503
    engine = cluster.engine(
        tmp_path / "node", wait_online=False, extra_args=["--join-max-delay", "1"]
    )
    wait_for(lambda: "retrying in" in engine.output(), 15, "a join retry")
    assert engine.running() and engine.identity() is None
    cluster.join.fail_status = None
    cluster.wait_online(engine, timeout=20)


def test_stored_identity_used_when_cluster_unreachable(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node")
    node_id = engine.node_id
    assert engine.terminate() == 0
    cluster.join.fail_status = 503  # the cluster API is down, the broker is not
    engine.start()
    assert cluster.wait_online(engine) == node_id
    assert "starting with the stored identity" in engine.output()


# ---------------------------------------------------------------- commands


def test_native_deploy_and_terminate(cluster, tmp_path, cleanup_procs):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    cid = svc.deploy(node_id, "i1", native(argv, priority=42))
    ack = svc.wait_ack(node_id, cid)
    assert ack.payload.accepted and ack.payload.instance_id == "i1"
    running = cluster.wait_state(engine, "i1", TaskState.RUNNING)
    assert running.id == ack.id  # one message per fact: the ack carries the RUNNING
    assert running.payload.previous is None and not svc.messages(node_id, TaskEventMessage)
    wait_for(lambda: count_processes(argv) == 1, 5, "one task process")
    status = wait_status(cluster, engine, lambda st: task_in(st, "i1") is not None)
    task = task_in(status.payload, "i1")
    assert task.state is TaskState.RUNNING and task.priority == 42 and task.pid
    assert status.payload.memory.total_mib > 0 and status.payload.cpu_per_core
    seqs = [e.payload.seq for e in svc.task_events(node_id)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    cid = svc.terminate(node_id, "i1", reason="scale down")
    assert svc.wait_ack(node_id, cid).payload.accepted
    event = cluster.wait_state(engine, "i1", TaskState.TERMINATED)
    assert event.payload.reason == "scale down"
    wait_for(lambda: count_processes(argv) == 0, 10, "task process gone")
    wait_status(cluster, engine, lambda st: task_in(st, "i1") is None, what="task gone")


def test_native_exit_codes_and_restart_policy(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    svc.deploy(node_id, "ok", native(["sh", "-c", "exit 0"]))
    svc.deploy(
        node_id,
        "flaky",
        native(["sh", "-c", "exit 7"], restart_policy=RestartPolicy.ON_FAILURE, max_restarts=2),
    )
    assert cluster.wait_state(engine, "ok", TaskState.SUCCEEDED).payload.exit_code == 0

    def final_failure(s):
        events = s.task_events(node_id, "flaky")
        return [e for e in events if e.payload.data.get("max_restarts_reached")]

    (last,) = svc.wait_for(final_failure, 20, "flaky gives up after 2 restarts")
    assert last.payload.exit_code == 7 and last.payload.reason == "exit code 7"
    assert svc.starts(node_id, "flaky") == 3  # first start (in the deploy's ack) + 2 restarts


def test_executable_not_found_is_refused_and_failed(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    cid = svc.deploy(node_id, "nope", native(["/nonexistent/program"]))
    ack = svc.wait_ack(node_id, cid)
    assert not ack.payload.accepted and "executable not found" in ack.payload.reason
    failed = cluster.wait_state(engine, "nope", TaskState.FAILED)
    assert "executable not found" in failed.payload.reason
    cid = svc.deploy(node_id, "dock", TaskSpec(runtime=Runtime.DOCKER, image="busybox"))
    ack = svc.wait_ack(node_id, cid)
    assert not ack.payload.accepted and "runtime docker unavailable" in ack.payload.reason


def test_native_memory_limit_enforced(cluster, tmp_path):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    hog = [sys.executable, "-c", "b = bytearray(400 * 1024 * 1024); import time; time.sleep(60)"]
    cid = svc.deploy(node_id, "hog", native(hog, resources=Resources(memory_mib=64)))
    assert svc.wait_ack(node_id, cid).payload.accepted
    failed = cluster.wait_state(engine, "hog", TaskState.FAILED, timeout=30)
    assert "memory limit exceeded" in failed.payload.reason
    status = wait_status(cluster, engine, lambda st: task_in(st, "hog") is not None)
    assert task_in(status.payload, "hog").state is TaskState.FAILED


def test_repeated_command_not_run_twice(cluster, tmp_path, cleanup_procs):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    message = DeployMessage(
        node_id=node_id,
        payload=DeployCommand(instance_id="once", job_id="j", spec=native(argv)),
    )
    svc.resend(node_id, message)
    svc.resend(node_id, message)
    acks = svc.wait_for(
        lambda s: len(s.acks(node_id, message.id)) >= 2 and s.acks(node_id, message.id),
        15,
        "two acks",
    )
    assert [(a.payload.accepted, a.payload.duplicate) for a in acks] == [
        (True, False),
        (True, True),
    ]
    # a new command id for the same, running instance is not run twice either
    cid = svc.deploy(node_id, "once", native(argv))
    ack = svc.wait_ack(node_id, cid)
    assert ack.payload.accepted and "already present" in ack.payload.reason
    wait_for(lambda: count_processes(argv) == 1, 5, "task process")
    status = wait_status(cluster, engine, lambda st: task_in(st, "once") is not None)
    assert [t.instance_id for t in status.payload.tasks] == ["once"]
    assert count_processes(argv) == 1
    assert svc.starts(node_id, "once") == 1


def test_malformed_commands_refused_counted_engine_keeps_running(cluster, tmp_path, cleanup_procs):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    svc.publish(node_id, b"this is not json")
    bad_spec = {
        "v": 1,
        "kind": "deploy",
        "id": "bad-spec-1",
        "ts": time.time(),
        "node_id": node_id,
        "payload": {"instance_id": "x", "job_id": "j", "spec": {"runtime": "native"}},
    }
    svc.publish(node_id, json.dumps(bad_spec).encode())
    wrong_kind = {
        "v": 1,
        "kind": "status",
        "id": "bad-kind-1",
        "ts": 1,
        "node_id": node_id,
        "payload": {},
    }
    svc.publish(node_id, json.dumps(wrong_kind).encode())
    valid_payload = {
        "instance_id": "x",
        "job_id": "j",
        "spec": {"runtime": "native", "command": ["true"]},
    }
    other_node = dict(bad_spec, id="bad-node-1", node_id="someone-else", payload=valid_payload)
    svc.publish(node_id, json.dumps(other_node).encode())

    unknown = svc.wait_ack(node_id, "unknown")
    assert not unknown.payload.accepted and unknown.payload.reason.startswith("bad_json")
    spec_ack = svc.wait_ack(node_id, "bad-spec-1")
    assert not spec_ack.payload.accepted and spec_ack.payload.reason.startswith("invalid")
    assert "command" in spec_ack.payload.reason
    assert not svc.wait_ack(node_id, "bad-kind-1").payload.accepted
    assert "node_mismatch" in svc.wait_ack(node_id, "bad-node-1").payload.reason
    wait_status(cluster, engine, lambda st: st.messages_rejected == 4, what="4 rejections")
    assert engine.running()
    out = engine.output()
    assert "bad_json" in out and "invalid" in out
    # and it still works
    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    svc.deploy(node_id, "after", native(argv))
    cluster.wait_state(engine, "after", TaskState.RUNNING)


def test_logs_requests_are_answered_on_the_logs_topic(cluster, tmp_path, cleanup_procs):
    """A real engine answers logs requests (valid, invalid, at QoS 1 by mistake) on its
    logs topic; none of them is treated as a command (no ack)."""
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    script = 'for i in 1 2 3; do echo "out $i"; done; echo "err é" >&2; exec "$@"'
    svc.deploy(node_id, "talker", native(["sh", "-c", script, "sh", *argv]))
    cluster.wait_state(engine, "talker", TaskState.RUNNING)

    def request(rid: str, qos: int = 0, **payload: Any) -> None:
        now = time.time()
        body = {"instance_id": "talker", "expires_at": now + 6, **payload}
        message = {"v": 1, "kind": "logs_request", "id": rid, "ts": now, "node_id": node_id,
                   "payload": body}  # fmt: skip
        svc.publish(node_id, json.dumps(message).encode(), qos=qos)

    def answer(rid: str) -> Any:
        def done(s: Any) -> Any:
            chunks = [m.payload for m in s.messages(node_id, LogsChunkMessage)
                      if m.payload.request_id == rid]  # fmt: skip
            return chunks if chunks and chunks[-1].last else None

        return svc.wait_for(done, 15, f"logs answer {rid}")

    deadline = time.monotonic() + 15
    while True:  # the task may not have written everything yet: ask until it has
        rid = f"poll{int(time.monotonic() * 1000)}"
        request(rid, tail=2)
        if "".join(c.text for c in answer(rid)) == "out 3\nerr é\n":
            break
        assert time.monotonic() < deadline, "the task's output never showed"
    request("q1", qos=1, tail=1)  # QoS 1 by mistake: acknowledged and answered all the same
    (chunk,) = answer("q1")
    assert chunk.text == "err é\n" and chunk.state is TaskState.RUNNING and chunk.cursor
    request("bad", tail=-1)
    (bad,) = answer("bad")
    assert bad.error_code == "invalid" and "tail" in bad.error
    request("gone", instance_id="no-such-task")
    (gone,) = answer("gone")
    assert gone.error_code == "unknown_instance"
    assert all(svc.ack_for(node_id, r) is None for r in ("q1", "bad", "gone", rid))
    wait_status(cluster, engine, lambda st: st.messages_rejected == 1, what="1 rejection")
    assert engine.running()


# ---------------------------------------------------------------- autonomy


def _gate_task(where: Any, name: str, code: int) -> Any:
    """A task that exits with `code` once the file `name` appears in `where` (a
    `task_tmp`: the task runs as the unprivileged run-as user)."""
    gate = where / name
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; exit {code}"
    return gate, ["sh", "-c", script]


def test_broker_outage_tasks_keep_running_events_delivered(
    cluster, mosquitto_broker, tmp_path, task_tmp, cleanup_procs
):
    engine = cluster.engine(tmp_path / "node")
    svc, node_id = cluster.service, engine.node_id
    argv = unique_sleep_args()
    cleanup_procs.append(argv)
    gate, gated = _gate_task(task_tmp, "gate", 3)
    svc.deploy(node_id, "steady", native(argv))
    svc.deploy(node_id, "gated", native(gated))
    cluster.wait_state(engine, "steady", TaskState.RUNNING)
    cluster.wait_state(engine, "gated", TaskState.RUNNING)
    (proc,) = wait_for(lambda: find_processes(argv), 5, "steady process")

    mosquitto_broker.admin.close()
    mosquitto_broker.process.stop()
    wait_for(lambda: "lost the broker connection" in engine.output(), 10, "engine sees outage")
    gate.touch()  # the gated task exits while the broker is down
    outbox = tmp_path / "node" / "outbox.json"

    def buffered():
        try:
            text = outbox.read_text()
        except FileNotFoundError:
            return False
        return '\\"instance_id\\":\\"gated\\",\\"state\\":\\"FAILED\\"' in text

    wait_for(buffered, 10, "the exit event buffered in the outbox")
    # stay down until the engine has failed to reconnect at least once
    wait_for(lambda: "cannot connect to the broker" in engine.output(), 20, "a failed reconnect")
    assert svc.event_with_state(node_id, "gated", TaskState.FAILED) is None
    assert proc.is_running() and engine.running()

    mosquitto_broker.process.start()
    mosquitto_broker.admin = mosquitto_broker.process.admin()
    failed = cluster.wait_state(engine, "gated", TaskState.FAILED, timeout=45)
    assert failed.payload.exit_code == 3
    status = wait_status(cluster, engine, lambda st: task_in(st, "steady") is not None, timeout=30)
    assert task_in(status.payload, "steady").state is TaskState.RUNNING
    assert task_in(status.payload, "steady").pid == proc.pid or proc.is_running()
    assert count_processes(argv) == 1
    assert engine.running()


def test_sigkill_restart_adopts_without_duplicates(cluster, tmp_path, task_tmp, cleanup_procs):
    state = tmp_path / "node"
    engine = cluster.engine(state)
    svc, node_id = cluster.service, engine.node_id
    sleepers = {f"s{i}": unique_sleep_args() for i in range(3)}
    cleanup_procs.extend(sleepers.values())
    for instance_id, argv in sleepers.items():
        svc.deploy(node_id, instance_id, native(argv))
    gate, gated = _gate_task(task_tmp, "gate2", 5)
    svc.deploy(
        node_id,
        "crashy",
        native(gated, restart_policy=RestartPolicy.ON_FAILURE, max_restarts=3),
    )
    for instance_id in [*sleepers, "crashy"]:
        cluster.wait_state(engine, instance_id, TaskState.RUNNING)
    pids = {i: wait_for(lambda a=a: find_processes(a), 5)[0].pid for i, a in sleepers.items()}

    engine.kill()  # SIGKILL: no shutdown code runs
    for argv in sleepers.values():
        assert count_processes(argv) == 1
    gate.touch()  # crashy exits while there is no engine
    wait_for(lambda: count_processes(gated) == 0, 10, "crashy exited")
    # an operator (or a lost TERMINATE) leaves s2 undesired in the local state
    tasks_file = state / "tasks.json"
    data = json.loads(tasks_file.read_text())
    del data["tasks"]["s2"]
    tasks_file.write_text(json.dumps(data))
    gate.unlink()  # so that the restarted crashy keeps running

    since = time.monotonic()
    engine.start()
    cluster.wait_online(engine)
    failed = svc.wait_for(
        lambda s: [
            e
            for e in s.task_events(node_id, "crashy")
            if e.payload.state is TaskState.FAILED and e.payload.exit_code == 5
        ],
        20,
        "crashy's exit (while the engine was down) reported",
    )
    assert failed[0].payload.data.get("restart_in_s") is not None
    status = wait_status(
        cluster,
        engine,
        lambda st: (
            task_in(st, "crashy") is not None
            and task_in(st, "crashy").restarts == 1
            and task_in(st, "crashy").state is TaskState.RUNNING
        ),
        timeout=20,
        what="crashy restarted once",
    )
    for instance_id in ("s0", "s1"):
        task = task_in(status.payload, instance_id)
        assert task.state is TaskState.RUNNING
        assert count_processes(sleepers[instance_id]) == 1
        assert find_processes(sleepers[instance_id])[0].pid == pids[instance_id]
    wait_for(lambda: count_processes(sleepers["s2"]) == 0, 15, "undesired s2 stopped")
    assert task_in(status.payload, "s2") is None
    assert "not desired" in engine.output()
    # nothing was started twice: s0/s1 were adopted, not redeployed
    for instance_id in ("s0", "s1"):
        assert svc.starts(node_id, instance_id) == 1
    assert since  # (kept for readability of the timeline above)
