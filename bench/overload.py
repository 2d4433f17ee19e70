"""Overload: does local shedding keep a high-priority inference task within its budget?

One real ``node-engine`` (native runtime, status every 1 s) on a real Mosquitto with
the test harness's join endpoint and service client (tests/harness/). On it, built-in
inference workers (``python -m node_engine.inference.worker``, ONNX Runtime, one
intra-op thread each) run the model of ``scripts/make_test_model.py`` (~10 ms per
inference on one core of the reference machine):

* ``high``: priority 900, ``latency_budget_ms`` = --budget-ms (100), --high-fps (50)
  frames per second, i.e. about half a core;
* ``low-1`` .. ``low-N``: priorities 10, 20, ..., --low-fps (100) frames per second
  each, i.e. a whole core each; together with ``high`` more CPU than the host has.

Modes (--modes, default all three), each on a fresh engine:

* ``off``: ``--shedding off``;
* ``on``: shedding on with its defaults (cpu 90/70 % for 5 s, latency p95/budget
  1.0/0.8, a step every 3 s);
* ``foreign``: shedding on, plus --foreign-load cores of busy loops this script starts
  itself, outside the engine (other work on the host, which shedding cannot relieve:
  the high task stays late with every low task paused, and the shedder says so).

After --warmup seconds (long enough for the shedder to settle) the figures are taken over
--duration seconds from the workers' own stats files (frame counts and the latency
histogram, subtracted between the two readings; percentiles are histogram bucket upper
bounds, at most 10 % above the exact value). Per phase (warm-up, window) the host's CPU
is split, from psutil's counters as the engine's monitor reads them (``cpu_times``
deltas): busy cores in all, cores used by the engine process and its descendants (its
tasks), and the rest: foreign work (of which the bench's own busy loops).

    .venv/bin/python bench/overload.py [--duration 60] [--warmup 25] [--low 3]
        [--modes off,on,foreign] [--foreign-load 1.6] [--repo PATH]

``--repo PATH`` runs the engine and workers of another checkout (its ``.venv``).

Prints per mode and task: frames executed and dropped, latency p50/p95/p99, budget
violations, the CPU split, the shed/resume events and what the shedder said without
acting, and a line explaining the high task's p95; the last line is one JSON object with
``high_p95_ms_no_shedding``, ``high_p95_ms_shedding``, ``high_p95_ms_foreign`` and the
CPU split per mode. Target: with shedding (and no foreign load) the high-priority p95
stays within its budget; without, it does not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node_engine.inference.stats import STATS_ENV, LatencyHistogram  # noqa: E402
from schemas.common import Runtime  # noqa: E402
from schemas.job import TaskSpec, TaskState  # noqa: E402
from scripts.make_test_model import write_model  # noqa: E402
from tests.fixtures.broker import start_test_broker  # noqa: E402
from tests.harness import FakeCluster  # noqa: E402
from tests.harness.cluster import EngineUnderTest  # noqa: E402


def read_stats(path: Path) -> dict[str, Any] | None:
    """The worker's stats document (None before the first write)."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def figures(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Counts and percentiles over the interval between two readings of a stats file."""
    b = (before or {}).get("totals") or {}
    a = (after or {}).get("totals") or {}
    hist = LatencyHistogram.from_dict(a.get("histogram")).minus(
        LatencyHistogram.from_dict(b.get("histogram"))
    )
    return {
        "executed": int(a.get("frames_executed", 0)) - int(b.get("frames_executed", 0)),
        "dropped": int(a.get("frames_dropped", 0)) - int(b.get("frames_dropped", 0)),
        "violations": int(a.get("budget_violations", 0)) - int(b.get("budget_violations", 0)),
        "p50_ms": hist.percentile(50),
        "p95_ms": hist.percentile(95),
        "p99_ms": hist.percentile(99),
    }


def worker_spec(
    model: Path,
    stats: Path,
    *,
    fps: float,
    priority: int,
    queue: int,
    budget_ms: float | None,
    python: str = sys.executable,
) -> TaskSpec:
    command = [
        python,
        "-m",
        "node_engine.inference.worker",
        "--model",
        str(model),
        "--target-fps",
        f"{fps:g}",
        "--queue",
        str(queue),
        "--drop-policy",
        "drop_oldest",
    ]
    if budget_ms is not None:
        command += ["--budget-ms", f"{budget_ms:g}"]
    return TaskSpec(
        runtime=Runtime.NATIVE,
        command=command,
        env={STATS_ENV: str(stats)},
        priority=priority,
        latency_budget_ms=budget_ms,
    )


BUSY_LOOP = """
import sys, time
duty, period = float(sys.argv[1]), 0.01
while True:
    end = time.perf_counter() + duty * period
    while time.perf_counter() < end:
        pass
    if duty < 1.0:
        time.sleep(period * (1.0 - duty))
"""


