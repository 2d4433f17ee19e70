"""The node engine's Docker Engine API client against the real Docker engine.

Every call the docker runtime makes, with what the SDK (the `docker_client` fixture, a
test dependency) sees of the result as the independent check.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from node_engine.runtimes.docker import parse_frame, since_param
from node_engine.runtimes.docker_api import DockerClient, DockerError, NotFound
from tests.fixtures.images import (  # noqa: F401  (fixtures, used by name)
    busybox_image,
    docker_client,
    docker_engine_id,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def api(docker_client: Any) -> Iterator[DockerClient]:  # noqa: F811
    client = DockerClient.from_env(timeout=30)
    yield client
    client.close()


def make(api: DockerClient, image: str, engine_id: str, argv: list[str], **host: Any) -> str:
    name = f"api-{uuid.uuid4().hex[:10]}"
    config = {
        "Image": image,
        "Labels": {"edge.engine": engine_id, "edge.managed": "true", "edge.instance": name},
        "Env": ["FOO=bar"],
        "Entrypoint": argv[:1],
        "Cmd": argv[1:],
        "WorkingDir": "/tmp",
        "HostConfig": {
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
            "RestartPolicy": {"Name": "no"},
            **host,
        },
    }
    return api.create(name, config)


def wait_status(api: DockerClient, cid: str, status: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = api.inspect(cid)
        if info["State"]["Status"] == status:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{cid} is {info['State']['Status']}, not {status}")
        time.sleep(0.05)


def test_ping_version_and_list_filters(
    api: DockerClient,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
    docker_engine_id: str,  # noqa: F811
) -> None:
    version = api.ping(timeout=2)
    server = api.version()
    assert version == min(server["ApiVersion"], "1.47", key=lambda v: tuple(map(int, v.split("."))))
    mine = make(api, busybox_image, docker_engine_id, ["sleep", "30"])
    other = make(api, busybox_image, docker_engine_id + "-x", ["sleep", "30"])
    listed = api.containers(all=True, labels=[f"edge.engine={docker_engine_id}", "edge.managed"])
    assert [c["Id"] for c in listed] == [mine]  # created, not started: all=True lists it
    assert api.containers(all=False, labels=[f"edge.engine={docker_engine_id}"]) == []
    docker_client.containers.get(other).remove(force=True)


def test_create_start_inspect_logs_stop_remove(
    api: DockerClient,
    docker_client: Any,  # noqa: F811
    busybox_image: str,  # noqa: F811
    docker_engine_id: str,  # noqa: F811
) -> None:
    script = (
        'echo "foo=$FOO"; pwd; echo err >&2; '
        'i=0; while [ $i -lt 3000 ]; do echo "l $i"; i=$((i+1)); done; sleep 300'
    )
    cid = make(
        api,
        busybox_image,
        docker_engine_id,
        ["sh", "-c", script],
        Memory=64 * 1024 * 1024,
        MemorySwap=64 * 1024 * 1024,
        NanoCpus=500_000_000,
    )
    api.start(cid)
    sdk = docker_client.containers.get(cid)
    assert sdk.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert sdk.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "1m", "max-file": "2"}
    assert sdk.attrs["Config"]["WorkingDir"] == "/tmp"
    info = wait_status(api, cid, "running")
    assert info["State"]["Pid"] > 0 and info["Config"]["Labels"]["edge.engine"] == docker_engine_id

    def frames(**kw: Any) -> list[bytes]:
        return list(api.logs(cid, timestamps=True, **kw))

    deadline = time.monotonic() + 30
    while b"l 2999" not in b"".join(frames(tail=1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = [parse_frame(f) for f in frames(tail="all")]
    texts = [e.data for e in entries]
    assert b"foo=bar\n" in texts and b"/tmp\n" in texts and b"err\n" in texts  # both streams
    assert [t for t in texts if t.startswith(b"l ")] == [b"l %d\n" % i for i in range(3000)]
    assert all(e.ns > 0 for e in entries)
    assert [parse_frame(f).data for f in frames(tail=2)] == [b"l 2998\n", b"l 2999\n"]
    # since is inclusive (microseconds): from the 2000th line's stamp on
    ns = entries[texts.index(b"l 2000\n")].ns
    later = [parse_frame(f).data for f in frames(since=since_param(ns))]
    since_ns = (ns // 1000 - 1) * 1000
    assert later == [e.data for e in entries if e.ns >= since_ns]
    assert later[-1] == b"l 2999\n" and b"l 2000\n" in later and b"l 1000\n" not in later
    # not timestamped: the raw bytes
    assert b"".join(api.logs(cid, tail=1)) == b"l 2999\n"

    api.pause(cid)
    assert wait_status(api, cid, "paused")["State"]["Paused"] is True
    with pytest.raises(DockerError, match="paused"):
        api.pause(cid)  # the daemon's own message, 409
    api.unpause(cid)
    wait_status(api, cid, "running")
    t0 = time.monotonic()
    api.stop(cid, 1)  # sh as PID 1 ignores SIGTERM: SIGKILL after 1 s
    assert time.monotonic() - t0 < 15
    state = api.inspect(cid)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 137
    api.remove(cid, force=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(cid)
    with pytest.raises(NotFound, match="No such container"):
        api.inspect(cid)


def test_wait_kill_exit_codes_and_oom(
    api: DockerClient,
    busybox_image: str,  # noqa: F811
    docker_engine_id: str,  # noqa: F811
) -> None:
    done = make(api, busybox_image, docker_engine_id, ["sh", "-c", "exit 7"])
    api.start(done)
    assert api.wait(done)["StatusCode"] == 7
    assert api.inspect(done)["State"]["ExitCode"] == 7
    sleeper = make(api, busybox_image, docker_engine_id, ["sleep", "300"])
    api.start(sleeper)
    api.kill(sleeper)
    assert api.wait(sleeper)["StatusCode"] == 137
    hog = make(
        api,
        busybox_image,
        docker_engine_id,
        ["sh", "-c", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a)'],
        Memory=32 * 1024 * 1024,
        MemorySwap=32 * 1024 * 1024,
    )
    api.start(hog)
    api.wait(hog, timeout=60)
    assert api.inspect(hog)["State"]["OOMKilled"] is True
    for cid in (done, sleeper, hog):
        api.remove(cid, force=True)


def test_stats_one_sample(
    api: DockerClient,
    busybox_image: str,  # noqa: F811
    docker_engine_id: str,  # noqa: F811
) -> None:
    cid = make(api, busybox_image, docker_engine_id, ["sleep", "300"])
    api.start(cid)
    stats = api.stats(cid)
    assert stats["memory_stats"]["usage"] > 0 and "cpu_stats" in stats
    api.remove(cid, force=True)


def test_image_errors_are_readable(api: DockerClient) -> None:
    with pytest.raises(NotFound, match="no such image"):
        api.image_inspect("edge-test/never-built:0")
    with pytest.raises(DockerError, match="localhost:1"):
        api.pull("localhost:1/edge-none/nothing", "1")
    with pytest.raises(NotFound):
        api.create("api-noimage", {"Image": "edge-test/never-built:0"})
