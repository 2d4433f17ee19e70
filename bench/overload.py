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

The same scenario runs twice, with ``--shedding off`` and with shedding on (the
defaults: cpu 90/70 % for 5 s, latency p95/budget 1.0/0.8, a step every 3 s). After
--warmup seconds (long enough for the shedder to settle) the figures are taken over
--duration seconds from the workers' own stats files (frame counts and the latency
histogram, subtracted between the two readings; percentiles are histogram bucket upper
bounds, at most 10 % above the exact value).

    .venv/bin/python bench/overload.py [--duration 60] [--warmup 25] [--low 3]

Prints per mode and task: frames executed and dropped, latency p50/p95/p99, budget
violations, and the shed/resume events; the last line is one JSON object with
``high_p95_ms_no_shedding`` and ``high_p95_ms_shedding``. Target: with shedding the
high-priority p95 stays within its budget; without, it does not.
"""

from __future__ import annotations

import argparse
import json
import platform
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
) -> TaskSpec:
    command = [
        sys.executable,
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


def run_mode(
    cluster: FakeCluster, tmp: Path, model: Path, shedding: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """One scenario run on a fresh engine; returns per-task figures and the shed events."""
    mode = "on" if shedding else "off"
    work = tmp / f"shedding-{mode}"
    work.mkdir()
    engine: EngineUnderTest = cluster.engine(
        work / "node",
        status_interval=None,
        runtimes=("native",),
        name=f"bench-{mode}",
        env={"EDGE_NODE_SHEDDING": mode},
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
        )
    try:
        for iid, spec in tasks.items():
            svc.deploy(node_id, iid, spec)
        for iid in tasks:
            cluster.wait_state(engine, iid, TaskState.RUNNING, timeout=60)
        started = time.monotonic()
        started_wall = time.time()
        print(f"[shedding {mode}] {len(tasks)} workers running; warming up {args.warmup:g} s")
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
        cpu0 = psutil.cpu_times()
        sample_until(time.monotonic() + args.duration)
        after = {iid: read_stats(work / f"{iid}.json") for iid in tasks}
        cpu1 = psutil.cpu_times()
        busy = (sum(cpu1) - cpu1.idle - cpu1.iowait) - (sum(cpu0) - cpu0.idle - cpu0.iowait)
        host_cpu = 100.0 * busy / max(1e-9, sum(cpu1) - sum(cpu0))
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
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
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


def main() -> int:
    """Run both modes and print the figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measuring window (s)")
    parser.add_argument("--warmup", type=float, default=25.0, help="settle time before (s)")
    parser.add_argument("--low", type=int, default=3, help="low-priority workers")
    parser.add_argument("--high-fps", type=float, default=50.0)
    parser.add_argument("--low-fps", type=float, default=100.0)
    parser.add_argument("--queue", type=int, default=8, help="frames each worker may queue")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--model", type=Path, default=None, help="default: generated")
    parser.add_argument("--modes", default="off,on", help="off, on or off,on")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or write_model(tmp / "model.onnx")
        broker = start_test_broker(tmp / "broker")
        try:
            with FakeCluster(broker, status_interval_s=1.0) as cluster:
                for mode in args.modes.split(","):
                    results[mode] = run_mode(cluster, tmp, model, mode == "on", args)
        finally:
            broker.close()

    print(
        f"host: {platform.machine()} {psutil.cpu_count()} cpus, Python "
        f"{platform.python_version()}; model {args.model or 'generated (128x128, 128 ch)'}"
    )
    print(
        f"high: priority 900, {args.high_fps:g} fps, budget {args.budget_ms:g} ms; "
        f"{args.low} low: priorities 10..{10 * args.low}, {args.low_fps:g} fps; "
        f"queue {args.queue}, drop_oldest; window {args.duration:g} s after {args.warmup:g} s"
    )
    for mode, result in results.items():
        print(f"\nshedding {mode} (host CPU in the window: {result['host_cpu_percent']} %)")
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

    summary: dict[str, Any] = {"budget_ms": args.budget_ms}
    for mode, key in (("off", "no_shedding"), ("on", "shedding")):
        if mode in results:
            high = results[mode]["tasks"]["high"]
            summary[f"high_p95_ms_{key}"] = high["p95_ms"]
            summary[f"high_p99_ms_{key}"] = high["p99_ms"]
            summary[f"high_executed_{key}"] = high["executed"]
            summary[f"high_dropped_{key}"] = high["dropped"]
            summary[f"low_executed_{key}"] = sum(
                f["executed"] for iid, f in results[mode]["tasks"].items() if iid != "high"
            )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