def start_foreign_load(cores: float) -> list[subprocess.Popen[bytes]]:
    """Busy loops outside the engine using about `cores` cores in all (fewer when the host
    is saturated: they compete like any other process)."""
    if cores <= 0:
        return []
    n = math.ceil(cores)
    duty = cores / n
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, f"{duty:.3f}"]) for _ in range(n)]


def stop_foreign_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(10)


def _proc_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


class CpuSnapshot:
    """CPU counters at one instant: the host's busy time (psutil ``cpu_times``, busy =
    total - idle - iowait: what ``cpu_percent`` uses), the engine process, each of its
    descendants (its tasks), and the bench's busy loops."""

    def __init__(self, engine_pid: int, foreign: list[subprocess.Popen[bytes]]) -> None:
        self.at = time.monotonic()
        t = psutil.cpu_times()
        self.host_total = float(sum(t))
        self.host_busy = self.host_total - float(t.idle) - float(getattr(t, "iowait", 0.0))
        engine = psutil.Process(engine_pid)
        self.engine = _proc_cpu(engine)
        self.tasks: dict[tuple[int, float], float] = {}
        for child in engine.children(recursive=True):
            try:
                self.tasks[(child.pid, child.create_time())] = _proc_cpu(child)
            except psutil.Error:
                continue
        self.loops = 0.0
        for p in foreign:
            try:
                self.loops += _proc_cpu(psutil.Process(p.pid))
            except psutil.Error:
                continue


