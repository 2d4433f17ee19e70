"""Deploy latency through the whole system: POST /jobs at the root -> RUNNING at the root.

Starts real processes on loopback with `tests.harness.system.LocalSystem`: a
`root-orchestrator` (SQLite store by default), C `cluster-orchestrator`s (each starts its
own Mosquitto with dynamic security and reports to the root) and N native `node-engine`s
per cluster. Then, per mode, D one-replica native jobs (``sleep`` with a small CPU and
memory request):

* ``sequential``: one deploy at a time;
* ``concurrent``: K deploys in flight (K worker threads, each submitting its next job as
  soon as its previous one runs).

A deploy's latency is measured by the client: from just before ``POST /api/v1/jobs`` to
the moment the root's live event stream (``GET /api/v1/events/stream``) delivers the
instance's ``RUNNING`` transition, i.e. RUNNING is visible at the root. The root's event
log also gives the split per phase (one clock, the root's): job submitted -> SCHEDULED
(root decision) -> ASSIGNED (the cluster accepted and chose a node) -> RUNNING (the
node's task event reached the cluster, which reported it to the root). Client-side
splits complete it (root and client share the host's wall clock): POST started ->
``job.submitted`` (request handling before the service recorded the job), the POST
round trip, and the RUNNING event's time stamp -> its receipt on the stream.

Every job of a mode stays running until the mode ends (so the nodes carry up to D
tasks); then all are deleted and the next mode starts on empty nodes.

Per mode, `cpu_ms_per_deploy` is the CPU time (user + system) each process group used
during the mode divided by the deploys: root, cluster (orchestrators), broker
(Mosquitto) and engines, and their total.

The floor (`bench/floor.py`), measured in the same run before the system starts: the
same path with trivial handlers (FastAPI POST -> MQTT publish -> fork/exec -> MQTT ack
-> event on a stream), the same client and the same number of deploys per mode.
`ratio_p50_to_floor` is the mode's p50 over the floor's (goal <= 3).

``--repo PATH`` measures another checkout (its harness, hence its processes; run it
with that checkout's interpreter): the floor and this script stay this checkout's.

    .venv/bin/python -m bench.deploy_latency [--deploys 200] [--concurrency 16]
        [--clusters 1] [--nodes 4] [--store-url URL] [--keep] [--no-floor]
    /tmp/old/.venv/bin/python bench/deploy_latency.py --repo /tmp/old

The last line is one JSON object with p50_ms / p95_ms / p99_ms / max_ms per mode.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


if str(REPO_ROOT) not in sys.path:  # run as a script: bench/<name>.py
    sys.path.insert(0, str(REPO_ROOT))
from bench import repo_from_argv  # noqa: E402

if __name__ == "__main__":  # the harness (and so the processes) of the measured checkout
    sys.path.insert(0, str(repo_from_argv(sys.argv[1:], REPO_ROOT)))

if TYPE_CHECKING:
    from tests.harness.system import LocalSystem

TARGET_P99_MS = 500.0
TARGET_RATIO_TO_FLOOR = 3.0


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50 / p95 / p99 and max of milliseconds (rounded to 0.1 ms)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]

    return {
        "n": len(ordered),
        "p50_ms": round(rank(50), 1),
        "p95_ms": round(rank(95), 1),
        "p99_ms": round(rank(99), 1),
        "max_ms": round(ordered[-1], 1),
        "mean_ms": round(sum(ordered) / len(ordered), 1),
    }


Seen = tuple[float, float, float]
"""When a RUNNING event arrived: (perf_counter, wall clock), and the event's own `ts`."""


