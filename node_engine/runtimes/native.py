"""The native runtime: one process group per task, no container engine needed.

Process model. Each task runs under a tiny `/bin/sh` wrapper started in a new session
(so the wrapper's pid is the process group id and the session id):

    sh -c '<wait for the engine: cgroup>; <ulimit -v>; trap : TERM INT HUP QUIT;
           "$@" 3>&-; echo $? >&3' edge-task <gate> <limit> <program> <args...>

The wrapper costs one shell (~1.7 MiB RSS, mostly shared pages) instead of a Python shim,
and makes the task independent of the engine: the engine may crash or be SIGKILLed, the
wrapper is re-parented to init and still records the program's exit status (128+N when
the program dies of signal N, so an OOM kill gives 137). The trap only keeps the wrapper
alive until the program has exited; the program itself gets default signal dispositions,
and stop/pause signal the whole process group (while its leader pid is still the
wrapper's, or free) plus the processes of the task cgroup that belong to the task: not
older than the wrapper, and not in the session of another task's wrapper. A process of
the task that left its session (a daemon) is still reached through the cgroup.

Who runs it (`native_policy.NativeGuard`, docs/node-engine.md "Native tasks: security"):
an engine that is root starts the wrapper as the node's run-as user (uid, gid and that
user's groups, set by `subprocess` between fork and exec), after the policy checks
(command and working-directory allow-lists, guarded environment names). The engine does
what that user could not: it opens the log (stdout, O_APPEND) and the exit-code file
(handed as stderr; the wrapper moves it to fd 3, sends its stderr to the log, and closes
fd 3 for the program), and with a cgroup it writes the wrapper's pid into the task
cgroup itself and only then lets the wrapper go on (a "go" line on a pipe that is the
wrapper's stdin; the program's stdin is /dev/null).

State on disk, per task, in `<state_dir>/tasks/<instance_id>/` (0700 with a run-as user):

- `handle.json`   the `TaskHandle` (pid + psutil create time, log and exit-code paths,
                  cgroup paths, the working directory); written at deploy, deleted by
                  `stop()`. `adopt()` scans it.
- `output.log`    stdout and stderr (O_APPEND), `output.log.1` the previous chunk,
                  `output.log.offset` where `output.log` starts in the task's whole
                  output (bytes written before it, rotated away or into `.1`). Kept
                  across restarts of the instance (each run appends) and deleted by
                  `discard_logs()` when the engine forgets the task.
- `exit_code`     written by the wrapper (through fd 3) when the program exits.
- `result.json`   the final observation, written once the task is seen finished (so OOM
                  counters survive the removal of the cgroup).

and `<state_dir>/work/<instance_id>/`, the working directory when the spec gives none
(0700, owned by the run-as user; `work/` and the runtime's directory are 0711 then, so
the task reaches it by path).

Environment: `spec.env` is merged over a minimal, fixed base (nothing is inherited from
the engine): PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,
HOME=<the task's working directory>, LANG=C.UTF-8. PATH and the loader's names (LD_*,
...) from the spec are dropped unless the node allows them (noted in the task's output).

Log bound: when `output.log` exceeds `max_log_bytes` (default 4 MiB) its newest
`max_log_bytes` are copied to `output.log.1` and it is truncated (copytruncate; the
task's descriptor is O_APPEND so it goes on writing at the new end). The check runs at
every `status()` and `logs()` call, so the disk used is at most 2 x max_log_bytes plus
what the task writes between two polls (unbounded only while no engine polls). Bytes
written between the last read and the truncation (two syscalls apart) can be lost.

Log cursors (`read_logs`): `n<position>`, a byte position in the task's whole output
(`output.log.offset` + the offset in `output.log`), so a cursor stays valid across a
rotation; one that points at output rotated away reads on from the oldest byte kept
(`skipped`). Rotation and reads take one lock, so a reader on another thread never sees
a half-rotated log.

Limits: memory and CPU through a per-task cgroup (v1 or v2, see `node_engine.cgroups`),
`<root>/edge-tasks/<engine scope>/<instance_id>`, when the hierarchy is writable. The
engine scope (the engine id, or a hash of the state directory) keeps two engines on one
host that run the same instance id apart, and a directory that still holds processes is
never reused (`<instance_id>.1`, ... instead). Otherwise memory falls back to RLIMIT_AS
(`ulimit -v` in the wrapper), which is weaker: it limits address space, not resident
memory, so programs that reserve large virtual areas (JVMs, Go, some ML runtimes) may
fail to start, and an overrun is a failed allocation, not a kill. Without cgroups there
is no CPU limit.

Observation: `status()` reads the wrapper's /proc stat (exit and pause are always
current) and takes CPU and memory of every process of the task from /proc stat (utime +
stime deltas, rss), not through psutil objects. A task with a cgroup lists its processes
from `cgroup.procs`; one without shares a single /proc scan with every other `status()`
call made within `PROC_SCAN_TTL_S` (one scan per engine tick instead of one per task).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil

from node_engine import cgroups
from node_engine.runtimes.base import (
    BadCursor,
    LogPiece,
    LogRead,
    RuntimeFailure,
    TaskHandle,
    TaskObservation,
    utf8_prefix,
)
from node_engine.runtimes.native_policy import NativeGuard, RunAs
from schemas.common import Runtime as RuntimeKind
from schemas.job import TaskSpec, TaskState
from schemas.process_group import signal_group

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH given to every native task (a spec's own PATH only where the node allows it)."""

