"""Placements through a real cluster orchestrator: placements/s and CPU per placement.

Run: .venv/bin/python -m bench.cluster_schedule [--nodes 1000] [--placements 2000]
     [--concurrency 8] [--repeat 2] [--repo PATH]

What runs (the set-up of bench/cluster_ingest.py, reused):

* a mosquitto with dynamic security (generated config, free port, temp directory);
* a real ``cluster-orchestrator`` process (SQLite store, default settings, log level
  INFO as in production unless ``--log-level`` says otherwise);
* N nodes joined through ``POST /api/v1/nodes`` and kept READY by simulated 1 Hz
  statuses (`cluster_ingest.Simulator`, a few shared paho clients);
* a simulated node side for commands (`Acker`, one paho client subscribed to every
  node's ``.../commands``): it acknowledges each DEPLOY and TERMINATE on the node's
  ``.../events`` and from then on lists the task as RUNNING in that node's statuses,
  as a node engine would. So deploys do not pile up as pending commands, the
  instances become RUNNING, and reconcile finds what it expects.

Measured, each ``--repeat`` times: ``--placements`` placements through
``POST /api/v1/instances`` (each a new instance of one of 20 jobs, a small docker
task), first one after the other on one HTTP connection, then from ``--concurrency``
connections at once. For each: placements/s (wall time of the requests), and the
orchestrator process's CPU seconds (user + system, all threads, psutil) per
placement, counted until the placements' work is done (instances RUNNING, every
DEPLOY acked, the store writer's queue back to its length before), raw and net of
what the process spends on
status ingestion alone (the mean rate of idle windows before and after). The floor,
measured the same way in the same run: requests that the same route rejects before
any decision (``constraints.cluster`` names another cluster): HTTP, validation, the
core hand-off and the response, without the decision, the instance, its events,
store writes and DEPLOY. The last line is one JSON object.

``--repo PATH`` runs the orchestrator from another checkout (e.g. the code before a
change) with this script's harness: ``PYTHONPATH`` points the process at PATH.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.cluster_ingest import JOIN, OPERATOR, Simulator, join_nodes, start_broker, wait_ready
from cluster_orchestrator.broker import Acl
from tests.harness.cluster_process import ClusterProcess

JOBS = 20


class Acker:
    """The command side of the simulated nodes: ack every command, report its task."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        #: node id -> the tasks its statuses list (a list is replaced, never changed)
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.deploys = 0
        self.terminates = 0
        self.disconnects = 0
        self.errors: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-acker-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        # a session the broker keeps across a reconnect: no command is lost meanwhile
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 600
        self.client.connect(host, port, keepalive=60, clean_start=False, properties=session)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the acker did not get its subscription")

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe("edge/v1/nodes/+/commands", qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnects += 1

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._answer(client, json.loads(msg.payload))
        except Exception as exc:  # keep acking the others; the result line says so
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _answer(self, client: mqtt.Client, command: dict[str, Any]) -> None:
        node_id = command["node_id"]
        kind = command["kind"]
        payload = command.get("payload", {})
        instance_id = payload.get("instance_id")
        if kind == "deploy":
            self.deploys += 1
            runtime = payload["spec"]["runtime"]
            task = {"instance_id": instance_id, "state": "RUNNING", "runtime": runtime}
            current = [t for t in self.tasks.get(node_id, []) if t["instance_id"] != instance_id]
            self.tasks[node_id] = [*current, task]
        elif kind == "terminate":
            self.terminates += 1
            current = self.tasks.get(node_id, [])
            self.tasks[node_id] = [t for t in current if t["instance_id"] != instance_id]
        else:
            return
        ack = {
            "v": 1,
            "kind": "ack",
            "id": uuid.uuid4().hex,
            "ts": time.time(),
            "node_id": node_id,
            "payload": {
                "command_id": command["id"],
                "command_kind": kind,
                "instance_id": instance_id,
                "accepted": True,
            },
        }
        client.publish(f"edge/v1/nodes/{node_id}/events", json.dumps(ack), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def place_body(index: int, run: str, *, cluster: str | None = None) -> dict[str, Any]:
    """A `PlaceInstanceRequest` as the root sends it: one replica of one of JOBS jobs."""
    job = f"job-{index % JOBS:02d}"
    body: dict[str, Any] = {
        "instance_id": f"{run}-{index:06d}",
        "job_id": job,
        "job_name": job,
        "replica": index // JOBS,
        "spec": {
            "runtime": "docker",
            "image": "busybox:latest",
            "command": ["sleep", "3600"],
            "resources": {"cpu": 0.01, "memory_mib": 8},
        },
    }
    if cluster is not None:
        body["constraints"] = {"cluster": cluster}
    return body


def post_all(
    url: str, bodies: list[dict[str, Any]], concurrency: int, expect_accepted: bool
) -> tuple[float, int]:
    """POST every body (from `concurrency` connections); return (wall seconds, accepted)."""
    accepted = 0
    lock = threading.Lock()
    shares = [bodies[i::concurrency] for i in range(concurrency)]

    def worker(share: list[dict[str, Any]]) -> None:
        nonlocal accepted
        count = 0
        with httpx.Client(
            base_url=url, timeout=60.0, headers={"authorization": f"Bearer {OPERATOR}"}
        ) as client:
            for body in share:
                response = client.post("/api/v1/instances", json=body)
                response.raise_for_status()
                ok = bool(response.json()["accepted"])
                if ok != expect_accepted:
                    raise RuntimeError(f"unexpected answer: {response.text[:300]}")
                count += ok
        with lock:
            accepted += count

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, share) for share in shares]:
            future.result()
    return time.perf_counter() - start, accepted


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def idle_rate(proc: psutil.Process, seconds: float) -> float:
    """CPU seconds per second the process spends with no placements (status ingestion)."""
    cpu0 = cpu_seconds(proc)
    time.sleep(seconds)  # the idle window itself, not a wait for a condition
    return (cpu_seconds(proc) - cpu0) / seconds