class RunningWatcher:
    """Follows the root's event stream; wakes the waiter of a job when its instance
    becomes RUNNING (keeps the time of receipt and the event's time stamp)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._lock = threading.Lock()
        self._waiters: dict[str, queue.SimpleQueue[Seen]] = {}
        self._early: dict[str, Seen] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sse", daemon=True)

    def start(self, timeout: float = 10.0) -> RunningWatcher:
        """Connect the stream (in a thread) and wait until it is open."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"event stream not open: {self._error!r}")
        return self

    @property
    def error(self) -> BaseException | None:
        """Why the stream ended, if it did."""
        return self._error

    def stop(self) -> None:
        """Ask the thread to stop at the next event or keep-alive (daemon thread)."""
        self._stop.set()

    def expect(self, job_id: str) -> queue.SimpleQueue[Seen]:
        """A queue that receives when the job's RUNNING was seen (see `Seen`)."""
        q: queue.SimpleQueue[Seen] = queue.SimpleQueue()
        with self._lock:
            if job_id in self._early:
                q.put(self._early.pop(job_id))
            else:
                self._waiters[job_id] = q
        return q

    def _lines(self, client: httpx.Client) -> Iterator[str]:
        with client.stream(
            "GET",
            "/api/v1/events/stream",
            params={"kind": "instance.state"},
            headers={"authorization": f"Bearer {self.token}"},
        ) as response:
            response.raise_for_status()
            self._ready.set()
            yield from response.iter_lines()

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=httpx.Timeout(10, read=None)) as c:
                for line in self._lines(c):
                    if self._stop.is_set():
                        return
                    if not line.startswith("data: "):
                        continue
                    now = time.perf_counter(), time.time()
                    event = json.loads(line[6:])
                    if event.get("state") != "RUNNING" or not event.get("job_id"):
                        continue
                    seen = (now[0], now[1], float(event["ts"]))
                    with self._lock:
                        waiter = self._waiters.pop(event["job_id"], None)
                        if waiter is None:
                            self._early.setdefault(event["job_id"], seen)
                    if waiter is not None:
                        waiter.put(seen)
        except BaseException as exc:  # reported by the waiters' timeouts
            self._error = exc
            self._ready.set()


def cpu_seconds(system: LocalSystem) -> dict[str, float]:
    """CPU time (user + system) used so far by the root, the cluster orchestrators,
    the brokers and the node engines (each group summed)."""
    groups: dict[str, list[int]] = {"root": [system.root.pid], "clusters": [], "brokers": []}
    groups["engines"] = []
    for cluster in system.clusters.values():
        groups["clusters"].append(cluster.process.pid)
        groups["brokers"] += [p.pid for p in cluster.broker_processes()]
        groups["engines"] += [e.pid for e in cluster.engines if e.running()]
    return cpu_of(groups)


#: `cpu_seconds` group -> its name in `cpu_ms_per_deploy`
GROUP_NAMES = {"root": "root", "clusters": "cluster", "brokers": "broker", "engines": "engines"}


def cpu_ms_per_deploy(
    before: dict[str, float], after: dict[str, float], deploys: int
) -> dict[str, float]:
    """CPU ms per deploy per process group (and the total) between two readings."""
    out = {
        GROUP_NAMES.get(k, k): round(1000.0 * (after[k] - before[k]) / max(deploys, 1), 2)
        for k in after
    }
    out["total"] = round(sum(out.values()), 2)
    return out