DEFAULT_MAX_LOG_BYTES = 4 * 1024 * 1024
LOG_FILES = ("output.log", "output.log.1", "output.log.offset")
WRAPPER_SHELL = "/bin/sh"
CREATE_TIME_TOLERANCE_S = 0.05
"""psutil create times come from clock ticks (1/100 s): equal within this means same process."""
PROC_SCAN_TTL_S = 0.25
"""`status()` calls within this long share one /proc scan: an engine tick polls all its
tasks within a few milliseconds, so each tick pays one scan, not one per task."""
CPU_MIN_INTERVAL_S = 0.1
"""A task's CPU percentage is recomputed only over at least this long (clock ticks are
1/100 s); a second observation sooner repeats the previous figure."""

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024

_WRAPPER = (
    # fd 2 is the exit-code file and fd 1 the log: keep the first as fd 3, send stderr to
    # the log. With a cgroup, stdin is a pipe: wait until the engine has put this shell
    # into the task cgroup ("go"); EOF (the engine died) stops here.
    "exec 3>&2 2>&1; gate=$1; lim=$2; shift 2; "
    'if [ -n "$gate" ]; then read -r go || go=; '
    '[ "$go" = go ] || { echo "edge: the engine did not place the task in its cgroup" >&2; '
    "echo 125 >&3; exit 125; }; fi; "
    "exec </dev/null; "
    'if [ -n "$lim" ]; then ulimit -v "$lim" || { echo 125 >&3; exit 125; }; fi; '
    "trap : TERM INT HUP QUIT; "
    '"$@" 3>&-; '
    "echo $? >&3"
)

