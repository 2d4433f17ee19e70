"""Mass failover: a cluster running 500 instances goes dark; how soon do they all run
on the other one, and what does it cost the root?

Real processes on loopback (`tests.harness.system.LocalSystem`): a ``root-orchestrator``
(SQLite) and two ``cluster-orchestrator``s, each with its own Mosquitto (dynamic
security). The nodes are simulated with real MQTT, as in `bench/cluster_schedule.py`:
N nodes per cluster joined through the cluster's API, 1 Hz statuses from a few paho
clients (`bench.cluster_ingest.Simulator`) and a command side (`Acker`) that acks each
DEPLOY on the node's events topic and lists the task RUNNING in the node's statuses
from then on. 500 native node engines with 500 real tasks do not fit on this host;
everything above the node's MQTT session is the real code.

Steps: only cluster A exists while ``--jobs`` jobs of ``--replicas`` replicas each
(500 instances by default) are deployed and RUNNING (seen at the root); cluster B
starts and is READY at the root; then A's orchestrator, its broker and its simulated
nodes get SIGKILL (``LocalSystem.kill_cluster`` and the simulators' connections
dropped). The clock runs from the SIGKILL until the root's event stream has shown a
RUNNING instance on B for every replica. Reported: that time and its parts (the
root marks A UNREACHABLE / LOST, the first instance LOST, the first and the last
RUNNING on B), the root's CPU during it (user + system, all threads), and the root's
cluster calls. The root is told to notice a silent cluster in seconds
(``--unreachable-after``, ``--lost-after``, ``--report-interval``): with the defaults
(15 s, 60 s, 5 s) detection alone takes longer than the goal.

    .venv/bin/python -m bench.mass_failover [--jobs 10] [--replicas 50] [--nodes 10]
    /tmp/old/.venv/bin/python bench/mass_failover.py --repo /tmp/old

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


if str(REPO_ROOT) not in sys.path:  # run as a script: bench/<name>.py
    sys.path.insert(0, str(REPO_ROOT))
from bench import repo_from_argv  # noqa: E402

if __name__ == "__main__":  # the harness (and so the processes) of the measured checkout
    sys.path.insert(0, str(repo_from_argv(sys.argv[1:], REPO_ROOT)))

TARGET_S = 10.0


class StateWatcher(threading.Thread):
    """Follows the root's event stream (instance.state and cluster.liveness events)."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True, name="sse")
        self.url = url
        self.token = token
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            timeout = httpx.Timeout(10, read=None)
            with (
                httpx.Client(base_url=self.url, timeout=timeout) as client,
                client.stream(
                    "GET",
                    "/api/v1/events/stream",
                    headers={"authorization": f"Bearer {self.token}"},
                ) as response,
            ):
                response.raise_for_status()
                self.ready.set()
                for line in response.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        event["_seen"] = time.perf_counter()
                        self.events.put(event)
        except BaseException as exc:
            self.error = exc
            self.ready.set()


def node_body(name: str) -> dict[str, Any]:
    """A simulated node's join request (4 cores, 4 GiB, native)."""
    return {
        "info": {
            "name": name,
            "hostname": name,
            "arch": "amd64",
            "cpu_cores": 4,
            "memory_mib": 4096,
            "disk_mib": 32000,
            "runtimes": ["native"],
        }
    }


