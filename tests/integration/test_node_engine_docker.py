"""The node engine (real subprocess) with the docker runtime, a real Docker engine and the
local busybox test image; cluster side from tests/harness on a real Mosquitto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.resources import Resources
from tests.harness import FakeCluster

pytestmark = [pytest.mark.docker, pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def cluster(mosquitto_broker):
    with FakeCluster(mosquitto_broker) as c:
        yield c


@pytest.fixture
def docker_node(cluster, tmp_path, docker_engine_id):
    """A started engine with native+docker whose containers carry `docker_engine_id`."""
    state = tmp_path / "node"
    state.mkdir(mode=0o700)
    (state / "engine-id").write_text(docker_engine_id)  # so the fixture cleans up after us
    # busybox `sleep` as PID 1 ignores SIGTERM: keep the grace period short
    return cluster.engine(state, runtimes=("native", "docker"), extra_args=["--stop-timeout", "2"])


def containers(
    client: Any, engine_id: str, instance_id: str | None = None, running_only: bool = True
) -> list[Any]:
    found: list[Any] = client.containers.list(
        all=not running_only,
        ignore_removed=True,
        filters={"label": f"edge.engine={engine_id}"},
    )
    if instance_id is not None:
        found = [c for c in found if instance_id in c.labels.values()]
    return found


def docker_spec(image: str, argv: list[str], **kw: Any) -> TaskSpec:
    return TaskSpec(runtime=Runtime.DOCKER, image=image, command=argv, **kw)


def task_in(status: Any, instance_id: str) -> Any:
    return next((t for t in status.tasks if t.instance_id == instance_id), None)


def wait_status(
    cluster: Any, engine: Any, predicate: Any, timeout: float = 20.0, what: str = "status"
) -> Any:
    def check(s):
        st = s.last_status(engine.node_id)
        return st if st is not None and predicate(st.payload) else None

    return cluster.service.wait_for(check, timeout, what)


def test_docker_reported_deploy_and_terminate(
    cluster, docker_node, docker_client, busybox_image, docker_engine_id
):
    engine, svc = docker_node, cluster.service
    node_id = engine.node_id
    assert Runtime.DOCKER in cluster.join.joins[0].info.runtimes
    wait_status(cluster, engine, lambda st: Runtime.DOCKER in st.runtimes, what="docker in status")

    cid = svc.deploy(node_id, "web", docker_spec(busybox_image, ["sleep", "600"]))
    ack = svc.wait_ack(node_id, cid, timeout=60)
    assert ack.payload.accepted, ack.payload.reason
    cluster.wait_state(engine, "web", TaskState.RUNNING, timeout=60)
    (container,) = containers(docker_client, docker_engine_id, "web")
    # a status built before the RUNNING event may still be on its way: wait for one
    # that shows the task running
    status = wait_status(
        cluster,
        engine,
        lambda st: getattr(task_in(st, "web"), "state", None) is TaskState.RUNNING,
        what="a status listing web RUNNING",
    )
    task = task_in(status.payload, "web")
    assert task.runtime is Runtime.DOCKER and task.state is TaskState.RUNNING
    assert task.container_id and container.id.startswith(task.container_id[:12])

    cid = svc.terminate(node_id, "web")
    assert svc.wait_ack(node_id, cid, timeout=60).payload.accepted
    cluster.wait_state(engine, "web", TaskState.TERMINATED, timeout=60)
    assert containers(docker_client, docker_engine_id, "web") == []


def test_docker_runtime_keeps_openssl_out(cluster, docker_node, busybox_image):
    # Footprint (docs/node-engine.md): the docker runtime on a unix socket needs no TLS, so
    # OpenSSL's libcrypto stays out of an engine that ran a container (the SDK loaded it).
    engine, svc = docker_node, cluster.service
    svc.deploy(engine.node_id, "lean", docker_spec(busybox_image, ["sleep", "600"]))
    cluster.wait_state(engine, "lean", TaskState.RUNNING, timeout=60)
    maps = Path(f"/proc/{engine.pid}/maps").read_text()
    assert "libcrypto" not in maps and "libssl" not in maps


def test_docker_memory_limit_enforced(cluster, docker_node, busybox_image):
    engine, svc = docker_node, cluster.service
    # `tail` keeps the last lines in memory; one 400 MiB line is far beyond 32 MiB
    hog = ["sh", "-c", "head -c 400m /dev/zero | tail"]
    spec = docker_spec(busybox_image, hog, resources=Resources(memory_mib=32))
    cid = svc.deploy(engine.node_id, "hog", spec)
    assert svc.wait_ack(engine.node_id, cid, timeout=60).payload.accepted
    failed = cluster.wait_state(engine, "hog", TaskState.FAILED, timeout=60)
    assert "memory" in failed.payload.reason.lower(), failed.payload.reason


def test_docker_sigkill_restart_adopts_containers(
    cluster, docker_node, docker_client, busybox_image, docker_engine_id
):
    engine, svc = docker_node, cluster.service
    node_id = engine.node_id
    for name in ("a", "b"):
        svc.deploy(node_id, name, docker_spec(busybox_image, ["sleep", "600"]))
    for name in ("a", "b"):
        cluster.wait_state(engine, name, TaskState.RUNNING, timeout=60)
    ids = {n: containers(docker_client, docker_engine_id, n)[0].id for n in ("a", "b")}

    engine.kill()
    engine.start()
    cluster.wait_online(engine, timeout=30)
    status = wait_status(
        cluster,
        engine,
        lambda st: all(
            task_in(st, n) is not None and task_in(st, n).state is TaskState.RUNNING
            for n in ("a", "b")
        ),
        what="both containers adopted",
    )
    for name in ("a", "b"):
        (container,) = containers(docker_client, docker_engine_id, name)
        assert container.id == ids[name]
        assert task_in(status.payload, name).container_id
        assert svc.starts(node_id, name) == 1
    assert len(containers(docker_client, docker_engine_id)) == 2
