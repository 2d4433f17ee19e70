"""Task logs end to end, as real processes (issue 11).

One root, one cluster ``c1`` (a real ``cluster-orchestrator`` with its own Mosquitto and
dynamic security) and two node engines: ``c1-n0`` runs native tasks only, ``c1-n1`` also
docker (when a Docker engine answers). Logs travel root -> cluster (REST) -> node (MQTT
request/response through the broker): no node listens on a port.

Tasks that must print something "later" wait for a trigger (a file, or for a container
`docker exec touch`), so every wait is on a condition with a deadline. The tests that
break the system run last, in file order: the cluster restart (role upgrade), then a
node going offline.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster_orchestrator.broker import DynsecAdmin, node_acls
from tests.fixtures.broker import MqttProbe
from tests.fixtures.images import TEST_IMAGE, build_busybox_image
from tests.harness.system import OPERATOR_TOKEN, LocalSystem, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ROOT_SETTINGS = {"reconcile_interval": 0.2, "report_interval": 1.0}
DEADLINE = 60.0


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
            build_busybox_image(client)
        finally:
            client.close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Root + cluster c1 with a native node and (if Docker answers) a docker node."""
    system = LocalSystem(tmp_path_factory.mktemp("logs"), root_settings=ROOT_SETTINGS)
    system.with_docker = docker_available()  # type: ignore[attr-defined]
    try:
        system.start_root()
        system.add_cluster("c1", nodes=["c1-n0"], wait=False)
        runtimes = ("native", "docker") if system.with_docker else ("native",)  # type: ignore[attr-defined]
        system.add_node("c1", "c1-n1", runtimes=runtimes, wait=False)
        system.wait_nodes_ready("c1", ["c1-n0", "c1-n1"], DEADLINE)
        system.wait_clusters_ready(timeout=DEADLINE)
        yield system
    finally:
        system.close()
    system.assert_clean()


@pytest.fixture
def trigger(task_tmp: Path) -> Path:
    """A file the task waits for: where its run-as user (edge-task) can see it."""
    return task_tmp / "go"


# ------------------------------------------------------------------ helpers


def submit(system: LocalSystem, name: str, *, node: str = "c1-n0", **spec: Any) -> str:
    """POST a job pinned to a node; its id."""
    body = {
        "name": name,
        "runtime": "native",
        "resources": {"memory_mib": 8},
        "constraints": {"node": node},
        **spec,
    }
    with system.root_client() as http:
        response = http.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def instance_in(system: LocalSystem, job: str, *states: str) -> str:
    """Wait until the job has an instance in one of `states`; its id."""
    view = system.wait_job(
        job,
        lambda v: any(i["state"] in states for i in v["instances"]),
        DEADLINE,
        f"an instance in {states}",
    )
    return str(next(i["id"] for i in view["instances"] if i["state"] in states))


def get_logs(system: LocalSystem, job: str, instance_id: str, **params: Any) -> httpx.Response:
    with system.root_client(timeout=30.0) as http:
        return http.get(f"/api/v1/jobs/{job}/instances/{instance_id}/logs", params=params)


def logs_text(system: LocalSystem, job: str, instance_id: str, tail: int = 100) -> str:
    response = get_logs(system, job, instance_id, tail=tail)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


class Stream:
    """A `follow=1` request read on a thread; its lines arrive on a queue."""

    def __init__(self, system: LocalSystem, job: str, instance_id: str, tail: int = 10) -> None:
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.seen: list[str] = []
        self.status: int | None = None
        self._client = system.root_client(timeout=60.0)
        self._thread = threading.Thread(
            target=self._read, args=(f"/api/v1/jobs/{job}/instances/{instance_id}/logs", tail)
        )
        self._thread.start()

    def _read(self, path: str, tail: int) -> None:
        try:
            timeout = httpx.Timeout(10.0, read=None)
            params = {"tail": tail, "follow": 1}
            with self._client.stream("GET", path, params=params, timeout=timeout) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.put(line)
        except httpx.HTTPError:
            pass
        finally:
            self.lines.put(None)

    def wait_line(self, predicate: Any, what: str, timeout: float = DEADLINE) -> str:
        """Wait for a line matching `predicate`; fail if the stream ends or time is up."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} in the log stream after {timeout}s: {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the log stream ended without {what}: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def wait_end(self, timeout: float = DEADLINE) -> None:
        """Wait until the server ends the stream."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            self.seen.append(line)
        self._thread.join(5)

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)


