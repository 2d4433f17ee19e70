"""A whole local system as real processes: one root, N clusters (each with its own
Mosquitto), M node engines per cluster. For end-to-end tests and benchmarks.

    with LocalSystem(tmp_path / "sys", root_store_url=None) as system:
        system.start_root()
        a = system.add_cluster("c1", nodes=2)
        system.wait_clusters_ready()
        with system.root_client() as http:
            http.post("/api/v1/jobs", json={...})

Processes:

* root: ``python -m root_orchestrator.main`` (`RootProcess`), settings through ``EDGE_*``,
  its own process group;
* cluster: `tests.harness.cluster_process.ClusterProcess` with ``--start-broker`` (the
  orchestrator starts and owns its Mosquitto with dynsec) and ``--root-url``;
* node engine: `tests.harness.engine_process.NodeEngineProcess` (native runtime; also
  docker with ``add_node(..., runtimes=("native", "docker"))``, whose containers are
  removed at `close()`).

Every program gets the environment variable ``EDGE_TEST_SYSTEM=<random id>`` and runs
in (or is told about) a directory under the system's work directory, so `leftovers()`
can find anything that outlived `close()`: processes carrying the marker, or whose
working directory or command line is under the work directory (native tasks run in
``<state_dir>/native/tasks/<id>/work``). `close()` stops everything (SIGTERM, then
SIGKILL of what is left) and `assert_clean()` checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import psutil

from tests.harness.child import ChildProcess, python_path
from tests.harness.cluster_process import ClusterProcess, free_port
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.wait import wait_for

__all__ = [
    "ClusterUnderTest",
    "LocalSystem",
    "RootProcess",
    "wait_for",
]

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER_ENV = "EDGE_TEST_SYSTEM"

OPERATOR_TOKEN = "system-operator-token"
REGISTRATION_TOKEN = "system-registration-token"
CLUSTER_TOKEN = "system-cluster-token"
JOIN_TOKEN = "system-join-token"


#: Log lines left out of failure messages: successful requests (access log, httpx).
_NOISE = re.compile(r'HTTP/1\.1" 2\d\d|httpx: HTTP Request: .* "HTTP/1\.1 2\d\d')


def _tail(path: Path, lines: int | None = 60) -> str:
    """The last `lines` lines of a log (None: all), without successful-request noise."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    kept = [line for line in text.splitlines() if not _NOISE.search(line)]
    return "\n".join(kept if lines is None else kept[-lines:])


class RootProcess(ChildProcess):
    """One ``root-orchestrator`` process on a fixed port (kept across restarts)."""

    def __init__(
        self,
        workdir: Path,
        *,
        store_url: str | None = None,
        port: int | None = None,
        operator_token: str = OPERATOR_TOKEN,
        registration_token: str = REGISTRATION_TOKEN,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.store_url = store_url or f"sqlite:///{self.workdir / 'root.db'}"
        self.operator_token = operator_token
        self.registration_token = registration_token
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.log_level = log_level
        super().__init__(self.workdir / "root.log")
        self.starts = 0

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> RootProcess:
        """Start (again) and wait until ``/healthz`` answers 200."""
        assert not self.running(), "root already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": python_path(REPO_ROOT, os.environ.get("PYTHONPATH")),
                "EDGE_HOST": "127.0.0.1",
                "EDGE_PORT": str(self.port),
                "EDGE_STORE_URL": self.store_url,
                "EDGE_OPERATOR_TOKENS": self.operator_token,
                "EDGE_REGISTRATION_TOKEN": self.registration_token,
                "EDGE_LOG_LEVEL": self.log_level,
            }
        )
        env.update({f"EDGE_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.update(self.env)
        with self.log_path.open("ab") as log:
            log.write(f"----- start {self.starts + 1} -----\n".encode())
        self._spawn(
            [sys.executable, "-m", "root_orchestrator.main"], env, self.workdir, new_session=True
        )
        self.starts += 1

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"root exited with {self.proc.returncode}:\n{self.output()}")
            return httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200

        try:
            wait_for(healthy, timeout, "root /healthz", context=self.output)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL the group after `timeout`. The exit status."""
        return super().stop(timeout)

    def output(self, tail: int | None = 60) -> str:
        """The last `tail` lines of the root's log (all starts; None: all), without successful
        requests."""
        return _tail(self.log_path, tail)

    def client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for the root with the operator token (caller closes it)."""
        return httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"authorization": f"Bearer {token or self.operator_token}"},
        )