def measure(
    proc: psutil.Process,
    url: str,
    action: Callable[[], tuple[float, int]],
    placed: int,
    idle_before: float,
    idle_s: float,
) -> tuple[dict[str, float], float, dict[str, Any]]:
    """Run `action` and wait until its work is done (instances RUNNING, no command
    waiting for an ack, the store writer's queue back to what it was), so the CPU counted
    includes what the placements left for later. Returns the figures (net: minus the
    idle rate, the mean of the windows before and after, over the whole time), the
    idle rate after, and the final stats."""
    backlog_limit = max(100, stats(url)["persister_backlog"])
    cpu0 = cpu_seconds(proc)
    start = time.monotonic()
    wall, accepted = action()
    settled = wait_settled(url, placed + accepted, backlog_limit, timeout=300)
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(proc) - cpu0
    idle_after = idle_rate(proc, idle_s)
    net = cpu - (idle_before + idle_after) / 2 * elapsed
    figures = {"wall_s": wall, "cpu_s": cpu, "net_cpu_s": net, "n": accepted}
    return figures, idle_after, settled


def stats(url: str) -> dict[str, Any]:
    """GET /api/v1/stats of the cluster."""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {OPERATOR}"}) as client:
        response = client.get("/api/v1/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def wait_settled(
    url: str, placed: int, backlog_limit: int, timeout: float, backlog_wait: float = 30.0
) -> dict[str, Any]:
    """Wait until every placed instance is RUNNING and no command waits for its ack,
    then (at most `backlog_wait` more seconds) until the store writer's queue is back
    to `backlog_limit`, what it held before: with 1,000 nodes the status snapshots
    alone may keep the writer busy. The stats returned say `backlog_settled`."""
    deadline = time.monotonic() + timeout
    while True:
        current = stats(url)
        running = current["instances_by_state"].get("RUNNING", 0)
        if running >= placed and current["pending_commands"] == 0:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{running}/{placed} RUNNING, {current['pending_commands']} pending commands"
            )
        time.sleep(0.2)
    backlog_deadline = time.monotonic() + backlog_wait
    while current["persister_backlog"] > backlog_limit and time.monotonic() < backlog_deadline:
        time.sleep(0.2)
        current = stats(url)
    current["backlog_settled"] = current["persister_backlog"] <= backlog_limit
    return current


