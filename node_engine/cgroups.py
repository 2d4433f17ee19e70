"""Per-task control groups for the native runtime: memory and CPU limits, OOM detection.

Both layouts are detected from `/proc/self/mountinfo`, never assumed:

- cgroup v1 (and the "hybrid" layout, where the v2 hierarchy carries no controllers):
  one directory per task in the `memory` hierarchy (`memory.limit_in_bytes`, plus
  `memory.memsw.limit_in_bytes` so swap cannot hide an overrun) and one in the `cpu`
  hierarchy (`cpu.cfs_quota_us` / `cpu.cfs_period_us`). OOM kills are counted by the
  `oom_kill` line of `memory.oom_control` (Linux >= 4.13), limit hits by `memory.failcnt`.
- cgroup v2 (unified): one directory, `memory.max` (+ `memory.swap.max` 0), `cpu.max`;
  the controllers are enabled in `cgroup.subtree_control` of the root and of the parent;
  OOM kills are the `oom_kill` line of `memory.events`.

Task cgroups live under `<hierarchy root>/<parent>/<name>`, outside the engine's own
cgroup, so that a service manager stopping or killing the engine does not take its tasks
with it. The native runtime uses the parent `edge-tasks/<engine scope>` (like Docker's
"/docker", plus one level per engine, see `engine_scope`): several engines on one host
(tests, `edgectl local up`, the failover bench) may run the same instance id, and a
shared directory would let stopping one copy kill the other. Their absolute paths travel
in the task handle, so a restarted engine finds them again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CFS_PERIOD_US = 100_000
"""CPU quota period: 100 ms, the kernel's default."""

_PARENT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class CgroupSupport:
    """What this machine offers: the cgroup version and the hierarchy roots we may use.

    `version` is 0 when no usable memory or cpu controller was found; `reason` says why.
    """

    version: int
    memory_root: Path | None = None
    cpu_root: Path | None = None
    unified_root: Path | None = None
    reason: str = ""

    @property
    def usable(self) -> bool:
        """True when at least one controller (memory or cpu) can be used."""
        return self.version in (1, 2)


