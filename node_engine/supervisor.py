"""Task supervision: deploy, terminate, observe, restart with backoff, adopt after a restart.

The supervisor owns the desired tasks (`TaskStore`) and talks to the runtimes. It is
called only from the engine's loop thread. Every state change is persisted first and
then reported through `emit` (which the engine turns into a `TaskEventMessage` with a
per-node sequence number).

Restart policy (from the task spec): ``never``; ``on-failure`` (exit code != 0, OOM
kill, killed by a signal); ``always`` (also after a clean exit). Restarts wait
``min(backoff_cap, backoff_base * 2**restarts)`` seconds and stop after `max_restarts`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from node_engine.inference.stats import StatsReader, stats_path
from node_engine.runtimes.base import RuntimeFailure, TaskHandle, TaskObservation, TaskRuntime
from node_engine.state import CommandOutcome, TaskRecord, TaskStore
from schemas.common import Runtime
from schemas.job import RestartPolicy, ShedAction, TaskSpec, TaskState
from schemas.node import InferenceStats, TaskStatus

log = logging.getLogger(__name__)

ACTIVE = frozenset({TaskState.STARTING, TaskState.RUNNING, TaskState.PAUSED})
MAX_KEPT_FINISHED = 64


@dataclass(frozen=True)
class TaskChange:
    """A task state change to report (becomes a `TaskEvent`)."""

    instance_id: str
    state: TaskState
    previous: TaskState | None
    reason: str = ""
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShedDecision:
    """What a shedder wants done to one task (issue 7 decides when; this applies it)."""

    instance_id: str
    action: Literal["pause", "stop", "resume"]
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[TaskChange], None]


def restart_delay(restarts: int, base: float, cap: float) -> float:
    """Backoff before restart number `restarts + 1`: base * 2**restarts, capped."""
    return float(min(cap, base * (2 ** min(restarts, 30))))


def wants_restart(spec: TaskSpec, state: TaskState, restarts: int) -> bool:
    """Whether the restart policy asks for another run after the task ended in `state`."""
    if restarts >= spec.max_restarts:
        return False
    if spec.restart_policy is RestartPolicy.ALWAYS:
        return True
    if spec.restart_policy is RestartPolicy.ON_FAILURE:
        return state is not TaskState.SUCCEEDED
    return False


def exit_reason(obs: TaskObservation) -> str:
    """A readable reason for a task that ended."""
    if obs.oom_killed:
        if "memory" in obs.reason.lower():
            return obs.reason
        base = "killed: memory limit exceeded (OOM)"
        return f"{base}; {obs.reason}" if obs.reason else base
    if obs.reason:
        return obs.reason
    if obs.exit_code is None:
        return "exited"
    if obs.exit_code < 0:
        return f"killed by signal {-obs.exit_code}"
    return f"exited with code {obs.exit_code}"


class Supervisor:
    """Runs the desired tasks through the runtimes and keeps them as the spec says."""

    def __init__(
        self,
        runtimes: Mapping[Runtime, TaskRuntime],
        unavailable: Mapping[Runtime, str],
        store: TaskStore,
        emit: Emit,
        *,
        wall: Callable[[], float] = time.time,
        stop_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        self.runtimes = dict(runtimes)
        self.unavailable = dict(unavailable)
        self.store = store
        self._emit = emit
        self._wall = wall
        self.stop_timeout = stop_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._obs: dict[str, TaskObservation] = {}
        self._inference: dict[str, InferenceStats] = {}
        self._stats = StatsReader()

    @property
    def tasks(self) -> dict[str, TaskRecord]:
        """instance id -> record (the persisted desired state)."""
        return self.store.tasks

    # ----- helpers -----

    def _change(
        self,
        rec: TaskRecord,
        state: TaskState,
        reason: str = "",
        *,
        exit_code: int | None = None,
        data: dict[str, Any] | None = None,
        persist: bool = True,
    ) -> None:
        previous = rec.state
        rec.state = state
        rec.reason = reason
        if exit_code is not None or state in ACTIVE:
            rec.exit_code = exit_code
        if persist:
            self.store.save()
        log.info(
            "task %s: %s -> %s%s",
            rec.instance_id,
            previous,
            state,
            f" ({reason})" if reason else "",
        )
        self._emit(
            TaskChange(rec.instance_id, state, previous, reason[:1024], exit_code, data or {})
        )

    def _runtime_for(self, kind: Runtime) -> tuple[TaskRuntime | None, str]:
        rt = self.runtimes.get(kind)
        if rt is not None:
            return rt, ""
        why = self.unavailable.get(kind, "not enabled on this node")
        return None, f"runtime {kind.value} unavailable: {why}"

    def _prune_finished(self) -> None:
        finished = [
            r
            for r in self.tasks.values()
            if not r.desired and r.state.terminal and r.restart_at is None
        ]
        if len(finished) <= MAX_KEPT_FINISHED:
            return
        finished.sort(key=lambda r: r.finished_at or 0.0)
        for rec in finished[: len(finished) - MAX_KEPT_FINISHED]:
            self.tasks.pop(rec.instance_id, None)
            self._obs.pop(rec.instance_id, None)
            self._forget_inference(rec)

    def _start(self, rec: TaskRecord, rt: TaskRuntime) -> bool:
        """Call the runtime's deploy; on failure record it. True when the task runs."""
        try:
            handle = rt.deploy(rec.instance_id, rec.spec)
        except RuntimeFailure as exc:
            self._failed_start(rec, exc.reason)
            return False
        except Exception as exc:  # a runtime bug must not take the engine down
            log.exception("deploy of %s crashed", rec.instance_id)
            self._failed_start(rec, f"deploy error: {exc}")
            return False
        rec.handle = handle
        rec.started_at = handle.started_at or self._wall()
        rec.finished_at = None
        self._obs.pop(rec.instance_id, None)
        self._change(rec, TaskState.RUNNING)
        return True

    def _failed_start(self, rec: TaskRecord, reason: str) -> None:
        rec.handle = None
        rec.finished_at = self._wall()
        data: dict[str, Any] = {}
        if rec.restarts > 0 and wants_restart(rec.spec, TaskState.FAILED, rec.restarts):
            delay = restart_delay(rec.restarts, self.backoff_base, self.backoff_cap)
            rec.restart_at = self._wall() + delay
            data = {"restart_in_s": delay, "restarts": rec.restarts}
        else:
            rec.desired = False
            rec.restart_at = None
        self._change(rec, TaskState.FAILED, reason, data=data)

    # ----- commands -----

    def deploy(
        self, instance_id: str, job_id: str, spec: TaskSpec, command_id: str = ""
    ) -> CommandOutcome:
        """Start an instance unless it is already present; the outcome goes into the ack."""
        rec = self.tasks.get(instance_id)
        if rec is not None and (rec.state in ACTIVE or rec.restart_at is not None):
            if rec.spec != spec:
                return CommandOutcome(
                    "deploy",
                    False,
                    f"instance {instance_id} already runs with another spec; terminate it first",
                    instance_id,
                )
            return CommandOutcome(
                "deploy", True, f"instance already present ({rec.state.value})", instance_id
            )
        rt, why = self._runtime_for(spec.runtime)
        rec = TaskRecord(instance_id=instance_id, job_id=job_id, spec=spec, command_id=command_id)
        self.tasks[instance_id] = rec
        self._obs.pop(instance_id, None)
        if rt is None:
            rec.desired = False
            rec.finished_at = self._wall()
            self._change(rec, TaskState.FAILED, why)
            self._prune_finished()
            return CommandOutcome("deploy", False, why, instance_id)
        # Persist STARTING before the runtime acts: after a crash in between, adoption
        # finds the task by its instance id instead of starting a second one.
        rec.state = TaskState.STARTING
        self.store.save()
        self._emit(TaskChange(instance_id, TaskState.STARTING, None, "deploy"))
        if self._start(rec, rt):
            return CommandOutcome("deploy", True, "", instance_id)
        self._prune_finished()
        return CommandOutcome("deploy", False, rec.reason, instance_id)

    def terminate(self, instance_id: str, reason: str = "") -> CommandOutcome:
        """Stop an instance and forget it; unknown instances are fine (idempotent)."""
        rec = self.tasks.get(instance_id)
        if rec is None:
            return CommandOutcome(
                "terminate", True, "unknown instance: nothing to stop", instance_id
            )
        if rec.handle is not None and rec.state in ACTIVE:
            rt = self.runtimes.get(rec.handle.runtime)
            if rt is None:
                return CommandOutcome(
                    "terminate", False, self._runtime_for(rec.handle.runtime)[1], instance_id
                )
            try:
                rt.stop(rec.handle, self.stop_timeout)
            except RuntimeFailure as exc:
                return CommandOutcome("terminate", False, f"stop failed: {exc.reason}", instance_id)
        was_active = rec.state in ACTIVE or rec.restart_at is not None
        del self.tasks[instance_id]
        self._obs.pop(instance_id, None)
        self._forget_inference(rec)
        self.store.save()
        if was_active:
            previous = rec.state
            text = reason or "terminated by command"
            log.info("task %s: %s -> TERMINATED (%s)", instance_id, previous, text)
            self._emit(TaskChange(instance_id, TaskState.TERMINATED, previous, text[:1024]))
        return CommandOutcome("terminate", True, "", instance_id)

    # ----- observation and restarts -----

    def poll(self) -> None:
        """Observe every active task, handle exits, run restarts that are due."""
        now = self._wall()
        for rec in list(self.tasks.values()):
            if rec.handle is not None and rec.state in ACTIVE:
                rt = self.runtimes.get(rec.handle.runtime)
                if rt is None:
                    continue
                try:
                    obs = rt.status(rec.handle)
                except Exception as exc:
                    log.warning("status of %s failed: %s", rec.instance_id, exc)
                    continue
                self._obs[rec.instance_id] = obs
                if obs.state.terminal:
                    self._on_exit(rec, obs, rt)
                elif obs.state != rec.state and obs.state in ACTIVE:
                    self._change(rec, obs.state, obs.reason)
                self._read_inference(rec)
            elif rec.restart_at is not None and now >= rec.restart_at:
                self._restart(rec)
        self._prune_finished()

    def _read_inference(self, rec: TaskRecord) -> None:
        """The figures an inference worker wrote (issue 7); one stat() when unchanged."""
        path = stats_path(rec.spec, rec.handle) if rec.state in ACTIVE else None
        stats = self._stats.read(path) if path is not None else None
        if stats is None:
            self._inference.pop(rec.instance_id, None)
        else:
            self._inference[rec.instance_id] = stats

    def _forget_inference(self, rec: TaskRecord) -> None:
        self._inference.pop(rec.instance_id, None)
        path = stats_path(rec.spec, rec.handle)
        if path is not None:
            self._stats.forget(path)

    def next_deadline(self) -> float | None:
        """Wall time of the earliest pending restart (so the loop can wake up for it)."""
        times = [r.restart_at for r in self.tasks.values() if r.restart_at is not None]
        return min(times) if times else None

    def _on_exit(self, rec: TaskRecord, obs: TaskObservation, rt: TaskRuntime) -> None:
        state = (
            obs.state
            if obs.state in (TaskState.SUCCEEDED, TaskState.FAILED)
            else (
                TaskState.SUCCEEDED
                if obs.exit_code == 0 and not obs.oom_killed
                else TaskState.FAILED
            )
        )
        if obs.oom_killed:
            state = TaskState.FAILED
        reason = exit_reason(obs)
        if rec.handle is not None:
            try:  # release what the task held (exited container, cgroup...)
                rt.stop(rec.handle, 0.0)
            except Exception as exc:
                log.debug("cleanup of %s: %s", rec.instance_id, exc)
        rec.finished_at = self._wall()
        data: dict[str, Any] = {}
        if obs.oom_killed:
            data["oom_killed"] = True
        if wants_restart(rec.spec, state, rec.restarts):
            delay = restart_delay(rec.restarts, self.backoff_base, self.backoff_cap)
            rec.restart_at = self._wall() + delay
            data.update(restart_in_s=delay, restarts=rec.restarts)
        else:
            rec.restart_at = None
            rec.desired = False
            if (
                rec.spec.restart_policy is not RestartPolicy.NEVER
                and rec.restarts >= rec.spec.max_restarts
            ):
                data["max_restarts_reached"] = True
        self._change(rec, state, reason, exit_code=obs.exit_code, data=data)

    def _restart(self, rec: TaskRecord) -> None:
        rt, why = self._runtime_for(rec.spec.runtime)
        if rt is None:
            rec.restart_at = self._wall() + self.backoff_cap
            log.warning("cannot restart %s: %s", rec.instance_id, why)
            return
        rec.restart_at = None
        rec.restarts += 1
        self._change(
            rec,
            TaskState.STARTING,
            f"restart {rec.restarts}/{rec.spec.max_restarts}",
            data={"restarts": rec.restarts},
        )
        self._start(rec, rt)

    # ----- after an engine restart -----

    def recover(self) -> None:
        """Re-adopt what still runs, restart what should run, stop what is not desired.

        Called once at start-up, before any command is handled. Runtimes verify identity
        (pid + create time, container labels), so a recycled pid is not adopted.
        """
        found: dict[str, list[TaskHandle]] = {}
        for kind, rt in self.runtimes.items():
            try:
                handles = rt.adopt()
            except Exception as exc:
                log.error("adoption by runtime %s failed: %s", kind.value, exc)
                continue
            for handle in handles:
                found.setdefault(handle.instance_id, []).append(handle)
        for rec in list(self.tasks.values()):
            live = found.pop(rec.instance_id, [])
            wanted = rec.desired and (rec.state in ACTIVE or rec.restart_at is not None)
            if not wanted:
                self._stop_handles(live, "not desired")
                continue
            keep = self._pick(rec, live)
            self._stop_handles([h for h in live if h is not keep], "duplicate")
            self._recover_one(rec, keep)
        for instance_id, handles in found.items():
            log.warning("found task %s that is not desired: stopping it", instance_id)
            self._stop_handles(handles, "not desired")
        self.store.save()

    @staticmethod
    def _same(a: TaskHandle, b: TaskHandle) -> bool:
        if a.container_id and b.container_id:
            return a.container_id == b.container_id
        return a.pid is not None and a.pid == b.pid

    def _pick(self, rec: TaskRecord, live: list[TaskHandle]) -> TaskHandle | None:
        if not live:
            return None
        if rec.handle is not None:
            for handle in live:
                if self._same(handle, rec.handle):
                    return handle
        return live[0]

    def _stop_handles(self, handles: list[TaskHandle], why: str) -> None:
        for handle in handles:
            rt = self.runtimes.get(handle.runtime)
            if rt is None:
                continue
            log.warning("stopping %s task %s (%s)", handle.runtime.value, handle.instance_id, why)
            try:
                rt.stop(handle, self.stop_timeout)
            except Exception as exc:
                log.error("could not stop %s: %s", handle.instance_id, exc)

    def _recover_one(self, rec: TaskRecord, live: TaskHandle | None) -> None:
        rt, why = self._runtime_for(rec.spec.runtime)
        if rt is None:
            log.warning("task %s kept as is: %s", rec.instance_id, why)
            return
        if live is not None:
            rec.handle = live
            rec.restart_at = None
            try:
                obs = rt.status(live)
            except Exception as exc:
                log.warning("status of adopted %s failed: %s", rec.instance_id, exc)
                return
            self._obs[rec.instance_id] = obs
            log.info("adopted task %s (%s)", rec.instance_id, obs.state.value)
            if obs.state.terminal:
                self._on_exit(rec, obs, rt)
            elif obs.state != rec.state:
                self._change(rec, obs.state, "adopted after engine restart")
            return
        if rec.restart_at is not None:
            return  # a restart is already scheduled; poll() runs it
        if rec.handle is not None:
            # not adopted: ask the runtime what became of it (exit code file, container)
            try:
                obs = rt.status(rec.handle)
            except Exception:
                obs = TaskObservation(
                    state=TaskState.FAILED, reason="lost while the engine was down"
                )
            if obs.state.terminal:
                if not obs.reason and obs.exit_code is None:
                    obs = obs.model_copy(update={"reason": "exited while the engine was down"})
                self._on_exit(rec, obs, rt)
                return
            # the runtime still sees it running although adopt() did not list it: trust it
            self._obs[rec.instance_id] = obs
            return
        # STARTING without a handle and nothing found: the engine died mid-deploy
        log.info("task %s never started (engine stopped mid-deploy): starting it", rec.instance_id)
        self._start(rec, rt)

    # ----- shedding hook (issue 7) -----

    def apply_shed(self, decision: ShedDecision) -> None:
        """Pause, stop or resume one task for the shedder, with an event carrying its data."""
        rec = self.tasks.get(decision.instance_id)
        if rec is None or rec.handle is None:
            return
        rt = self.runtimes.get(rec.handle.runtime)
        if rt is None:
            return
        try:
            if decision.action == "pause" and rec.state is TaskState.RUNNING:
                rt.pause(rec.handle)
                self._change(rec, TaskState.PAUSED, decision.reason, data=decision.data)
            elif decision.action == "resume" and rec.state is TaskState.PAUSED:
                rt.resume(rec.handle)
                self._change(rec, TaskState.RUNNING, decision.reason, data=decision.data)
            elif (
                decision.action == "resume"
                and rec.state is TaskState.SHED
                and rec.spec.on_shed is not ShedAction.RESCHEDULE
            ):  # stopped by the shedder: start it again
                rec.desired = True
                rec.restart_at = None
                self._change(rec, TaskState.STARTING, decision.reason, data=decision.data)
                self._start(rec, rt)
            elif decision.action == "stop" and rec.state in ACTIVE:
                rt.stop(rec.handle, self.stop_timeout)
                rec.desired = False
                rec.finished_at = self._wall()
                self._change(rec, TaskState.SHED, decision.reason, data=decision.data)
        except RuntimeFailure as exc:
            log.error("shedding %s (%s) failed: %s", rec.instance_id, decision.action, exc.reason)

    # ----- reporting -----

    def statuses(self) -> list[TaskStatus]:
        """The full task list for a `NodeStatus`, with the latest per-task usage."""
        out: list[TaskStatus] = []
        for rec in list(self.tasks.values())[:256]:
            obs = self._obs.get(rec.instance_id) if rec.state in ACTIVE else None
            handle = rec.handle
            out.append(
                TaskStatus(
                    instance_id=rec.instance_id,
                    state=rec.state,
                    runtime=rec.spec.runtime,
                    priority=rec.spec.priority,
                    pid=handle.pid if handle is not None and rec.state in ACTIVE else None,
                    container_id=handle.container_id[:128]
                    if handle is not None and handle.container_id
                    else None,
                    cpu_percent=max(0.0, obs.cpu_percent) if obs else 0.0,
                    memory_mib=max(0.0, obs.memory_mib) if obs else 0.0,
                    exit_code=rec.exit_code,
                    restarts=rec.restarts,
                    started_at=rec.started_at,
                    reason=rec.reason[:1024],
                    inference=self._inference.get(rec.instance_id) if rec.state in ACTIVE else None,
                )
            )
        return out
