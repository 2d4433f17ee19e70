"""`read_logs` of both runtimes against real tasks: native processes and Docker containers.

Each test makes a task print, follows it with cursors (no line twice, none missing),
and checks that the output of a task that failed stays readable after it ended: for
docker after the engine's cleanup removed the container (the runtime saved it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import pytest

from node_engine.runtimes.base import LogRead, TaskHandle, TaskObservation, TaskRuntime
from node_engine.runtimes.docker import DockerRuntime
from node_engine.runtimes.native import NativeRuntime
from schemas.common import Runtime
from schemas.job import TaskSpec
from tests.fixtures.images import (  # noqa: F401  (fixtures, used by name)
    busybox_image,
    docker_client,
    docker_engine_id,
)
from tests.harness.wait import wait_for

T = TypeVar("T")


def ended(rt: TaskRuntime, h: TaskHandle) -> TaskObservation:
    """Wait until the task has ended; its last observation."""

    def check() -> TaskObservation | None:
        obs = rt.status(h)
        return obs if obs.state.terminal else None

    return wait_for(check, timeout=30, what=f"{h.instance_id} to end")


def text(read: LogRead) -> str:
    return read.data.decode(errors="replace")


class Follower:
    """Reads a task's output with cursors, keeping everything read."""

    def __init__(self, rt: TaskRuntime, instance_id: str, handle: TaskHandle | None) -> None:
        self.rt, self.instance_id, self.handle = rt, instance_id, handle
        first = rt.read_logs(instance_id, handle, tail=1000)
        self.cursor = first.cursor
        self.seen = text(first)

    def poll(self) -> str:
        read = self.rt.read_logs(self.instance_id, self.handle, cursor=self.cursor, tail=0)
        self.cursor = read.cursor
        self.seen += text(read)
        return self.seen


# ------------------------------------------------------------------ native


def native_spec(script: str) -> TaskSpec:
    return TaskSpec(runtime=Runtime.NATIVE, command=["sh", "-c", script])


def test_native_follow_and_failed_output(tmp_path: Path) -> None:
    rt = NativeRuntime(tmp_path / "state", max_log_bytes=2048)
    go = tmp_path / "go"
    script = (
        'i=0; while [ $i -lt 300 ]; do echo "early $i"; i=$((i+1)); done; '
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        'echo "late line é"; echo "boom" >&2; exit 3'
    )
    h = rt.deploy("t-follow", native_spec(script))
    follow = Follower(rt, "t-follow", h)
    wait_for(lambda: "early 299" in follow.poll(), timeout=30, what="early output")
    rt.status(h)  # rotates the log (2 KiB bound) under the follower's cursor
    assert (rt.task_dir("t-follow") / "output.log.1").exists()
    go.touch()
    wait_for(lambda: "boom" in follow.poll(), timeout=30, what="the line printed after the trigger")
    lines = follow.seen.splitlines()
    assert lines == [f"early {i}" for i in range(300)] + ["late line é", "boom"]
    assert ended(rt, h).exit_code == 3
    rt.stop(h, 0.0)  # what the engine does once a task ended
    tail = rt.read_logs("t-follow", h, tail=2)
    assert text(tail) == "late line é\nboom\n"
    # a restart of the instance appends: the failed run's output is still there
    h2 = rt.deploy("t-follow", native_spec("echo second run"))
    ended(rt, h2)
    assert text(rt.read_logs("t-follow", h2, tail=3)) == "late line é\nboom\nsecond run\n"
    rt.discard_logs("t-follow")
    assert rt.read_logs("t-follow", h2, tail=3).pieces == []


# ------------------------------------------------------------------ docker


@pytest.mark.docker
def test_docker_follow_and_output_saved_at_removal(
    tmp_path: Path,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
    docker_engine_id: str,  # noqa: F811
) -> None:
    rt = DockerRuntime(engine_id=docker_engine_id, state_dir=tmp_path / "docker")
    script = (
        'i=0; while [ $i -lt 50 ]; do echo "early $i"; i=$((i+1)); done; '
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
        'echo "late line é"; echo boom >&2; exit 3'
    )
    spec = TaskSpec(runtime=Runtime.DOCKER, image=busybox_image, command=["sh", "-c", script])
    h = rt.deploy("d-follow", spec)
    try:
        follow = Follower(rt, "d-follow", h)
        wait_for(lambda: "early 49" in follow.poll(), timeout=30, what="early output")
        assert follow.seen.splitlines() == [f"early {i}" for i in range(50)]  # no repeats
        docker_client.containers.get(h.container_id).exec_run(["touch", "/tmp/go"])
        wait_for(
            lambda: "boom" in follow.poll(), timeout=30, what="the line printed after the trigger"
        )
        # stdout and stderr reach docker through two pipes: their order is docker's
        assert sorted(follow.seen.splitlines()[-2:]) == ["boom", "late line é"]
        assert ended(rt, h).exit_code == 3
        rt.stop(h, 0.0)  # the engine's cleanup: the container is removed
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(h.container_id)
        # ... and its output is still readable, with the same cursors
        assert sorted(text(rt.read_logs("d-follow", h, tail=2)).splitlines()) == [
            "boom",
            "late line é",
        ]
        assert follow.poll().count("boom") == 1
        saved = tmp_path / "docker" / "logs" / "d-follow.log"
        assert 0 < saved.stat().st_size <= 64 * 1024
        # a restart appends to what is shown; the saved part comes first
        h2 = rt.deploy("d-follow", spec.model_copy(update={"command": ["echo", "second run"]}))
        ended(rt, h2)
        shown = text(rt.read_logs("d-follow", h2, tail=3)).splitlines()
        # (the first two came through docker's two pipes: their order is docker's)
        assert sorted(shown[:2]) == ["boom", "late line é"] and shown[2:] == ["second run"]
        rt.stop(h2, 0.0)
        rt.discard_logs("d-follow")
        assert not saved.exists()
    finally:
        rt.close()
