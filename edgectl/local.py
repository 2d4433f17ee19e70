"""`edgectl local`: a whole system on one machine, as local processes in one data directory.

What runs (each child in its own process group, so a Ctrl-C in the terminal reaches only
edgectl, which then stops everything in order):

* one Mosquitto per cluster (dynamic security, generated config and admin password);
* the root orchestrator (SQLite store in the data directory, or a MongoDB URL);
* the cluster orchestrators, each reporting to the root;
* the node engines, joining their cluster over HTTP and talking MQTT to its broker.

Data directory::

    system.json          stable identity of the system: ports, tokens, names (0600)
    local.json           the running system: root URL, operator token, clusters,
                         processes (pid, log), state (0600); read by every edgectl command
    lock                 held by the running `edgectl local up` (flock)
    logs/                one log per process: root.log, cluster-c1.log, node-c1-n1.log,
                         mosquitto-c1.log (link to the broker's own log), edgectl.log
    root/root.db         the root's store (SQLite)
    clusters/<name>/     a cluster's store, generated secrets and broker/ (Mosquitto)
    nodes/<name>/        a node engine's state directory (identity, tasks, task logs)

Running `local up` again on the same directory resumes the same system: same ports,
tokens, cluster and node identities, jobs.

Stopping (Ctrl-C, SIGTERM, or `edgectl local down`) goes: root, clusters, node engines,
then the tasks the node engines started, then the brokers. Node engines leave their
tasks running when they stop (by design: an engine restart must not interrupt the
workload), so edgectl stops the tasks itself, through the node engine's own runtimes:
every native task process group and every Docker container recorded in each node's
state directory is stopped (SIGTERM, then SIGKILL) and removed. Nothing of the system
keeps running. On the next `local up` the node engines find their tasks ended and
apply each job's restart policy (see docs/edgectl.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from edgectl.client import ApiError, ConnectionFailed, EdgectlError, RootClient
from edgectl.config import LOCAL_FILE, read_local_file
from schemas.cluster import ClusterLiveness
from schemas.node import Liveness
from schemas.process_group import group_alive, signal_leader, spawn_logged
from schemas.root_api import ClusterView

__all__ = [
    "ClusterPlan",
    "Layout",
    "LocalSystem",
    "NodePlan",
    "ProgressSink",
    "SystemPlan",
    "down",
    "leftover_processes",
    "node_labels",
    "readiness",
    "resolve_plan",
    "start_detached",
    "stop_tasks",
]

SYSTEM_FILE = "system.json"
LOCK_FILE = "lock"
DETACHED_LOG_ENV = "EDGECTL_DETACHED_LOG"
"""Set by ``local up --detach`` for its background process: the log its output goes to."""
FORMAT_VERSION = 1
HOST = "127.0.0.1"
BROKER_ADMIN = "admin"
STOP_TIMEOUT_S = 20.0
"""Seconds a process gets between SIGTERM and SIGKILL."""
TASK_STOP_TIMEOUT_S = 10.0
"""Seconds a task gets between SIGTERM (docker stop) and SIGKILL."""

#: Stop order: nothing is left to react to what stops after it. The node engines' tasks
#: are stopped after the engines, the brokers last.
STOP_ORDER = ("root", "cluster", "node", "broker")
_BEFORE_TASKS = ("root", "cluster", "node")


# ----------------------------------------------------------------------------- plan


@dataclass(slots=True)
class NodePlan:
    """One node engine of the local system."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ClusterPlan:
    """One cluster: its orchestrator, its broker and its nodes."""

    name: str
    port: int
    broker_port: int
    operator_token: str
    join_token: str
    broker_admin_password: str
    nodes: list[NodePlan] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the cluster's API."""
        return f"http://{HOST}:{self.port}"


