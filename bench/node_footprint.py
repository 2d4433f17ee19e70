"""Node engine footprint: RSS/USS/PSS and CPU of the engine process, with and without docker.

Starts a real Mosquitto (dynamic security) on a free port, the test harness's join
endpoint and service client, and, one after the other, real ``node-engine``
subprocesses (status every --status-interval s) in these modes:

* ``floor``: native runtime only, no task (what an idle engine costs: the floor the
  other modes are read against);
* ``native``: native runtime only, --tasks native ``sleep`` tasks;
* ``native+docker``: native and docker runtimes (as ``edgectl local up`` runs it), the
  same native tasks plus --docker-tasks ``sleep`` containers of the local busybox test
  image (scripts/build_test_image.sh).

In each mode: deploy, wait until a status lists every task RUNNING, let the engine settle
(--warmup), then sample the engine's own process (not its tasks) with psutil once a
second for --duration seconds: RSS (max and mean), USS and PSS at the end, CPU time over
the window as % of one core and per status tick, threads, and whether OpenSSL's
libcrypto is mapped into it.

    .venv/bin/python bench/node_footprint.py [--tasks 10] [--docker-tasks 2]
        [--duration 30] [--warmup 5] [--modes floor,native,native+docker] [--repo PATH]

``--repo PATH`` runs the node engine of another checkout (its ``.venv``; e.g. a
``git worktree`` of an older commit after ``scripts/setup.sh`` there), measured by this
script and harness: old and new code side by side.

The last line is one JSON object: ``rss_mb`` / ``cpu_percent_of_one_core`` (native mode,
as before), ``rss_mb_docker`` (native+docker), per-mode figures under ``modes``, and the
host's load average at start and end. Targets: RSS <= 40 MB with both runtimes, CPU <= 2 %
of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from schemas.common import Runtime  # noqa: E402
from schemas.job import TaskSpec, TaskState  # noqa: E402
from tests.fixtures.broker import start_test_broker  # noqa: E402
from tests.harness import FakeCluster  # noqa: E402
from tests.harness.procs import unique_sleep_args  # noqa: E402

MIB = 1024 * 1024
MODES = ("floor", "native", "native+docker")


def openssl_mapped(pid: int) -> bool:
    """Whether libcrypto/libssl is mapped into the process (what `lean.py` avoids)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libcrypto" in maps or "libssl" in maps


