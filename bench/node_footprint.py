"""Node engine footprint: RSS and CPU of the engine process itself.

Starts a real Mosquitto (dynamic security) on a free port, the test harness's join
endpoint and service client, and a real ``node-engine`` subprocess (native runtime,
1 s status interval). Deploys N native ``sleep`` tasks, waits for them to run, lets the
engine settle, then samples the engine's own process (not its tasks) with psutil once a
second for the measuring window: RSS (max and mean), USS at the end, and CPU time used
over the window as a percentage of one core.

    .venv/bin/python bench/node_footprint.py [--tasks 10] [--duration 30] [--warmup 5]

The last line is one JSON object with ``rss_mb`` (max over the window) and
``cpu_percent_of_one_core``. Targets: RSS <= 40 MB, CPU <= 2 % of one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas.common import Runtime  # noqa: E402
from schemas.job import TaskSpec, TaskState  # noqa: E402
from tests.fixtures.broker import start_test_broker  # noqa: E402
from tests.harness import FakeCluster  # noqa: E402
from tests.harness.procs import find_processes, unique_sleep_args  # noqa: E402

MIB = 1024 * 1024


def main() -> int:
    """Run the measurement and print the figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="native sleep tasks to run")
    parser.add_argument("--duration", type=float, default=30.0, help="measuring window (s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="settle time before (s)")
    parser.add_argument("--status-interval", type=float, default=1.0)
    args = parser.parse_args()

    argvs: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="node-footprint-") as tmp:
        tmp_path = Path(tmp)
        broker = start_test_broker(tmp_path / "broker")
        try:
            with FakeCluster(broker, status_interval_s=args.status_interval) as cluster:
                engine = cluster.engine(
                    tmp_path / "node", status_interval=None, runtimes=("native",)
                )
                svc, node_id = cluster.service, engine.node_id
                for i in range(args.tasks):
                    argv = unique_sleep_args(3600)
                    argvs.append(argv)
                    svc.deploy(node_id, f"t{i}", TaskSpec(runtime=Runtime.NATIVE, command=argv))
                for i in range(args.tasks):
                    cluster.wait_state(engine, f"t{i}", TaskState.RUNNING, timeout=30)

                def all_running(s: object) -> bool:
                    st = svc.last_status(node_id)
                    return (
                        st is not None
                        and sum(1 for t in st.payload.tasks if t.state is TaskState.RUNNING)
                        == args.tasks
                    )

                svc.wait_for(all_running, 30, "status listing every task")
                proc = psutil.Process(engine.pid)
                time.sleep(args.warmup)

                statuses_before = len(svc.statuses(node_id))
                cpu0 = proc.cpu_times()
                t0 = time.monotonic()
                rss: list[float] = []
                deadline = t0 + args.duration
                while time.monotonic() < deadline:
                    rss.append(proc.memory_info().rss / MIB)
                    time.sleep(1.0)
                cpu1 = proc.cpu_times()
                elapsed = time.monotonic() - t0
                uss = proc.memory_full_info().uss / MIB
                threads = proc.num_threads()
                statuses = len(svc.statuses(node_id)) - statuses_before
                last = svc.last_status(node_id)
                reported = len(last.payload.tasks) if last else 0
        finally:
            for argv in argvs:
                for p in find_processes(argv):
                    p.kill()
            broker.close()

    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_percent = 100.0 * used / elapsed
    rss_max = max(rss)
    rss_mean = sum(rss) / len(rss)
    print(
        f"host: {platform.machine()} {psutil.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(
        f"engine pid {engine.pid}: {args.tasks} native tasks, status every {args.status_interval} s"
    )
    print(f"window: {elapsed:.1f} s, {statuses} status messages received, {reported} tasks listed")
    print(f"RSS: max {rss_max:.1f} MiB, mean {rss_mean:.1f} MiB; USS at end {uss:.1f} MiB")
    print(f"threads: {threads}")
    print(f"CPU: {used:.3f} s over {elapsed:.1f} s = {cpu_percent:.2f} % of one core")
    print(
        json.dumps(
            {
                "rss_mb": round(rss_max, 1),
                "cpu_percent_of_one_core": round(cpu_percent, 2),
                "rss_mean_mb": round(rss_mean, 1),
                "uss_mb": round(uss, 1),
                "tasks": args.tasks,
                "window_s": round(elapsed, 1),
                "statuses": statuses,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