@dataclass(slots=True)
class SystemPlan:
    """The stable identity of a local system (kept in ``system.json``)."""

    root_port: int
    operator_token: str
    registration_token: str
    store: str
    clusters: list[ClusterPlan]
    created_at: float = 0.0

    @property
    def root_url(self) -> str:
        """Base URL of the root's API."""
        return f"http://{HOST}:{self.root_port}"

    @property
    def node_count(self) -> int:
        """Node engines in the whole system."""
        return sum(len(c.nodes) for c in self.clusters)

    def to_doc(self) -> dict[str, Any]:
        """JSON document for ``system.json``."""
        return {
            "version": FORMAT_VERSION,
            "created_at": self.created_at,
            "root_port": self.root_port,
            "operator_token": self.operator_token,
            "registration_token": self.registration_token,
            "store": self.store,
            "clusters": [
                {
                    "name": c.name,
                    "port": c.port,
                    "broker_port": c.broker_port,
                    "operator_token": c.operator_token,
                    "join_token": c.join_token,
                    "broker_admin_password": c.broker_admin_password,
                    "nodes": [{"name": n.name, "labels": n.labels} for n in c.nodes],
                }
                for c in self.clusters
            ],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> SystemPlan:
        """Parse ``system.json`` (KeyError/TypeError/ValueError when it is not one)."""
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {doc.get('version')!r}")
        return cls(
            root_port=int(doc["root_port"]),
            operator_token=str(doc["operator_token"]),
            registration_token=str(doc["registration_token"]),
            store=str(doc["store"]),
            created_at=float(doc.get("created_at", 0.0)),
            clusters=[
                ClusterPlan(
                    name=str(c["name"]),
                    port=int(c["port"]),
                    broker_port=int(c["broker_port"]),
                    operator_token=str(c["operator_token"]),
                    join_token=str(c["join_token"]),
                    broker_admin_password=str(c["broker_admin_password"]),
                    nodes=[
                        NodePlan(str(n["name"]), {str(k): str(v) for k, v in n["labels"].items()})
                        for n in c["nodes"]
                    ],
                )
                for c in doc["clusters"]
            ],
        )


def node_labels(cluster: str, index: int) -> dict[str, str]:
    """Labels of node `index` (1-based) of a cluster: its site, and a camera on odd ones.

    The example jobs use them as constraints (``examples/multi-replica-job.yaml``).
    """
    return {"site": cluster, "camera": "yes" if index % 2 == 1 else "no"}


def _token() -> str:
    return secrets.token_urlsafe(24)


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def new_plan(clusters: int, nodes: int, store: str, root_port: int | None = None) -> SystemPlan:
    """A fresh system: names, free ports and random tokens."""
    ports = _free_ports(2 * clusters + (0 if root_port else 1))
    port = root_port or ports.pop()
    plans = []
    for i in range(1, clusters + 1):
        name = f"c{i}"
        plans.append(
            ClusterPlan(
                name=name,
                port=ports.pop(),
                broker_port=ports.pop(),
                operator_token=_token(),
                join_token=_token(),
                broker_admin_password=_token(),
                nodes=[NodePlan(f"{name}-n{j}", node_labels(name, j)) for j in range(1, nodes + 1)],
            )
        )
    return SystemPlan(
        root_port=port,
        operator_token=_token(),
        registration_token=_token(),
        store=store,
        clusters=plans,
        created_at=time.time(),
    )


def _write_private(path: Path, doc: Mapping[str, Any]) -> None:
    """Atomic write of a JSON file readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def resolve_plan(
    data_dir: Path,
    *,
    clusters: int | None,
    nodes: int | None,
    store: str | None,
    root_port: int | None = None,
) -> tuple[SystemPlan, bool]:
    """The system of `data_dir` (resumed: True) or a new one written there (False).

    Resuming with a different topology is refused (the identities are stored); a
    different ``store`` replaces the stored one.
    """
    path = data_dir / SYSTEM_FILE
    if any(ch.isspace() for ch in str(data_dir)):
        # mosquitto.conf cannot quote paths (the broker's files live in the data directory)
        raise EdgectlError(
            f"the data directory must not contain whitespace: {str(data_dir)!r}",
            hint="choose another --data-dir",
        )
    if path.exists():
        try:
            plan = SystemPlan.from_doc(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgectlError(f"{path} is unreadable ({exc}); use another --data-dir") from exc
        have_nodes = {len(c.nodes) for c in plan.clusters}
        if (clusters is not None and clusters != len(plan.clusters)) or (
            nodes is not None and have_nodes != {nodes}
        ):
            shape = f"{len(plan.clusters)} cluster(s) x {max(have_nodes, default=0)} node(s)"
            raise EdgectlError(
                f"{data_dir} holds a system of {shape}",
                hint="leave out --clusters/--nodes-per-cluster to resume it, or use another "
                "--data-dir for a new system",
            )
        if root_port is not None and root_port != plan.root_port:
            raise EdgectlError(
                f"{data_dir} holds a system whose root listens on port {plan.root_port}",
                hint="leave out --root-port to resume it",
            )
        if store is not None and store != plan.store:
            plan.store = store
            _write_private(path, plan.to_doc())
        return plan, True
    plan = new_plan(clusters or 2, nodes or 2, store or "sqlite", root_port)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, plan.to_doc())
    return plan, False


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths inside a data directory."""

    data_dir: Path

    @property
    def logs(self) -> Path:
        """Directory of the process logs."""
        return self.data_dir / "logs"

    @property
    def local_file(self) -> Path:
        """``local.json``."""
        return self.data_dir / LOCAL_FILE

    @property
    def root_dir(self) -> Path:
        """The root's working directory (its SQLite store)."""
        return self.data_dir / "root"

    def cluster_dir(self, name: str) -> Path:
        """A cluster orchestrator's data directory."""
        return self.data_dir / "clusters" / name

    def broker_dir(self, name: str) -> Path:
        """A cluster's Mosquitto directory."""
        return self.cluster_dir(name) / "broker"

    def node_dir(self, name: str) -> Path:
        """A node engine's state directory."""
        return self.data_dir / "nodes" / name

    def log(self, name: str) -> Path:
        """Log file of one process."""
        return self.logs / f"{name}.log"

    def store_url(self, store: str) -> str:
        """The root's store URL for a ``--store`` value."""
        if store == "sqlite":
            return f"sqlite:///{self.root_dir / 'root.db'}"
        return store


# ----------------------------------------------------------------------------- lock


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/lock``, held by the running ``local up``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------- processes


def _python_env() -> dict[str, str]:
    """The environment of every child: ours without any EDGE_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.pop(DETACHED_LOG_ENV, None)
    env["PYTHONUNBUFFERED"] = "1"
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _same_process(record: Mapping[str, Any]) -> psutil.Process | None:
    """The live process of a record (pid and create time match), or None."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record.get("create_time") or 0)) > 0.05:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def terminate_records(
    records: Sequence[Mapping[str, Any]],
    *,
    timeout: float = STOP_TIMEOUT_S,
    popens: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> list[str]:
    """SIGTERM the process group of every live record, wait, SIGKILL what remains.

    Returns one line per process that needed SIGKILL. `popens` (pid -> Popen) are
    reaped (they are our children).
    """
    popens = popens or {}
    live = []
    for record in records:
        proc = _same_process(record)
        if proc is not None:
            live.append((record, proc))
            signal_leader(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for record, proc in live:
        popen = popens.get(proc.pid)
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if popen is not None:
                popen.wait(remaining)
            else:
                proc.wait(remaining)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            killed.append(f"{record.get('name')} (pid {proc.pid}) did not stop in {timeout:.0f}s")
            signal_leader(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                if popen is not None:
                    popen.wait(10)
                else:
                    proc.wait(10)
        # the group may hold more than its leader (a child that outlived it)
        if group_alive(proc.pid):
            signal_leader(proc.pid, signal.SIGKILL)
    return killed


def _still_runs(runtime: Any, handle: Any) -> bool:
    """Whether a task found in a node engine's state still runs (not ended by itself)."""
    try:
        return not runtime.status(handle).state.terminal
    except Exception:
        return False


def stop_tasks(node_dirs: Sequence[Path], timeout: float = TASK_STOP_TIMEOUT_S) -> list[str]:
    """Stop every task the node engines of these state directories started.

    Uses the node engine's own runtimes, which find their tasks from the state directory
    (native: ``native/tasks/*/handle.json``, verified by pid and start time; docker:
    containers labelled with the engine id) and stop and remove them. Returns one line
    per task stopped (or per runtime that could not be asked).
    """
    if not any((d / "engine-id").exists() for d in node_dirs):
        return []
    from node_engine.identity import engine_id
    from node_engine.startup import build_runtimes
    from node_engine.state import record_system_stop
    from schemas.common import Runtime

    lines: list[str] = []
    work: list[tuple[str, Any, Any]] = []  # (node, runtime, handle)
    for state_dir in node_dirs:
        if not (state_dir / "engine-id").exists():
            continue
        runtimes, _ = build_runtimes(
            [Runtime.NATIVE, Runtime.DOCKER], state_dir, engine_id(state_dir)
        )
        for kind, runtime in runtimes.items():
            try:
                handles = runtime.adopt()
            except Exception as exc:
                lines.append(f"{state_dir.name}: cannot list {kind.value} tasks: {exc}")
                continue
            work += [(state_dir.name, runtime, handle) for handle in handles]
        # Tell the engine's next start which tasks still ran and are stopped with the
        # system, not by failing: it runs them again in place (docs/edgectl.md).
        ids = [
            h.instance_id for name, rt, h in work if name == state_dir.name and _still_runs(rt, h)
        ]
        if ids:
            record_system_stop(state_dir, ids, at=time.time(), by="edgectl local down")

    def stop_one(item: tuple[str, Any, Any]) -> str:
        node, runtime, handle = item
        try:
            runtime.stop(handle, timeout)
        except Exception as exc:
            return f"{node}: cannot stop {handle.instance_id}: {exc}"
        return f"stopped {handle.runtime.value} task {handle.instance_id} ({node})"

    if work:
        # In parallel: a task that ignores SIGTERM costs `timeout` once, not per task.
        with ThreadPoolExecutor(max_workers=min(16, len(work))) as pool:
            lines += list(pool.map(stop_one, work))
    return lines


def leftover_processes(data_dir: Path, exclude: Sequence[int] = ()) -> list[psutil.Process]:
    """Processes that still belong to the system of `data_dir`.

    A process belongs to it if its command line names a cluster or node directory (the
    brokers, cluster orchestrators and node engines) or its working directory lies under
    the directories edgectl gives its children (root, clusters, nodes: also native
    tasks). edgectl commands themselves (``local up``, ``local down``) are not counted.
    """
    roots = tuple(str(data_dir.resolve() / d) for d in ("root", "clusters", "nodes"))
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if proc.info["pid"] in skip or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"] or ""
        except (psutil.Error, KeyError):
            continue
        if any(r + os.sep in cmdline or cwd == r or cwd.startswith(r + os.sep) for r in roots):
            found.append(proc)
    return found


# ----------------------------------------------------------------------------- readiness


def readiness(clusters: Sequence[ClusterView], plan: SystemPlan) -> tuple[int, int, str]:
    """From ``GET /api/v1/clusters``: (nodes READY, nodes expected, what is missing).

    A cluster counts once the root has it READY; its nodes once its report says so.
    Missing is empty when the whole system is ready.
    """
    by_name = {c.name: c for c in clusters}
    ready = 0
    missing = []
    for cp in plan.clusters:
        view = by_name.get(cp.name)
        if view is None:
            missing.append(f"cluster {cp.name} not registered")
            continue
        if view.liveness != ClusterLiveness.READY:
            missing.append(f"cluster {cp.name} {view.liveness}")
            continue
        report = view.report
        count = report.nodes_by_liveness.get(Liveness.READY, 0) if report is not None else 0
        ready += min(count, len(cp.nodes))
        if count < len(cp.nodes):
            missing.append(f"cluster {cp.name}: {count}/{len(cp.nodes)} nodes ready")
    return ready, plan.node_count, "; ".join(missing)


# ----------------------------------------------------------------------------- supervisor


class ProgressSink(Protocol):
    """Where `LocalSystem` reports its start-up."""

    def update(self, phase: str, done: int, total: int) -> None:
        """A phase and how far the whole start-up is."""

    def note(self, text: str) -> None:
        """A line worth keeping (a warning, a step done)."""


class StartupInterrupted(EdgectlError):
    """A stop was requested (signal) while the system was starting."""


@dataclass(slots=True)
class _Child:
    name: str
    kind: str
    popen: subprocess.Popen[bytes]
    log: Path
    create_time: float
    reported_exit: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.popen.pid,
            "create_time": self.create_time,
            "log": str(self.log),
        }


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One service process of the system: its name (log file, ``local.json``), kind,
    the words progress shows, how it starts, and the URL it answers /healthz on."""

    name: str
    kind: str
    title: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    url: str = ""


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """The service processes `LocalSystem.start` runs, in start order (the brokers are
    started before them by `LocalSystem`)."""

    root: ProcessSpec
    clusters: list[ProcessSpec]
    nodes: list[ProcessSpec]

    def all(self) -> list[ProcessSpec]:
        """Every process, in start order."""
        return [self.root, *self.clusters, *self.nodes]


class LocalSystem:
    """Starts, watches and stops the processes of one local system (the supervisor).

    The owner holds the data directory's lock for its whole life; every change of the
    set of processes is written to ``local.json`` at once, so ``edgectl local down`` can
    stop them even if this process dies.
    """

    def __init__(
        self,
        layout: Layout,
        plan: SystemPlan,
        *,
        progress: ProgressSink,
        stop: threading.Event,
        resumed: bool = False,
        runtimes: str = "native,docker",
        log: Path | None = None,
    ) -> None:
        """`log`: where this process's own output goes (``--detach``), if anywhere."""
        self.layout = layout
        self.plan = plan
        self.progress = progress
        self.stop_event = stop
        self.resumed = resumed
        self.runtimes = runtimes
        self.log = log
        self.children: list[_Child] = []
        self.brokers: dict[str, Any] = {}  # name -> MosquittoProcess
        self.state = "starting"
        self.started_at = time.time()
        self.ready_at: float | None = None
        self._progress: dict[str, Any] = {}
        self._dead_brokers: set[str] = set()

    # ----- local.json -----

    def _broker_records(self) -> list[dict[str, Any]]:
        out = []
        for name, broker in self.brokers.items():
            pid = broker.pid
            if pid is None:
                continue
            out.append(
                {
                    "name": f"mosquitto-{name}",
                    "kind": "broker",
                    "pid": pid,
                    "create_time": _create_time(pid) or 0.0,
                    "log": str(self.layout.log(f"mosquitto-{name}")),
                }
            )
        return out

    def document(self) -> dict[str, Any]:
        """What ``local.json`` holds now."""
        me = os.getpid()
        return {
            "version": FORMAT_VERSION,
            "state": self.state,
            "data_dir": str(self.layout.data_dir),
            "root_url": self.plan.root_url,
            "token": self.plan.operator_token,
            "store": "sqlite" if self.plan.store == "sqlite" else "mongodb",
            "clusters": [
                {
                    "name": c.name,
                    "url": c.url,
                    "broker": f"{HOST}:{c.broker_port}",
                    "nodes": [n.name for n in c.nodes],
                }
                for c in self.plan.clusters
            ],
            "supervisor": {
                "pid": me,
                "create_time": _create_time(me) or 0.0,
                "log": str(self.log) if self.log else None,
            },
            "processes": self._broker_records() + [c.record() for c in self.children],
            "progress": self._progress,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "updated_at": time.time(),
        }

    def save(self) -> None:
        """Write ``local.json``."""
        _write_private(self.layout.local_file, self.document())

    def _phase(self, phase: str, done: int, total: int) -> None:
        self._progress = {"phase": phase, "done": done, "total": total}
        self.progress.update(phase, done, total)
        self.save()

    # ----- start -----

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise StartupInterrupted("interrupted while starting")

    def _spawn(
        self, name: str, kind: str, argv: list[str], env: dict[str, str], cwd: Path
    ) -> _Child:
        log = self.layout.log(name)
        cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        popen = spawn_logged(
            argv,
            log_path=log,
            env=env,
            cwd=cwd,
            header=f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} edgectl starts {name}\n",
        )
        child = _Child(name, kind, popen, log, _create_time(popen.pid) or time.time())
        self.children.append(child)
        self.save()
        return child

    def _check_ports(self) -> None:
        wanted = [("root", self.plan.root_port)]
        for c in self.plan.clusters:
            wanted += [(f"cluster {c.name}", c.port), (f"mosquitto of {c.name}", c.broker_port)]
        busy = [f"{port} ({what})" for what, port in wanted if not _port_free(port)]
        if busy:
            raise EdgectlError(
                f"port(s) already in use: {', '.join(busy)}",
                hint="is another system running on them? `edgectl local down --data-dir "
                f"{self.layout.data_dir}` stops this one; or use another --data-dir",
            )

    def _start_brokers(self, done: int, total: int) -> int:
        from cluster_orchestrator.broker import (
            BrokerConfigError,
            BrokerStartError,
            MosquittoProcess,
            write_broker_files,
        )

        for c in self.plan.clusters:
            self._check_stop()
            self._phase(f"starting mosquitto for {c.name}", done, total)
            try:
                files = write_broker_files(
                    self.layout.broker_dir(c.name),
                    host=HOST,
                    port=c.broker_port,
                    admin_username=BROKER_ADMIN,
                    admin_password=c.broker_admin_password,
                )
                broker = MosquittoProcess(
                    files, admin_username=BROKER_ADMIN, admin_password=c.broker_admin_password
                )
            except (BrokerConfigError, FileNotFoundError) as exc:
                missing = "not found" in str(exc) or isinstance(exc, FileNotFoundError)
                raise EdgectlError(
                    f"cannot set up mosquitto: {exc}",
                    hint="install it: apt-get install mosquitto mosquitto-clients (or `make setup`)"
                    if missing
                    else None,
                ) from exc
            link = self.layout.log(f"mosquitto-{c.name}")
            if not link.is_symlink():
                with contextlib.suppress(OSError):
                    link.symlink_to(files.log_file)
            self.brokers[c.name] = broker
            try:
                broker.start(timeout=30.0)
            except BrokerStartError as exc:
                raise EdgectlError(f"mosquitto for cluster {c.name} did not start: {exc}") from exc
            done += 1
            self.save()
        return done

    def _root_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "root_orchestrator.main",
            "--host",
            HOST,
            "--port",
            str(self.plan.root_port),
        ]

    def _cluster_argv(self, c: ClusterPlan) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cluster_orchestrator.main",
            "--name",
            c.name,
            "--host",
            HOST,
            "--port",
            str(c.port),
            "--url",
            c.url,
            "--data-dir",
            str(self.layout.cluster_dir(c.name)),
            "--broker-host",
            HOST,
            "--broker-port",
            str(c.broker_port),
            "--broker-admin-username",
            BROKER_ADMIN,
            "--root-url",
            self.plan.root_url,
        ]

    def _node_argv(self, c: ClusterPlan, n: NodePlan) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "node_engine.main",
            "--cluster-url",
            c.url,
            "--state-dir",
            str(self.layout.node_dir(n.name)),
            "--name",
            n.name,
            "--runtime",
            self.runtimes,
            "--join-max-delay",
            "2",
        ]
        for key, value in n.labels.items():
            argv += ["--label", f"{key}={value}"]
        return argv

    def _wait_healthy(self, child: _Child, url: str, deadline: float) -> None:
        import httpx

        while True:
            self._check_stop()
            self._check_alive(child)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2.0).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise EdgectlError(
                    f"{child.name} did not answer {url}/healthz in time\n{_tail(child.log)}"
                )
            self.stop_event.wait(0.1)

    def _check_alive(self, child: _Child) -> None:
        code = child.popen.poll()
        if code is not None:
            raise EdgectlError(
                f"{child.name} exited with status {code} while starting (log: {child.log})\n"
                f"{_tail(child.log)}"
            )

    def launch_plan(self) -> LaunchPlan:
        """The service processes to start, in order, with their argv, environment and
        directory (build; `start` runs it). Reads only the plan, the layout and this
        process's environment."""
        plan = self.plan
        base = _python_env()
        root = ProcessSpec(
            "root",
            "root",
            "the root orchestrator",
            self._root_argv(),
            {
                **base,
                "EDGE_OPERATOR_TOKENS": plan.operator_token,
                "EDGE_REGISTRATION_TOKEN": plan.registration_token,
                "EDGE_STORE_URL": self.layout.store_url(plan.store),
            },
            self.layout.root_dir,
            plan.root_url,
        )
        clusters = [
            ProcessSpec(
                f"cluster-{c.name}",
                "cluster",
                f"cluster {c.name}",
                self._cluster_argv(c),
                {
                    **base,
                    "EDGE_OPERATOR_TOKEN": c.operator_token,
                    "EDGE_JOIN_TOKEN": c.join_token,
                    "EDGE_BROKER_ADMIN_PASSWORD": c.broker_admin_password,
                    "EDGE_REGISTRATION_TOKEN": plan.registration_token,
                },
                self.layout.cluster_dir(c.name),
                c.url,
            )
            for c in plan.clusters
        ]
        nodes = [
            ProcessSpec(
                f"node-{n.name}",
                "node",
                f"node {n.name}",
                self._node_argv(c, n),
                {**base, "EDGE_NODE_JOIN_TOKEN": c.join_token},
                self.layout.node_dir(n.name),
            )
            for c in plan.clusters
            for n in c.nodes
        ]
        return LaunchPlan(root, clusters, nodes)

    def start(self, timeout: float = 180.0) -> None:
        """Start everything and wait until every node is READY in the root's view:
        brokers, then root and clusters (each until it answers /healthz), then the node
        engines (until the root lists them READY)."""
        deadline = time.monotonic() + timeout
        self.layout.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._check_ports()
        launch = self.launch_plan()
        total = 2 * len(self.plan.clusters) + 1 + self.plan.node_count
        done = self._start_brokers(0, total)

        self._check_stop()
        self._phase(f"starting {launch.root.title}", done, total)
        root = self._spawn_spec(launch.root)
        clusters = [(spec, self._spawn_spec(spec)) for spec in launch.clusters]
        self._wait_healthy(root, launch.root.url, deadline)
        done += 1
        for spec, child in clusters:
            self._phase(f"starting {spec.title}", done, total)
            self._wait_healthy(child, spec.url, deadline)
            done += 1
        self._phase("starting node engines", done, total)
        for spec in launch.nodes:
            self._check_stop()
            self._spawn_spec(spec)
        self._wait_nodes(done, total, deadline)
        self.state = "ready"
        self.ready_at = time.time()
        self._progress = {"phase": "ready", "done": total, "total": total}
        self.save()

    def _spawn_spec(self, spec: ProcessSpec) -> _Child:
        return self._spawn(spec.name, spec.kind, spec.argv, spec.env, spec.cwd)

    def _wait_nodes(self, done: int, total: int, deadline: float) -> None:
        missing = "no answer from the root yet"
        with RootClient(self.plan.root_url, self.plan.operator_token, timeout=5.0) as client:
            while True:
                self._check_stop()
                for child in self.children:
                    self._check_alive(child)
                try:
                    ready, expected, missing = readiness(client.list_clusters(), self.plan)
                except (ApiError, ConnectionFailed) as exc:
                    ready, expected, missing = 0, self.plan.node_count, str(exc)
                self._phase(f"nodes ready {ready}/{expected}", done + ready, total)
                if not missing:
                    return
                if time.monotonic() >= deadline:
                    raise EdgectlError(
                        f"the system was not ready in time: {missing}",
                        hint=f"see the logs in {self.layout.logs}",
                    )
                self.stop_event.wait(0.25)

    # ----- run -----

    def watch(self, interval: float = 1.0) -> None:
        """Until a stop is requested: report processes that exit on their own."""
        while not self.stop_event.wait(interval):
            for child in self.children:
                code = child.popen.poll()
                if code is not None and not child.reported_exit:
                    child.reported_exit = True
                    self.progress.note(
                        f"warning: {child.name} exited with status {code} (log: {child.log})"
                    )
            for name, broker in self.brokers.items():
                if not broker.running and name not in self._dead_brokers:
                    self._dead_brokers.add(name)
                    self.progress.note(f"warning: mosquitto of {name} exited")

    # ----- stop -----

    def shutdown(self, note: Callable[[str], None] | None = None) -> None:
        """Stop everything in STOP_ORDER, then the node engines' tasks; idempotent."""
        say = note or self.progress.note
        self.state = "stopping"
        with contextlib.suppress(OSError):
            self.save()
        popens = {c.popen.pid: c.popen for c in self.children}
        for kind in _BEFORE_TASKS:
            records = [c.record() for c in self.children if c.kind == kind]
            for line in terminate_records(records, popens=popens):
                say(line)
        node_dirs = [self.layout.node_dir(n.name) for c in self.plan.clusters for n in c.nodes]
        for line in stop_tasks(node_dirs):
            say(line)
        for name, broker in self.brokers.items():
            try:
                broker.stop(timeout=STOP_TIMEOUT_S)
            except Exception as exc:
                say(f"mosquitto of {name}: {exc}")
        for child in self.children:
            with contextlib.suppress(Exception):
                child.popen.wait(5)
        self.children = []
        self.brokers = {}
        self.state = "stopped"
        with contextlib.suppress(OSError):
            self.save()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text[-lines:])