def docker_image() -> str | None:
    """The busybox test image's tag (built if missing), or None without a Docker engine."""
    try:
        import docker

        from tests.fixtures.images import build_busybox_image

        client = docker.from_env(timeout=30)
        try:
            client.ping()
            return build_busybox_image(client)
        finally:
            client.close()
    except Exception as exc:
        print(f"docker mode skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def git_commit(repo: Path) -> str:
    """Short commit of a checkout ('' when not a git checkout)."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def run_mode(
    cluster: FakeCluster, tmp: Path, mode: str, args: argparse.Namespace, image: str | None
) -> dict[str, Any]:
    """One engine in one mode: deploy, settle, measure; returns the figures."""
    native_tasks = 0 if mode == "floor" else args.tasks
    docker_tasks = args.docker_tasks if mode == "native+docker" else 0
    runtimes = ("native", "docker") if mode == "native+docker" else ("native",)
    engine = cluster.engine(
        tmp / mode.replace("+", "-"),
        status_interval=None,
        runtimes=runtimes,
        name=f"fp-{mode.replace('+', '-')}",
        repo=args.repo,
    )
    svc, node_id = cluster.service, engine.node_id
    total = native_tasks + docker_tasks
    try:
        for i in range(native_tasks):
            spec = TaskSpec(runtime=Runtime.NATIVE, command=unique_sleep_args(3600))
            svc.deploy(node_id, f"n{i}", spec)
        for i in range(docker_tasks):
            assert image is not None
            spec = TaskSpec(runtime=Runtime.DOCKER, image=image, command=["sleep", "3600"])
            svc.deploy(node_id, f"d{i}", spec)
        for iid in [f"n{i}" for i in range(native_tasks)] + [f"d{i}" for i in range(docker_tasks)]:
            cluster.wait_state(engine, iid, TaskState.RUNNING, timeout=60)

        def all_running(s: object) -> bool:
            st = svc.last_status(node_id)
            return (
                st is not None
                and sum(1 for t in st.payload.tasks if t.state is TaskState.RUNNING) == total
            )

        svc.wait_for(all_running, 60, "status listing every task RUNNING")
        proc = psutil.Process(engine.pid)
        time.sleep(args.warmup)  # settling time before the window, not a wait for a state

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
        full = proc.memory_full_info()
        statuses = len(svc.statuses(node_id)) - statuses_before
        last = svc.last_status(node_id)
        figures = {
            "runtimes": list(runtimes),
            "native_tasks": native_tasks,
            "docker_tasks": docker_tasks,
            "tasks_listed": len(last.payload.tasks) if last else 0,
            "rss_mb": round(max(rss), 1),
            "rss_mean_mb": round(sum(rss) / len(rss), 1),
            "uss_mb": round(full.uss / MIB, 1),
            "pss_mb": round(getattr(full, "pss", 0) / MIB, 1),
            "cpu_s": round(
                (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                3,
            ),
            "window_s": round(elapsed, 1),
            "statuses": statuses,
            "threads": proc.num_threads(),
            "openssl_mapped": openssl_mapped(engine.pid),
        }
        figures["cpu_percent_of_one_core"] = round(100.0 * figures["cpu_s"] / elapsed, 2)
        figures["cpu_ms_per_status"] = (
            round(1000.0 * figures["cpu_s"] / statuses, 2) if statuses else None
        )
        return figures
    finally:
        engine.stop_quietly()  # SIGTERM; then kills its native tasks, removes its containers


def main() -> int:
    """Run the modes and print the figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="native sleep tasks to run")
    parser.add_argument("--docker-tasks", type=int, default=2, help="containers (docker mode)")
    parser.add_argument("--duration", type=float, default=30.0, help="measuring window (s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="settle time before (s)")
    parser.add_argument("--status-interval", type=float, default=1.0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)}")
    parser.add_argument(
        "--repo", type=Path, default=None, help="run the node engine of this checkout"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; know {MODES}")
    repo = (args.repo or ROOT).resolve()
    if args.repo is not None and not (repo / ".venv" / "bin" / "python").exists():
        parser.error(f"--repo {repo}: no .venv there (run scripts/setup.sh in it)")

    image = docker_image() if "native+docker" in modes else None
    if image is None and "native+docker" in modes:
        modes.remove("native+docker")
    load_start = os.getloadavg()
    procs_start = len(psutil.pids())
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="node-footprint-") as tmp:
        tmp_path = Path(tmp)
        broker = start_test_broker(tmp_path / "broker")
        try:
            with FakeCluster(broker, status_interval_s=args.status_interval) as cluster:
                for mode in modes:
                    results[mode] = run_mode(cluster, tmp_path, mode, args, image)
        finally:
            broker.close()
    load_end = os.getloadavg()

    print(
        f"host: {platform.machine()} {psutil.cpu_count()} cpus, Python "
        f"{platform.python_version()}; {procs_start} processes; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(
        f"engine code: {repo} ({git_commit(repo) or 'no git'}), status every "
        f"{args.status_interval:g} s, window {args.duration:g} s after {args.warmup:g} s"
    )
    print(
        f"  {'mode':14} {'tasks':>9} {'RSS max':>8} {'mean':>6} {'USS':>6} {'PSS':>6} "
        f"{'CPU %':>6} {'ms/tick':>8} {'threads':>7}  OpenSSL"
    )
    for mode, f in results.items():
        tasks = f"{f['native_tasks']}+{f['docker_tasks']}"
        per_tick = "-" if f["cpu_ms_per_status"] is None else f"{f['cpu_ms_per_status']:.2f}"
        print(
            f"  {mode:14} {tasks:>9} {f['rss_mb']:>8.1f} {f['rss_mean_mb']:>6.1f} "
            f"{f['uss_mb']:>6.1f} {f['pss_mb']:>6.1f} {f['cpu_percent_of_one_core']:>6.2f} "
            f"{per_tick:>8} {f['threads']:>7}  {'mapped' if f['openssl_mapped'] else 'no'}"
        )
    print("  (MiB; tasks = native+docker; CPU of the engine process only, % of one core)")
    summary: dict[str, Any] = {}
    if "native" in results:
        summary["rss_mb"] = results["native"]["rss_mb"]
        summary["cpu_percent_of_one_core"] = results["native"]["cpu_percent_of_one_core"]
    if "native+docker" in results:
        summary["rss_mb_docker"] = results["native+docker"]["rss_mb"]
        summary["cpu_percent_of_one_core_docker"] = results["native+docker"][
            "cpu_percent_of_one_core"
        ]
    if "floor" in results:
        summary["rss_mb_floor"] = results["floor"]["rss_mb"]
    summary.update(
        {
            "target_rss_mb": 40.0,
            "modes": results,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end],
            "host_processes": procs_start,
            "repo": str(repo),
            "commit": git_commit(repo),
        }
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
