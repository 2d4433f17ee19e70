"""The docker runtime: one container per task, through the Docker SDK.

The client is injected (`client_factory`, default `docker.from_env`) and created on first
use, never at import. Every container the runtime creates carries the labels
`edge.managed=true`, `edge.engine=<engine_id>` and `edge.instance=<instance_id>` and is
named `edge-<engine id>-<instance id>`, so a restarted engine finds exactly its own
containers (`adopt`), and engines sharing one Docker host (a local demo) do not collide.

Limits: `nano_cpus` from `resources.cpu`, `mem_limit` from `resources.memory_mib` with
`memswap_limit` equal to it (no swap on top, so the limit is real). Logs use the json-file
driver capped at `log_max_size` x `log_max_files` (default 4 MiB x 2), like the native
runtime's bound. `spec.command`, when given, replaces both the image's ENTRYPOINT and CMD
(`argv[0]` becomes the entrypoint), so it means the same "program and args" as for native
tasks; an empty command keeps the image's own.

Redeploying an instance whose container still exists removes the old container first
(running or not): a deploy means "run this spec now", and the engine adopts running
containers through `adopt()` after a restart rather than through `deploy()`.

Cost: `status()` is one inspect call (GET /containers/<id>/json, a few ms on a local
socket) plus, when the container's cgroup is readable from here (same host, host pid
namespace), three small file reads for CPU and memory. `container.stats(stream=False)`
takes ~1-2 s (the daemon samples twice), so it is only the fallback of `usage()`, which
the engine should call rarely, and never part of `status()`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from node_engine import cgroups
from node_engine.runtimes.base import RuntimeFailure, TaskHandle, TaskObservation
from schemas.common import Runtime as RuntimeKind
from schemas.job import TaskSpec, TaskState

LABEL_MANAGED = "edge.managed"
LABEL_ENGINE = "edge.engine"
LABEL_INSTANCE = "edge.instance"

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def container_name(engine_id: str, instance_id: str) -> str:
    """The container name of an instance: `edge-<engine id (sanitised, <=32)>-<instance>`."""
    slug = _SLUG.sub("-", engine_id).strip("-.")[:32] or "engine"
    return f"edge-{slug}-{instance_id}"


def _parse_time(value: str | None) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) to epoch seconds; 0.0 if unset."""
    if not value or value.startswith("0001-"):
        return 0.0
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        return 0.0
    frac = (m.group(2) or ".0")[:7]
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(m.group(1) + frac + tz).timestamp()
    except ValueError:
        return 0.0