def run_site(
    name: str, url: str, broker_port: int, data_dir: Path, nodes: int, join_token: str
) -> None:
    """The simulated nodes of one cluster, in a process of their own (so that the
    benchmark's own threads never delay their statuses): joined, 1 Hz statuses,
    commands acked. Prints "ready" once running; runs until killed."""
    from bench.cluster_ingest import Simulator
    from bench.cluster_schedule import Acker
    from cluster_orchestrator.broker import Acl, DynsecAdmin

    stop = threading.Event()
    ids = []
    with httpx.Client(
        base_url=url, timeout=30, headers={"authorization": f"Bearer {join_token}"}
    ) as http:
        for i in range(nodes):
            response = http.post("/api/v1/nodes", json=node_body(f"{name}-sim{i:03d}"))
            response.raise_for_status()
            ids.append(response.json()["node_id"])
    admin_password = (data_dir / "broker-admin-password").read_text().strip()
    password = secrets.token_urlsafe(16)
    with DynsecAdmin("127.0.0.1", broker_port, "admin", admin_password) as admin:
        admin.ensure_role(
            "bench-node-sim",
            [
                Acl("publishClientSend", "edge/v1/nodes/+/status"),
                Acl("publishClientSend", "edge/v1/nodes/+/events"),
                Acl("subscribePattern", "edge/v1/nodes/+/commands"),
                Acl("publishClientReceive", "edge/v1/nodes/+/commands"),
            ],
        )
        admin.create_client("bench-node-sim", password, ["bench-node-sim"])
    acker = Acker("127.0.0.1", broker_port, "bench-node-sim", password)
    sims = [
        Simulator(
            "127.0.0.1", broker_port, "bench-node-sim", password, ids[i::2], stop, tasks=acker.tasks
        )
        for i in range(2)
    ]
    for sim in sims:
        sim.start()
    print("ready", flush=True)
    stop.wait()


class SimulatedSite:
    """`run_site` as a child process (SIGKILLed with its cluster)."""

    def __init__(self, cluster: Any, nodes: int, join_token: str) -> None:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "site",
            cluster.name,
            cluster.url,
            str(cluster.broker_port),
            str(cluster.process.data_dir),
            str(nodes),
            join_token,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT)  # the simulators are this checkout's (bench code)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"simulated site {cluster.name} did not start: {line!r}")

    def close(self) -> None:
        """The site goes dark at once (SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def root_counters(system: Any) -> dict[str, float]:
    """Placement and DELETE calls to clusters and passes, from the root's /metrics."""
    with system.root_client(timeout=30) as http:
        text = http.get("/metrics").text
    out = {
        "place_calls": 0.0,
        "place_batch_calls": 0.0,
        "terminate_calls": 0.0,
        "passes": 0.0,
        "reports": 0.0,
    }
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.startswith("edge_root_cluster_requests_total{"):
            if 'operation="place"' in series:
                out["place_calls"] += float(value)
            elif 'operation="place_batch"' in series:
                out["place_batch_calls"] += float(value)
            elif 'operation="terminate"' in series:
                out["terminate_calls"] += float(value)
        elif series == "edge_root_reconcile_duration_seconds_count":
            out["passes"] += float(value)
        elif series.startswith("edge_root_cluster_reports_total"):
            out["reports"] += float(value)
    return out


