"""DockerRuntime against the real Docker engine and the locally built busybox image."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import docker.errors
import pytest

from node_engine.runtimes.base import RuntimeFailure, TaskRuntime
from node_engine.runtimes.docker import DockerRuntime, container_name
from node_engine.runtimes.docker_api import DockerClient, DockerError
from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.resources import Resources
from tests.fixtures.images import (  # noqa: F401  (fixtures, used by name)
    busybox_image,
    docker_client,
    docker_engine_id,
    remove_engine_containers,
)
from tests.harness.wait import wait_for, wait_terminal

pytestmark = pytest.mark.docker
T = TypeVar("T")


def spec(image: str, *argv: str, memory_mib: int = 0, cpu: float = 0.0, **kw: Any) -> TaskSpec:
    return TaskSpec(
        runtime=Runtime.DOCKER,
        image=image,
        command=list(argv),
        resources=Resources(memory_mib=memory_mib, cpu=cpu),
        **kw,
    )


@pytest.fixture
def rt(docker_client: Any, docker_engine_id: str) -> Iterator[DockerRuntime]:  # noqa: F811
    # the product's client (DockerClient.from_env); the SDK's `docker_client` only checks
    runtime = DockerRuntime(engine_id=docker_engine_id)
    yield runtime


def test_available_and_protocol(rt: DockerRuntime) -> None:
    assert isinstance(rt, TaskRuntime)
    ok, why = rt.available()
    assert ok, why


def test_unreachable_engine_is_reported() -> None:
    bad = DockerRuntime(
        lambda: DockerClient("unix:///nonexistent/docker.sock"),
        engine_id="nobody",
        ping_timeout_s=0.5,
    )
    ok, why = bad.available()
    assert not ok
    assert "docker engine" in why and "No such file or directory" in why

    def boom() -> Any:
        raise DockerError("no socket")

    ok, why = DockerRuntime(boom, engine_id="nobody").available()
    assert not ok and "no socket" in why


def test_running_container_labels_and_logs(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    h = rt.deploy(
        "d-run",
        spec(
            busybox_image,
            "sh",
            "-c",
            'echo hi; echo "foo=$FOO"; pwd; echo err >&2; sleep 30',
            env={"FOO": "bar"},
            workdir="/tmp",
            memory_mib=64,
            cpu=0.5,
        ),
    )
    assert h.container_id and h.runtime is Runtime.DOCKER
    c = docker_client.containers.get(h.container_id)
    assert c.name == container_name(rt.engine_id, "d-run")
    assert c.labels["edge.managed"] == "true"
    assert c.labels["edge.engine"] == rt.engine_id
    assert c.labels["edge.instance"] == "d-run"
    hc = c.attrs["HostConfig"]
    assert hc["Memory"] == hc["MemorySwap"] == 64 * 1024 * 1024
    assert hc["NanoCpus"] == 500_000_000
    assert rt.status(h).state is TaskState.RUNNING
    wait_for(lambda: "err" in rt.logs(h), timeout=20, what="output in logs")
    out = rt.logs(h)
    assert "hi" in out and "foo=bar" in out and "/tmp" in out
    # stdout and stderr are copied by separate daemon goroutines: order across them varies.
    assert len(rt.logs(h, tail=2).splitlines()) == 2
    assert rt.logs(h, tail=1) in {"err", "/tmp"}
    assert rt.status(h).memory_mib > 0  # read from the container's cgroup files


def test_exit_codes(rt: DockerRuntime, busybox_image: str) -> None:  # noqa: F811
    ok = rt.deploy("d-ok", spec(busybox_image, "sh", "-c", "exit 0"))
    bad = rt.deploy("d-bad", spec(busybox_image, "sh", "-c", "exit 3"))
    obs = wait_terminal(rt, ok, timeout=30.0)
    assert (obs.state, obs.exit_code) == (TaskState.SUCCEEDED, 0)
    obs = wait_terminal(rt, bad, timeout=30.0)
    assert (obs.state, obs.exit_code) == (TaskState.FAILED, 3)
    assert "exit code 3" in obs.reason and not obs.oom_killed


def test_image_default_command(rt: DockerRuntime, busybox_image: str) -> None:  # noqa: F811
    # No command: the image's CMD (sh) runs, finds no stdin and exits 0.
    h = rt.deploy("d-default", spec(busybox_image))
    assert wait_terminal(rt, h, timeout=30.0).state is TaskState.SUCCEEDED


def test_memory_limit_oom_killed(rt: DockerRuntime, busybox_image: str) -> None:  # noqa: F811
    # Command substitution makes the shell itself hold 200 MB: above a 64 MiB limit.
    h = rt.deploy(
        "d-oom",
        spec(
            busybox_image,
            "sh",
            "-c",
            'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived',
            memory_mib=64,
        ),
    )
    obs = wait_terminal(rt, h, timeout=60)
    assert obs.state is TaskState.FAILED
    assert obs.oom_killed
    assert obs.exit_code == 137
    assert "memory limit exceeded (OOM killed)" in obs.reason
    assert "survived" not in rt.logs(h)


def test_missing_image_that_cannot_be_pulled(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
) -> None:
    with pytest.raises(RuntimeFailure, match="image pull failed: localhost:1/edge-none"):
        rt.deploy("d-missing", spec("localhost:1/edge-none/nothing:1"))
    assert (
        docker_client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"edge.engine={rt.engine_id}"}
        )
        == []
    )


def test_missing_entrypoint_fails_at_deploy(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    with pytest.raises(RuntimeFailure, match="container start failed"):
        rt.deploy("d-noexec", spec(busybox_image, "/no/such/program"))
    assert rt.adopt() == []


def test_stop_removes_container(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    h = rt.deploy("d-stop", spec(busybox_image, "sleep", "300"))
    t0 = time.monotonic()
    rt.stop(h, timeout_s=1)
    # busybox sleep as PID 1 ignores SIGTERM (no handler, PID 1): stop escalates to SIGKILL.
    assert time.monotonic() - t0 < 10
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(h.container_id)
    assert rt.status(h).state is TaskState.TERMINATED
    rt.stop(h)  # idempotent


def test_pause_and_resume(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    h = rt.deploy("d-pause", spec(busybox_image, "sleep", "300"))
    rt.pause(h)
    assert rt.status(h).state is TaskState.PAUSED
    assert docker_client.containers.get(h.container_id).status == "paused"
    rt.resume(h)
    assert rt.status(h).state is TaskState.RUNNING
    rt.pause(h)
    rt.stop(h, timeout_s=1)  # a paused container can be stopped
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(h.container_id)


def test_redeploy_replaces_old_container(rt: DockerRuntime, busybox_image: str) -> None:  # noqa: F811
    first = rt.deploy("d-again", spec(busybox_image, "sleep", "300"))
    second = rt.deploy("d-again", spec(busybox_image, "sleep", "301"))
    assert first.container_id != second.container_id
    assert rt.status(first).state is TaskState.FAILED  # gone, not stopped by stop()
    assert [h.container_id for h in rt.adopt()] == [second.container_id]


def test_adopt_finds_own_containers_only(
    rt: DockerRuntime,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    other = DockerRuntime(engine_id=rt.engine_id + "-other")
    try:
        running = rt.deploy("d-adopt-run", spec(busybox_image, "sleep", "300"))
        exited = rt.deploy("d-adopt-exit", spec(busybox_image, "sh", "-c", "exit 4"))
        foreign = other.deploy("d-foreign", spec(busybox_image, "sleep", "300"))
        wait_terminal(rt, exited, timeout=30.0)
        # A new runtime object with the same engine id: what a restarted engine builds.
        again = DockerRuntime(engine_id=rt.engine_id)
        found = {h.instance_id: h for h in again.adopt()}
        assert set(found) == {"d-adopt-run", "d-adopt-exit"}
        assert found["d-adopt-run"].container_id == running.container_id
        assert found["d-adopt-run"].started_at > 0
        assert again.status(found["d-adopt-run"]).state is TaskState.RUNNING
        obs = again.status(found["d-adopt-exit"])
        assert (obs.state, obs.exit_code) == (TaskState.FAILED, 4)
        assert [h.container_id for h in other.adopt()] == [foreign.container_id]
    finally:
        remove_engine_containers(docker_client, other.engine_id)


def test_status_is_cheap_and_usage_available(
    rt: DockerRuntime,
    busybox_image: str,  # noqa: F811
) -> None:
    h = rt.deploy("d-usage", spec(busybox_image, "sh", "-c", "while :; do :; done", cpu=0.5))
    rt.status(h)
    durations = []
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < 1.0:  # a measurement window, not a wait
        t0 = time.perf_counter()
        samples.append(rt.status(h).cpu_percent)
        durations.append(time.perf_counter() - t0)
        time.sleep(0.2)
    assert sorted(durations)[len(durations) // 2] < 0.1, durations
    assert 20 < samples[-1] < 70, samples  # limited to half a core
    cpu, mem = rt.usage(h)
    assert cpu >= 0 and mem > 0
