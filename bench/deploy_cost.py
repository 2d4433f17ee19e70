"""What one deploy costs the cluster side: CPU per process group and MQTT messages.

Starts a whole system of real processes (`tests.harness.system.LocalSystem`: a root, one
cluster orchestrator with its own Mosquitto, N native node engines) and deploys D
one-replica native jobs through the root exactly as `bench/deploy_latency.py` does (the
same `run_mode`: ``POST /api/v1/jobs``, wait for RUNNING on the root's event stream).

Per mode it prints:

* ``cpu_ms_per_deploy``: CPU time (user + system, psutil) of each process group (root,
  cluster orchestrator, broker, node engines) during the mode, divided by the deploys;
* ``floor_ms_per_s``: the same groups' CPU per second while nothing is deployed, measured
  in the same run before the mode (empty nodes) and after it (the mode's tasks still
  running), and ``above_floor_ms_per_deploy``: the mode's CPU minus that floor (the mean
  of before and after, times the mode's duration), per deploy: the work a deploy causes,
  without the status ticks and timers that run anyway;
* ``messages_per_deploy``: the MQTT messages on the broker during the mode by channel and
  kind, per deploy (a counter subscribed as the broker admin to ``edge/v1/nodes/+/#``;
  statuses are periodic and listed apart), and the root's cluster reports per deploy.

Every group's figure is CPU seconds, so it holds on a loaded machine better than a time;
the load average is in the JSON line. Run against an older checkout with its own
interpreter (the message counter is loaded from this file's checkout):

    .venv/bin/python -m bench.deploy_cost [--deploys 100] [--nodes 4] [--concurrency 16]
    /tmp/old/.venv/bin/python bench/deploy_cost.py --repo /tmp/old

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:  # run as a script: bench/deploy_cost.py
    sys.path.insert(0, str(HERE))
from bench import repo_from_argv  # noqa: E402


def _load_wire() -> Any:
    """`tests/harness/wire.py` of this checkout, by path (an older one may lack it)."""
    spec = importlib.util.spec_from_file_location("_wire_counter", HERE / "tests/harness/wire.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; the last line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    repo = repo_from_argv(argv, HERE)
    sys.path.insert(0, str(repo))
    from bench.deploy_latency import (
        RunningWatcher,
        cpu_seconds,
        delete_all,
        root_counters,
        run_mode,
    )
    from tests.harness.system import LocalSystem

    wire = _load_wire()

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deploys", type=int, default=100, help="deploys per mode")
    parser.add_argument("--nodes", type=int, default=4, help="node engines")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight (concurrent)")
    parser.add_argument("--modes", default="sequential,concurrent", help="modes to run")
    parser.add_argument("--floor-seconds", type=float, default=8.0, help="idle measurement")
    parser.add_argument("--timeout", type=float, default=60.0, help="per deploy, seconds")
    parser.add_argument("--repo", default=str(HERE), help="checkout whose code is measured")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="deploy-cost-"))
    command = ["sleep", f"3600.{uuid.uuid4().int % 10**6:06d}"]
    result: dict[str, Any] = {
        "repo": str(repo),
        "deploys_per_mode": args.deploys,
        "nodes": args.nodes,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    system = LocalSystem(workdir, log_level="WARNING")

    def floor(seconds: float) -> dict[str, float]:
        before = cpu_seconds(system)
        time.sleep(seconds)  # measuring idle CPU: the wait is the measurement
        after = cpu_seconds(system)
        return {k: 1000.0 * (after[k] - before[k]) / seconds for k in after}

    try:
        system.start_root()
        cluster = system.add_cluster("c0", nodes=args.nodes, wait=False)
        system.wait_nodes_ready("c0", [f"c0-n{i}" for i in range(args.nodes)], 120)
        system.wait_clusters_ready(timeout=120)
        password = (cluster.process.data_dir / "broker-admin-password").read_text().strip()
        counter = wire.WireCounter.connect("127.0.0.1", cluster.broker_port, "admin", password)
        watcher = RunningWatcher(system.root.url, system.root.operator_token).start()
        for mode in args.modes.split(","):
            concurrency = 1 if mode == "sequential" else args.concurrency
            floor_before = floor(args.floor_seconds)
            cpu_before = cpu_seconds(system)
            reports_before = root_counters(system)["cluster_reports"]
            wire_before = counter.snapshot()
            started = time.perf_counter()
            latencies, job_ids, _client, _posted = run_mode(
                system, watcher, mode, args.deploys, concurrency, command, args.timeout
            )
            counter.wait_idle()
            wall = time.perf_counter() - started
            cpu_after = cpu_seconds(system)
            messages = counter.since(wire_before)
            reports = root_counters(system)["cluster_reports"] - reports_before
            floor_after = floor(args.floor_seconds)
            n = len(latencies)
            gross = {k: 1000.0 * (cpu_after[k] - cpu_before[k]) / n for k in cpu_after}
            base = {k: (floor_before[k] + floor_after[k]) / 2 for k in gross}
            status = sum(v for (ch, _k), v in messages.items() if ch == "status")
            result[mode] = {
                "in_flight": concurrency,
                "deploys": n,
                "seconds": round(wall, 2),
                "deploys_per_s": round(n / wall, 1),
                "cpu_ms_per_deploy": {k: round(v, 2) for k, v in gross.items()},
                "floor_ms_per_s": {
                    "before": {k: round(v, 2) for k, v in floor_before.items()},
                    "after": {k: round(v, 2) for k, v in floor_after.items()},
                },
                "above_floor_ms_per_deploy": {
                    k: round(gross[k] - base[k] * wall / n, 2) for k in gross
                },
                "messages_per_deploy": {
                    f"{ch}/{kind}": round(v / n, 2)
                    for (ch, kind), v in sorted(messages.items())
                    if ch != "status"
                },
                "non_status_messages_per_deploy": round(
                    sum(v for (ch, _k), v in messages.items() if ch != "status") / n, 2
                ),
                "status_messages": status,
                "root_reports_per_deploy": round(reports / n, 2),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            delete_all(system, job_ids, command)
        watcher.stop()
        counter.close()
    finally:
        system.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)

    print(
        f"deploy cost: {args.deploys} one-replica native jobs per mode, "
        f"1 cluster x {args.nodes} nodes"
    )
    for mode in args.modes.split(","):
        r = result[mode]
        print(f"  {mode} (in flight {r['in_flight']}, {r['deploys_per_s']} deploys/s)")
        for label, key in (
            ("CPU ms/deploy", "cpu_ms_per_deploy"),
            ("above floor", "above_floor_ms_per_deploy"),
        ):
            print(f"    {label:14s} " + ", ".join(f"{k} {v:.2f}" for k, v in r[key].items()))
        print(
            "    messages/deploy "
            + ", ".join(f"{k} {v}" for k, v in r["messages_per_deploy"].items())
        )
        print(f"    root reports/deploy {r['root_reports_per_deploy']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
