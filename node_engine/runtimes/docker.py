"""The docker runtime: one container per task, through the Docker Engine API.

The client is `node_engine.runtimes.docker_api.DockerClient` (a small stdlib HTTP client
over the daemon's socket; the Docker SDK is not used: it cost ~8 MB of RSS). It is
injected (`client_factory`, default `DockerClient.from_env`) and created on first use,
never at import. Every container the runtime creates carries the labels
`edge.managed=true`, `edge.engine=<engine_id>` and `edge.instance=<instance_id>` and is
named `edge-<engine id>-<instance id>`, so a restarted engine finds exactly its own
containers (`adopt`), and engines sharing one Docker host (a local demo) do not collide.

Limits: `nano_cpus` from `resources.cpu`, `mem_limit` from `resources.memory_mib` with
`memswap_limit` equal to it (no swap on top, so the limit is real). Logs use the json-file
driver capped at `log_max_size` x `log_max_files` (default 4 MiB x 2), like the native
runtime's bound. `spec.command`, when given, replaces both the image's ENTRYPOINT and CMD
(`argv[0]` becomes the entrypoint), so it means the same "program and args" as for native
tasks; an empty command keeps the image's own.

Logs: read with `timestamps=True`; a cursor is `d<ns>.<k>`, the docker timestamp (in
nanoseconds) of the last entry delivered and how many entries with exactly that
timestamp were delivered (`since` is inclusive and has microsecond precision, so the
entries at the boundary are skipped by count). A container is removed once its task has
ended (the engine's cleanup): just before that, with a `state_dir`, its last output
(`SAVED_LOG_BYTES`, 64 KiB, newest first) is appended to `<state_dir>/logs/<instance>.log`
(kept at 64 KiB), so a failed task's output stays readable, and a restarted instance
shows its earlier runs too. `discard_logs()` deletes the file when the engine forgets
the task.

Redeploying an instance whose container still exists removes the old container first
(running or not): a deploy means "run this spec now", and the engine adopts running
containers through `adopt()` after a restart rather than through `deploy()`.

Cost: `status()` is one inspect call (GET /containers/<id>/json, ~1 ms on a local
socket, kept-alive connection) plus, when the container's cgroup is readable from here
(same host, host pid namespace), three small file reads for CPU and memory. The stats
API (one sample) takes ~1-2 s (the daemon samples twice), so it is only the fallback of
`usage()`, which the engine should call rarely, and never part of `status()`.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from node_engine import cgroups
from node_engine.runtimes.base import (
    BadCursor,
    LogPiece,
    LogRead,
    RuntimeFailure,
    TaskHandle,
    TaskObservation,
)
from node_engine.runtimes.docker_api import (
    DockerClient,
    DockerError,
    NotFound,
    parse_repository_tag,
)
from schemas.common import Runtime as RuntimeKind
from schemas.job import TaskSpec, TaskState

LABEL_MANAGED = "edge.managed"
LABEL_ENGINE = "edge.engine"
LABEL_INSTANCE = "edge.instance"

SAVED_LOG_BYTES = 64 * 1024
"""Output kept per instance once its container is removed (newest bytes)."""
SAVED_LOG_LINES = 4000
"""At most this many entries are read from a container when saving its output."""

log = logging.getLogger(__name__)

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_CURSOR = re.compile(r"^d(\d{1,24})\.(\d{1,9})$")
_DOCKER_TS = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


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


class LogEntry(NamedTuple):
    """One log message of a container: its docker timestamp (ns) and its bytes."""

    ns: int
    data: bytes


def docker_ts_ns(stamp: bytes) -> int | None:
    """A docker log timestamp (RFC 3339, up to nanoseconds) as epoch nanoseconds."""
    m = _DOCKER_TS.match(stamp)
    if m is None:
        return None
    try:
        seconds = calendar.timegm(time.strptime(m.group(1).decode(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    zone = m.group(3)
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((m.group(2) or b"0").ljust(9, b"0"))


def parse_frame(frame: bytes, previous_ns: int = 0) -> LogEntry:
    """One frame of `docker logs --timestamps` (`<timestamp> <bytes>`) as an entry; a
    frame without a readable stamp keeps the previous entry's time."""
    stamp, sep, data = frame.partition(b" ")
    ns = docker_ts_ns(stamp) if sep else None
    if ns is None:
        return LogEntry(previous_ns, frame)
    return LogEntry(ns, data)