# ----------------------------------------------------------------------------- down


def _supervisor(local: Mapping[str, Any] | None) -> psutil.Process | None:
    sup = (local or {}).get("supervisor")
    return _same_process(sup) if isinstance(sup, Mapping) else None


def _wait_exited(proc: psutil.Process, deadline: float) -> None:
    """Until `proc` has exited (gone, or a zombie its parent has not reaped) or `deadline`:
    `local up` releases the data-dir lock just before it exits, and `down` answers after."""
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.05)


def down(
    data_dir: Path, *, timeout: float = 120.0, note: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Stop the local system of `data_dir`, wherever it runs; returns what was done.

    If its ``local up`` is alive, it gets SIGTERM and stops everything itself (this
    waits until it released the lock). Whatever is left afterwards (a ``local up`` that
    was killed, say) is stopped here from the records in ``local.json`` and the node
    engines' state directories. No process of the system remains.
    """
    layout = Layout(data_dir)
    local = read_local_file(data_dir)
    if local is None and not (data_dir / SYSTEM_FILE).exists():
        raise EdgectlError(
            f"no local system in {data_dir}", hint="pass the --data-dir given to `local up`"
        )
    lock = DataDirLock(data_dir)
    deadline = time.monotonic() + timeout
    done = [] if lock.acquire() else _stop_supervisor(lock, data_dir, local, deadline, note)
    try:
        done += _stop_leftovers(layout, note)
    finally:
        lock.release()
    return done


def _stop_supervisor(
    lock: DataDirLock,
    data_dir: Path,
    local: Mapping[str, Any] | None,
    deadline: float,
    note: Callable[[str], None],
) -> list[str]:
    """SIGTERM the `local up` that holds `lock` (SIGKILL at `deadline`) and take the
    lock once it let go; what was done."""
    sup = _supervisor(local)
    while sup is None and not lock.acquire():
        if time.monotonic() >= deadline:
            raise EdgectlError(f"{lock.path} is held by a process that is not `local up`")
        time.sleep(0.1)  # `local up` has just started and not written its pid yet
        sup = _supervisor(read_local_file(data_dir))
    if sup is None:
        return []
    note(f"stopping edgectl local up (pid {sup.pid})")
    with contextlib.suppress(psutil.Error):
        sup.send_signal(signal.SIGTERM)
    while not lock.acquire():
        if time.monotonic() >= deadline:
            note(f"edgectl local up (pid {sup.pid}) still runs: killing it")
            with contextlib.suppress(psutil.Error):
                sup.kill()
            with contextlib.suppress(psutil.Error):
                sup.wait(10)
            if not lock.acquire():
                raise EdgectlError(f"cannot take {lock.path}")
            break
        time.sleep(0.1)
    _wait_exited(sup, min(deadline, time.monotonic() + 10.0))
    return [f"stopped edgectl local up (pid {sup.pid})"]


def _stop_leftovers(layout: Layout, note: Callable[[str], None]) -> list[str]:
    """With the lock held: stop what `local.json` records as still running (services
    before tasks, brokers last) and the node engines' tasks; mark the system stopped."""
    done: list[str] = []
    local = read_local_file(layout.data_dir) or {}
    records = [r for r in local.get("processes") or [] if isinstance(r, Mapping)]
    live = [r for r in records if _same_process(r) is not None]

    def stop_kind(kind: str) -> None:
        group = [r for r in live if r.get("kind") == kind]
        for r in group:
            note(f"stopping {r.get('name')} (pid {r.get('pid')})")
        done.extend(terminate_records(group))
        done.extend(f"stopped {r.get('name')} (pid {r.get('pid')})" for r in group)

    for kind in _BEFORE_TASKS:
        stop_kind(kind)
    for line in stop_tasks(_node_dirs(layout)):
        note(line)
        done.append(line)
    stop_kind("broker")
    if local:
        local["state"] = "stopped"
        local["processes"] = []
        local["updated_at"] = time.time()
        _write_private(layout.local_file, local)
    return done


def _node_dirs(layout: Layout) -> list[Path]:
    base = layout.data_dir / "nodes"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def stale_cleanup(layout: Layout, note: Callable[[str], None]) -> None:
    """Before a start (lock held): stop what a previous, dead `local up` left running."""
    local = read_local_file(layout.data_dir) or {}
    records = [r for r in local.get("processes") or [] if isinstance(r, Mapping)]
    live = [r for r in records if _same_process(r) is not None]
    if live:
        note(
            f"stopping {len(live)} process(es) left by a previous `local up` that is gone: "
            + ", ".join(str(r.get("name")) for r in live)
        )
        for kind in STOP_ORDER:
            terminate_records([r for r in live if r.get("kind") == kind])
    stop_tasks(_node_dirs(layout))


# ----------------------------------------------------------------------------- detach


def start_detached(
    data_dir: Path,
    argv: list[str],
    *,
    timeout: float,
    on_progress: Callable[[Mapping[str, Any]], None],
) -> dict[str, Any]:
    """Run ``argv`` (a foreground ``edgectl local up``) in the background, wait for ready.

    Its output goes to ``logs/edgectl.log``. Returns the ``local.json`` document once it
    says ready; raises EdgectlError (with the log's tail) if the process exits first or
    the deadline passes (then it is stopped).
    """
    layout = Layout(data_dir)
    layout.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = layout.log("edgectl")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = env.get("COLUMNS", "120")
    env[DETACHED_LOG_ENV] = str(log)
    popen = spawn_logged(
        argv,
        log_path=log,
        env=env,
        header=f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} edgectl local up --detach\n",
    )
    return _wait_detached(popen, data_dir, log, timeout, on_progress)


def _wait_detached(
    popen: subprocess.Popen[bytes],
    data_dir: Path,
    log: Path,
    timeout: float,
    on_progress: Callable[[Mapping[str, Any]], None],
) -> dict[str, Any]:
    """Wait for the detached `edgectl local up` (`popen`) to say ready in local.json."""
    deadline = time.monotonic() + timeout
    while True:
        code = popen.poll()
        local: dict[str, Any] | None = None
        with contextlib.suppress(EdgectlError):
            local = read_local_file(data_dir)
        mine = (
            local is not None
            and isinstance(local.get("supervisor"), Mapping)
            and local["supervisor"].get("pid") == popen.pid
        )
        if mine and local is not None:
            on_progress(local.get("progress") or {})
            if local.get("state") == "ready":
                return local
        if code is not None:
            raise EdgectlError(
                f"edgectl local up exited with status {code} before the system was ready "
                f"(log: {log})\n{_tail(log, 25)}"
            )
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(120)
            raise EdgectlError(
                f"the system was not ready within {timeout:.0f}s (log: {log})\n{_tail(log, 25)}"
            )
        time.sleep(0.2)