def per_placement(result: dict[str, float], count: int) -> dict[str, float]:
    """Rates and CPU per placement of one measured batch."""
    return {
        "per_s": round(count / result["wall_s"], 1),
        "cpu_ms": round(1000.0 * result["cpu_s"] / count, 3),
        "net_cpu_ms": round(1000.0 * result["net_cpu_s"] / count, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print figures, last line JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--placements", type=int, default=2000, help="per measured batch")
    parser.add_argument("--concurrency", type=int, default=8, help="connections, second batch")
    parser.add_argument("--repeat", type=int, default=2, help="measure each batch this often")
    parser.add_argument("--idle", type=float, default=5.0, help="idle window (ingestion only)")
    parser.add_argument("--clients", type=int, default=4, help="status simulator MQTT clients")
    parser.add_argument("--log-level", default="INFO", help="the orchestrator's log level")
    parser.add_argument("--repo", type=Path, help="run the orchestrator from this checkout")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-schedule-"))
    broker, admin_password = start_broker(tmp / "broker")
    env = {}
    if args.repo is not None:
        env["PYTHONPATH"] = str(args.repo.resolve()) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cluster = ClusterProcess(
        tmp / "cluster",
        broker_port=broker.port,
        broker_admin_password=admin_password,
        operator_token=OPERATOR,
        join_token=JOIN,
        name="bench",
        log_level=args.log_level,
        env=env,
    )
    stop = threading.Event()
    sims: list[Simulator] = []
    acker: Acker | None = None
    try:
        cluster.start()
        ids = join_nodes(cluster, args.nodes)
        sim_password = secrets.token_urlsafe(16)
        with broker.admin() as admin:
            admin.ensure_role(
                "bench-node-sim",
                [
                    Acl("publishClientSend", "edge/v1/nodes/+/status"),
                    Acl("publishClientSend", "edge/v1/nodes/+/events"),
                    Acl("subscribePattern", "edge/v1/nodes/+/commands"),
                    Acl("publishClientReceive", "edge/v1/nodes/+/commands"),
                ],
            )
            admin.create_client("bench-node-sim", sim_password, ["bench-node-sim"])
        acker = Acker(broker.host, broker.port, "bench-node-sim", sim_password)
        shares = [ids[i :: args.clients] for i in range(args.clients)]
        sims = [
            Simulator(
                broker.host,
                broker.port,
                "bench-node-sim",
                sim_password,
                share,
                stop,
                tasks=acker.tasks,
            )
            for share in shares
        ]
        for sim in sims:
            sim.start()
        wait_ready(cluster, len(ids), timeout=60)
        print(
            f"{len(ids)} nodes READY (statuses at 1 Hz each); orchestrator pid {cluster.pid}",
            flush=True,
        )

        proc = psutil.Process(cluster.pid)
        url = cluster.url
        placed = 0
        runs: dict[str, list[dict[str, float]]] = {"floor": [], "sequential": [], "concurrent": []}
        idle = idle_rate(proc, args.idle)
        idles = [idle]
        settled: dict[str, Any] = {}
        settle_log: list[dict[str, Any]] = []
        error: str | None = None
        try:
            for rep in range(args.repeat):
                batches: list[tuple[str, int, bool, str | None]] = [
                    ("floor", 1, False, "elsewhere"),
                    ("sequential", 1, True, None),
                    ("concurrent", args.concurrency, True, None),
                ]
                for label, concurrency, accepted, cluster_name in batches:
                    print(f"round {rep + 1}: {label} start", flush=True)
                    bodies = [
                        place_body(i, f"{label[0]}{rep}", cluster=cluster_name)
                        for i in range(args.placements)
                    ]
                    result, idle, settled = measure(
                        proc,
                        url,
                        functools.partial(post_all, url, bodies, concurrency, accepted),
                        placed,
                        idle,
                        args.idle,
                    )
                    idles.append(idle)
                    settle_log.append(settled)
                    if not settled["backlog_settled"]:
                        print(
                            f"  the store writer did not catch up: backlog "
                            f"{settled['persister_backlog']} (CPU counted so far)",
                            flush=True,
                        )
                    placed += int(result["n"])
                    runs[label].append(per_placement(result, len(bodies)))
                print(
                    f"round {rep + 1}: sequential {runs['sequential'][-1]}; concurrent "
                    f"x{args.concurrency} {runs['concurrent'][-1]}; floor (rejected before "
                    f"deciding) {runs['floor'][-1]}; idle (ingestion) "
                    f"{', '.join(f'{100 * x:.0f}%' for x in idles[-4:])} of a core",
                    flush=True,
                )
        except TimeoutError as exc:  # report what was measured, and why it stopped
            error = str(exc)
            settled = stats(url)
            print(f"gave up waiting: {error}", flush=True)
            print(cluster.output(tail=30), flush=True)
        print(
            f"after {placed} placements: {settled['instances_by_state']}, pending commands "
            f"{settled['pending_commands']}, store writer backlog "
            f"{settled['persister_backlog']}, acker saw {acker.deploys} deploys and "
            f"{acker.terminates} terminates ({acker.disconnects} disconnects, "
            f"{len(acker.errors)} errors{': ' + acker.errors[0] if acker.errors else ''})"
        )

        def best(label: str, key: str) -> float | None:
            values = [r[key] for r in runs[label]]
            if not values:
                return None
            return max(values) if key == "per_s" else min(values)

        result_line = {
            "nodes": len(ids),
            "placements_per_batch": args.placements,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "sequential_per_s": best("sequential", "per_s"),
            "sequential_cpu_ms": best("sequential", "cpu_ms"),
            "sequential_net_cpu_ms": best("sequential", "net_cpu_ms"),
            "concurrent_per_s": best("concurrent", "per_s"),
            "concurrent_cpu_ms": best("concurrent", "cpu_ms"),
            "concurrent_net_cpu_ms": best("concurrent", "net_cpu_ms"),
            "floor_per_s": best("floor", "per_s"),
            "floor_net_cpu_ms": best("floor", "net_cpu_ms"),
            "instances_running": settled["instances_by_state"].get("RUNNING", 0),
            "instances_by_state": settled["instances_by_state"],
            "pending_commands_at_end": settled["pending_commands"],
            "store_writer_backlog_at_end": settled["persister_backlog"],
            "acker_disconnects": acker.disconnects,
            "acker_errors": len(acker.errors),
            "error": error,
            "store_writer_kept_up": all(r.get("backlog_settled", True) for r in settle_log),
            "idle_cpu_percent": [round(100 * x, 1) for x in idles],
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "log_level": args.log_level,
            "repo": str(args.repo) if args.repo else None,
            "runs": runs,
        }
        print(json.dumps(result_line))
        return 0 if error is None else 1
    finally:
        stop.set()
        for sim in sims:
            sim.join(5)
            sim.close()
        if acker is not None:
            acker.close()
        cluster.stop()
        broker.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