def parse_log_cursor(cursor: str | None) -> tuple[int, int] | None:
    """(ns, entries at ns already delivered) of a docker log cursor; None for none."""
    if cursor is None or cursor == "":
        return None
    m = _CURSOR.match(cursor)
    if m is None:
        raise BadCursor(f"not a docker log cursor: {cursor[:40]!r}")
    return int(m.group(1)), int(m.group(2))


def log_cursor(ns: int, count: int) -> str:
    """The cursor after the `count`-th entry with timestamp `ns`."""
    return f"d{ns}.{count}"


def select_entries(
    entries: Iterable[LogEntry],
    *,
    tail: int,
    cursor: tuple[int, int] | None,
    max_bytes: int,
) -> LogRead:
    """Pick what a read returns from entries in time order (pure: unit-tested).

    With a cursor: the entries after it (skipping those at the cursor's timestamp that
    were delivered), up to `max_bytes` (at least one entry). Without: the last `tail`
    entries that fit in `max_bytes`. Each piece carries the cursor after it.
    """
    items = list(entries)
    if cursor is None:
        kept: list[LogEntry] = []
        size = 0
        for entry in reversed(items):
            if len(kept) >= tail or (kept and size + len(entry.data) > max_bytes):
                break
            kept.append(entry)
            size += len(entry.data)
        kept.reverse()
        start = (0, 0)
        if kept:  # the cursor of the entry before the first one kept
            first = len(items) - len(kept)
            before = [e for e in items[:first] if e.ns == kept[0].ns]
            start = (kept[0].ns, len(before))
        pieces = _with_cursors(kept, start)
        end = _cursor_after(items)
        return LogRead(pieces, log_cursor(*end) if items else log_cursor(0, 0))
    ns, seen = cursor
    after: list[LogEntry] = []
    at_cursor = 0
    for entry in items:
        if entry.ns < ns:
            continue
        if entry.ns == ns and at_cursor < seen:
            at_cursor += 1
            continue
        after.append(entry)
    out: list[LogEntry] = []
    size = 0
    for entry in after:
        if out and size + len(entry.data) > max_bytes:
            break
        out.append(entry)
        size += len(entry.data)
    pieces = _with_cursors(out, (ns, seen))
    return LogRead(
        pieces, pieces[-1].cursor if pieces else log_cursor(ns, seen), more=len(out) < len(after)
    )


def _with_cursors(entries: list[LogEntry], start: tuple[int, int]) -> list[LogPiece]:
    ns, count = start
    pieces = []
    for entry in entries:
        count = count + 1 if entry.ns == ns else 1
        ns = entry.ns
        pieces.append(LogPiece(entry.data, log_cursor(ns, count)))
    return pieces


def _cursor_after(entries: list[LogEntry]) -> tuple[int, int]:
    if not entries:
        return 0, 0
    last = entries[-1].ns
    return last, sum(1 for e in entries if e.ns == last)


def _explain(exc: Exception) -> str:
    """A one-line reason: the daemon's message, or what failed on the connection."""
    if isinstance(exc, DockerError) and str(exc):
        return str(exc).strip()
    return f"{type(exc).__name__}: {exc}".strip()


