"""Status ingestion: N simulated nodes at 1 Hz through a real broker into a real orchestrator.

Run: .venv/bin/python -m bench.cluster_ingest [--nodes 1000] [--seconds 30]

What runs:

* a mosquitto with dynamic security (generated config, free port, temp directory);
* a real ``cluster-orchestrator`` process (SQLite store, default settings: status
  snapshots batched every 5 s);
* N nodes joined through ``POST /api/v1/nodes`` (each join creates a dynsec client and
  role, as for a real node);
* a few paho clients (``--clients``, default 4) that share the simulation: each
  publishes a real `StatusMessage` for each of its nodes once per second, on the
  node's own topic ``edge/v1/nodes/<id>/status`` (QoS 0), with the phases spread
  evenly over the second. They log in as one bench client whose dynsec role may
  publish on every node's status topic (real nodes each have their own credentials;
  the broker's per-message ACL check is the same).

Measured over ``--seconds`` after a warm-up: the orchestrator process's CPU time
(user + system, all its threads) per wall second, as a percent of one core; the lag
from publish (the envelope's ts) to the moment the core loop applied the status,
read from ``GET /api/v1/stats`` (exact percentiles over the window); and whether every
node stayed READY. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from cluster_orchestrator.broker import (
    Acl,
    MosquittoProcess,
    find_free_port,
    write_broker_files,
)
from tests.harness.cluster_process import ClusterProcess

JOIN = "bench-join"
OPERATOR = "bench-operator"


def start_broker(directory: Path) -> tuple[MosquittoProcess, str]:
    """A fresh broker on a free port; returns it and the admin password."""
    password = secrets.token_urlsafe(16)
    files = write_broker_files(
        directory,
        host="127.0.0.1",
        port=find_free_port(),
        admin_username="admin",
        admin_password=password,
    )
    broker = MosquittoProcess(files, admin_username="admin", admin_password=password)
    broker.start()
    return broker, password


def join_nodes(cluster: ClusterProcess, count: int, threads: int = 4) -> list[str]:
    """Join `count` nodes through the API; returns their ids."""
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(start: int) -> None:
        with httpx.Client(
            base_url=cluster.url, timeout=30.0, headers={"authorization": f"Bearer {JOIN}"}
        ) as client:
            for i in range(start, count, threads):
                body = {
                    "info": {
                        "name": f"sim-{i:05d}",
                        "hostname": f"sim-{i:05d}",
                        "arch": "arm64",
                        "cpu_cores": 4,
                        "memory_mib": 4096,
                        "disk_mib": 32000,
                        "runtimes": ["native", "docker"],
                        "labels": {"zone": f"z{i % 4}"},
                    }
                }
                response = client.post("/api/v1/nodes", json=body)
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                with lock:
                    ids.append(response.json()["node_id"])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(f"join failed: {errors[0]}")
    return sorted(ids)


def status_template() -> dict[str, Any]:
    """A realistic status body (a Raspberry Pi 4 class device, no tasks)."""
    return {
        "ts": 0.0,
        "seq": 0,
        "cpu_percent": 23.5,
        "cpu_per_core": [20.1, 25.3, 22.0, 26.6],
        "load_1m": 0.8,
        "memory": {
            "total_mib": 3792,
            "available_mib": 2510,
            "used_percent": 33.8,
            "swap_used_percent": 0.0,
        },
        "disk": {"total_mib": 29800, "free_mib": 21400, "used_percent": 28.2},
        "network": {"rx_bytes_per_s": 10240.0, "tx_bytes_per_s": 4096.0},
        "temperatures_c": {"cpu_thermal": 54.0},
        "max_temperature_c": 54.0,
        "throttling": {
            "throttled": False,
            "under_voltage": False,
            "frequency_capped": False,
            "soft_temperature_limit": False,
            "occurred_since_boot": False,
            "raw": "0x0",
        },
        "accelerators": [],
        "runtimes": ["native", "docker"],
        "tasks": [],
        "shedding": False,
        "messages_rejected": 0,
    }


class Simulator(threading.Thread):
    """One paho client publishing 1 Hz statuses for its share of the nodes."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        node_ids: list[str],
        stop: threading.Event,
        interval: float = 1.0,
        tasks: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.node_ids = node_ids
        #: node id -> the task list its statuses carry (read on each publish; a writer
        #: replaces a node's list rather than changing it); None: no tasks
        self.tasks = tasks
        self.stop_event = stop
        self.interval = interval
        self.sent = 0
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-sim-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.template = status_template()

    def run(self) -> None:
        count = len(self.node_ids)
        if count == 0:
            return
        seqs = dict.fromkeys(self.node_ids, 0)
        step = self.interval / count
        start = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            node_id = self.node_ids[i % count]
            due = start + i * step
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            seqs[node_id] += 1
            now = time.time()
            body = self.template
            body["ts"] = now
            body["seq"] = seqs[node_id]
            body["tasks"] = self.tasks.get(node_id, []) if self.tasks is not None else []
            envelope = {
                "v": 1,
                "kind": "status",
                "id": uuid.uuid4().hex,
                "ts": now,
                "node_id": node_id,
                "payload": body,
            }
            self.client.publish(
                f"edge/v1/nodes/{node_id}/status",
                json.dumps(envelope, separators=(",", ":")),
                qos=0,
            )
            self.sent += 1
            i += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stats(cluster: ClusterProcess, reset: bool = False) -> dict[str, Any]:
    """GET /api/v1/stats."""
    with cluster.client() as client:
        response = client.get("/api/v1/stats", params={"reset": str(reset).lower()})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def wait_ready(cluster: ClusterProcess, count: int, timeout: float) -> None:
    """Wait until `count` nodes are READY."""
    deadline = time.monotonic() + timeout
    while True:
        ready = stats(cluster)["nodes_by_liveness"].get("READY", 0)
        if ready >= count:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"only {ready}/{count} nodes READY after {timeout}s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print figures, last line JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="simulator MQTT clients")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker, admin_password = start_broker(tmp / "broker")
    cluster = ClusterProcess(
        tmp / "cluster",
        broker_port=broker.port,
        broker_admin_password=admin_password,
        operator_token=OPERATOR,
        join_token=JOIN,
        name="bench",
        log_level="WARNING",
    )
    stop = threading.Event()
    sims: list[Simulator] = []
    try:
        cluster.start()
        t0 = time.monotonic()
        ids = join_nodes(cluster, args.nodes)
        join_s = time.monotonic() - t0
        print(
            f"joined {len(ids)} nodes through the API in {join_s:.1f}s ({len(ids) / join_s:.0f}/s)",
            flush=True,
        )

        sim_password = secrets.token_urlsafe(16)
        with broker.admin() as admin:
            admin.ensure_role("bench-sim", [Acl("publishClientSend", "edge/v1/nodes/+/status")])
            admin.create_client("bench-sim", sim_password, ["bench-sim"])
        shares = [ids[i :: args.clients] for i in range(args.clients)]
        sims = [
            Simulator(broker.host, broker.port, "bench-sim", sim_password, share, stop)
            for share in shares
        ]
        for sim in sims:
            sim.start()
        wait_ready(cluster, len(ids), timeout=30 + args.warmup)
        time.sleep(args.warmup)  # warm-up period of the benchmark itself, not a wait

        proc = psutil.Process(cluster.pid)
        stats(cluster, reset=True)
        sent0 = sum(s.sent for s in sims)
        cpu0 = proc.cpu_times()
        wall0 = time.monotonic()
        time.sleep(args.seconds)  # the measured window
        cpu1 = proc.cpu_times()
        wall1 = time.monotonic()
        sent1 = sum(s.sent for s in sims)
        after = stats(cluster, reset=True)
        cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        cpu_pct = 100.0 * cpu_s / (wall1 - wall0)
        rate = (sent1 - sent0) / (wall1 - wall0)
        lag = after["status_lag"]
        ready = after["nodes_by_liveness"].get("READY", 0)
        host_cpu = psutil.cpu_count() or 0
        print(
            f"published {rate:.0f} status/s; orchestrator CPU {cpu_pct:.1f}% of one core "
            f"({host_cpu} cores on this host)"
        )
        print(
            f"ingestion lag ms: p50 {lag['p50_ms']} p90 {lag['p90_ms']} p99 {lag['p99_ms']} "
            f"max {lag['max_ms']} over {int(lag['samples'])} samples"
        )
        print(
            f"nodes READY at the end: {ready}/{len(ids)}; core queue depth "
            f"{after['queue_depth']}, store writer backlog {after['persister_backlog']}"
        )
        result = {
            "nodes": len(ids),
            "cpu_percent_of_one_core": round(cpu_pct, 1),
            "lag_p99_ms": lag["p99_ms"],
            "lag_p50_ms": lag["p50_ms"],
            "lag_max_ms": lag["max_ms"],
            "status_per_s": round(rate, 1),
            "lag_samples": int(lag["samples"]),
            "nodes_ready": ready,
            "seconds": args.seconds,
            "join_per_s": round(len(ids) / join_s, 1),
        }
        print(json.dumps(result))
        return 0
    finally:
        stop.set()
        for sim in sims:
            sim.join(5)
            sim.close()
        cluster.stop()
        broker.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