def _parse_mountinfo(text: str) -> list[tuple[Path, str, set[str], str]]:
    """(mount point, fs type, super options, mount root) of each cgroup mount."""
    mounts: list[tuple[Path, str, set[str], str]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        fstype = rest[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        mounts.append((mount_point, fstype, set(rest[2].split(",")), fields[3]))
    return mounts


def detect(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupSupport:
    """Find the cgroup hierarchies that hold the memory and cpu controllers.

    v1 controllers win over an empty v2 hierarchy (hybrid layout); a v2 hierarchy is used
    only when it lists memory or cpu in `cgroup.controllers` and v1 does not hold them.
    Writability is checked when a task cgroup is created, not here.
    """
    try:
        mounts = _parse_mountinfo(mountinfo.read_text())
    except OSError as exc:
        return CgroupSupport(0, reason=f"cannot read {mountinfo}: {exc}")
    memory_root = cpu_root = None
    unified_root = None
    for mount_point, fstype, opts, _root in mounts:
        if fstype == "cgroup":
            if "memory" in opts and memory_root is None:
                memory_root = mount_point
            if "cpu" in opts and cpu_root is None:
                cpu_root = mount_point
        elif unified_root is None:
            unified_root = mount_point
    if memory_root or cpu_root:
        return CgroupSupport(1, memory_root=memory_root, cpu_root=cpu_root)
    if unified_root is not None:
        try:
            controllers = set((unified_root / "cgroup.controllers").read_text().split())
        except OSError as exc:
            return CgroupSupport(0, reason=f"cannot read cgroup.controllers: {exc}")
        if controllers & {"memory", "cpu"}:
            return CgroupSupport(
                2,
                memory_root=unified_root if "memory" in controllers else None,
                cpu_root=unified_root if "cpu" in controllers else None,
                unified_root=unified_root,
            )
        return CgroupSupport(0, reason="cgroup v2 hierarchy has no memory or cpu controller")
    return CgroupSupport(0, reason="no cgroup hierarchy mounted")


def check_parent(parent: str) -> str:
    """Validate a cgroup parent path (relative to each hierarchy root) and return it."""
    parent = parent.strip("/")
    if not _PARENT_PATTERN.match(parent) or ".." in parent.split("/"):
        raise ValueError(f"invalid cgroup parent {parent!r}")
    return parent


def engine_scope(engine_id: str | None, state_dir: Path) -> str:
    """The cgroup directory (one path component) that holds one engine's task cgroups.

    `engine_id` when given (the engine installation's persistent id, see
    `node_engine.identity.engine_id`), else "s" + a hash of the resolved state directory:
    either way stable across restarts of that engine and distinct between engines.
    """
    if engine_id is None:
        import hashlib  # only without an engine id (tests, tools); the engine passes one

        digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()
        return "s" + digest[:16]
    if "/" in engine_id or not _PARENT_PATTERN.match(engine_id) or engine_id in (".", ".."):
        raise ValueError(f"invalid engine id for a cgroup name {engine_id!r}")
    return engine_id


def _has_processes(d: Path) -> bool:
    """Whether cgroup directory `d` exists and holds at least one process."""
    try:
        return bool(_read(d / "cgroup.procs").split())
    except OSError:
        return False


def free_name(support: CgroupSupport, parent: str, name: str, attempts: int = 100) -> str | None:
    """`name`, or `name.1`, `name.2`, ... : the first whose directories hold no process.

    An existing empty directory (a previous run of the instance) may be reused; one that
    still holds processes is never shared, whoever they belong to.
    """
    roots = [r for r in (support.memory_root, support.cpu_root) if r is not None]
    for i in range(attempts):
        candidate = name if i == 0 else f"{name}.{i}"
        if not any(_has_processes(r / parent / candidate) for r in dict.fromkeys(roots)):
            return candidate
    return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(path: Path, key: str) -> int | None:
    """The integer after `key` in a "key value" file (memory.events, oom_control)."""
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


@dataclass
class TaskCgroup:
    """The cgroup directories of one task (one per controller on v1, one on v2)."""

    version: int
    memory_dir: Path | None = None
    cpu_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dirs(self) -> list[Path]:
        """Distinct directories of this task cgroup (the wrapper joins each of them)."""
        out: list[Path] = []
        for d in (self.memory_dir, self.cpu_dir):
            if d is not None and d not in out:
                out.append(d)
        return out

    def procs_files(self) -> list[Path]:
        """The `cgroup.procs` files a process writes its pid to in order to join."""
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> list[int]:
        """Pids currently in the task cgroup (cheap: one small file read)."""
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in _read(d / "cgroup.procs").split())
            except (OSError, ValueError):
                continue
        return sorted(out)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (0 if unknown)."""
        if self.memory_dir is None:
            return 0
        if self.version == 2:
            return _keyed(self.memory_dir / "memory.events", "oom_kill") or 0
        return _keyed(self.memory_dir / "memory.oom_control", "oom_kill") or 0

    def memory_limit_hit(self) -> bool:
        """Whether usage ever reached the limit (v1 failcnt, v2 memory.events max)."""
        if self.memory_dir is None:
            return False
        if self.version == 2:
            return (_keyed(self.memory_dir / "memory.events", "max") or 0) > 0
        try:
            return int(_read(self.memory_dir / "memory.failcnt")) > 0
        except (OSError, ValueError):
            return False

    def remove(self, timeout_s: float = 2.0) -> None:
        """rmdir the task's directories, retrying while the last processes exit."""
        deadline = time.monotonic() + timeout_s
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        break
                    time.sleep(0.02)

    def to_extra(self) -> dict[str, str]:
        """Serialise into a task handle's `extra` (strings only)."""
        out = {"cgroup_version": str(self.version)}
        if self.memory_dir is not None:
            out["cgroup_memory"] = str(self.memory_dir)
        if self.cpu_dir is not None:
            out["cgroup_cpu"] = str(self.cpu_dir)
        return out

    @classmethod
    def from_extra(cls, extra: dict[str, str]) -> TaskCgroup | None:
        """Inverse of `to_extra`; None when the handle has no cgroup."""
        mem = extra.get("cgroup_memory")
        cpu = extra.get("cgroup_cpu")
        if not mem and not cpu:
            return None
        return cls(
            version=int(extra.get("cgroup_version", "1")),
            memory_dir=Path(mem) if mem else None,
            cpu_dir=Path(cpu) if cpu else None,
        )


def _enable_v2_controllers(root: Path, parent_dir: Path, wanted: list[str]) -> None:
    """Enable controllers for children of the root and of our parent directory."""
    chain = [root]
    for part in parent_dir.relative_to(root).parts:
        chain.append(chain[-1] / part)
    for d in chain:
        try:
            enabled = set(_read(d / "cgroup.subtree_control").split())
        except OSError:
            enabled = set()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def _set_v1_memory(d: Path, memory_bytes: int) -> None:
    """Set limit and memsw limit to the same value (memsw must stay >= limit)."""
    limit = d / "memory.limit_in_bytes"
    memsw = d / "memory.memsw.limit_in_bytes"
    if not memsw.exists():
        _write(limit, str(memory_bytes))
        return
    try:
        _write(limit, str(memory_bytes))
        _write(memsw, str(memory_bytes))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # Raising the limit of a reused cgroup: memsw first, then the limit.
        _write(memsw, str(memory_bytes))
        _write(limit, str(memory_bytes))


def create(
    support: CgroupSupport,
    parent: str,
    name: str,
    memory_bytes: int | None,
    cpu_cores: float | None,
) -> TaskCgroup | None:
    """Create the task cgroup `<root>/<parent>/<name>` and set its limits.

    Returns None when no controller could be used (caller falls back to rlimits).
    A controller that fails (read-only hierarchy, no permission) is skipped and noted in
    `TaskCgroup.notes`; a limit of None or 0 is not set. An existing empty directory of
    the same name (a previous run of the instance) is reused after its limits are
    rewritten; one that still holds processes is not: `name.1`, `name.2`, ... is used
    instead (see `free_name`), so a task never shares its cgroup.
    """
    if not support.usable:
        return None
    parent = check_parent(parent)
    free = free_name(support, parent, name)
    if free is None:
        return None
    name = free
    cg = TaskCgroup(version=support.version)
    if support.version == 2:
        root = support.unified_root
        assert root is not None
        wanted = [
            c
            for c, r in (("memory", support.memory_root), ("cpu", support.cpu_root))
            if r is not None
        ]
        d = root / parent / name
        try:
            (root / parent).mkdir(parents=True, exist_ok=True)
            _enable_v2_controllers(root, root / parent, wanted)
            d.mkdir(exist_ok=True)
            if "memory" in wanted:
                if memory_bytes:
                    _write(d / "memory.max", str(memory_bytes))
                    if (d / "memory.swap.max").exists():
                        _write(d / "memory.swap.max", "0")
                cg.memory_dir = d
            if "cpu" in wanted:
                if cpu_cores:
                    quota = max(1000, int(cpu_cores * CFS_PERIOD_US))
                    _write(d / "cpu.max", f"{quota} {CFS_PERIOD_US}")
                cg.cpu_dir = d
        except OSError as exc:
            cg.notes.append(f"cgroup v2 unusable: {exc}")
            with contextlib.suppress(OSError):
                d.rmdir()
            return None
        return cg

    if support.memory_root is not None:
        d = support.memory_root / parent / name
        try:
            d.mkdir(parents=True, exist_ok=True)
            if memory_bytes:
                _set_v1_memory(d, memory_bytes)
            cg.memory_dir = d
        except OSError as exc:
            cg.notes.append(f"memory cgroup unusable: {exc}")
            with contextlib.suppress(OSError):
                d.rmdir()
    if support.cpu_root is not None:
        d = support.cpu_root / parent / name
        try:
            d.mkdir(parents=True, exist_ok=True)
            if cpu_cores:
                quota = max(1000, int(cpu_cores * CFS_PERIOD_US))
                _write(d / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota))
            cg.cpu_dir = d
        except OSError as exc:
            cg.notes.append(f"cpu cgroup unusable: {exc}")
            with contextlib.suppress(OSError):
                d.rmdir()
    if cg.memory_dir is None and cg.cpu_dir is None:
        return None
    return cg


def writable(support: CgroupSupport, parent: str) -> tuple[bool, str]:
    """Whether task cgroups can be created under `parent` (creates the parent if needed)."""
    if not support.usable:
        return False, support.reason
    parent = check_parent(parent)
    roots = [r for r in (support.memory_root, support.cpu_root) if r is not None]
    for r in dict.fromkeys(roots):
        try:
            (r / parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return False, f"cannot create {r / parent}: {exc}"
        if not os.access(r / parent, os.W_OK):
            return False, f"{r / parent} is not writable"
    return True, f"cgroup v{support.version}"


def process_cgroup_dirs(
    pid: int, mountinfo: Path = Path("/proc/self/mountinfo")
) -> dict[str, Path]:
    """Directories of the cgroups process `pid` is in, by controller ("unified" for v2).

    Read from /proc/<pid>/cgroup and mapped onto this process's cgroup mounts; used to
    read a container's usage straight from its cgroup files. Empty when unreadable.
    """
    try:
        mounts = _parse_mountinfo(mountinfo.read_text())
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, Path] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        for mount_point, fstype, opts, root in mounts:
            if ctrls == "" and fstype == "cgroup2":
                key = "unified"
            elif ctrls and fstype == "cgroup" and set(ctrls.split(",")) <= opts:
                key = ctrls
            else:
                continue
            rel = path[len(root) :] if root != "/" and path.startswith(root) else path
            d = mount_point / rel.lstrip("/")
            for name in ctrls.split(",") if ctrls else [key]:
                out.setdefault(name, d)
            break
    return out