def since_param(since_ns: int) -> str:
    """The logs API's inclusive `since` (``<s>.<fraction>``) one microsecond before
    `since_ns`, so that entries at the cursor's own microsecond are read again (and
    skipped by count)."""
    us = max(0, since_ns // 1000 - 1)
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _state(info: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = info.get("State") or {}
    return state


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
        client_factory: Callable[[], DockerClient] = DockerClient.from_env,
        engine_id: str = "edge",
        *,
        ping_timeout_s: float = 2.0,
        log_max_size: str = "4m",
        log_max_files: int = 2,
        state_dir: Path | None = None,
    ) -> None:
        """`client_factory` returns a `DockerClient` (called lazily, once); `engine_id`
        scopes labels and names so adoption finds only this engine's tasks; `state_dir`
        keeps the last output of removed containers (none without it)."""
        self.client_factory = client_factory
        self.engine_id = engine_id
        self.logs_dir = Path(state_dir) / "logs" if state_dir is not None else None
        self.ping_timeout_s = ping_timeout_s
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self._client_obj: DockerClient | None = None
        self._stopped: set[str] = set()
        self._usage: dict[str, _CgroupUsage | None] = {}

    def client(self) -> DockerClient:
        """The Docker client, created on first use; RuntimeFailure if it cannot be."""
        if self._client_obj is None:
            try:
                self._client_obj = self.client_factory()
            except Exception as exc:
                raise RuntimeFailure(f"docker engine unreachable: {_explain(exc)}") from exc
        return self._client_obj

    def close(self) -> None:
        """Close the client's idle connections (a new client is made on next use)."""
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
        """Ping the engine with a short timeout (GET /_ping); negotiates the API version."""
        try:
            version = self.client().ping(timeout=self.ping_timeout_s)
            return True, f"docker engine answers (API {version})"
        except RuntimeFailure as exc:
            return False, exc.reason
        except (DockerError, OSError) as exc:
            return False, f"docker engine does not answer: {_explain(exc)}"

    def _ensure_image(self, image: str) -> None:
        client = self.client()
        try:
            client.image_inspect(image)
            return
        except NotFound:
            pass
        except DockerError as exc:
            raise RuntimeFailure(f"image lookup failed: {_explain(exc)}") from exc
        repository, tag = parse_repository_tag(image)
        try:
            client.pull(repository, tag or "latest")
        except DockerError as exc:
            raise RuntimeFailure(f"image pull failed: {image}: {_explain(exc)}") from exc

    def _remove_existing(self, name: str) -> None:
        client = self.client()
        try:
            old = client.inspect(name)
        except NotFound:
            return
        except DockerError as exc:
            raise RuntimeFailure(f"docker inspect failed: {_explain(exc)}") from exc
        labels = (old.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_ENGINE) != self.engine_id:
            raise RuntimeFailure(f"container name {name} is taken by a container of another owner")
        instance_id = labels.get(LABEL_INSTANCE)
        if instance_id:
            self._save_output(old, instance_id)
        try:
            client.remove(str(old["Id"]), force=True)
        except NotFound:
            pass
        except DockerError as exc:
            raise RuntimeFailure(f"docker remove failed: {_explain(exc)}") from exc

    def create_config(self, instance_id: str, spec: TaskSpec) -> dict[str, Any]:
        """The body of POST /containers/create for a task (what the SDK's
        `containers.run` sent for the same arguments, restart policy "no")."""
        host: dict[str, Any] = {
            "LogConfig": {
                "Type": "json-file",
                "Config": {"max-size": self.log_max_size, "max-file": str(self.log_max_files)},
            },
            "RestartPolicy": {"Name": "no"},
            "NetworkMode": "default",
        }
        if spec.resources.memory_mib:
            limit = spec.resources.memory_mib * 1024 * 1024
            host["Memory"] = limit
            host["MemorySwap"] = limit
        if spec.resources.cpu:
            host["NanoCpus"] = int(spec.resources.cpu * 1e9)
        config: dict[str, Any] = {
            "Image": spec.image,
            "Labels": self.labels(instance_id),
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "HostConfig": host,
        }
        if spec.command:
            config["Entrypoint"] = spec.command[:1]
            config["Cmd"] = spec.command[1:]
        if spec.workdir:
            config["WorkingDir"] = spec.workdir
        return config

    def deploy(self, instance_id: str, spec: TaskSpec) -> TaskHandle:
        """Pull the image if missing, replace any old container of the instance, and run
        the new one detached with limits, labels, env, workdir and command."""
        if not spec.image:
            raise RuntimeFailure("docker task has no image")
        name = container_name(self.engine_id, instance_id)
        self._ensure_image(spec.image)
        self._remove_existing(name)
        client = self.client()
        try:
            container_id = client.create(name, self.create_config(instance_id, spec))
            client.start(container_id)
        except DockerError as exc:
            # A failed start (e.g. entrypoint not found) leaves a "created" container.
            with contextlib.suppress(Exception):
                client.remove(name, force=True)
            raise RuntimeFailure(f"container start failed: {_explain(exc)}") from exc
        self._stopped.discard(container_id)
        return TaskHandle(
            instance_id=instance_id,
            runtime=RuntimeKind.DOCKER,
            container_id=container_id,
            started_at=time.time(),
            extra={"name": name, "image": spec.image},
        )

    def _container_id(self, handle: TaskHandle) -> str:
        if not handle.container_id:
            raise RuntimeFailure("handle has no container id")
        return handle.container_id

    def _container(self, handle: TaskHandle) -> dict[str, Any] | None:
        """The container's inspect document (fresh), or None if it no longer exists."""
        try:
            return self.client().inspect(self._container_id(handle))
        except NotFound:
            return None
        except DockerError as exc:
            raise RuntimeFailure(f"docker inspect failed: {_explain(exc)}") from exc

    def stop(self, handle: TaskHandle, timeout_s: float = 10.0) -> None:
        """`docker stop` (SIGTERM, SIGKILL after timeout_s) then remove. Idempotent."""
        info = self._container(handle)
        if handle.container_id:
            self._stopped.add(handle.container_id)
            self._usage.pop(handle.container_id, None)
        if info is None:
            return
        client = self.client()
        cid = str(info["Id"])
        try:
            st = _state(info)
            if st.get("Paused"):
                client.unpause(cid)
            if st.get("Status") in ("running", "paused", "restarting"):
                client.stop(cid, max(0, math.ceil(timeout_s)))
            self._save_output(info, handle.instance_id)
            client.remove(cid, force=True)
        except NotFound:
            return
        except DockerError as exc:
            raise RuntimeFailure(f"docker stop failed: {_explain(exc)}") from exc

    def pause(self, handle: TaskHandle) -> None:
        """`docker pause` (cgroup freezer)."""
        try:
            self.client().pause(self._container_id(handle))
        except NotFound as exc:
            raise RuntimeFailure("container not found") from exc
        except DockerError as exc:
            raise RuntimeFailure(f"docker pause failed: {_explain(exc)}") from exc

    def resume(self, handle: TaskHandle) -> None:
        """`docker unpause`."""
        try:
            self.client().unpause(self._container_id(handle))
        except NotFound as exc:
            raise RuntimeFailure("container not found") from exc
        except DockerError as exc:
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
        info = self._container(handle)
        if info is None:
            if handle.container_id in self._stopped:
                return TaskObservation(state=TaskState.TERMINATED, reason="stopped by the engine")
            return TaskObservation(
                state=TaskState.FAILED, reason="container not found (removed outside the engine)"
            )
        cid = str(info.get("Id") or handle.container_id)
        st = _state(info)
        status = st.get("Status", "")
        if status in ("running", "paused", "restarting"):
            cpu = mem = 0.0
            sample = self._cheap_usage(cid, int(st.get("Pid") or 0))
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
        self._usage.pop(cid, None)
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
        info = self._container(handle)
        if info is None or _state(info).get("Status") not in ("running", "paused"):
            return 0.0, 0.0
        cid = str(info["Id"])
        sample = self._cheap_usage(cid, int(_state(info).get("Pid") or 0))
        if sample is not None:
            return sample
        try:
            stats = self.client().stats(cid)
        except DockerError as exc:
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
        try:
            raw = b"".join(self.client().logs(self._container_id(handle), tail=tail))
        except NotFound:
            return ""
        except DockerError as exc:
            raise RuntimeFailure(f"docker logs failed: {_explain(exc)}") from exc
        return raw.decode(errors="replace").rstrip("\n")

    # ------------------------------------------------------------------ log reads

    def _saved_path(self, instance_id: str) -> Path | None:
        if self.logs_dir is None:
            return None
        if not instance_id or "/" in instance_id or instance_id in (".", ".."):
            raise RuntimeFailure(f"invalid instance id {instance_id!r}")
        return self.logs_dir / f"{instance_id}.log"

    def _saved_entries(self, instance_id: str) -> list[LogEntry]:
        """The saved output of removed containers of the instance, oldest first."""
        path = self._saved_path(instance_id)
        if path is None:
            return []
        try:
            raw = path.read_bytes()
        except OSError:
            return []
        return decode_saved(raw)

    def _frames(self, container_id: str, *, tty: bool = False, **kwargs: Any) -> Iterable[bytes]:
        """Frames of `docker logs --timestamps` (stdout and stderr), one per entry."""
        try:
            return self.client().logs(container_id, timestamps=True, tty=tty, **kwargs)
        except NotFound:
            return []
        except DockerError as exc:
            raise RuntimeFailure(f"docker logs failed: {_explain(exc)}") from exc

    def _live_entries(
        self, handle: TaskHandle | None, *, tail: int | None, since_ns: int, max_bytes: int
    ) -> tuple[list[LogEntry], bool]:
        """Entries of the instance's container (if it still exists): the last `tail`,
        or those from `since_ns` on, read until `max_bytes` (plus one entry) are in.
        Also whether the read stopped early."""
        if handle is None or not handle.container_id:
            return [], False
        kwargs: dict[str, Any] = {"tail": tail if tail is not None else "all"}
        if since_ns > 1000:
            kwargs["since"] = since_param(since_ns)  # microseconds, inclusive
        out: list[LogEntry] = []
        size = 0
        previous = since_ns
        stopped = False
        frames = self._frames(handle.container_id, **kwargs)
        try:
            for frame in frames:
                entry = parse_frame(frame, previous)
                previous = entry.ns
                out.append(entry)
                size += len(entry.data)
                if tail is None and size > max_bytes + 65536:
                    stopped = True
                    break
        except DockerError as exc:
            raise RuntimeFailure(f"docker logs failed: {_explain(exc)}") from exc
        finally:
            _close(frames)
        return out, stopped

    def read_logs(
        self,
        instance_id: str,
        handle: TaskHandle | None,
        *,
        tail: int = 100,
        cursor: str | None = None,
        max_bytes: int = 256 * 1024,
    ) -> LogRead:
        """The last `tail` entries or those after `cursor` (see the module docstring),
        from the container if it exists and from the saved output of earlier ones."""
        position = parse_log_cursor(cursor)
        max_bytes = max(1, max_bytes)
        since = position[0] if position is not None else 0
        # The container first, then the saved file: output saved in between (the
        # container removed meanwhile) is then in the file and is not lost.
        live, stopped = self._live_entries(
            handle,
            tail=None if position is not None else max(1, tail),
            since_ns=since,
            max_bytes=max_bytes,
        )
        saved = self._saved_entries(instance_id)
        newest_saved = saved[-1].ns if saved else -1
        entries = [e for e in saved if e.ns >= since] + [e for e in live if e.ns > newest_saved]
        read = select_entries(entries, tail=tail, cursor=position, max_bytes=max_bytes)
        if stopped and not read.more:
            read = LogRead(read.pieces, read.cursor, more=True, skipped=read.skipped)
        return read

    def _save_output(self, info: dict[str, Any], instance_id: str) -> None:
        """Append the container's last output to the instance's saved log (bounded);
        errors are logged: they never keep a container from being removed."""
        path = self._saved_path(instance_id)
        if path is None:
            return
        try:
            entries: list[LogEntry] = []
            previous = 0
            tty = bool((info.get("Config") or {}).get("Tty"))
            frames = self._frames(str(info["Id"]), tty=tty, tail=SAVED_LOG_LINES)
            try:
                for frame in frames:
                    entry = parse_frame(frame, previous)
                    previous = entry.ns
                    entries.append(entry)
            finally:
                _close(frames)
            saved = self._saved_entries(instance_id)
            newest = saved[-1].ns if saved else -1
            merged = saved + [e for e in entries if e.ns > newest]
            if not merged:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            data = encode_saved(merged, SAVED_LOG_BYTES)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except Exception as exc:
            log.warning("could not save the output of %s: %s", instance_id, exc)

    def discard_logs(self, instance_id: str) -> None:
        """Delete the saved output of the instance (the engine forgot the task)."""
        path = self._saved_path(instance_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def adopt(self) -> list[TaskHandle]:
        """Handles of every container (any state) labelled with this engine id: running and
        paused ones to keep watching, exited ones so the engine reads their exit code
        (status) and then removes them (stop)."""
        labels = [f"{LABEL_ENGINE}={self.engine_id}", f"{LABEL_MANAGED}=true"]
        client = self.client()
        try:
            found = client.containers(all=True, labels=labels)
        except DockerError as exc:
            raise RuntimeFailure(f"docker list failed: {_explain(exc)}") from exc
        out = []
        for summary in found:
            try:
                info = client.inspect(str(summary["Id"]))
            except NotFound:
                continue  # removed since the listing
            except DockerError as exc:
                raise RuntimeFailure(f"docker inspect failed: {_explain(exc)}") from exc
            config = info.get("Config") or {}
            c_labels = config.get("Labels") or {}
            instance_id = c_labels.get(LABEL_INSTANCE)
            if not instance_id or c_labels.get(LABEL_ENGINE) != self.engine_id:
                continue
            out.append(
                TaskHandle(
                    instance_id=instance_id,
                    runtime=RuntimeKind.DOCKER,
                    container_id=str(info["Id"]),
                    started_at=_parse_time(_state(info).get("StartedAt")),
                    extra={
                        "name": str(info.get("Name") or "").lstrip("/"),
                        "image": str(config.get("Image")),
                    },
                )
            )
        return sorted(out, key=lambda h: h.instance_id)


def _close(frames: Iterable[bytes]) -> None:
    """Close a log stream read only in part (its connection is dropped)."""
    close = getattr(frames, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def encode_saved(entries: list[LogEntry], limit: int) -> bytes:
    """The saved-log file: `<ns> <bytes>` per entry (`<ns>p` when the entry had no
    newline), the newest entries that fit in `limit` bytes."""
    lines: list[bytes] = []
    size = 0
    for entry in reversed(entries):
        if entry.data.endswith(b"\n"):
            line = b"%d %s" % (entry.ns, entry.data)
        else:
            line = b"%dp %s\n" % (entry.ns, entry.data)
        if lines and size + len(line) > limit:
            break
        lines.append(line)
        size += len(line)
    return b"".join(reversed(lines))


def decode_saved(raw: bytes) -> list[LogEntry]:
    """Entries of a saved-log file (lines that do not parse are skipped)."""
    out = []
    for line in raw.split(b"\n"):
        stamp, sep, data = line.partition(b" ")
        if not sep:
            continue
        partial = stamp.endswith(b"p")
        digits = stamp[:-1] if partial else stamp
        if not digits.isdigit():
            continue
        out.append(LogEntry(int(digits), data if partial else data + b"\n"))
    return out