def wait_running_on(
    watcher: StateWatcher,
    cluster_id: str,
    wanted: int,
    timeout: float,
    marks: dict[str, float],
    lost_cluster: str | None = None,
) -> set[str]:
    """Consume events until `wanted` distinct replicas (job, replica) are RUNNING on
    `cluster_id`; record when things first happened in `marks` (perf_counter)."""
    running: dict[tuple[str, int], str] = {}
    deadline = time.monotonic() + timeout
    while len(running) < wanted:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"only {len(running)}/{wanted} RUNNING on {cluster_id} after {timeout}s "
                f"(stream error: {watcher.error!r})"
            )
        try:
            event = watcher.events.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        seen = event["_seen"]
        kind, state = event.get("kind"), event.get("state")
        if kind == "cluster.liveness" and event.get("cluster_id") == lost_cluster:
            marks.setdefault(f"cluster_{str(state).lower()}", seen)
        if kind != "instance.state":
            continue
        if state == "LOST" and lost_cluster is not None:
            marks.setdefault("first_lost", seen)
            marks["last_lost"] = seen
        if state == "RUNNING" and event.get("cluster_id") == cluster_id:
            replica = (event.get("data") or {}).get("replica", event["instance_id"])
            key = (event["job_id"], replica)
            if key not in running:
                marks.setdefault("first_running", seen)
                running[key] = event["instance_id"]
                marks["last_running"] = seen
    return set(running.values())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the last line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "site":
        name, url, port, data_dir, nodes, token = argv[1:7]
        run_site(name, url, int(port), Path(data_dir), int(nodes), token)
        return 0
    from tests.harness.system import JOIN_TOKEN, LocalSystem

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=50, help="replicas per job")
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes per cluster")
    parser.add_argument("--report-interval", type=float, default=1.0)
    parser.add_argument("--unreachable-after", type=float, default=3.0)
    parser.add_argument("--lost-after", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--repo", default=str(REPO_ROOT), help="checkout measured")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    total = args.jobs * args.replicas
    workdir = Path(tempfile.mkdtemp(prefix="mass-failover-"))
    settings = {
        "report_interval": args.report_interval,
        "cluster_unreachable_after": args.unreachable_after,
        "cluster_lost_after": args.lost_after,
    }
    result: dict[str, Any] = {
        "repo": args.repo,
        "instances": total,
        "jobs": args.jobs,
        "nodes_per_cluster": args.nodes,
        "root_settings": settings,
        "target_s": TARGET_S,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    system = LocalSystem(workdir, root_settings=settings, log_level="WARNING")
    sites: list[SimulatedSite] = []
    watcher: StateWatcher | None = None
    try:
        system.start_root()
        a = system.add_cluster("a", nodes=0)
        site_a = SimulatedSite(a, args.nodes, JOIN_TOKEN)
        sites.append(site_a)
        system.wait_clusters_ready(["a"], timeout=60)
        watcher = StateWatcher(system.root.url, system.root.operator_token)
        watcher.start()
        if not watcher.ready.wait(10):
            raise TimeoutError("event stream not open")
        views = system.root_clusters()
        a_id = views["a"]["id"]
        started = time.perf_counter()
        with system.root_client(timeout=30) as http:
            for j in range(args.jobs):
                body = {
                    "name": f"mass-{j}",
                    "runtime": "native",
                    "command": ["sleep", "3600"],
                    "replicas": args.replicas,
                    "resources": {"cpu": 0.0, "memory_mib": 8},
                }
                http.post("/api/v1/jobs", json=body).raise_for_status()
        wait_running_on(watcher, a_id, total, args.timeout, {})
        result["deploy_s"] = round(time.perf_counter() - started, 2)
        print(f"{total} instances RUNNING on cluster a in {result['deploy_s']} s", flush=True)

        b = system.add_cluster("b", nodes=0)
        sites.append(SimulatedSite(b, args.nodes, JOIN_TOKEN))
        system.wait_clusters_ready(["a", "b"], timeout=60)
        b_id = system.root_clusters()["b"]["id"]
        while not watcher.events.empty():  # what happened before the kill
            watcher.events.get_nowait()
        counters0 = root_counters(system)
        cpu0 = cpu_of(system.root.pid)
        kill = time.perf_counter()
        site_a.close()
        system.kill_cluster("a")
        marks: dict[str, float] = {}
        wait_running_on(watcher, b_id, total, args.timeout, marks, lost_cluster=a_id)
        failover = time.perf_counter() - kill
        cpu = cpu_of(system.root.pid) - cpu0
        counters = {k: v - counters0[k] for k, v in root_counters(system).items()}
        result.update(
            {
                "failover_s": round(failover, 2),
                "root_cpu_s": round(cpu, 2),
                "root_cpu_percent_of_one_core": round(100 * cpu / failover, 1),
                "root_cpu_ms_per_instance": round(1000 * cpu / total, 2),
                "marks_s": {k: round(v - kill, 2) for k, v in sorted(marks.items())},
                "root_counters": counters,
                "met": failover <= TARGET_S,
            }
        )
    finally:
        if watcher is not None:
            watcher.stop.set()
        for site in sites:
            site.close()
        system.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    marks_text = ", ".join(f"{k} {v}" for k, v in result["marks_s"].items())
    print(
        f"failover of {total} instances: {result['failover_s']} s (goal <= {TARGET_S:g} s); "
        f"root CPU {result['root_cpu_s']} s ({result['root_cpu_percent_of_one_core']}% of a "
        f"core, {result['root_cpu_ms_per_instance']} ms per instance)\n  after the kill: "
        f"{marks_text}\n  root: {result['root_counters']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
