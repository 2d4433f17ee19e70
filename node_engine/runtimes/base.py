"""The interface every task runtime implements (DESIGN.md section 7).

A runtime starts and stops one task per instance and answers questions about it. It
keeps no state of its own that matters: everything needed to find a task again after
the engine restarts is in the `TaskHandle`, which the engine persists.
"""

from __future__ import annotations

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

    def adopt(self) -> list[TaskHandle]:
        """Find tasks this engine started that still run (after an engine restart)."""
        ...
