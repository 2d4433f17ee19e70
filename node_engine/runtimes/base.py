"""The interface every task runtime implements (DESIGN.md section 7).

A runtime starts and stops one task per instance and answers questions about it. It
keeps no state of its own that matters: everything needed to find a task again after
the engine restarts is in the `TaskHandle`, which the engine persists.

Output is read with `read_logs`: the last lines, or what follows a cursor. A cursor is
an opaque string made by the runtime (`CURSOR_PATTERN` of `schemas.mqtt`); each
`LogPiece` carries the cursor right after it, so a reader that keeps only part of a
read (bounded messages) still knows where to continue. `read_logs` may run on another
thread than the engine loop, at the same time as the other calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Runtime as RuntimeKind
from schemas.job import TaskSpec, TaskState


class RuntimeFailure(Exception):
    """A runtime could not do what was asked; `reason` is shown to operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TaskHandle(BaseModel):
    """How to find a task again: persisted in the engine's state directory as JSON.

    For native tasks `pid` plus `pid_create_time` identify the process (a recycled pid has
    another create time); for docker tasks `container_id` does.
    """

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    runtime: RuntimeKind
    pid: int | None = None
    pid_create_time: float | None = None
    container_id: str | None = None
    log_path: str | None = None
    exit_code_path: str | None = None
    started_at: float = 0.0
    extra: dict[str, str] = Field(default_factory=dict)


class TaskObservation(BaseModel):
    """What a runtime sees of a task right now."""

    model_config = ConfigDict(extra="forbid")

    state: TaskState
    exit_code: int | None = None
    reason: str = ""
    oom_killed: bool = False
    cpu_percent: float = 0.0
    memory_mib: float = 0.0


@dataclass(frozen=True, slots=True)
class LogPiece:
    """A run of output as the task wrote it (usually one line, with its newline) and the
    cursor that continues right after it."""

    data: bytes
    cursor: str


@dataclass(frozen=True, slots=True)
class LogRead:
    """The answer of `read_logs`.

    `cursor` continues after the last piece (or where reading would go on when there is
    none). `more`: output past the end of this read was left out (the byte bound);
    `skipped`: output between the cursor asked for and the first piece is gone (rotated
    away).
    """

    pieces: list[LogPiece] = field(default_factory=list)
    cursor: str = ""
    more: bool = False
    skipped: bool = False

    @property
    def data(self) -> bytes:
        """All pieces joined."""
        return b"".join(p.data for p in self.pieces)


class BadCursor(ValueError):
    """A cursor this runtime did not make (or cannot read)."""


def _sequence_length(lead: int) -> int:
    """Bytes of the UTF-8 sequence that `lead` starts (1 for ASCII and invalid bytes)."""
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    if lead >= 0xC0:
        return 2
    return 1


def utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence
    (at least 1 byte when `data` is not empty, so a reader always makes progress)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: where the last sequence starts
            cut = n - back if _sequence_length(byte) > back else n
            return cut or n
    return n


@runtime_checkable
class TaskRuntime(Protocol):
    """deploy, stop, pause, resume, status, logs, plus adoption after an engine restart."""

    kind: RuntimeKind

    def available(self) -> tuple[bool, str]:
        """Whether this runtime can run tasks here, and why not if it cannot."""
        ...

    def deploy(self, instance_id: str, spec: TaskSpec) -> TaskHandle:
        """Start a task; raise `RuntimeFailure` with a readable reason if it cannot start."""
        ...

    def stop(self, handle: TaskHandle, timeout_s: float = 10.0) -> None:
        """Stop the task (graceful, then forced after timeout_s) and release its resources."""
        ...

    def pause(self, handle: TaskHandle) -> None:
        """Freeze the task (SIGSTOP / docker pause) without losing its state."""
        ...

    def resume(self, handle: TaskHandle) -> None:
        """Undo `pause`."""
        ...

    def status(self, handle: TaskHandle) -> TaskObservation:
        """Observe the task: state, exit code, OOM kill, CPU and memory use."""
        ...

    def logs(self, handle: TaskHandle, tail: int = 100) -> str:
        """The last `tail` lines of the task's output."""
        ...

    def read_logs(
        self,
        instance_id: str,
        handle: TaskHandle | None,
        *,
        tail: int = 100,
        cursor: str | None = None,
        max_bytes: int = 256 * 1024,
    ) -> LogRead:
        """Without `cursor`: the last `tail` lines; with one: the output after it, in
        whole lines where possible. At most `max_bytes` of output either way. Works after
        the task ended (its output is kept until `discard_logs`); `handle` is None when
        the last start failed. Raises `BadCursor` or `RuntimeFailure`."""
        ...

    def discard_logs(self, instance_id: str) -> None:
        """Delete the output kept of a task (the engine forgets it)."""
        ...

    def adopt(self) -> list[TaskHandle]:
        """Find tasks this engine started that still run (after an engine restart)."""
        ...