def _explain(exc: Exception) -> str:
    """A one-line reason from a Docker SDK or requests exception."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation).strip()
    return f"{type(exc).__name__}: {exc}".strip()


class _CgroupUsage:
    """Reads a container's CPU and memory straight from its cgroup files (cheap)."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.v2 = "unified" in dirs and "memory" not in dirs
        self.memory_dir = dirs.get("unified") if self.v2 else dirs.get("memory")
        self.cpu_dir = dirs.get("unified") if self.v2 else dirs.get("cpuacct")
        self.last: tuple[float, int] | None = None

    def _cpu_ns(self) -> int | None:
        if self.cpu_dir is None:
            return None
        try:
            if self.v2:
                for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) * 1000
                return None
            return int((self.cpu_dir / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return None

    def _memory_bytes(self) -> int | None:
        """Usage minus inactive page cache: the figure `docker stats` shows."""
        if self.memory_dir is None:
            return None
        try:
            name = "memory.current" if self.v2 else "memory.usage_in_bytes"
            usage = int((self.memory_dir / name).read_text())
            key = "inactive_file" if self.v2 else "total_inactive_file"
            for line in (self.memory_dir / "memory.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == key:
                    return max(0, usage - int(v))
            return usage
        except (OSError, ValueError):
            return None

    def sample(self) -> tuple[float, float] | None:
        """(cpu percent of one core since the previous sample, memory MiB), or None."""
        mem = self._memory_bytes()
        cpu_ns = self._cpu_ns()
        if mem is None or cpu_ns is None:
            return None
        now = time.monotonic()
        cpu = 0.0
        if self.last is not None and now > self.last[0]:
            cpu = max(0.0, (cpu_ns - self.last[1]) / ((now - self.last[0]) * 1e9) * 100)
        self.last = (now, cpu_ns)
        return cpu, mem / (1024 * 1024)


class DockerRuntime:
    """Runs tasks as labelled Docker containers; see the module docstring."""

    kind = RuntimeKind.DOCKER

    def __init__(
        self,
        client_factory: Callable[[], Any] = docker.from_env,
        engine_id: str = "edge",
        *,
        ping_timeout_s: float = 2.0,
        log_max_size: str = "4m",
        log_max_files: int = 2,
    ) -> None:
        """`client_factory` returns a `docker.DockerClient` (called lazily, once);
        `engine_id` scopes labels and names so adoption finds only this engine's tasks."""
        self.client_factory = client_factory
        self.engine_id = engine_id
        self.ping_timeout_s = ping_timeout_s
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self._client_obj: Any = None
        self._stopped: set[str] = set()
        self._usage: dict[str, _CgroupUsage | None] = {}

    def client(self) -> Any:
        """The Docker client, created on first use; RuntimeFailure if it cannot be."""
        if self._client_obj is None:
            try:
                self._client_obj = self.client_factory()
            except Exception as exc:
                raise RuntimeFailure(f"docker engine unreachable: {_explain(exc)}") from exc
        return self._client_obj

    def close(self) -> None:
        """Close the client's connection pool (a new one is made on next use)."""
        if self._client_obj is not None:
            with contextlib.suppress(Exception):
                self._client_obj.close()
            self._client_obj = None

    def labels(self, instance_id: str) -> dict[str, str]:
        """The labels that mark a container as this engine's task."""
        return {
            LABEL_MANAGED: "true",
            LABEL_ENGINE: self.engine_id,
            LABEL_INSTANCE: instance_id,
        }

    # ------------------------------------------------------------------ protocol

    def available(self) -> tuple[bool, str]:
        """Ping the engine with a short timeout (GET /_ping)."""
        try:
            client = self.client()
            api = client.api
            resp = api.get(f"{api.base_url}/_ping", timeout=self.ping_timeout_s)
            if resp.status_code != 200:
                return False, f"docker ping answered HTTP {resp.status_code}"
            return True, f"docker engine answers (API {api.api_version})"
        except RuntimeFailure as exc:
            return False, exc.reason
        except (requests.RequestException, docker.errors.DockerException, OSError) as exc:
            return False, f"docker engine does not answer: {_explain(exc)}"

    def _ensure_image(self, image: str) -> None:
        client = self.client()
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise RuntimeFailure(f"image lookup failed: {_explain(exc)}") from exc
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            client.images.pull(repository, tag=tag or "latest")
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise RuntimeFailure(f"image pull failed: {image}: {_explain(exc)}") from exc

    def _remove_existing(self, name: str) -> None:
        client = self.client()
        try:
            old = client.containers.get(name)
        except docker.errors.NotFound:
            return
        if (old.labels or {}).get(LABEL_ENGINE) != self.engine_id:
            raise RuntimeFailure(f"container name {name} is taken by a container of another owner")
        with contextlib.suppress(docker.errors.NotFound):
            old.remove(force=True)

    def deploy(self, instance_id: str, spec: TaskSpec) -> TaskHandle:
        """Pull the image if missing, replace any old container of the instance, and run
        the new one detached with limits, labels, env, workdir and command."""
        if not spec.image:
            raise RuntimeFailure("docker task has no image")
        name = container_name(self.engine_id, instance_id)
        self._ensure_image(spec.image)
        self._remove_existing(name)
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            "detach": True,
            "labels": self.labels(instance_id),
            "environment": dict(spec.env),
            "log_config": docker.types.LogConfig(
                type="json-file",
                config={"max-size": self.log_max_size, "max-file": str(self.log_max_files)},
            ),
        }
        if spec.command:
            kwargs["entrypoint"] = spec.command[:1]
            kwargs["command"] = spec.command[1:]
        if spec.workdir:
            kwargs["working_dir"] = spec.workdir
        if spec.resources.memory_mib:
            limit = spec.resources.memory_mib * 1024 * 1024
            kwargs["mem_limit"] = limit
            kwargs["memswap_limit"] = limit
        if spec.resources.cpu:
            kwargs["nano_cpus"] = int(spec.resources.cpu * 1e9)
        try:
            container = self.client().containers.run(**kwargs)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            # A failed start (e.g. entrypoint not found) leaves a "created" container.
            with contextlib.suppress(Exception):
                self.client().containers.get(name).remove(force=True)
            raise RuntimeFailure(f"container start failed: {_explain(exc)}") from exc
        self._stopped.discard(container.id)
        return TaskHandle(
            instance_id=instance_id,
            runtime=RuntimeKind.DOCKER,
            container_id=container.id,
            started_at=time.time(),
            extra={"name": name, "image": spec.image},
        )

    def _container(self, handle: TaskHandle) -> Any:
        """The container object (freshly inspected), or None if it no longer exists."""
        if not handle.container_id:
            raise RuntimeFailure("handle has no container id")
        try:
            return self.client().containers.get(handle.container_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise RuntimeFailure(f"docker inspect failed: {_explain(exc)}") from exc

    def stop(self, handle: TaskHandle, timeout_s: float = 10.0) -> None:
        """`docker stop` (SIGTERM, SIGKILL after timeout_s) then remove. Idempotent."""
        container = self._container(handle)
        if handle.container_id:
            self._stopped.add(handle.container_id)
            self._usage.pop(handle.container_id, None)
        if container is None:
            return
        try:
            if container.attrs.get("State", {}).get("Paused"):
                container.unpause()
            if container.status in ("running", "paused", "restarting"):
                container.stop(timeout=max(0, math.ceil(timeout_s)))
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise RuntimeFailure(f"docker stop failed: {_explain(exc)}") from exc

    def pause(self, handle: TaskHandle) -> None:
        """`docker pause` (cgroup freezer)."""
        container = self._container(handle)
        if container is None:
            raise RuntimeFailure("container not found")
        try:
            container.pause()
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"docker pause failed: {_explain(exc)}") from exc

    def resume(self, handle: TaskHandle) -> None:
        """`docker unpause`."""
        container = self._container(handle)
        if container is None:
            raise RuntimeFailure("container not found")
        try:
            container.unpause()
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"docker unpause failed: {_explain(exc)}") from exc

    def _cheap_usage(self, container_id: str, pid: int) -> tuple[float, float] | None:
        reader = self._usage.get(container_id)
        if reader is None and container_id not in self._usage:
            dirs = cgroups.process_cgroup_dirs(pid) if pid > 0 else {}
            reader = _CgroupUsage(dirs) if dirs else None
            self._usage[container_id] = reader
        return reader.sample() if reader is not None else None

    def status(self, handle: TaskHandle) -> TaskObservation:
        """State from one inspect; CPU/memory from the container's cgroup files when they
        are readable here (else 0.0: call `usage()` for the slow Docker stats API)."""
        container = self._container(handle)
        if container is None:
            if handle.container_id in self._stopped:
                return TaskObservation(state=TaskState.TERMINATED, reason="stopped by the engine")
            return TaskObservation(
                state=TaskState.FAILED, reason="container not found (removed outside the engine)"
            )
        st = container.attrs.get("State", {})
        status = st.get("Status", "")
        if status in ("running", "paused", "restarting"):
            cpu = mem = 0.0
            sample = self._cheap_usage(container.id, int(st.get("Pid") or 0))
            if sample is not None:
                cpu, mem = sample
            paused = status == "paused" or bool(st.get("Paused"))
            return TaskObservation(
                state=TaskState.PAUSED if paused else TaskState.RUNNING,
                cpu_percent=round(cpu, 2),
                memory_mib=round(mem, 2),
            )
        if status == "created":
            return TaskObservation(state=TaskState.STARTING)
        if status == "removing":
            return TaskObservation(state=TaskState.TERMINATED, reason="container being removed")
        self._usage.pop(container.id, None)
        code = int(st.get("ExitCode", -1))
        oom = bool(st.get("OOMKilled"))
        error = str(st.get("Error") or "")
        if code == 0:
            reason = "exit code 0; a process was OOM killed" if oom else ""
            return TaskObservation(
                state=TaskState.SUCCEEDED, exit_code=0, oom_killed=oom, reason=reason
            )
        if oom:
            reason = f"memory limit exceeded (OOM killed), exit code {code}"
        else:
            reason = f"exit code {code}" + (f": {error}" if error else "")
        return TaskObservation(
            state=TaskState.FAILED, exit_code=code, reason=reason, oom_killed=oom
        )

    def usage(self, handle: TaskHandle) -> tuple[float, float]:
        """(cpu percent of one core, memory MiB): cgroup files if readable, else the Docker
        stats API (slow, ~1-2 s per call: call it seldom). (0, 0) if not running."""
        container = self._container(handle)
        if container is None or container.status not in ("running", "paused"):
            return 0.0, 0.0
        sample = self._cheap_usage(container.id, int(container.attrs["State"].get("Pid") or 0))
        if sample is not None:
            return sample
        try:
            stats = container.stats(stream=False)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise RuntimeFailure(f"docker stats failed: {_explain(exc)}") from exc
        cpu_stats, pre = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
        cpu_delta = cpu_stats.get("cpu_usage", {}).get("total_usage", 0) - pre.get(
            "cpu_usage", {}
        ).get("total_usage", 0)
        sys_delta = cpu_stats.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        ncpu = cpu_stats.get("online_cpus") or 1
        cpu = cpu_delta / sys_delta * ncpu * 100 if sys_delta > 0 else 0.0
        mem = stats.get("memory_stats", {})
        used = mem.get("usage", 0) - mem.get("stats", {}).get(
            "total_inactive_file", mem.get("stats", {}).get("inactive_file", 0)
        )
        return max(0.0, cpu), max(0, used) / (1024 * 1024)

    def logs(self, handle: TaskHandle, tail: int = 100) -> str:
        """The last `tail` lines of the container's stdout and stderr."""
        if tail <= 0:
            return ""
        container = self._container(handle)
        if container is None:
            return ""
        try:
            raw = container.logs(stdout=True, stderr=True, tail=tail)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"docker logs failed: {_explain(exc)}") from exc
        text: str = raw.decode(errors="replace")
        return text.rstrip("\n")

    def adopt(self) -> list[TaskHandle]:
        """Handles of every container (any state) labelled with this engine id: running and
        paused ones to keep watching, exited ones so the engine reads their exit code
        (status) and then removes them (stop)."""
        filters = {"label": [f"{LABEL_ENGINE}={self.engine_id}", f"{LABEL_MANAGED}=true"]}
        try:
            containers = self.client().containers.list(all=True, filters=filters)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise RuntimeFailure(f"docker list failed: {_explain(exc)}") from exc
        out = []
        for c in containers:
            labels = c.labels or {}
            instance_id = labels.get(LABEL_INSTANCE)
            if not instance_id or labels.get(LABEL_ENGINE) != self.engine_id:
                continue
            out.append(
                TaskHandle(
                    instance_id=instance_id,
                    runtime=RuntimeKind.DOCKER,
                    container_id=c.id,
                    started_at=_parse_time(c.attrs.get("State", {}).get("StartedAt")),
                    extra={"name": c.name, "image": str(c.attrs.get("Config", {}).get("Image"))},
                )
            )
        return sorted(out, key=lambda h: h.instance_id)
