"""Failover: SIGKILL a node engine running 10 instances; time until all run elsewhere.

Run: .venv/bin/python -m bench.failover [--instances 10] [--runs 3]

What runs: a mosquitto with dynamic security, a real ``cluster-orchestrator`` with
default settings (status every 1 s, lost grace 3 s, ack timeout 5 s), and two real
``node-engine`` processes (native runtime) on this machine. Node A joins first and
gets every instance (each a ``sleep`` with a unique argument); then node B joins; then
A's engine is killed with SIGKILL. The clock starts at the kill and stops when the
API shows every instance RUNNING on B (polled every 20 ms).

Expected: ~3 s for the grace (the broker sends A's last will at once, so A is OFFLINE
immediately and LOST 3 s later) plus the DEPLOY/ack/start round trip on B.

Instances request no CPU or memory: the native runtime names task cgroups after the
instance id only, so two engines on one host would share a cgroup (see the report).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from cluster_orchestrator.broker import MosquittoProcess, find_free_port, write_broker_files
from tests.harness.cluster_process import REPO_ROOT, ClusterProcess

JOIN = "bench-join"
OPERATOR = "bench-operator"


class Engine:
    """A node-engine child process."""

    def __init__(self, state_dir: Path, cluster_url: str, name: str) -> None:
        self.state_dir = state_dir
        self.name = name
        self.cluster_url = cluster_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT), EDGE_NODE_JOIN_TOKEN=JOIN)
        self.log = open(self.state_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node_engine.main",
                "--cluster-url",
                self.cluster_url,
                "--state-dir",
                str(self.state_dir),
                "--name",
                self.name,
                "--runtime",
                "native",
                "--log-level",
                "WARNING",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.log is not None:
            self.log.close()
            self.log = None


def kill_tasks(marker: str) -> None:
    """Kill every process whose command line contains `marker` (our sleep commands)."""
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if marker in " ".join(proc.info["cmdline"] or []):
                proc.kill()


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def one_run(tmp: Path, count: int, run: int) -> float:
    """One failover; returns seconds from SIGKILL to all RUNNING on the other node."""
    password = secrets.token_urlsafe(16)
    files = write_broker_files(
        tmp / "broker",
        host="127.0.0.1",
        port=find_free_port(),
        admin_username="admin",
        admin_password=password,
    )
    broker = MosquittoProcess(files, admin_username="admin", admin_password=password)
    broker.start()
    cluster = ClusterProcess(
        tmp / "cluster",
        broker_port=broker.port,
        broker_admin_password=password,
        operator_token=OPERATOR,
        join_token=JOIN,
        name="bench",
    )
    engine_a = Engine(tmp / "node-a", cluster.url, "a")
    engine_b = Engine(tmp / "node-b", cluster.url, "b")
    marker = f"{900 + run}.{random.randrange(10**5, 10**6)}"
    try:
        cluster.start()
        api = httpx.Client(
            base_url=cluster.url, timeout=10.0, headers={"authorization": f"Bearer {OPERATOR}"}
        )

        def nodes() -> dict[str, str]:
            body = api.get("/api/v1/nodes", params={"status": "false"}).json()
            return {n["info"]["name"]: n["liveness"] for n in body["nodes"]}

        def placements() -> dict[str, tuple[str, str | None]]:
            body = api.get("/api/v1/instances", params={"job_id": "bench-job"}).json()
            return {i["id"]: (i["state"], i["node_name"]) for i in body["instances"]}

        engine_a.start()
        wait(lambda: nodes().get("a") == "READY", 30, "node a READY")
        for i in range(count):
            body = {
                "instance_id": f"f{i}",
                "job_id": "bench-job",
                "job_name": "failover",
                "spec": {"runtime": "native", "command": ["sleep", marker]},
            }
            response = api.post("/api/v1/instances", json=body)
            assert response.json()["accepted"], response.text
        wait(
            lambda: all(v == ("RUNNING", "a") for v in placements().values()),
            30,
            "all RUNNING on a",
        )
        engine_b.start()
        wait(lambda: nodes().get("b") == "READY", 30, "node b READY")

        engine_a.kill()
        started = time.monotonic()
        wait(
            lambda: (
                len(p := placements()) == count and all(v == ("RUNNING", "b") for v in p.values())
            ),
            60,
            "all RUNNING on b",
            interval=0.02,
        )
        elapsed = time.monotonic() - started
        api.close()
        return elapsed
    finally:
        engine_a.kill()
        engine_b.stop()
        kill_tasks(marker)
        cluster.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print figures, last line JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    times: list[float] = []
    for run in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
        try:
            elapsed = one_run(tmp, args.instances, run)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        times.append(elapsed)
        print(
            f"run {run + 1}: {args.instances} instances RUNNING elsewhere "
            f"{elapsed:.2f}s after SIGKILL",
            flush=True,
        )
    result = {
        "failover_s": round(max(times), 3),
        "failover_median_s": round(statistics.median(times), 3),
        "runs": len(times),
        "instances": args.instances,
        "status_interval_s": 1.0,
        "lost_grace_s": 3.0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
