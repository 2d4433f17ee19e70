"""Deploy latency through the whole system: root -> cluster -> node engine -> RUNNING.

Starts real processes on free ports in a temporary directory: a `root-orchestrator`
(SQLite), a `cluster-orchestrator` that starts its own Mosquitto, and N `node-engine`s
(native runtime). Then:

* sequential: submits J one-replica jobs one after the other, each once the previous
  one runs;
* burst: submits one job with R replicas at once.

For every instance it reads the root's event log (one clock: the root's) and reports
the time from `job.submitted` to SCHEDULED (root decision), ASSIGNED (the cluster
accepted and chose a node) and RUNNING (the node reported it running, through the
cluster's report), as p50 / p95 / max in milliseconds.

    .venv/bin/python bench/deploy_latency.py [--nodes 2] [--jobs 20] [--burst 40]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

OPERATOR_TOKEN = "bench-operator-token"
REGISTRATION_TOKEN = "bench-registration-token"
CLUSTER_TOKEN = "bench-cluster-token"
JOIN_TOKEN = "bench-join-token"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until `predicate` returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Processes:
    """Child processes started here, stopped in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start one program with its output in logs/<name>.log."""
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def check(self) -> None:
        """Fail if a child died."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop every child (its whole process group), newest first."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95 and max of a list of milliseconds (rounded)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
    }


def instance_latencies(http: httpx.Client, job_ids: set[str]) -> dict[str, list[float]]:
    """Per phase, ms from job.submitted to each instance's first SCHEDULED/ASSIGNED/RUNNING."""
    submitted: dict[str, float] = {}
    firsts: dict[tuple[str, str], float] = {}
    since = 0
    while True:
        page = http.get(
            "/api/v1/events", params={"since": since, "limit": 1000}, headers=AUTH
        ).json()
        for event in page["events"]:
            job_id = event.get("job_id")
            if job_id not in job_ids:
                continue
            if event["kind"] == "job.submitted":
                submitted[job_id] = event["ts"]
            elif event["kind"] == "instance.state":
                key = (event["instance_id"], event["state"])
                firsts.setdefault(key, event["ts"])
        if not page["events"]:
            break
        since = page["next_since"]
    phases: dict[str, list[float]] = {"SCHEDULED": [], "ASSIGNED": [], "RUNNING": []}
    for (instance_id, state), ts in firsts.items():
        if state in phases:
            job_id = instance_id.rsplit("-", 2)[0]
            phases[state].append((ts - submitted[job_id]) * 1000.0)
    return phases


def job_body(name: str, replicas: int) -> dict[str, Any]:
    """A small native job (a long sleep)."""
    return {
        "name": name,
        "runtime": "native",
        "command": ["sleep", "3600"],
        "replicas": replicas,
        "resources": {"cpu": 0.01, "memory_mib": 8},
    }


def main() -> int:
    """Run the benchmark and print its figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, help="node engines to start")
    parser.add_argument("--jobs", type=int, default=20, help="sequential one-replica jobs")
    parser.add_argument("--burst", type=int, default=40, help="replicas of the burst job")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto is not installed", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="deploy-latency-"))
    procs = Processes(tmp)
    root_port, cluster_port, broker_port = free_port(), free_port(), free_port()
    root_url = f"http://127.0.0.1:{root_port}"
    try:
        procs.start(
            "root",
            [str(BIN / "root-orchestrator")],
            {
                "EDGE_PORT": str(root_port),
                "EDGE_STORE_URL": f"sqlite:///{tmp / 'root.db'}",
                "EDGE_OPERATOR_TOKENS": OPERATOR_TOKEN,
                "EDGE_REGISTRATION_TOKEN": REGISTRATION_TOKEN,
                "EDGE_LOG_LEVEL": "WARNING",
            },
        )
        procs.start(
            "cluster",
            [
                str(BIN / "cluster-orchestrator"),
                "--name",
                "bench",
                "--port",
                str(cluster_port),
                "--data-dir",
                str(tmp / "cluster"),
                "--start-broker",
                "--broker-port",
                str(broker_port),
                "--root-url",
                root_url,
                "--registration-token",
                REGISTRATION_TOKEN,
                "--operator-token",
                CLUSTER_TOKEN,
                "--join-token",
                JOIN_TOKEN,
                "--log-level",
                "WARNING",
            ],
            {},
        )
        for n in range(args.nodes):
            procs.start(
                f"node{n}",
                [
                    str(BIN / "node-engine"),
                    "--cluster-url",
                    f"http://127.0.0.1:{cluster_port}",
                    "--join-token",
                    JOIN_TOKEN,
                    "--state-dir",
                    str(tmp / f"node{n}"),
                    "--name",
                    f"node{n}",
                    "--runtime",
                    "native",
                    "--log-level",
                    "WARNING",
                ],
                {},
            )
        with httpx.Client(base_url=root_url, timeout=10) as http:

            def ready() -> bool:
                procs.check()
                try:
                    clusters = http.get("/api/v1/clusters", headers=AUTH).json()["clusters"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return False
                report = clusters[0]["report"] if clusters else None
                nodes = (report or {}).get("nodes_by_liveness", {}).get("READY", 0)
                return bool(clusters and clusters[0]["liveness"] == "READY" and nodes >= args.nodes)

            wait_for(ready, 60, f"cluster READY at the root with {args.nodes} nodes")

            def running(job_id: str, replicas: int) -> Callable[[], bool]:
                def check() -> bool:
                    procs.check()
                    view = http.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json()
                    return bool(view["actual_replicas"] == replicas)

                return check

            sequential: set[str] = set()
            observed: list[float] = []
            for j in range(args.jobs):
                started = time.perf_counter()
                r = http.post("/api/v1/jobs", json=job_body(f"seq{j}", 1), headers=AUTH)
                r.raise_for_status()
                job_id = r.json()["id"]
                wait_for(running(job_id, 1), 30, f"job seq{j} RUNNING")
                observed.append((time.perf_counter() - started) * 1000.0)
                sequential.add(job_id)

            started = time.perf_counter()
            r = http.post("/api/v1/jobs", json=job_body("burst", args.burst), headers=AUTH)
            r.raise_for_status()
            burst_id = r.json()["id"]
            wait_for(running(burst_id, args.burst), 120, "burst RUNNING")
            burst_total = (time.perf_counter() - started) * 1000.0

            seq_phases = instance_latencies(http, sequential)
            burst_phases = instance_latencies(http, {burst_id})
            for job_id in [*sequential, burst_id]:
                http.delete(f"/api/v1/jobs/{job_id}", headers=AUTH)
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "nodes": args.nodes,
        "sequential": {
            "client_submit_to_running_ms": percentiles(observed),
            **{f"submit_to_{k.lower()}_ms": percentiles(v) for k, v in seq_phases.items()},
        },
        "burst": {
            "replicas": args.burst,
            "all_running_ms": round(burst_total, 1),
            **{f"submit_to_{k.lower()}_ms": percentiles(v) for k, v in burst_phases.items()},
        },
    }
    print(f"deploy latency, {args.nodes} native node(s), one cluster (times in ms)")
    for section in ("sequential", "burst"):
        print(f"  {section}:")
        for key, value in result[section].items():
            print(f"    {key:32s} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