def cpu_of(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU time (user + system) used so far by each group of processes."""
    out: dict[str, float] = {}
    for name, pids in groups.items():
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        out[name] = total
    return out


#: Root metrics whose change over a mode is reported (summed over their label sets).
ROOT_COUNTERS = {
    "reconcile_passes": "edge_root_reconcile_duration_seconds_count",
    "reconcile_seconds": "edge_root_reconcile_duration_seconds_sum",
    "cluster_reports": "edge_root_cluster_reports_total",
    "place_calls": 'edge_root_cluster_request_duration_seconds_count{operation="place"}',
    "place_call_seconds": 'edge_root_cluster_request_duration_seconds_sum{operation="place"}',
}


def root_counters(system: LocalSystem) -> dict[str, float]:
    """The ROOT_COUNTERS values now, from the root's /metrics."""
    with system.root_client(timeout=30) as http:
        text = http.get("/metrics").text
    out = dict.fromkeys(ROOT_COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        for key, wanted in ROOT_COUNTERS.items():
            if series == wanted or (series.split("{", 1)[0] == wanted and "{" not in wanted):
                out[key] += float(value)
    return out


def describe(system: LocalSystem, job_id: str) -> str:
    """The root's and the clusters' view of a job (for failure messages)."""
    try:
        view = system.job(job_id)
    except (httpx.HTTPError, AssertionError) as exc:
        return f"cannot read job {job_id}: {exc!r}"
    lines = [f"root: {view['state']} {view['reason']!r}"]
    for inst in view["instances"]:
        where = f"{inst['cluster_name']}/{inst['node_name']}"
        lines.append(f"  {inst['id']} {inst['state']} on {where}")
        cluster = system.clusters.get(inst["cluster_name"] or "")
        if cluster is None:
            continue
        with contextlib.suppress(httpx.HTTPError), cluster.client() as http:
            there = http.get(f"/api/v1/instances/{inst['id']}").json()
            events = [(e["state"], e["reason"]) for e in there.get("events", [])]
            lines.append(f"    cluster: {there.get('state')} {events}")
    return "\n".join(lines)


def job_body(name: str, command: list[str], cpu: float = 0.0) -> dict[str, Any]:
    """A small one-replica native job (8 MiB; no CPU request by default: all nodes
    share this host's cores and report its CPU use, so on a machine saturated by other
    work every node would refuse even 0.01 core)."""
    return {
        "name": name,
        "runtime": "native",
        "command": command,
        "replicas": 1,
        "resources": {"cpu": cpu, "memory_mib": 8},
    }


def run_mode(
    system: LocalSystem,
    watcher: RunningWatcher,
    mode: str,
    deploys: int,
    concurrency: int,
    command: list[str],
    timeout: float,
    cpu: float = 0.0,
) -> tuple[list[float], list[str], dict[str, list[float]], dict[str, float]]:
    """Run `deploys` deploys with `concurrency` in flight.

    Returns the client latencies, the job ids, the client-side splits (ms: the POST
    round trip, and the RUNNING event's time stamp -> its receipt on the stream) and
    the wall-clock time each POST started, by job id (to compare with the root's
    `job.submitted` time stamp: same host, same clock).
    """
    latencies: list[float] = []
    job_ids: list[str] = []
    client: dict[str, list[float]] = {"post_round_trip": [], "running_to_stream": []}
    posted_at: dict[str, float] = {}
    lock = threading.Lock()
    counter = iter(range(deploys))

    def worker() -> None:
        with system.root_client(timeout=30) as http:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                wall = time.time()
                started = time.perf_counter()
                response = http.post("/api/v1/jobs", json=job_body(f"{mode}-{n}", command, cpu))
                answered = time.perf_counter()
                response.raise_for_status()
                job_id = response.json()["id"]
                try:
                    seen = watcher.expect(job_id).get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(
                        f"{mode}-{n} ({job_id}) not RUNNING (by the event stream) after "
                        f"{timeout}s; stream error: {watcher.error!r}\n"
                        f"{describe(system, job_id)}\n{system.logs()}"
                    ) from None
                with lock:
                    latencies.append((seen[0] - started) * 1000.0)
                    job_ids.append(job_id)
                    posted_at[job_id] = wall
                    client["post_round_trip"].append((answered - started) * 1000.0)
                    client["running_to_stream"].append((seen[1] - seen[2]) * 1000.0)

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return latencies, job_ids, client, posted_at


def phases(system: LocalSystem, posted_at: dict[str, float]) -> dict[str, list[float]]:
    """From the root's event log: ms from job.submitted to the instance's first
    SCHEDULED, ASSIGNED and RUNNING, and between those; and from the client's POST
    (`posted_at`, wall clock by job id) to job.submitted."""
    job_ids = set(posted_at)
    submitted: dict[str, float] = {}
    firsts: dict[tuple[str, str], float] = {}
    since = 0
    with system.root_client(timeout=30) as http:
        while True:
            page = http.get("/api/v1/events", params={"since": since, "limit": 1000}).json()
            for event in page["events"]:
                job_id = event.get("job_id")
                if job_id not in job_ids:
                    continue
                if event["kind"] == "job.submitted":
                    submitted[job_id] = event["ts"]
                elif event["kind"] == "instance.state":
                    firsts.setdefault((job_id, event["state"]), event["ts"])
            if not page["events"]:
                break
            since = page["next_since"]
    out: dict[str, list[float]] = {
        "post_to_submitted": [],
        "submit_to_scheduled": [],
        "scheduled_to_assigned": [],
        "assigned_to_running": [],
        "submit_to_running": [],
    }
    for job_id, t0 in submitted.items():
        s, a, r = (firsts.get((job_id, k)) for k in ("SCHEDULED", "ASSIGNED", "RUNNING"))
        if s is None or a is None or r is None:
            continue
        out["post_to_submitted"].append((t0 - posted_at[job_id]) * 1000.0)
        out["submit_to_scheduled"].append((s - t0) * 1000.0)
        out["scheduled_to_assigned"].append((a - s) * 1000.0)
        out["assigned_to_running"].append((r - a) * 1000.0)
        out["submit_to_running"].append((r - t0) * 1000.0)
    return out


def delete_all(system: LocalSystem, job_ids: list[str], command: list[str]) -> None:
    """Delete the jobs and wait until no task process of theirs is left."""
    from tests.harness.procs import count_processes
    from tests.harness.system import wait_for

    with system.root_client(timeout=30) as http:
        for job_id in job_ids:
            http.delete(f"/api/v1/jobs/{job_id}").raise_for_status()
    wait_for(lambda: count_processes(command) == 0, 120, "every task process to exit", interval=0.5)


def _floor_module() -> Any:
    """`bench/floor.py` of this checkout, by path (the measured checkout may lack it)."""
    spec = importlib.util.spec_from_file_location("_deploy_floor", REPO_ROOT / "bench/floor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_floor(
    deploys: int, concurrency: int, modes: list[str], timeout: float
) -> dict[str, Any]:
    """The floor system (`bench/floor.py`) measured per mode, as the real one is."""
    floor = _floor_module()
    workdir = Path(tempfile.mkdtemp(prefix="deploy-floor-"))
    system = floor.FloorSystem(workdir)
    command = ["sleep", f"3600.{uuid.uuid4().int % 10**6:06d}"]
    out: dict[str, Any] = {}
    try:
        system.start()
        watcher = RunningWatcher(system.url, "floor").start()
        for mode in modes:
            inflight = 1 if mode == "sequential" else concurrency
            before = cpu_of(system.pids())
            started = time.perf_counter()
            latencies, _ids, _client, _posted = run_mode(
                system, watcher, f"floor-{mode}", deploys, inflight, command, timeout
            )
            wall = time.perf_counter() - started
            out[mode] = {
                "in_flight": inflight,
                **percentiles(latencies),
                "deploys_per_s": round(len(latencies) / wall, 1),
                "cpu_ms_per_deploy": cpu_ms_per_deploy(before, cpu_of(system.pids()), deploys),
            }
        watcher.stop()
    finally:
        system.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; the last line is JSON."""
    from tests.harness.system import LocalSystem

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deploys", type=int, default=200, help="deploys per mode")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight (concurrent)")
    parser.add_argument("--clusters", type=int, default=1, help="cluster orchestrators")
    parser.add_argument("--nodes", type=int, default=4, help="node engines per cluster")
    parser.add_argument("--store-url", default=None, help="root store (default: SQLite)")
    parser.add_argument(
        "--cluster-arg",
        action="append",
        default=[],
        help="extra cluster-orchestrator flag, e.g. --cluster-arg=--report-debounce=0.05",
    )
    parser.add_argument("--modes", default="sequential,concurrent", help="modes to run")
    parser.add_argument("--timeout", type=float, default=60.0, help="per deploy, seconds")
    parser.add_argument("--cpu", type=float, default=0.0, help="CPU request of each job")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument(
        "--repo", default=str(REPO_ROOT), help="checkout whose processes are measured"
    )
    args = parser.parse_args(argv)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto is not installed", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="deploy-latency-"))
    command = ["sleep", f"3600.{uuid.uuid4().int % 10**6:06d}"]
    result: dict[str, Any] = {
        "deploys_per_mode": args.deploys,
        "clusters": args.clusters,
        "nodes_per_cluster": args.nodes,
        "store": "sqlite" if args.store_url is None else args.store_url.split(":", 1)[0],
        "cluster_args": args.cluster_arg,
        "cpu_request": args.cpu,
        "target_p99_ms": TARGET_P99_MS,
        "repo": args.repo,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    modes = args.modes.split(",")
    if not args.no_floor:
        result["floor"] = measure_floor(args.deploys, args.concurrency, modes, args.timeout)
    system = LocalSystem(
        workdir,
        root_store_url=args.store_url,
        cluster_args=args.cluster_arg,
        log_level="WARNING",
    )
    try:
        system.start_root()
        for c in range(args.clusters):
            system.add_cluster(f"c{c}", nodes=args.nodes, wait=False)
        for c in range(args.clusters):
            names = [f"c{c}-n{i}" for i in range(args.nodes)]
            system.wait_nodes_ready(f"c{c}", names, 120)
        system.wait_clusters_ready(timeout=120)
        watcher = RunningWatcher(system.root.url, system.root.operator_token).start()
        for mode in modes:
            concurrency = 1 if mode == "sequential" else args.concurrency
            cpu_before = cpu_seconds(system)
            counters_before = root_counters(system)
            started = time.perf_counter()
            latencies, job_ids, client, posted_at = run_mode(
                system, watcher, mode, args.deploys, concurrency, command, args.timeout, args.cpu
            )
            wall = time.perf_counter() - started
            cpu_after = cpu_seconds(system)
            counters = {
                k: round(v - counters_before[k], 3) for k, v in root_counters(system).items()
            }
            split = phases(system, posted_at)
            result[mode] = {
                "in_flight": concurrency,
                **percentiles(latencies),
                "deploys_per_s": round(len(latencies) / wall, 1),
                "seconds": round(wall, 2),
                # share of one core used during the mode, per process group
                "cpu_percent": {
                    k: round(100.0 * (cpu_after[k] - cpu_before[k]) / wall, 1) for k in cpu_after
                },
                "cpu_ms_per_deploy": cpu_ms_per_deploy(cpu_before, cpu_after, len(latencies)),
                "root_events": {k: percentiles(v) for k, v in split.items()},
                "client": {k: percentiles(v) for k, v in client.items()},
                "root_counters": counters,
            }
            floor = result.get("floor", {}).get(mode)
            if floor and floor.get("p50_ms"):
                result[mode]["ratio_p50_to_floor"] = round(
                    result[mode]["p50_ms"] / floor["p50_ms"], 2
                )
            delete_all(system, job_ids, command)
        watcher.stop()
    finally:
        system.close()  # and SIGKILLs anything left
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)

    print(
        f"deploy latency: {args.deploys} one-replica native jobs per mode, {args.clusters} "
        f"cluster(s) x {args.nodes} node(s), POST /jobs -> RUNNING seen at the root (ms)"
    )
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    for mode in modes:
        r = result[mode]
        print(
            f"  {mode:10s} in flight {r['in_flight']:2d}: p50 {r['p50_ms']:7.1f}  "
            f"p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f}  max {r['max_ms']:7.1f}  "
            f"({r['deploys_per_s']} deploys/s)"
        )
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu_percent"].items())
        print(f"      CPU (% of one core): {cpu}")
        per = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_deploy"].items())
        print(f"      CPU ms per deploy: {per}")
        floor = result.get("floor", {}).get(mode)
        if floor:
            fper = ", ".join(f"{k} {v:.1f}" for k, v in floor["cpu_ms_per_deploy"].items())
            print(
                f"      floor: p50 {floor['p50_ms']:.1f}  p95 {floor['p95_ms']:.1f}  "
                f"p99 {floor['p99_ms']:.1f}; ratio p50 / floor "
                f"{r.get('ratio_p50_to_floor')} (goal <= {TARGET_RATIO_TO_FLOOR:g}); "
                f"floor CPU ms per deploy: {fper}"
            )
        c = r["root_counters"]
        passes, calls = max(c["reconcile_passes"], 1), max(c["place_calls"], 1)
        print(
            f"      root: {c['cluster_reports']:.0f} cluster reports, "
            f"{c['reconcile_passes']:.0f} passes (mean "
            f"{1000 * c['reconcile_seconds'] / passes:.1f} ms), "
            f"{c['place_calls']:.0f} placement calls (mean "
            f"{1000 * c['place_call_seconds'] / calls:.1f} ms)"
        )
        for phase, figures in [*r["root_events"].items(), *r["client"].items()]:
            print(
                f"      {phase:22s} p50 {figures.get('p50_ms', 0):7.1f}  "
                f"p95 {figures.get('p95_ms', 0):7.1f}  p99 {figures.get('p99_ms', 0):7.1f}"
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