_MEMORY_ERROR_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes | bytearray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and parents) and give it exactly `mode`."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail_lines(path: Path, n: int, limit: int) -> list[bytes]:
    """The last `n` lines of a file, reading backwards at most `limit` bytes."""
    data = b""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            while pos > 0 and data.count(b"\n") <= n and end - pos < limit:
                step = min(8192, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.splitlines()
    return lines[-n:] if n > 0 else []


def _parse_cursor(cursor: str | None) -> int | None:
    """The byte position of a native log cursor (`n<position>`); None for no cursor."""
    if cursor is None or cursor == "":
        return None
    if not cursor.startswith("n") or not cursor[1:].isdigit():
        raise BadCursor(f"not a native log cursor: {cursor[:40]!r}")
    return int(cursor[1:])


def _cursor(position: int) -> str:
    return f"n{position}"


class _LogFiles:
    """A task's log as one stream of positions: `output.log.1` then `output.log`.

    `output.log` starts at `base` (from `output.log.offset`); `output.log.1` holds the
    bytes just before it. Read under the runtime's log lock.
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        self.old = log.with_name(log.name + ".1")
        self.size = _file_size(log)
        old_size = _file_size(self.old)
        base = _read_int(log.with_name(log.name + ".offset")) or 0
        self.base = max(base, old_size)  # a log rotated before offsets were kept
        self.start = self.base - old_size
        self.end = self.base + self.size

    def range(self, begin: int, end: int) -> bytes:
        """The bytes at positions [begin, end) (clipped to what is kept)."""
        begin, end = max(begin, self.start), min(end, self.end)
        out = b""
        if begin < self.base and begin < end:
            out += _read_at(self.old, begin - self.start, min(end, self.base) - begin)
        if end > self.base:
            at = max(begin, self.base)
            out += _read_at(self.log, at - self.base, end - at)
        return out

    def read(self, tail: int, position: int | None, max_bytes: int) -> LogRead:
        """A tail read (position None) or a read from `position`."""
        if position is None:
            return self._tail(tail, max_bytes)
        skipped = position < self.start
        if position > self.end:  # the log was reset under this cursor: from the start
            position, skipped = self.start, True
        position = max(position, self.start)
        data = self.range(position, min(self.end, position + max_bytes))
        reached_end = position + len(data) >= self.end
        lines = _split_lines(data)
        if skipped and position > 0 and len(lines) > 1:
            position += len(lines.pop(0))  # the kept output starts inside a line
        if lines and not lines[-1].endswith(b"\n"):
            if len(lines) > 1:
                lines.pop()  # an incomplete line: the next read gets it whole
            elif not reached_end:
                lines[-1] = lines[-1][: utf8_prefix(lines[-1])]  # a line over max_bytes
        pieces = _pieces(lines, position)
        cursor = pieces[-1].cursor if pieces else _cursor(position)
        return LogRead(pieces, cursor, more=_parse_pos(cursor) < self.end, skipped=skipped)

    def _tail(self, tail: int, max_bytes: int) -> LogRead:
        if tail <= 0 or self.end == self.start:
            return LogRead([], _cursor(self.end))
        # One byte more than max_bytes: the first (partial) line is dropped below, and
        # with that byte a line that starts exactly at the bound is kept.
        begin = max(self.start, self.end - max_bytes - 1)
        data = self.range(begin, self.end)
        lines = _split_lines(data)
        if (begin > self.start or self.start > 0) and len(lines) > 1:
            begin += len(lines.pop(0))  # starts inside a line (cut by us or by rotation)
        elif begin > self.start:  # one line longer than max_bytes: its newest bytes
            keep = lines[0][-max_bytes:] if lines else b""
            skip = len(keep) - len(keep.lstrip(bytes(range(0x80, 0xC0))))  # no half char
            keep = keep[skip:]
            begin = self.end - len(keep)
            lines = [keep] if keep else []
        if len(lines) > tail:
            begin += sum(len(line) for line in lines[: len(lines) - tail])
            lines = lines[len(lines) - tail :]
        return LogRead(_pieces(lines, begin), _cursor(self.end))


def _split_lines(data: bytes) -> list[bytes]:
    """Lines with their newline (only b"\\n" ends a line; a last one may lack it)."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _pieces(lines: list[bytes], position: int) -> list[LogPiece]:
    out = []
    for line in lines:
        position += len(line)
        out.append(LogPiece(line, _cursor(position)))
    return out


def _parse_pos(cursor: str) -> int:
    return int(cursor[1:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_at(path: Path, offset: int, length: int) -> bytes:
    if length <= 0:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError:
        return b""


_CMDLINE_MAX = 1 << 20
"""Bytes of /proc/<pid>/cmdline read to compare a wrapper with its child."""


class _TaskFiles(NamedTuple):
    """What status() needs of one task's handle, computed once (see `NativeRuntime._files`)."""

    key: tuple[int | None, float | None, str | None]
    result: str
    stopped: str
    paused: str
    cgroup: cgroups.TaskCgroup | None
    procs: tuple[str, ...]


class _Stat(NamedTuple):
    """The fields of `/proc/<pid>/stat` the runtime uses."""

    pid: int
    state: bytes
    pgid: int
    sid: int
    ticks: int
    """utime + stime, in clock ticks."""
    start: int
    """Start time in clock ticks after boot (never changes; with the pid, identifies a process)."""
    rss_pages: int


def _read_raw(path: str, size: int = 4096) -> bytes | None:
    """One read of a small /proc file with plain syscalls (half the cost of `open()`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_stat(pid: int, raw: bytes) -> _Stat | None:
    # Fields after the command name (which may contain spaces or parentheses): index i
    # is field i + 3 of proc(5): state 3, pgrp 5, session 6, utime 14, stime 15,
    # starttime 22, rss 24.
    f = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _Stat(
            pid, f[0], int(f[2]), int(f[3]), int(f[11]) + int(f[12]), int(f[19]), int(f[21])
        )
    except (IndexError, ValueError):
        return None


def _read_stat(pid: int) -> _Stat | None:
    """The stat of a live (non-zombie) process, None when gone."""
    raw = _read_raw(f"/proc/{pid}/stat")
    st = _parse_stat(pid, raw) if raw else None
    return None if st is None or st.state in (b"Z", b"X") else st


class _ProcScan:
    """One pass over /proc: live (non-zombie) processes by process group id.

    Only the process group is parsed during the scan; a group's members are fully parsed
    when asked for. Costs one open+read+close per process on the host (~0.6 ms for 250
    processes on the reference machine).
    """

    def __init__(self) -> None:
        self.taken = time.monotonic()
        self._groups: dict[int, list[tuple[int, bytes]]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            raw = _read_raw(f"/proc/{name}/stat")
            if not raw:
                continue
            head = raw[raw.rfind(b")") + 2 :].split(None, 3)
            if len(head) < 3 or head[0] in (b"Z", b"X"):
                continue
            try:
                self._groups.setdefault(int(head[2]), []).append((int(name), raw))
            except ValueError:
                continue

    def group(self, pgid: int) -> list[_Stat]:
        """The live members of process group `pgid` at the time of the scan."""
        out = []
        for pid, raw in self._groups.get(pgid, ()):
            st = _parse_stat(pid, raw)
            if st is not None:
                out.append(st)
        return out


def _is_task_wrapper(pid: int) -> bool:
    """Whether `pid` is the wrapper shell of a native task (of any engine on the host)."""
    raw = _read_raw(f"/proc/{pid}/cmdline", 8192)
    parts = raw.split(b"\0", 4) if raw else []
    return len(parts) > 4 and parts[1] == b"-c" and parts[3] == b"edge-task"


def _boot_time() -> float:
    """Boot time in seconds since the epoch, as psutil computes create times with it."""
    try:
        return float(psutil.boot_time())
    except Exception:
        return 0.0


class NativeRuntime:
    """Runs tasks as process groups on the host; see the module docstring for the model."""

    kind = RuntimeKind.NATIVE

    def __init__(
        self,
        state_dir: Path,
        *,
        engine_id: str | None = None,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
        use_cgroups: bool = True,
        cgroup_parent: str = "edge-tasks",
        cgroup_support: cgroups.CgroupSupport | None = None,
        guard: NativeGuard | None = None,
    ) -> None:
        """`state_dir` holds `tasks/<instance_id>/`; `use_cgroups=False` forces the rlimit
        fallback.

        Task cgroups are `<hierarchy root>/<cgroup_parent>/<engine scope>/<instance_id>`:
        the scope is `engine_id` (the engine installation's persistent id) or, without one,
        a hash of the resolved state directory, so that two engines on one host never
        share a task cgroup, and a restarted engine uses the same directory again.
        """
        self.state_dir = Path(state_dir)
        self.tasks_dir = self.state_dir / "tasks"
        self.work_root = self.state_dir / "work"
        self.guard = guard or NativeGuard()
        """The node's native policy (run-as user, allow-lists); the library default
        runs tasks as the calling process and allows anything."""
        if self.guard.switches:
            self._open_paths()
        self.max_log_bytes = max_log_bytes
        self.cgroup_scope = cgroups.engine_scope(engine_id, self.state_dir)
        self.cgroup_parent = cgroups.check_parent(f"{cgroup_parent.strip('/')}/{self.cgroup_scope}")
        if use_cgroups:
            self.cgroup_support = cgroup_support or cgroups.detect()
        else:
            self.cgroup_support = cgroups.CgroupSupport(0, reason="cgroups disabled")
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self._log_lock = threading.Lock()
        """Held by log rotation and log reads (which may run on another thread)."""
        self._scan: _ProcScan | None = None
        self._cpu: dict[int, tuple[int, int, float, float]] = {}
        """pid -> (start ticks, cpu ticks, monotonic time, last percent) of the last sample."""
        self._cpu_pruned = time.monotonic()
        self._boot_time = _boot_time()
        self._files_cache: dict[str, _TaskFiles] = {}
        """instance id -> its file names and cgroup (see `_files`)."""

    # ------------------------------------------------------------------ helpers

    def task_dir(self, instance_id: str) -> Path:
        """Directory holding the handle, logs and exit code of one task."""
        if not instance_id or "/" in instance_id or instance_id in (".", ".."):
            raise RuntimeFailure(f"invalid instance id {instance_id!r}")
        return self.tasks_dir / instance_id

    def _dir(self, handle: TaskHandle) -> Path:
        return self.task_dir(handle.instance_id)

    def limits_mode(self) -> str:
        """How memory limits are enforced here: 'cgroup v1', 'cgroup v2' or 'rlimit'."""
        ok, _ = cgroups.writable(self.cgroup_support, self.cgroup_parent)
        return f"cgroup v{self.cgroup_support.version}" if ok else "rlimit"

    def _created(self, st: _Stat) -> float:
        """Create time of a process in seconds since the epoch (psutil's formula)."""
        return self._boot_time + st.start / _CLK_TCK

    def _same_process(self, st: _Stat, create_time: float) -> bool:
        if abs(self._created(st) - create_time) <= CREATE_TIME_TOLERANCE_S:
            return True
        # The wall clock may have been stepped since the boot time was read.
        self._boot_time = _boot_time()
        return abs(self._created(st) - create_time) <= CREATE_TIME_TOLERANCE_S

    def _wrapper(self, handle: TaskHandle) -> _Stat | None:
        """The stat of the task's wrapper if it is still alive and really is ours (pid and
        create time). One read of /proc/<pid>/stat."""
        if handle.pid is None:
            return None
        self._reap(handle)
        st = _read_stat(handle.pid)
        if st is None:
            return None
        if handle.pid_create_time is not None and not self._same_process(
            st, handle.pid_create_time
        ):
            return None
        return st

    def _reap(self, handle: TaskHandle) -> None:
        """Collect the wrapper's exit status if it is our child, so no zombie lingers."""
        popen = self._popen.get(handle.instance_id)
        if popen is not None and popen.poll() is not None:
            del self._popen[handle.instance_id]
        elif popen is None and handle.pid is not None:
            # A child of this process started by another runtime object (or before a
            # re-exec): waitpid reaps it if it is ours, and is a no-op otherwise.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(handle.pid, os.WNOHANG)

    def _group_safe(self, handle: TaskHandle) -> bool:
        """Whether signalling process group `handle.pid` can only reach our task.

        A pid is never reused while it is still a process group id, so the group is ours
        unless its leader pid now belongs to another process (recycled pid) that made
        itself a group leader.
        """
        if handle.pid is None:
            return False
        st = _read_stat(handle.pid)
        if st is None:
            return True
        if handle.pid_create_time is not None and not self._same_process(
            st, handle.pid_create_time
        ):
            return st.pgid != handle.pid
        return True

    def _owned(self, handle: TaskHandle, stats: list[_Stat]) -> list[_Stat]:
        """The processes of the task's cgroup that belong to this task.

        Excluded: processes older than the task's wrapper (they were in the directory
        before the task started) and processes in the session of another task wrapper
        (another task, of this or another engine, sharing the directory: cgroups created
        by engine versions without per-engine parents). A process of the task that
        called setsid() (a daemon) is kept: its session leader is not a wrapper.
        """
        born = handle.pid_create_time
        out = []
        for st in stats:
            if born is not None and self._created(st) < born - CREATE_TIME_TOLERANCE_S:
                continue
            if st.sid != handle.pid and st.sid > 0 and _is_task_wrapper(st.sid):
                continue
            out.append(st)
        return out

    def _members(
        self, handle: TaskHandle, cg: cgroups.TaskCgroup | None, *, shared: bool = False
    ) -> tuple[list[_Stat], float]:
        """Every live process of the task and when they were read: the processes of its
        cgroup that belong to it, else its process group's.

        The group comes from a fresh /proc scan (after checking the group is still the
        task's), or with `shared` from the scan shared by status() calls (the caller has
        just verified the wrapper, the group leader).
        """
        if cg is not None:
            stats = [st for pid in cg.pids() if (st := _read_stat(pid)) is not None]
            owned = self._owned(handle, stats)
            if owned:
                return owned, time.monotonic()
        if handle.pid is None:
            return [], time.monotonic()
        if shared:
            scan = self._scan
            if scan is None or time.monotonic() - scan.taken > PROC_SCAN_TTL_S:
                scan = self._scan = _ProcScan()
        elif self._group_safe(handle):
            scan = _ProcScan()
        else:
            return [], time.monotonic()
        return scan.group(handle.pid), scan.taken

    def _signal(self, handle: TaskHandle, sig: int) -> None:
        """Send `sig` to the task's process group (while it is still the task's) and to
        the processes of its cgroup that belong to it (see `_owned`)."""
        cg = cgroups.TaskCgroup.from_extra(handle.extra)
        if handle.pid is not None and self._group_safe(handle):
            signal_group(handle.pid, sig)
        if cg is not None:
            stats = [st for pid in cg.pids() if (st := _read_stat(pid)) is not None]
            for st in self._owned(handle, stats):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(st.pid, sig)

    def _bound_log(self, handle: TaskHandle) -> None:
        """copytruncate the log when it is over `max_log_bytes` (see module docstring)."""
        if not handle.log_path:
            return
        try:
            if os.stat(handle.log_path).st_size <= self.max_log_bytes:
                return
        except OSError:
            return
        with self._log_lock:
            self._rotate(Path(handle.log_path))

    def _rotate(self, log: Path) -> None:
        offset_path = log.with_name(log.name + ".offset")
        try:
            # Read from the newest max_log_bytes up to EOF, re-reading what the task
            # appends meanwhile, and truncate right after a read found EOF: only bytes
            # written between that read and the truncate (two syscalls) can be lost.
            with open(log, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size <= self.max_log_bytes:
                    return
                f.seek(max(0, size - self.max_log_bytes))
                data = bytearray()
                while chunk := f.read(1024 * 1024):
                    data += chunk
                    if len(data) > self.max_log_bytes + 1024 * 1024:
                        del data[: len(data) - self.max_log_bytes]
                total = f.tell()
                f.truncate(0)
            _atomic_write_bytes(log.with_name(log.name + ".1"), data[-self.max_log_bytes :])
            base = _read_int(offset_path) or 0
            _atomic_write(offset_path, str(base + total))
        except OSError:
            return

    def _usage(self, stats: list[_Stat], at: float) -> tuple[float, float]:
        """(cpu percent of one core, resident MiB) summed over `stats`, read at `at`.

        CPU is the utime+stime delta of each process (same pid and start time) since its
        previous sample, like psutil's cpu_percent(); a process seen for the first time
        counts 0 %.
        """
        cpu = 0.0
        rss = 0
        for st in stats:
            rss += st.rss_pages
            prev = self._cpu.get(st.pid)
            if prev is None or prev[0] != st.start:
                self._cpu[st.pid] = (st.start, st.ticks, at, 0.0)
                continue
            if at - prev[2] < CPU_MIN_INTERVAL_S:
                cpu += prev[3]
                continue
            pct = max(0.0, (st.ticks - prev[1]) * 100.0 / _CLK_TCK / (at - prev[2]))
            self._cpu[st.pid] = (st.start, st.ticks, at, pct)
            cpu += pct
        if at - self._cpu_pruned > 60.0:
            self._cpu_pruned = at
            for pid in [p for p, v in self._cpu.items() if v[2] < at - 60.0]:
                del self._cpu[pid]
        return cpu, rss * _PAGE_SIZE / _MIB

    # ------------------------------------------------------------------ protocol

    def available(self) -> tuple[bool, str]:
        """Native tasks need only /bin/sh; the reason also says how limits are enforced."""
        if not os.access(WRAPPER_SHELL, os.X_OK):
            return False, f"{WRAPPER_SHELL} not found"
        ok, why = cgroups.writable(self.cgroup_support, self.cgroup_parent)
        return True, (f"limits via {why}" if ok else f"limits via RLIMIT_AS ({why})")

    def _resolve(self, spec: TaskSpec, env: dict[str, str], cwd: Path) -> str:
        """The absolute path of the task's executable (the task's PATH applies)."""
        exe = spec.command[0]
        if "/" in exe:
            path = Path(exe) if os.path.isabs(exe) else cwd / exe
            if not path.is_file():
                raise RuntimeFailure(f"executable not found: {exe}")
            if not os.access(path, os.X_OK):
                raise RuntimeFailure(f"executable not runnable (no execute permission): {exe}")
            return os.path.abspath(path)
        found = shutil.which(exe, path=env.get("PATH", SAFE_PATH))
        if found is None:
            raise RuntimeFailure(f"executable not found: {exe} (PATH={env.get('PATH')})")
        return os.path.abspath(found)

    def work_dir(self, instance_id: str) -> Path:
        """The task's own working directory (the default one, always allowed)."""
        self.task_dir(instance_id)  # validates the id
        return self.work_root / instance_id

    def _own_work_dir(self, instance_id: str, who: RunAs | None) -> Path:
        """Create the task's own working directory, owned by the run-as user (0700)."""
        cwd = self.work_dir(instance_id)
        if who is not None:
            _ensure_dir(self.work_root, 0o711)
        cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        if who is not None:
            st = os.lstat(cwd)
            if (st.st_uid, st.st_gid) != (who.uid, who.gid):
                os.lchown(cwd, who.uid, who.gid)
        return cwd

    def _open_paths(self) -> None:
        """With a run-as user: its own working directories must be reachable by path, so
        the runtime's directory and `work/` get o+x (traverse, no listing); `tasks/`
        (handles, logs, exit codes) stays 0700."""
        _ensure_dir(self.state_dir, 0o711)
        _ensure_dir(self.tasks_dir, 0o700)
        _ensure_dir(self.work_root, 0o711)

    def _prepare_env(
        self, spec: TaskSpec, cwd: Path, log_path: Path
    ) -> tuple[dict[str, str], list[str]]:
        """The task's environment: the fixed base, then the job's names the policy keeps."""
        env = {"PATH": SAFE_PATH, "HOME": str(cwd), "LANG": "C.UTF-8"}
        job_env, dropped = self.guard.filter_env(spec.env)
        env.update(job_env)
        if dropped:
            note = (
                f"edge: dropped environment {', '.join(sorted(dropped))} "
                "(not allowed by native_allow_env_overrides on this node)\n"
            )
            with contextlib.suppress(OSError):
                fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, note.encode())
                finally:
                    os.close(fd)
        return env, dropped

    def deploy(self, instance_id: str, spec: TaskSpec) -> TaskHandle:
        """Start the task under the wrapper in a new session and persist its handle.

        An instance that is still running from an earlier deploy is stopped first. The
        node's policy (`native_policy.NativeGuard`) is checked before anything starts: a
        refusal raises `PolicyRefusal` naming the setting.
        """
        if not spec.command:
            raise RuntimeFailure("native task has no command")
        who = self.guard.identity()
        d = self.task_dir(instance_id)
        old = self._load(d / "handle.json")
        if old is not None:
            self.stop(old, timeout_s=5.0)
        d.mkdir(parents=True, exist_ok=True)
        # The log files stay: a restart of the instance appends to its output.
        for name in ("exit_code", "result.json", "stopped", "paused"):
            with contextlib.suppress(FileNotFoundError):
                (d / name).unlink()

        own = self.work_dir(instance_id)
        if spec.workdir:
            cwd = Path(self.guard.check_workdir(spec.workdir, str(own), who))
        else:
            cwd = self._own_work_dir(instance_id, who)
        log_path = d / "output.log"
        exit_path = d / "exit_code"
        env, dropped = self._prepare_env(spec, cwd, log_path)
        exe = self._resolve(spec, env, cwd)
        self.guard.check_command(exe, who)

        memory_bytes = spec.resources.memory_mib * 1024 * 1024 or None
        cpu = spec.resources.cpu or None
        extra: dict[str, str] = {"workdir": str(cwd)}
        if who is not None:
            extra["run_as"] = f"{who.uid}:{who.gid}"
        if dropped:
            extra["env_dropped"] = ",".join(sorted(dropped))[:500]
        cg = None
        if memory_bytes or cpu:
            cg = cgroups.create(
                self.cgroup_support, self.cgroup_parent, instance_id, memory_bytes, cpu
            )
        rlimit_kib = ""
        if cg is not None:
            extra.update(cg.to_extra())
            if cg.notes:
                extra["cgroup_notes"] = "; ".join(cg.notes)[:500]
            if memory_bytes and cg.memory_dir is None:
                rlimit_kib = str(memory_bytes // 1024)
        elif memory_bytes:
            rlimit_kib = str(memory_bytes // 1024)
        if memory_bytes:
            extra["memory_limit"] = "rlimit" if rlimit_kib else "cgroup"
        if cpu:
            extra["cpu_limit"] = "cgroup" if cg is not None and cg.cpu_dir else "none"

        procs = list(cg.procs_files()) if cg is not None else []
        argv = [WRAPPER_SHELL, "-c", _WRAPPER, "edge-task", "1" if procs else "", rlimit_kib]
        argv += [exe, *spec.command[1:]]
        gate_r = gate_w = -1
        try:
            if procs:
                gate_r, gate_w = os.pipe()
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            exit_fd = os.open(exit_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=gate_r if procs else subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=exit_fd,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    user=who.uid if who is not None else None,
                    group=who.gid if who is not None else None,
                    extra_groups=list(who.groups) if who is not None else None,
                )
            finally:
                os.close(log_fd)
                os.close(exit_fd)
                if gate_r >= 0:
                    os.close(gate_r)
        except (OSError, subprocess.SubprocessError) as exc:
            if gate_w >= 0:
                os.close(gate_w)
            if cg is not None:
                cg.remove()
            raise RuntimeFailure(f"cannot start task: {exc}") from exc
        if procs:
            self._place(popen, procs, gate_w, cg)
        st = _read_stat(popen.pid)
        create_time = self._created(st) if st is not None else time.time()
        self._popen[instance_id] = popen
        handle = TaskHandle(
            instance_id=instance_id,
            runtime=RuntimeKind.NATIVE,
            pid=popen.pid,
            pid_create_time=create_time,
            log_path=str(log_path),
            exit_code_path=str(exit_path),
            started_at=time.time(),
            extra=extra,
        )
        _atomic_write(d / "handle.json", handle.model_dump_json())
        self._wait_exec(popen)
        return handle

    @staticmethod
    def _place(
        popen: subprocess.Popen[bytes],
        procs: list[Path],
        gate: int,
        cg: cgroups.TaskCgroup | None,
    ) -> None:
        """Write the wrapper's pid into each of the task's `cgroup.procs` (the engine does
        it: a run-as user could not), then let the wrapper go on. On a failure the wrapper
        is killed and the deploy fails."""
        try:
            for f in procs:
                try:
                    with open(f, "w") as fh:
                        fh.write(str(popen.pid))
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait()
                    if cg is not None:
                        cg.remove()
                    raise RuntimeFailure(
                        f"cannot place the task in its cgroup {f}: {exc.strerror or exc}"
                    ) from exc
            os.write(gate, b"go\n")
        finally:
            os.close(gate)

    @staticmethod
    def _wait_exec(popen: subprocess.Popen[bytes], timeout_s: float = 2.0) -> None:
        """Return once the wrapper's child has exec'd the program (or either has exited).

        Until the exec, the child still runs the wrapper's signal handlers (dash uses
        vfork), so a SIGTERM from a stop() right after deploy would be swallowed by the
        wrapper's trap and the task would only die by SIGKILL after the stop timeout.
        Costs two or three small /proc reads per look (the wrapper's ``children`` list and
        its child's command line; a psutil scan of the whole of /proc where the kernel has
        no ``children`` file), typically one or two looks.
        """
        pid = popen.pid
        deadline = time.monotonic() + timeout_s
        # A process in the middle of execve shows an empty command line for a moment
        # (Popen returns at the exec's close-on-exec point, before the new arguments are
        # in place): an empty one is read again, it is no answer.
        own = _read_raw(f"/proc/{pid}/cmdline", _CMDLINE_MAX)
        while own == b"" and time.monotonic() < deadline:
            time.sleep(0.0005)
            own = _read_raw(f"/proc/{pid}/cmdline", _CMDLINE_MAX)
        if not own:
            return
        children_file = f"/proc/{pid}/task/{pid}/children"
        wrapper: psutil.Process | None = None
        own_args: list[str] = []
        if not os.path.exists(children_file):
            try:
                wrapper = psutil.Process(pid)
                own_args = wrapper.cmdline()
            except psutil.Error:
                return
        while time.monotonic() < deadline and popen.poll() is None:
            if wrapper is None:
                raw = _read_raw(children_file)
                if raw is None:
                    return
                kids = raw.split()
                if kids:
                    line = _read_raw(f"/proc/{int(kids[0])}/cmdline", _CMDLINE_MAX)
                    if line != own and line != b"":
                        return
            else:
                try:
                    children = wrapper.children()
                    args = children[0].cmdline() if children else []
                    if args and args != own_args:
                        return
                except psutil.Error:
                    return
            time.sleep(0.001)

    def _any_member(self, handle: TaskHandle, cg: cgroups.TaskCgroup | None) -> bool:
        """Whether a live process of the task is left (what `_members` finds, but a
        process group that is gone costs one `killpg(0)` instead of a /proc scan)."""
        if cg is not None:
            stats = [st for pid in cg.pids() if (st := _read_stat(pid)) is not None]
            if self._owned(handle, stats):
                return True
        if handle.pid is None or not self._group_safe(handle):
            return False
        try:
            os.killpg(handle.pid, 0)
        except ProcessLookupError:
            return False  # no process at all in the group
        except PermissionError:
            pass
        return bool(_ProcScan().group(handle.pid))  # members, or only zombies?

    def _wait_gone(
        self, handle: TaskHandle, cg: cgroups.TaskCgroup | None, deadline: float
    ) -> bool:
        while True:
            self._reap(handle)
            if not self._any_member(handle, cg):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    @staticmethod
    def _in_state(stats: list[_Stat], states: tuple[bytes, ...]) -> list[int]:
        """The pids of `stats` (still the same processes) whose state is now in `states`."""
        out = []
        for st in stats:
            now = _read_stat(st.pid)
            if now is not None and now.start == st.start and now.state in states:
                out.append(st.pid)
        return out

    def _stopped_members(self, stats: list[_Stat]) -> list[int]:
        return self._in_state(stats, (b"T", b"t"))

    def stop(self, handle: TaskHandle, timeout_s: float = 10.0) -> None:
        """SIGTERM the task, wait until `timeout_s`, then SIGKILL; remove the cgroup and
        the handle file (logs stay). Idempotent.

        A paused task is continued *before* SIGTERM: a process stopped between fork and
        exec still runs the shell's signal handlers and would swallow the SIGTERM.
        """
        d = self._dir(handle)
        cg = cgroups.TaskCgroup.from_extra(handle.extra)
        members, _ = self._members(handle, cg)
        if members:
            if (d / "paused").exists() or self._stopped_members(members):
                self._signal(handle, signal.SIGCONT)
                deadline = time.monotonic() + 0.2
                while self._stopped_members(members) and time.monotonic() < deadline:
                    time.sleep(0.005)
            self._signal(handle, signal.SIGTERM)
            self._signal(handle, signal.SIGCONT)
            if not self._wait_gone(handle, cg, time.monotonic() + max(0.0, timeout_s)):
                self._signal(handle, signal.SIGKILL)
                self._wait_gone(handle, cg, time.monotonic() + 5.0)
        self._reap(handle)
        if d.is_dir():
            if not (d / "result.json").exists():
                code = _read_int(d / "exit_code")
                obs = TaskObservation(
                    state=TaskState.TERMINATED, exit_code=code, reason="stopped by the engine"
                )
                _atomic_write(d / "result.json", obs.model_dump_json())
            (d / "stopped").touch()
            for name in ("handle.json", "paused"):
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()
        if cg is not None:
            cg.remove()
        self._popen.pop(handle.instance_id, None)
        self._files_cache.pop(handle.instance_id, None)

    def pause(self, handle: TaskHandle) -> None:
        """SIGSTOP every process of the task (group and cgroup); remembered in a marker
        file, since a process frozen inside vfork shows as D, not T."""
        if self._wrapper(handle) is None:
            raise RuntimeFailure("task is not running")
        (self._dir(handle) / "paused").touch()
        self._signal(handle, signal.SIGSTOP)
        # Signals are delivered asynchronously; wait (briefly) until every process has
        # stopped, and stop processes that joined the cgroup meanwhile.
        cg = cgroups.TaskCgroup.from_extra(handle.extra)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            moving = self._in_state(self._members(handle, cg)[0], (b"R", b"S", b"I", b"W"))
            if not moving:
                break
            for pid in moving:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            time.sleep(0.005)

    def resume(self, handle: TaskHandle) -> None:
        """SIGCONT every process of the task."""
        if self._wrapper(handle) is None:
            raise RuntimeFailure("task is not running")
        self._signal(handle, signal.SIGCONT)
        with contextlib.suppress(FileNotFoundError):
            (self._dir(handle) / "paused").unlink()

    def _finished(self, handle: TaskHandle) -> TaskObservation:
        """Build (once) and persist the final observation of a task whose wrapper is gone."""
        d = self._dir(handle)
        code = _read_int(Path(handle.exit_code_path or d / "exit_code"))
        cg = cgroups.TaskCgroup.from_extra(handle.extra)
        oom = False
        reason = ""
        if cg is not None and cg.memory_dir is not None:
            kills = cg.oom_kills()
            oom = kills > 0 or (code == 137 and cg.memory_limit_hit())
            if oom:
                reason = "memory limit exceeded (OOM killed in the task cgroup)"
        if code is None and not oom:
            # The wrapper itself was killed (SIGKILL to the whole group by someone else).
            reason = "killed: the task was killed and left no exit code"
        elif not oom and code != 0 and handle.extra.get("memory_limit") == "rlimit":
            tail = b"\n".join(_tail_lines(Path(handle.log_path or ""), 20, 64 * 1024))
            text = tail.decode(errors="replace")
            if any(m in text for m in _MEMORY_ERROR_MARKERS):
                reason = (
                    f"memory limit exceeded (allocation failed under RLIMIT_AS), exit code {code}"
                )
        if code == 0 and not oom:
            state = TaskState.SUCCEEDED
        else:
            state = TaskState.FAILED
            if oom and code is None:
                code = 137
            reason = reason or f"exit code {code}"
        obs = TaskObservation(state=state, exit_code=code, reason=reason, oom_killed=oom)
        if d.is_dir():
            _atomic_write(d / "result.json", obs.model_dump_json())
        if cg is not None:
            cg.remove(timeout_s=0.5)
        return obs

    def _files(self, handle: TaskHandle) -> _TaskFiles:
        """The task's file names and cgroup, built once per handle (status() runs for
        every task at every tick: no Path objects, no parsing of the handle there)."""
        key = (handle.pid, handle.pid_create_time, handle.log_path)
        cached = self._files_cache.get(handle.instance_id)
        if cached is not None and cached.key == key:
            return cached
        d = str(self._dir(handle))
        cg = cgroups.TaskCgroup.from_extra(handle.extra)
        files = _TaskFiles(
            key=key,
            result=os.path.join(d, "result.json"),
            stopped=os.path.join(d, "stopped"),
            paused=os.path.join(d, "paused"),
            cgroup=cg,
            procs=tuple(str(f) for f in cg.procs_files()) if cg is not None else (),
        )
        self._files_cache[handle.instance_id] = files
        return files

    def _cgroup_stats(self, files: _TaskFiles, known: _Stat) -> list[_Stat]:
        """The live processes listed in the task's cgroup: one read of a `cgroup.procs`
        (the task's processes are in each of its controllers' directories alike: the
        wrapper joined all of them before it started the program), and one /proc read
        per process but `known` (the wrapper, just read)."""
        pids: set[int] = set()
        for path in files.procs:
            raw = _read_raw(path, 65536)
            if raw is None:
                continue  # this controller's directory is gone: try the next one
            with contextlib.suppress(ValueError):
                pids.update(int(x) for x in raw.split())
            break
        out = []
        for pid in sorted(pids):
            st = known if pid == known.pid else _read_stat(pid)
            if st is not None:
                out.append(st)
        return out

    def status(self, handle: TaskHandle) -> TaskObservation:
        """RUNNING/PAUSED with CPU and memory of the whole task, or the final result.

        Cost while running: three stat() calls (result, stopped and pause markers) and
        one of the log, one read of the wrapper's /proc stat, and either one read of
        cgroup.procs plus one /proc read per process of the task, or (no cgroup) the
        task's share of one /proc scan that all status() calls within `PROC_SCAN_TTL_S`
        use (so one scan per engine tick, whatever the number of tasks). The usage
        figures are then at most `PROC_SCAN_TTL_S` old; the state is not (exit and pause
        are read from the wrapper itself at every call).
        """
        files = self._files(handle)
        self._bound_log(handle)
        if os.path.exists(files.result):
            try:
                with open(files.result, "rb") as fh:
                    return TaskObservation.model_validate_json(fh.read())
            except (OSError, ValueError):
                pass
        if os.path.exists(files.stopped):
            return TaskObservation(state=TaskState.TERMINATED, reason="stopped by the engine")
        wrapper = self._wrapper(handle)
        if wrapper is None:
            return self._finished(handle)
        paused = wrapper.state == b"T" or os.path.exists(files.paused)
        cg = files.cgroup
        stats: list[_Stat] = []
        at = time.monotonic()
        if cg is not None:
            stats = self._owned(handle, self._cgroup_stats(files, wrapper))
        if not stats:
            stats, at = self._members(handle, None, shared=True)
        cpu, mem = self._usage(stats, at)
        return TaskObservation(
            state=TaskState.PAUSED if paused else TaskState.RUNNING,
            cpu_percent=round(cpu, 2),
            memory_mib=round(mem, 2),
        )

    def logs(self, handle: TaskHandle, tail: int = 100) -> str:
        """The last `tail` lines of stdout+stderr (from the rotated file too if needed)."""
        if not handle.log_path or tail <= 0:
            return ""
        self._bound_log(handle)
        log = Path(handle.log_path)
        lines = _tail_lines(log, tail, self.max_log_bytes + 65536)
        if len(lines) < tail:
            older = _tail_lines(
                log.with_name(log.name + ".1"), tail - len(lines), self.max_log_bytes + 65536
            )
            lines = older + lines
        return b"\n".join(lines).decode(errors="replace")

    def read_logs(
        self,
        instance_id: str,
        handle: TaskHandle | None,
        *,
        tail: int = 100,
        cursor: str | None = None,
        max_bytes: int = 256 * 1024,
    ) -> LogRead:
        """The last `tail` lines, or the output after `cursor` (`n<position>`), at most
        `max_bytes`; see the module docstring. Safe on any thread."""
        position = _parse_cursor(cursor)
        d = self.task_dir(instance_id)
        with self._log_lock:
            return _LogFiles(d / "output.log").read(tail, position, max(1, max_bytes))

    def discard_logs(self, instance_id: str) -> None:
        """Delete the task's log files (the engine forgot the task)."""
        d = self.task_dir(instance_id)
        self._files_cache.pop(instance_id, None)
        with self._log_lock:
            for name in LOG_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()

    @staticmethod
    def _load(path: Path) -> TaskHandle | None:
        try:
            return TaskHandle.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None

    def adopt(self) -> list[TaskHandle]:
        """Handles of tasks started here and not yet stopped: those still running (pid and
        create time match) and those that exited with a recorded result or exit code.

        A handle whose pid is dead or recycled and that left no exit code is skipped.
        """
        out: list[TaskHandle] = []
        if not self.tasks_dir.is_dir():
            return out
        for path in sorted(self.tasks_dir.glob("*/handle.json")):
            handle = self._load(path)
            if handle is None or handle.runtime is not RuntimeKind.NATIVE:
                continue
            if handle.instance_id != path.parent.name:
                continue
            d = path.parent
            if (d / "stopped").exists():
                continue
            alive = self._wrapper(handle) is not None
            exited = _read_int(d / "exit_code") is not None
            if alive or exited or (d / "result.json").exists():
                out.append(handle)
        return out

    def purge(self, handle: TaskHandle) -> None:
        """Stop the task if needed and delete its directories (logs and its own working
        directory included)."""
        self.stop(handle, timeout_s=5.0)
        shutil.rmtree(self._dir(handle), ignore_errors=True)
        shutil.rmtree(self.work_dir(handle.instance_id), ignore_errors=True)
