"""Docker runtime calls: CPU and wall time per call of the engine's client vs the Docker SDK.

One ``sleep`` container of the local busybox test image (scripts/build_test_image.sh),
then --calls calls of each, in this process, measuring this process's CPU time
(``time.process_time``: the client's own cost; dockerd's is not counted) and wall time:

* ``ping``: ``GET /_ping`` with the engine's client (the floor: one trivial round trip);
* ``inspect``: ``GET /containers/<id>/json`` with the engine's client;
* ``status``: ``DockerRuntime.status()``, what the engine calls per task per tick
  (inspect + cgroup files);
* ``sdk_get``: the Docker SDK's ``containers.get`` (the same inspect, what the old
  runtime's ``status()`` made), only if the SDK (a test dependency) is installed;
* ``logs_tail``: ``DockerRuntime.read_logs(tail=100)`` of a container with 1,000 lines;
  ``client_logs_tail`` the client's part of it (the last 100 frames with timestamps) and
  ``sdk_logs_tail`` the same read through the SDK.

    .venv/bin/python bench/docker_calls.py [--calls 500]

The last line is one JSON object: per kind, CPU and wall ms per call, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node_engine.runtimes.docker import DockerRuntime  # noqa: E402
from node_engine.runtimes.docker_api import DockerClient  # noqa: E402
from schemas.common import Runtime  # noqa: E402
from schemas.job import TaskSpec  # noqa: E402
from tests.fixtures.images import TEST_IMAGE  # noqa: E402


def measure(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    """CPU and wall ms per call over `calls` calls (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return {
        "cpu_ms": round((cpu1 - cpu0) * 1000 / calls, 3),
        "wall_ms": round((wall1 - wall0) * 1000 / calls, 3),
    }


def main() -> int:
    """Run the measurements and print them; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    engine_id = f"bench-{uuid.uuid4().hex[:8]}"
    rt = DockerRuntime(engine_id=engine_id)
    ok, why = rt.available()
    if not ok:
        print(f"no docker engine: {why}", file=sys.stderr)
        return 1
    client: DockerClient = rt.client()
    sleeper = rt.deploy(
        "sleeper", TaskSpec(runtime=Runtime.DOCKER, image=TEST_IMAGE, command=["sleep", "600"])
    )
    script = 'i=0; while [ $i -lt 1000 ]; do echo "line $i"; i=$((i+1)); done; sleep 600'
    talker = rt.deploy(
        "talker", TaskSpec(runtime=Runtime.DOCKER, image=TEST_IMAGE, command=["sh", "-c", script])
    )
    results: dict[str, dict[str, float]] = {}
    load_start = os.getloadavg()
    try:
        deadline = time.monotonic() + 30
        while b"line 999" not in rt.read_logs("talker", talker, tail=1).data:
            if time.monotonic() > deadline:
                raise AssertionError("the talker did not print its lines")
            time.sleep(0.05)
        cid = sleeper.container_id
        assert cid is not None
        results["ping"] = measure(client.ping, args.calls)
        results["inspect"] = measure(lambda: client.inspect(cid), args.calls)
        results["status"] = measure(lambda: rt.status(sleeper), args.calls)
        few = max(1, args.calls // 5)
        tid = talker.container_id
        assert tid is not None
        results["logs_tail"] = measure(lambda: rt.read_logs("talker", talker, tail=100), few)
        results["client_logs_tail"] = measure(
            lambda: list(client.logs(tid, timestamps=True, tail=100)), few
        )
        try:
            import docker

            sdk = docker.from_env(timeout=30)
            results["sdk_get"] = measure(lambda: sdk.containers.get(cid), args.calls)
            box = sdk.containers.get(tid)
            results["sdk_logs_tail"] = measure(
                lambda: list(box.logs(stream=True, timestamps=True, tail=100, follow=False)), few
            )
            sdk.close()
        except ImportError:
            print("Docker SDK not installed: sdk_* skipped", file=sys.stderr)
    finally:
        for h in (sleeper, talker):
            rt.stop(h, 0)
        rt.close()
    load_end = os.getloadavg()
    print(
        f"docker API {client.api_version}; {args.calls} calls each (logs_tail: "
        f"{max(1, args.calls // 5)}); load average {load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    for kind, r in results.items():
        print(f"  {kind:16} CPU {r['cpu_ms']:7.3f} ms/call   wall {r['wall_ms']:7.3f} ms/call")
    print(
        json.dumps(
            {
                **results,
                "api_version": client.api_version,
                "calls": args.calls,
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in load_end],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
