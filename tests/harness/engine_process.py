"""Run a real ``node-engine`` as a subprocess (``python -m node_engine.main``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness.child import ChildProcess, python_path

REPO_ROOT = Path(__file__).resolve().parents[2]


class NodeEngineProcess(ChildProcess):
    """One node engine process; output goes to ``<state_dir>.log`` (appended per start)."""

    def __init__(
        self,
        state_dir: Path,
        cluster_url: str,
        *,
        join_token: str | None = "join-token",
        name: str = "node-a",
        runtimes: Sequence[str] = ("native",),
        status_interval: float | None = 0.5,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_level: str = "INFO",
        repo: Path | None = None,
    ) -> None:
        """`repo`: run the node engine of another checkout (its ``.venv`` interpreter and
        code; benchmarks compare old and new code with it), default this one."""
        self.state_dir = Path(state_dir)
        self.cluster_url = cluster_url
        self.join_token = join_token
        self.name = name
        self.runtimes = list(runtimes)
        self.status_interval = status_interval
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.log_level = log_level
        self.repo = Path(repo).resolve() if repo is not None else None
        super().__init__(self.state_dir.parent / f"{self.state_dir.name}.log")

    def argv(self) -> list[str]:
        """The command line (the join token goes through the environment, not argv)."""
        python = str(self.repo / ".venv" / "bin" / "python") if self.repo else sys.executable
        args = [
            python,
            "-m",
            "node_engine.main",
            "--cluster-url",
            self.cluster_url,
            "--state-dir",
            str(self.state_dir),
            "--name",
            self.name,
            "--log-level",
            self.log_level,
            "--runtime",
            ",".join(self.runtimes),
        ]
        if self.status_interval is not None:
            args += ["--status-interval", str(self.status_interval)]
        return args + self.extra_args

    def start(self) -> NodeEngineProcess:
        """Start the engine (does not wait for it to join)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = python_path(self.repo or REPO_ROOT, env.get("PYTHONPATH"))
        if self.join_token is not None:
            env["EDGE_NODE_JOIN_TOKEN"] = self.join_token
        env.update(self.env)
        self._spawn(self.argv(), env, self.repo or REPO_ROOT)
        return self

    def identity(self) -> dict[str, Any] | None:
        """The stored join response, or None before the first join."""
        path = self.state_dir / "identity.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def wait_identity(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the engine stored its identity (i.e. joined); return it."""
        deadline = time.monotonic() + timeout
        while True:
            identity = self.identity()
            if identity is not None:
                return identity
            if not self.running():
                raise AssertionError(f"engine exited before joining:\n{self.output()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"engine did not join within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def kill_native_tasks(self) -> int:
        """SIGKILL the process group of every native task this engine started (cleanup:
        tasks outlive the engine by design). Returns how many groups were signalled."""
        import psutil

        killed = 0
        for path in sorted((self.state_dir / "native" / "tasks").glob("*/handle.json")):
            try:
                handle = json.loads(path.read_text())
                pid = int(handle["pid"])
                proc = psutil.Process(pid)
                if abs(proc.create_time() - float(handle.get("pid_create_time") or 0)) > 0.1:
                    continue  # pid recycled: not ours
                os.killpg(pid, signal.SIGKILL)
                killed += 1
            except (OSError, ValueError, KeyError, TypeError, psutil.Error):
                continue
        return killed

    def engine_id(self) -> str | None:
        """The engine id docker containers are labelled with (`edge.engine`), once made."""
        try:
            return (self.state_dir / "engine-id").read_text().strip() or None
        except FileNotFoundError:
            return None

    def remove_docker_containers(self) -> int:
        """Force-remove the containers this engine started (cleanup: containers outlive
        the engine by design). Returns how many; 0 without the docker runtime."""
        engine_id = self.engine_id()
        if "docker" not in self.runtimes or engine_id is None:
            return 0
        import docker

        from tests.fixtures.images import remove_engine_containers

        client = docker.from_env(timeout=30)
        try:
            return remove_engine_containers(client, engine_id)
        finally:
            client.close()

    def stop_quietly(self) -> None:
        """Best-effort cleanup for fixtures: SIGTERM, then SIGKILL; then the tasks."""
        if self.proc is None:
            return
        try:
            self.terminate(15)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close()
        self.kill_native_tasks()
        self.remove_docker_containers()


class EngineFleet:
    """The node engines one test started, in `base_dir` (``node-<name>``), all stopped at
    the end (SIGTERM, then their tasks and containers); the engines' fixtures use it."""

    def __init__(self, base_dir: Path, *, join_token: str | None = "join-token") -> None:
        self.base_dir = Path(base_dir)
        self.join_token = join_token
        self.started: list[NodeEngineProcess] = []

    def start(self, cluster_url: str, name: str, **options: Any) -> NodeEngineProcess:
        """Start an engine named `name` (options as for NodeEngineProcess)."""
        options.setdefault("join_token", self.join_token)
        engine = NodeEngineProcess(
            self.base_dir / f"node-{name}", cluster_url, name=name, **options
        )
        self.started.append(engine)
        engine.start()
        return engine

    def stop_all(self) -> None:
        """Stop every engine started, whatever state it is in."""
        for engine in self.started:
            with contextlib.suppress(Exception):
                engine.stop_quietly()