def edgectl(
    system: LocalSystem, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("edgectl")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "edgectl.main"]
    done = subprocess.run(
        [*argv, *args, "--root-url", system.root.url, "--token", OPERATOR_TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"edgectl {args} -> {done.returncode}\n{done.stderr}"
    return done


# ------------------------------------------------------------------ native


def test_native_tail_and_the_stderr_of_a_failed_task(system: LocalSystem) -> None:
    submit(system, "printer", command=["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; done; "
                                        "exec sleep 3600"])  # fmt: skip
    printer = instance_in(system, "printer", "RUNNING")
    text = wait_for(
        lambda: (
            (t := logs_text(system, "printer", printer, tail=3)) == "line-3\nline-4\nline-5\n" and t
        ),
        DEADLINE,
        "the last 3 lines",
    )
    assert text == "line-3\nline-4\nline-5\n"
    assert logs_text(system, "printer", printer, tail=0) == ""
    assert logs_text(system, "printer", printer).startswith("line-1\n")

    submit(system, "failer", command=["sh", "-c", "echo before; echo boom-on-stderr >&2; exit 3"])
    failed = instance_in(system, "failer", "FAILED")
    assert logs_text(system, "failer", failed) == "before\nboom-on-stderr\n"
    # following a task that already ended: its output, then how it ended
    response = get_logs(system, "failer", failed, follow=1)
    assert response.status_code == 200
    assert response.text.splitlines() == [
        "before",
        "boom-on-stderr",
        f"--- {failed} ended: FAILED, exit code 3 ---",
    ]


def test_a_large_tail_arrives_whole(system: LocalSystem) -> None:
    """10,000 lines (~0.5 MB) come in many MQTT chunks and are put together in order."""
    script = (
        'i=0; while [ $i -lt 20000 ]; do printf "row-%05d %s\\n" $i '
        "0123456789abcdefghijklmnopqrstuvwxyz0123; i=$((i+1)); done; echo done; exec sleep 3600"
    )
    submit(system, "bulk", command=["sh", "-c", script])
    bulk = instance_in(system, "bulk", "RUNNING")
    wait_for(lambda: logs_text(system, "bulk", bulk, tail=1) == "done\n", DEADLINE, "all rows")
    lines = logs_text(system, "bulk", bulk, tail=10_000).splitlines()
    assert len(lines) == 10_000
    assert lines[0].startswith("row-10001 ") and lines[-2].startswith("row-19999 ")
    assert lines[-1] == "done"
    assert [int(line[4:9]) for line in lines[:-1]] == list(range(10_001, 20_000))


def test_native_follow_streams_lines_printed_later(system: LocalSystem, trigger: Path) -> None:
    second = trigger.with_name("go2")
    script = (
        f"echo started; while [ ! -e {trigger} ]; do sleep 0.05; done; echo after-trigger; "
        f"while [ ! -e {second} ]; do sleep 0.05; done; echo last-words >&2"
    )
    submit(system, "follower", command=["sh", "-c", script])
    instance = instance_in(system, "follower", "RUNNING")
    stream = Stream(system, "follower", instance)
    try:
        stream.wait_line(lambda line: line == "started", "the first line")
        assert stream.status == 200
        trigger.touch()  # printed only now, after the request started
        stream.wait_line(lambda line: line == "after-trigger", "the line printed later")
        second.touch()
        end = stream.wait_line(lambda line: line.startswith("---"), "the end line")
        assert end == f"--- {instance} ended: SUCCEEDED, exit code 0 ---"
        stream.wait_end()
        assert stream.seen == ["started", "after-trigger", "last-words", end]
    finally:
        stream.close()


def test_errors_name_what_is_wrong(system: LocalSystem) -> None:
    printer = instance_in(system, "printer", "RUNNING")
    failed = instance_in(system, "failer", "FAILED")
    assert get_logs(system, "no-such-job", printer).status_code == 404
    missing = get_logs(system, "printer", "no-such-instance")
    assert missing.status_code == 404 and "no-such-instance" in missing.json()["detail"]
    other = get_logs(system, "printer", failed)  # an instance of another job
    assert other.status_code == 404, other.text
    for params, field in (({"tail": "many"}, "tail"), ({"tail": 10_001}, "tail"),
                          ({"follow": "maybe"}, "follow")):  # fmt: skip
        bad = get_logs(system, "printer", printer, **params)
        assert bad.status_code == 422, bad.text
        assert [e["loc"] for e in bad.json()["detail"]] == [["query", field]]
    submit(system, "nowhere", node="no-such-node", command=["true"])
    pending = instance_in(system, "nowhere", "PENDING")
    refused = get_logs(system, "nowhere", pending)
    assert refused.status_code == 409 and "PENDING" in refused.json()["detail"]
    # the cluster API answers the same questions (the root's calls go there)
    with system.clusters["c1"].client() as http:
        assert (
            http.get(f"/api/v1/instances/{printer}/logs", params={"cursor": "bad/x"}).status_code
            == 422
        )
        answer = http.get(f"/api/v1/instances/{printer}/logs", params={"tail": 1})
        assert answer.status_code == 200
        body = answer.json()
        assert body["text"] == "line-5\n" and body["state"] == "RUNNING" and not body["eof"]
        wrong = http.get(f"/api/v1/instances/{printer}/logs", params={"cursor": "d1.1"})
        assert wrong.status_code == 422 and "cursor" in wrong.text
        assert http.get("/api/v1/instances/nope/logs").status_code == 404


# ------------------------------------------------------------------ docker


def container_of(instance_id: str) -> Any:
    import docker

    client = docker.from_env(timeout=30)
    try:
        found = client.containers.list(
            ignore_removed=True, filters={"label": f"edge.instance={instance_id}"}
        )
        return found[0] if found else None
    finally:
        client.close()


def test_docker_tail_follow_and_failed_output(system: LocalSystem) -> None:
    if not system.with_docker:  # type: ignore[attr-defined]
        pytest.skip("no Docker engine answers")
    script = (
        "echo d-started; while [ ! -e /tmp/go ]; do sleep 0.05; done; "
        "echo d-after-trigger; echo d-boom >&2; exit 3"
    )
    submit(system, "dockered", node="c1-n1", runtime="docker", image=TEST_IMAGE,
           command=["sh", "-c", script])  # fmt: skip
    instance = instance_in(system, "dockered", "RUNNING")
    wait_for(
        lambda: logs_text(system, "dockered", instance) == "d-started\n", DEADLINE, "first line"
    )
    stream = Stream(system, "dockered", instance)
    try:
        stream.wait_line(lambda line: line == "d-started", "the first line")
        container = wait_for(lambda: container_of(instance), DEADLINE, "the container")
        container.exec_run(["touch", "/tmp/go"])  # the task prints only now
        stream.wait_line(lambda line: line == "d-after-trigger", "the line printed later")
        end = stream.wait_line(lambda line: line.startswith("---"), "the end line")
        assert end == f"--- {instance} ended: FAILED, exit code 3 ---"
        # stdout and stderr reach docker through two pipes: the order of the two lines
        # printed together is docker's
        assert stream.seen[0] == "d-started" and stream.seen[-1] == end
        assert sorted(stream.seen[1:-1]) == ["d-after-trigger", "d-boom"]
    finally:
        stream.close()
    # the container is gone (the engine removed it); its output was kept
    wait_for(lambda: container_of(instance) is None, DEADLINE, "the container removed")
    system.wait_job(
        "dockered", lambda v: v["instances"][0]["state"] == "FAILED", DEADLINE, "FAILED"
    )
    kept = logs_text(system, "dockered", instance).splitlines()
    assert kept[0] == "d-started" and sorted(kept[1:]) == ["d-after-trigger", "d-boom"]


# ------------------------------------------------------------------ edgectl


def test_edgectl_logs(system: LocalSystem) -> None:
    assert edgectl(system, "logs", "printer", "--tail", "2").stdout == "line-4\nline-5\n"
    failed = edgectl(system, "logs", "failer", "-f")  # no active instance: the last one
    lines = failed.stdout.splitlines()
    assert lines[:2] == ["before", "boom-on-stderr"] and "FAILED, exit code 3" in lines[2]
    assert "no active instance" in failed.stderr

    submit(system, "multi", replicas=2, node="c1-n0",
           command=["sh", "-c", "echo hello; exec sleep 3600"])  # fmt: skip
    system.wait_running("multi", 2)
    wait_for(
        lambda: (
            edgectl(system, "logs", "multi").stdout.splitlines()
            == ["multi-0 | hello", "multi-1 | hello"]
        ),
        DEADLINE,
        "prefixed lines of both replicas",
    )
    view = system.job("multi")
    one = view["instances"][1]["id"]
    assert edgectl(system, "logs", "multi", "--instance", one).stdout == "hello\n"

    unknown = edgectl(system, "logs", "no-such-job", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[0] == "error: 404 no job 'no-such-job'"
    wrong = edgectl(system, "logs", "printer", "--instance", one, check=False)
    assert wrong.returncode == 1 and "has no instance" in wrong.stderr.splitlines()[0]


# ------------------------------------------------------------------ robustness


def test_malformed_logs_replies_are_counted_and_harmless(system: LocalSystem) -> None:
    cluster = system.clusters["c1"]
    password = (cluster.process.data_dir / "broker-admin-password").read_text().strip()
    with DynsecAdmin("127.0.0.1", cluster.broker_port, "admin", password) as admin:
        creds = admin.ensure_node_client("forger1", "forger-password-xxxxxxxx")

    def rejected() -> dict[str, float]:
        with cluster.client() as http:
            body: dict[str, float] = http.get("/healthz").json()["mqtt_rejected_by_reason"]
        return body

    before = rejected()
    probe = MqttProbe.connect(
        "127.0.0.1", cluster.broker_port, creds.username, creds.password, client_id=creds.client_id
    )
    try:
        assert probe.connected
        logs_topic = "edge/v1/nodes/forger1/logs"
        probe.publish(logs_topic, b"{not json", qos=1)
        probe.publish(
            logs_topic,
            b'{"v": 1, "kind": "logs_chunk", "id": "x1", "ts": 1.0, "node_id": "forger1",'
            b' "payload": {"request_id": "r1", "instance_id": "i1", "seq": -4}}',
            qos=1,
        )
    finally:
        probe.close()

    def counted() -> bool:
        now = rejected()
        return now.get("bad_json", 0) > before.get("bad_json", 0) and now.get(
            "invalid", 0
        ) > before.get("invalid", 0)

    wait_for(counted, DEADLINE, "the malformed replies counted as rejected")
    printer = instance_in(system, "printer", "RUNNING")
    assert logs_text(system, "printer", printer, tail=1) == "line-5\n"  # nothing broke
    with cluster.client() as http:
        assert http.get("/healthz").status_code == 200


def test_cluster_restart_upgrades_the_roles_of_joined_nodes(system: LocalSystem) -> None:
    """A node joined under a version without logs has a role without the logs topic; the
    cluster brings it up to date when it starts, so the node can answer."""
    cluster = system.clusters["c1"]
    nodes = system.wait_nodes_ready("c1", ["c1-n0"])
    password = (cluster.process.data_dir / "broker-admin-password").read_text().strip()
    node_id = nodes["c1-n0"]
    with DynsecAdmin("127.0.0.1", cluster.broker_port, "admin", password) as admin:
        old = [a for a in node_acls(node_id) if not a.topic.endswith("/logs")]
        admin.ensure_role(f"node-{node_id}", old)
    printer = instance_in(system, "printer", "RUNNING")
    silent = get_logs(system, "printer", printer)
    assert silent.status_code == 503 and "did not answer" in silent.json()["detail"]
    cluster.process.stop()
    cluster.process.start(DEADLINE)
    system.wait_nodes_ready("c1", ["c1-n0", "c1-n1"], DEADLINE)
    text = wait_for(
        lambda: (
            get_logs(system, "printer", printer).status_code == 200
            and logs_text(system, "printer", printer)
        ),
        DEADLINE,
        "logs after the restart",
    )
    assert text.startswith("line-1\n")


def test_an_offline_node_gets_a_clear_503(system: LocalSystem) -> None:
    printer = instance_in(system, "printer", "RUNNING")
    engine = system.clusters["c1"].engine_named("c1-n0")
    engine.terminate()  # a clean stop publishes the offline presence at once

    def offline() -> bool:
        with system.clusters["c1"].client() as http:
            nodes = http.get("/api/v1/nodes", params={"status": "false"}).json()["nodes"]
        return any(n["info"]["name"] == "c1-n0" and n["liveness"] == "OFFLINE" for n in nodes)

    wait_for(offline, DEADLINE, "c1-n0 OFFLINE")
    response = get_logs(system, "printer", printer)
    assert response.status_code == 503
    assert "OFFLINE" in response.json()["detail"] and "c1-n0" in response.json()["detail"]
    failed = edgectl(system, "logs", "printer", check=False)
    assert failed.returncode == 1
    first = failed.stderr.splitlines()[0]
    assert first.startswith("error: 503 ") and "OFFLINE" in first
    with contextlib.suppress(Exception):
        engine.kill_native_tasks()