@dataclass
class ClusterUnderTest:
    """A cluster orchestrator process (with its broker) and its node engines."""

    name: str
    process: ClusterProcess
    broker_port: int
    engines: list[NodeEngineProcess] = field(default_factory=list)
    killed: bool = False

    @property
    def url(self) -> str:
        """Base URL of the cluster API."""
        return self.process.url

    def broker_processes(self) -> list[psutil.Process]:
        """The Mosquitto the orchestrator started (a child in its own session)."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "mosquitto" in child.name():
                        found.append(child)
        return found

    def engine_named(self, name: str) -> NodeEngineProcess:
        """One of this cluster's engines by node name."""
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    def client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for the cluster API with its operator token."""
        return self.process.client(token, timeout)


class LocalSystem:
    """Root + clusters + node engines as processes under one work directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        root_store_url: str | None = None,
        root_settings: Mapping[str, Any] | None = None,
        cluster_args: Sequence[str] = (),
        node_status_interval: float | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.log_level = log_level
        self.root = RootProcess(
            self.workdir / "root",
            store_url=root_store_url,
            settings=root_settings,
            env={MARKER_ENV: self.marker},
            log_level=log_level,
        )
        self.cluster_args = list(cluster_args)
        self.node_status_interval = node_status_interval
        self.clusters: dict[str, ClusterUnderTest] = {}
        #: what `close()` found still alive after the orderly stop and had to SIGKILL
        self.killed_at_close: list[str] = []
        self._seen: dict[int, float] = {}  # pid -> create time, of everything we started

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalSystem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start_root(self, timeout: float = 60.0) -> RootProcess:
        """Start the root (or start it again on the same store and port)."""
        self.root.start(timeout)
        self._remember(self.root.pid)
        return self.root

    def restart_root(self, *, kill: bool = False, timeout: float = 60.0) -> RootProcess:
        """Stop the root (SIGTERM, or SIGKILL with `kill`) and start it on the same store."""
        if kill:
            self.root.kill()
        else:
            self.root.stop()
        return self.start_root(timeout)

    def add_cluster(
        self,
        name: str,
        *,
        nodes: int | Sequence[str] = 2,
        labels: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        wait: bool = True,
        timeout: float = 60.0,
    ) -> ClusterUnderTest:
        """Start a cluster orchestrator with its own broker, then its node engines.

        `nodes` is a count (names ``<cluster>-n<i>``) or a list of names. With `wait`,
        returns once every node is READY in the cluster.
        """
        assert name not in self.clusters, f"cluster {name} exists"
        broker_port = free_port()
        args = [
            "--start-broker",
            "--root-url",
            self.root.url,
            *self.cluster_args,
            *extra_args,
        ]
        if labels:
            args += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        process = ClusterProcess(
            self.workdir / f"cluster-{name}",
            broker_port=broker_port,
            operator_token=CLUSTER_TOKEN,
            join_token=JOIN_TOKEN,
            name=name,
            extra_args=args,
            env={MARKER_ENV: self.marker, "EDGE_REGISTRATION_TOKEN": REGISTRATION_TOKEN},
            log_level=self.log_level,
        )
        cluster = ClusterUnderTest(name, process, broker_port)
        self.clusters[name] = cluster
        process.start(timeout)
        self._remember(process.pid)
        for broker in cluster.broker_processes():
            self._remember(broker.pid)
        names = [f"{name}-n{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        for node in names:
            self.add_node(name, node, wait=False)
        if wait and names:
            self.wait_nodes_ready(name, names, timeout)
        return cluster

    def add_node(
        self,
        cluster: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        runtimes: Sequence[str] = ("native",),
        wait: bool = True,
        timeout: float = 60.0,
    ) -> NodeEngineProcess:
        """Start a node engine that joins `cluster` (native runtime unless `runtimes`
        says otherwise, e.g. ``("native", "docker")``)."""
        target = self.clusters[cluster]
        extra: list[str] = []
        for key, value in (labels or {}).items():
            extra += ["--label", f"{key}={value}"]
        engine = NodeEngineProcess(
            self.workdir / f"cluster-{cluster}" / "nodes" / name,
            target.url,
            join_token=JOIN_TOKEN,
            name=name,
            runtimes=tuple(runtimes),
            status_interval=self.node_status_interval,
            extra_args=extra,
            env={MARKER_ENV: self.marker},
            log_level=self.log_level,
        )
        engine.state_dir.parent.mkdir(parents=True, exist_ok=True)
        target.engines.append(engine)
        engine.start()
        self._remember(engine.pid)
        if wait:
            self.wait_nodes_ready(cluster, [name], timeout)
        return engine

    def kill_cluster(self, name: str) -> None:
        """A whole site goes dark: SIGKILL its orchestrator, its broker, its node engines
        and the tasks they run (tasks outlive a killed engine on one host; at a real site
        they would go down with it)."""
        cluster = self.clusters[name]
        brokers = cluster.broker_processes()
        cluster.process.kill()
        for broker in brokers:
            with contextlib.suppress(psutil.Error):
                broker.kill()
        for engine in cluster.engines:
            engine.kill()
            engine.kill_native_tasks()
            with contextlib.suppress(Exception):
                engine.remove_docker_containers()
        psutil.wait_procs(brokers, timeout=10)
        cluster.killed = True

    def close(self) -> None:
        """Stop everything: node engines and their tasks, clusters (which stop their
        brokers), the root; then SIGKILL whatever is still alive."""
        for cluster in self.clusters.values():
            for engine in cluster.engines:
                with contextlib.suppress(Exception):
                    engine.stop_quietly()
        for cluster in self.clusters.values():
            brokers = cluster.broker_processes() if cluster.process.proc else []
            with contextlib.suppress(Exception):
                cluster.process.stop()
            for broker in brokers:
                with contextlib.suppress(psutil.Error):
                    broker.kill()
        with contextlib.suppress(Exception):
            self.root.stop()
        self.killed_at_close = self.kill_leftovers()

    # ------------------------------------------------------------ leftovers

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._seen[pid] = psutil.Process(pid).create_time()

    def leftovers(self) -> list[psutil.Process]:
        """Live processes that belong to this system (see the module docstring)."""
        found: dict[int, psutil.Process] = {}
        me = os.getpid()
        root_dir = str(self.workdir)
        for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status", "create_time"]):
            info = proc.info
            if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            ours = self._seen.get(info["pid"]) == info["create_time"]
            if not ours:
                cwd = info.get("cwd") or ""
                cmdline = " ".join(info.get("cmdline") or [])
                ours = cwd.startswith(root_dir) or root_dir in cmdline
            if not ours:
                with contextlib.suppress(psutil.Error):
                    ours = proc.environ().get(MARKER_ENV) == self.marker
            if ours:
                found[info["pid"]] = proc
        return list(found.values())

    def kill_leftovers(self, timeout: float = 10.0) -> list[str]:
        """SIGKILL every leftover (whole process groups); describe what was killed."""
        killed = []
        for proc in self.leftovers():
            with contextlib.suppress(psutil.Error):
                killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                pgid = os.getpgid(proc.pid)
                if pgid != os.getpgid(0):
                    with contextlib.suppress(OSError):
                        os.killpg(pgid, signal.SIGKILL)
                proc.kill()
        wait_for(lambda: not self.leftovers(), timeout, "leftover processes to exit")
        return killed

    def assert_clean(self) -> None:
        """Fail if any process of this system is alive."""
        left = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in self.leftovers()]
        assert not left, f"processes left behind: {left}"

    # ------------------------------------------------------------ queries

    def root_client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for the root's operator API."""
        return self.root.client(token, timeout)

    def logs(self, lines: int = 40) -> str:
        """The tails of the root's and every cluster's log (for failure messages)."""
        parts = [f"== root ==\n{self.root.output(lines)}"]
        for name, cluster in self.clusters.items():
            log = _tail(cluster.process.log_path, lines)
            parts.append(f"== cluster {name} ==\n{log}")
        return "\n".join(parts)

    def wait_nodes_ready(
        self, cluster: str, names: Sequence[str], timeout: float = 60.0
    ) -> dict[str, str]:
        """Wait until the named nodes are READY in the cluster; {name: node id}."""
        target = self.clusters[cluster]

        def ready() -> dict[str, str] | None:
            for engine in target.engines:
                if engine.name in names and not engine.running():
                    raise RuntimeError(f"node engine {engine.name} exited:\n{engine.output()}")
            with target.client() as http:
                body = http.get("/api/v1/nodes", params={"status": "false"}).json()
            nodes = {n["info"]["name"]: n for n in body["nodes"]}
            if all(nodes.get(n, {}).get("liveness") == "READY" for n in names):
                return {n: nodes[n]["id"] for n in names}
            return None

        return wait_for(
            ready, timeout, f"nodes {list(names)} READY in {cluster}", context=self.logs
        )

    def root_clusters(self) -> dict[str, dict[str, Any]]:
        """The root's view of every cluster, by name."""
        with self.root_client() as http:
            response = http.get("/api/v1/clusters")
            response.raise_for_status()
        return {c["name"]: c for c in response.json()["clusters"]}

    def wait_clusters_ready(
        self, names: Sequence[str] | None = None, timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until the root sees the clusters READY with every live node of theirs
        READY in their report."""
        wanted = (
            list(names)
            if names is not None
            else [n for n, c in self.clusters.items() if not c.killed]
        )

        def ready() -> dict[str, dict[str, Any]] | None:
            clusters = self.root_clusters()
            for name in wanted:
                view = clusters.get(name)
                if view is None or view["liveness"] != "READY" or not view.get("report"):
                    return None
                live = sum(1 for e in self.clusters[name].engines if e.running())
                if view["report"]["nodes_by_liveness"].get("READY", 0) < live:
                    return None
            return clusters

        return wait_for(ready, timeout, f"clusters {wanted} READY at the root", context=self.logs)

    def job(self, job: str) -> dict[str, Any]:
        """``GET /api/v1/jobs/{job}`` at the root."""
        with self.root_client() as http:
            response = http.get(f"/api/v1/jobs/{job}")
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        return body

    def wait_job(
        self,
        job: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
    ) -> dict[str, Any]:
        """Wait until the root's view of a job satisfies `predicate`; return the view."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            last = self.job(job)
            return last if predicate(last) else None

        def context() -> str:
            brief = {
                k: last.get(k) for k in ("state", "desired_replicas", "actual_replicas", "reason")
            }
            instances = [
                (i["id"], i["state"], i.get("cluster_name"), i.get("node_name"), i["reason"])
                for i in last.get("instances", [])
            ]
            return f"job: {brief}\ninstances: {instances}\n{self.logs()}"

        return wait_for(check, timeout, f"job {job}: {what}", context=context)

    def wait_running(self, job: str, replicas: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until exactly `replicas` instances run and the job is RUNNING."""

        def running(view: dict[str, Any]) -> bool:
            active = [i for i in view["instances"] if i["state"] == "RUNNING"]
            return bool(
                view["state"] == "RUNNING"
                and view["actual_replicas"] == replicas
                and len(active) == replicas
            )

        return self.wait_job(job, running, timeout, f"{replicas} replicas RUNNING")


@contextlib.contextmanager
def local_system(workdir: Path, **kwargs: Any) -> Iterator[LocalSystem]:
    """A `LocalSystem` that is closed (and checked for leftovers) on exit."""
    system = LocalSystem(workdir, **kwargs)
    try:
        yield system
    finally:
        system.close()
        system.assert_clean()