def cpu_split(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Cores used between two snapshots: host busy, engine, its tasks, foreign (the rest:
    work this engine does not run), and the bench's busy loops (part of foreign)."""
    wall = max(1e-9, b.at - a.at)
    ncpu = psutil.cpu_count() or 1
    host_total = max(1e-9, b.host_total - a.host_total)
    host = (b.host_busy - a.host_busy) / host_total * ncpu  # busy cores on average
    engine = max(0.0, b.engine - a.engine) / wall
    tasks = sum(max(0.0, used - a.tasks.get(key, 0.0)) for key, used in b.tasks.items()) / wall
    owned = min(host, engine + tasks)
    return {
        "cores": ncpu,
        "host_cores": round(host, 2),
        "engine_cores": round(engine, 3),
        "tasks_cores": round(tasks, 2),
        "owned_cores": round(owned, 2),
        "foreign_cores": round(max(0.0, host - owned), 2),
        "bench_loops_cores": round(max(0.0, b.loops - a.loops) / wall, 2),
        "seconds": round(wall, 1),
    }


NOTE = re.compile(r"node_engine\.shedding: shedding: (.*nothing left to shed.*)$", re.MULTILINE)


def run_mode(
    cluster: FakeCluster, tmp: Path, model: Path, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One scenario run on a fresh engine; returns per-task figures and the shed events."""
    shedding = "off" if mode == "off" else "on"
    work = tmp / f"mode-{mode}"
    work.mkdir()
    python = str(args.repo / ".venv" / "bin" / "python") if args.repo else sys.executable
    engine: EngineUnderTest = cluster.engine(
        work / "node",
        status_interval=None,
        runtimes=("native",),
        name=f"bench-{mode}",
        env={"EDGE_NODE_SHEDDING": shedding},
        repo=args.repo,
    )
    svc, node_id = cluster.service, engine.node_id
    tasks: dict[str, TaskSpec] = {
        "high": worker_spec(
            model,
            work / "high.json",
            fps=args.high_fps,
            priority=900,
            queue=args.queue,
            budget_ms=args.budget_ms,
            python=python,
        )
    }
    for i in range(1, args.low + 1):
        tasks[f"low-{i}"] = worker_spec(
            model,
            work / f"low-{i}.json",
            fps=args.low_fps,
            priority=10 * i,
            queue=args.queue,
            budget_ms=None,
            python=python,
        )
    foreign: list[subprocess.Popen[bytes]] = []
    try:
        for iid, spec in tasks.items():
            svc.deploy(node_id, iid, spec)
        for iid in tasks:
            cluster.wait_state(engine, iid, TaskState.RUNNING, timeout=60)
        if mode == "foreign":
            foreign = start_foreign_load(args.foreign_load)
        started = time.monotonic()
        started_wall = time.time()
        snap_start = CpuSnapshot(engine.pid, foreign)
        print(
            f"[mode {mode}] {len(tasks)} workers running"
            + (f", {len(foreign)} busy loops ({args.foreign_load:g} cores)" if foreign else "")
            + f"; warming up {args.warmup:g} s"
        )
        timeline: list[tuple[float, float | None, int]] = []  # (t, window p95, running)

        def sample_until(end: float) -> None:
            last_ts = None
            while time.monotonic() < end:
                doc = read_stats(work / "high.json")
                if doc is not None and doc.get("ts") != last_ts:
                    last_ts = doc.get("ts")
                    status = svc.last_status(node_id)
                    running = (
                        sum(1 for t in status.payload.tasks if t.state is TaskState.RUNNING)
                        if status
                        else 0
                    )
                    timeline.append(
                        (time.monotonic() - started, doc.get("latency_p95_ms"), running)
                    )
                time.sleep(0.25)

        sample_until(started + args.warmup)
        before = {iid: read_stats(work / f"{iid}.json") for iid in tasks}
        snap_window = CpuSnapshot(engine.pid, foreign)
        statuses_before = len(svc.statuses(node_id))
        sample_until(time.monotonic() + args.duration)
        after = {iid: read_stats(work / f"{iid}.json") for iid in tasks}
        snap_end = CpuSnapshot(engine.pid, foreign)
        window = cpu_split(snap_window, snap_end)
        host_cpu = 100.0 * window["host_cores"] / window["cores"]
        in_window = svc.statuses(node_id)[statuses_before:]
        held = [
            sum(1 for t in st.payload.tasks if t.state in (TaskState.PAUSED, TaskState.SHED))
            for st in in_window
        ]
        engine_view = {
            "statuses": len(in_window),
            "host_cpu_percent_mean": round(
                sum(st.payload.cpu_percent for st in in_window) / max(1, len(in_window)), 1
            ),
            "tasks_cpu_cores_mean": round(
                sum(sum(t.cpu_percent for t in st.payload.tasks) for st in in_window)
                / 100.0
                / max(1, len(in_window)),
                2,
            ),
            "low_tasks_held_min": min(held) if held else 0,
        }
        events = [
            (
                round(e.ts - started_wall, 1),
                e.payload.instance_id,
                e.payload.state.value,
                e.payload.reason,
            )
            for e in svc.task_events(node_id)
            if e.payload.reason.startswith(("shed", "resumed"))
        ]
        result: dict[str, Any] = {
            "tasks": {iid: figures(before[iid], after[iid]) for iid in tasks},
            "whole_run": {iid: figures(None, after[iid]) for iid in tasks},
            "events": events,
            "timeline": timeline,
            "host_cpu_percent": round(host_cpu, 1),
            "cpu": {"warmup": cpu_split(snap_start, snap_window), "window": window},
            "engine_view": engine_view,
            "notes": NOTE.findall(engine.output()),
            "low_tasks": args.low,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        stop_foreign_load(foreign)
        for iid in tasks:
            svc.terminate(node_id, iid)
        for iid in tasks:
            try:
                cluster.wait_state(engine, iid, TaskState.TERMINATED, timeout=60)
            except AssertionError as exc:
                print(f"warning: {iid} not terminated: {exc}", file=sys.stderr)
        engine.stop_quietly()
    return result


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def explain(mode: str, result: dict[str, Any], budget_ms: float) -> str:
    """One line saying why the high task's p95 is what it is in this mode."""
    p95 = result["tasks"]["high"]["p95_ms"]
    cpu = result["cpu"]["window"]
    cores, foreign, owned = cpu["cores"], cpu["foreign_cores"], cpu["owned_cores"]
    split = (
        f"{foreign:.1f} of {cores} cores busy with foreign work, {owned:.1f} with the "
        "engine and its tasks"
    )
    if p95 is None:
        return f"high: no frame executed in the window; {split}"
    head = f"p95 {p95:.0f} ms: {split}"
    held = result["engine_view"]["low_tasks_held_min"]
    lows = result["low_tasks"]
    if p95 <= budget_ms:
        return f"{head}; within the {budget_ms:g} ms budget"
    if mode == "off":
        return f"{head}; over budget: shedding is off, the low tasks compete for the cores"
    if held >= lows and foreign >= owned:
        said = "; the shedder said so" if result["notes"] else ""
        return (
            f"{head}; over budget with every low task held back: the CPU is taken by work "
            f"this engine does not run, nothing left to shed{said}"
        )
    if held >= lows:
        return f"{head}; over budget with every low task held back: the high task alone"
    return f"{head}; over budget with {lows - held} of {lows} low tasks still running"


def main() -> int:
    """Run the modes and print the figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measuring window (s)")
    parser.add_argument("--warmup", type=float, default=25.0, help="settle time before (s)")
    parser.add_argument("--low", type=int, default=3, help="low-priority workers")
    parser.add_argument("--high-fps", type=float, default=50.0)
    parser.add_argument("--low-fps", type=float, default=100.0)
    parser.add_argument("--queue", type=int, default=8, help="frames each worker may queue")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--model", type=Path, default=None, help="default: generated")
    parser.add_argument("--modes", default="off,on,foreign", help="some of off,on,foreign")
    parser.add_argument(
        "--foreign-load",
        type=float,
        default=0.8 * (psutil.cpu_count() or 1),
        help="cores of busy loops in the foreign mode (default: 80%% of the cores)",
    )
    parser.add_argument(
        "--repo", type=Path, default=None, help="run the engine and workers of this checkout"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"off", "on", "foreign"}:
        parser.error(f"unknown mode in {args.modes!r}: know off, on, foreign")
    if args.repo is not None:
        args.repo = args.repo.resolve()
        if not (args.repo / ".venv" / "bin" / "python").exists():
            parser.error(f"--repo {args.repo}: no .venv there (run scripts/setup.sh in it)")

    results: dict[str, dict[str, Any]] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or write_model(tmp / "model.onnx")
        broker = start_test_broker(tmp / "broker")
        try:
            with FakeCluster(broker, status_interval_s=1.0) as cluster:
                for mode in modes:
                    results[mode] = run_mode(cluster, tmp, model, mode, args)
        finally:
            broker.close()
    load_end = os.getloadavg()

    print(
        f"host: {platform.machine()} {psutil.cpu_count()} cpus, Python "
        f"{platform.python_version()}; model {args.model or 'generated (128x128, 128 ch)'}; "
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(
        f"high: priority 900, {args.high_fps:g} fps, budget {args.budget_ms:g} ms; "
        f"{args.low} low: priorities 10..{10 * args.low}, {args.low_fps:g} fps; "
        f"queue {args.queue}, drop_oldest; window {args.duration:g} s after {args.warmup:g} s"
    )
    titles = {
        "off": "shedding off",
        "on": "shedding on",
        "foreign": f"shedding on, {args.foreign_load:g} cores of foreign busy loops",
    }
    for mode, result in results.items():
        print(f"\n{titles[mode]} (host CPU in the window: {result['host_cpu_percent']} %)")
        for phase in ("warmup", "window"):
            c = result["cpu"][phase]
            print(
                f"  CPU {phase:6}: {c['host_cores']:.2f} of {c['cores']} cores busy = engine "
                f"{c['engine_cores']:.2f} + its tasks {c['tasks_cores']:.2f} + foreign "
                f"{c['foreign_cores']:.2f} (bench busy loops {c['bench_loops_cores']:.2f})"
            )
        print(
            f"  {'task':8} {'executed':>9} {'dropped':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'over budget':>12}   whole run p95"
        )
        for iid, f in result["tasks"].items():
            whole = result["whole_run"][iid]
            print(
                f"  {iid:8} {f['executed']:>9} {f['dropped']:>8} {fmt(f['p50_ms']):>8} "
                f"{fmt(f['p95_ms']):>8} {fmt(f['p99_ms']):>8} {f['violations']:>12}   "
                f"{fmt(whole['p95_ms'])}"
            )
        for at, iid, state, reason in result["events"]:
            print(f"  t={at:>5.1f} s  {iid} {state}: {reason}")
        for note in result["notes"]:
            print(f"  shedder: {note}")
        print("  high p95 per second (max of each 5 s; workers running):")
        buckets: dict[int, list[tuple[float | None, int]]] = {}
        for t, p95, running in result["timeline"]:
            buckets.setdefault(int(t // 5), []).append((p95, running))
        line = []
        for k in sorted(buckets):
            p95s = [p for p, _ in buckets[k] if p is not None]
            running = buckets[k][-1][1]
            line.append(f"{5 * k}s:{max(p95s):.0f}/{running}" if p95s else f"{5 * k}s:-")
        for i in range(0, len(line), 8):
            print("    " + "  ".join(line[i : i + 8]))
        print(f"  => high {explain(mode, result, args.budget_ms)}")

    summary: dict[str, Any] = {"budget_ms": args.budget_ms}
    for mode, key in (("off", "no_shedding"), ("on", "shedding"), ("foreign", "foreign")):
        if mode in results:
            r = results[mode]
            high = r["tasks"]["high"]
            summary[f"high_p95_ms_{key}"] = high["p95_ms"]
            summary[f"high_p99_ms_{key}"] = high["p99_ms"]
            summary[f"high_executed_{key}"] = high["executed"]
            summary[f"high_dropped_{key}"] = high["dropped"]
            summary[f"low_executed_{key}"] = sum(
                f["executed"] for iid, f in r["tasks"].items() if iid != "high"
            )
            summary[f"cpu_{key}"] = r["cpu"]["window"]
            summary[f"explain_{key}"] = explain(mode, r, args.budget_ms)
            summary[f"shedder_notes_{key}"] = r["notes"][:4]
    if "foreign" in results:
        summary["foreign_load_cores"] = args.foreign_load
    summary["loadavg_start"] = [round(x, 2) for x in load_start]
    summary["loadavg_end"] = [round(x, 2) for x in load_end]
    summary["repo"] = str(args.repo or ROOT)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
