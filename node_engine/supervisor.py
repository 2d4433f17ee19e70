"""Task supervision: deploy, terminate, observe, restart with backoff, adopt after a restart.

The supervisor owns the desired tasks (`TaskStore`) and talks to the runtimes. It is
called only from the engine's loop thread. Every state change is persisted first and
then reported through `emit` (which the engine turns into a `TaskEventMessage` with a
per-node sequence number).

Runtime calls that can take long (deploy, stop with a grace period) are `Operation`s.
Inline (the default, `defer=False`) they run at once, in the caller's thread; pause and
resume (quick) always do. With `defer=True` (the engine with a worker pool) the
supervisor records the intent (STARTING, `stopping`), marks the instance busy and queues
the operation; the engine persists the intent, hands the operation to its pool
(`take_operations()`) and passes the result back through `complete()` on its loop
thread, where all state changes happen. While an instance is busy, `poll()` does not
observe it (a task being stopped is not "exited" and restarted), the shedder's decisions
for it are skipped, and `blocks()` tells the engine which commands for it must wait.

Restart policy (from the task spec): ``never``; ``on-failure`` (exit code != 0, OOM
kill, killed by a signal); ``always`` (also after a clean exit). Restarts wait
``min(backoff_cap, backoff_base * 2**restarts)`` seconds and stop after `max_restarts`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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

OpAction = Literal["deploy", "stop", "pause", "resume"]
OpPurpose = Literal[
    "deploy", "restart", "recover", "unshed", "terminate", "shed", "pause", "resume", "cleanup"
]


@dataclass(eq=False)
class Operation:
    """One runtime call for one instance, run off the loop thread (or inline).

    `call` only talks to the runtime (thread-safe by design: it touches no engine state);
    `purpose` says what `Supervisor.complete` does with the result. `command_id` is the
    command waiting for the outcome, if any.
    """

    instance_id: str
    action: OpAction
    purpose: OpPurpose
    call: Callable[[], TaskHandle | None]
    command_id: str = ""
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class OpDone:
    """Queue item: an `Operation` finished; the handle a deploy returned, or the error."""

    op: Operation
    handle: TaskHandle | None = None
    error: str | None = None
    seconds: float = 0.0


def run_operation(op: Operation) -> OpDone:
    """Run one operation's runtime call and capture its result (never raises)."""
    started = time.monotonic()
    try:
        handle = op.call()
    except RuntimeFailure as exc:
        return OpDone(op, None, exc.reason, time.monotonic() - started)
    except Exception as exc:  # a runtime bug must not take the engine down
        log.exception("%s of %s crashed", op.action, op.instance_id)
        return OpDone(op, None, f"{op.action} error: {exc}", time.monotonic() - started)
    return OpDone(op, handle, None, time.monotonic() - started)


def _stop_each(stops: list[tuple[TaskRuntime, TaskHandle]], timeout_s: float) -> None:
    """Stop several handles of one instance (after an engine restart); errors are logged."""
    for rt, handle in stops:
        try:
            rt.stop(handle, timeout_s)
        except Exception as exc:
            log.error("could not stop %s: %s", handle.instance_id, exc)


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
        defer: bool = False,
        autosave: bool = True,
    ) -> None:
        self.runtimes = dict(runtimes)
        self.unavailable = dict(unavailable)
        self.store = store
        self._emit = emit
        self._wall = wall
        self.stop_timeout = stop_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.defer = defer
        """Queue operations for `take_operations()` instead of running them inline."""
        self.autosave = autosave
        """Write tasks.json at every change; the engine turns it off and commits per batch."""
        self._obs: dict[str, TaskObservation] = {}
        self._inference: dict[str, InferenceStats] = {}
        self._stats = StatsReader()
        self._ops: dict[str, Operation] = {}
        self._to_submit: list[Operation] = []
        self._stats_paths: dict[str, tuple[TaskHandle | None, Path | None]] = {}

    @property
    def tasks(self) -> dict[str, TaskRecord]:
        """instance id -> record (the persisted desired state)."""
        return self.store.tasks

    # ----- operations (runtime calls, possibly off the loop thread) -----

    @property
    def in_flight(self) -> int:
        """Operations started and not completed (waiting for the pool or running)."""
        return len(self._ops)

    def busy(self, instance_id: str) -> Operation | None:
        """The operation in progress for an instance, if any."""
        return self._ops.get(instance_id)

    def blocks(self, kind: str, instance_id: str) -> bool:
        """Whether a command of `kind` for this instance must wait for its operation.

        A DEPLOY waits only for a stop (during a deploy, restart, pause or resume it is
        answered at once: "already present"); a TERMINATE waits for any operation.
        """
        op = self._ops.get(instance_id)
        if op is None:
            return False
        return kind != "deploy" or op.action == "stop"

    def take_operations(self) -> list[Operation]:
        """The deferred operations to hand to the pool, once their intent is persisted."""
        ops, self._to_submit = self._to_submit, []
        return ops

    def abandon(self, op: Operation) -> None:
        """Forget an operation whose result will never be applied (the engine stops).

        Its intent is persisted (STARTING without a handle, `stopping`), so the next
        start's `recover()` adopts, starts or stops the task as needed.
        """
        if self._ops.get(op.instance_id) is op:
            del self._ops[op.instance_id]
        if op in self._to_submit:
            self._to_submit.remove(op)

    def _persist(self) -> None:
        self.store.mark_changed()
        if self.autosave:
            self.store.save()

    def _begin(self, op: Operation, *, inline: bool = False) -> CommandOutcome | None:
        """Start an operation: queue it (deferred) or run it now (`inline`, or no pool).
        The command's outcome when it is already known, else None."""
        if op.instance_id in self._ops:  # pragma: no cover - callers check busy() first
            raise RuntimeError(f"an operation on {op.instance_id} is already in progress")
        self._ops[op.instance_id] = op
        if self.defer and not inline:
            self._to_submit.append(op)
            return None
        if op.action in ("deploy", "stop"):
            self.store.commit()  # the intent is on disk before the runtime acts
        return self.complete(run_operation(op))

    def complete(self, done: OpDone) -> CommandOutcome | None:
        """Apply a finished operation (loop thread); the outcome for its command, if any."""
        op = done.op
        if self._ops.get(op.instance_id) is not op:
            log.warning("ignoring the result of an abandoned %s of %s", op.action, op.instance_id)
            return None
        del self._ops[op.instance_id]
        log.debug(
            "%s of %s (%s) done in %.3f s%s",
            op.action,
            op.instance_id,
            op.purpose,
            done.seconds,
            f": {done.error}" if done.error else "",
        )
        if op.purpose == "cleanup":
            return None
        rec = self.tasks.get(op.instance_id)
        if rec is None:  # pragma: no cover - a busy record is never removed
            log.error("%s of %s finished but the instance is gone", op.action, op.instance_id)
            return None
        if op.action == "deploy":
            return self._deploy_done(rec, done)
        if op.purpose == "terminate":
            return self._terminate_done(rec, done)
        if op.purpose == "shed":
            self._shed_done(rec, done)
        elif done.error is not None:
            log.error("shedding %s (%s) failed: %s", rec.instance_id, op.action, done.error)
        elif op.action == "pause" and rec.state is TaskState.RUNNING:
            self._change(rec, TaskState.PAUSED, op.reason, data=op.data)
        elif op.action == "resume" and rec.state is TaskState.PAUSED:
            self._change(rec, TaskState.RUNNING, op.reason, data=op.data)
        return None

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
            self._persist()
        log.debug(  # every change is reported (and kept by the cluster): no INFO line each
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
            if not r.desired
            and r.state.terminal
            and r.restart_at is None
            and r.instance_id not in self._ops
        ]
        if len(finished) <= MAX_KEPT_FINISHED:
            return
        finished.sort(key=lambda r: r.finished_at or 0.0)
        for rec in finished[: len(finished) - MAX_KEPT_FINISHED]:
            self.tasks.pop(rec.instance_id, None)
            self._obs.pop(rec.instance_id, None)
            self._forget_inference(rec)
            self._discard_logs(rec)
        self._persist()

    def _discard_logs(self, rec: TaskRecord) -> None:
        """The task is forgotten: so is its output (a few unlinks)."""
        rt = self.runtimes.get(rec.spec.runtime)
        if rt is None:
            return
        try:
            rt.discard_logs(rec.instance_id)
        except Exception as exc:
            log.warning("could not delete the logs of %s: %s", rec.instance_id, exc)

    def _deploy_op(
        self,
        rec: TaskRecord,
        rt: TaskRuntime,
        purpose: OpPurpose,
        command_id: str = "",
    ) -> Operation:
        call = functools.partial(rt.deploy, rec.instance_id, rec.spec)
        return Operation(rec.instance_id, "deploy", purpose, call, command_id)

    def _start(self, rec: TaskRecord, rt: TaskRuntime, purpose: OpPurpose) -> None:
        """Run the runtime's deploy for a record already STARTING (and persisted so)."""
        self._begin(self._deploy_op(rec, rt, purpose))

    def _deploy_done(self, rec: TaskRecord, done: OpDone) -> CommandOutcome:
        handle = done.handle
        if done.error is None and handle is not None:
            rec.handle = handle
            rec.started_at = handle.started_at or self._wall()
            rec.finished_at = None
            self._obs.pop(rec.instance_id, None)
            self._change(rec, TaskState.RUNNING)
            return CommandOutcome("deploy", True, "", rec.instance_id)
        self._failed_start(rec, done.error or "deploy error: the runtime returned no handle")
        self._prune_finished()
        return CommandOutcome("deploy", False, rec.reason, rec.instance_id)

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
    ) -> CommandOutcome | None:
        """Start an instance unless it is already present; the outcome goes into the ack.

        None when the runtime call was deferred to the pool: `complete()` returns the
        outcome later.
        """
        op = self._ops.get(instance_id)
        if op is not None and op.action == "stop":  # the engine waits instead (blocks())
            return CommandOutcome(
                "deploy",
                False,
                f"instance {instance_id} is being stopped; deploy it again once it is gone",
                instance_id,
            )
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
        self._persist()
        self._emit(TaskChange(instance_id, TaskState.STARTING, None, "deploy"))
        return self._begin(self._deploy_op(rec, rt, "deploy", command_id))

    def terminate(
        self, instance_id: str, reason: str = "", command_id: str = ""
    ) -> CommandOutcome | None:
        """Stop an instance and forget it; unknown instances are fine (idempotent).

        None when the stop was deferred to the pool: `complete()` returns the outcome.
        """
        if instance_id in self._ops:  # the engine waits instead (blocks())
            return CommandOutcome(
                "terminate",
                False,
                f"an operation on instance {instance_id} is in progress; try again",
                instance_id,
            )
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
            rec.stopping = "terminate"
            rec.stop_reason = reason[:1024]
            self._persist()
            call = functools.partial(rt.stop, rec.handle, self.stop_timeout)
            return self._begin(
                Operation(instance_id, "stop", "terminate", call, command_id, reason)
            )
        return self._forget(rec, reason)

    def _terminate_done(self, rec: TaskRecord, done: OpDone) -> CommandOutcome:
        rec.stopping = ""
        rec.stop_reason = ""
        if done.error is not None:
            self._persist()
            return CommandOutcome("terminate", False, f"stop failed: {done.error}", rec.instance_id)
        return self._forget(rec, done.op.reason)

    def _forget(self, rec: TaskRecord, reason: str) -> CommandOutcome:
        """Drop a (stopped) instance and report TERMINATED if it was still wanted."""
        instance_id = rec.instance_id
        was_active = rec.state in ACTIVE or rec.restart_at is not None
        del self.tasks[instance_id]
        self._obs.pop(instance_id, None)
        self._forget_inference(rec)
        self._discard_logs(rec)
        self._persist()
        if was_active:
            previous = rec.state
            text = reason or "terminated by command"
            log.debug("task %s: %s -> TERMINATED (%s)", instance_id, previous, text)
            self._emit(TaskChange(instance_id, TaskState.TERMINATED, previous, text[:1024]))
        return CommandOutcome("terminate", True, "", instance_id)

    # ----- observation and restarts -----

    def poll(self) -> None:
        """Observe every active task, handle exits, run restarts that are due.

        A task with an operation in progress is skipped: its result decides (a task
        being stopped has exited on purpose and must not be restarted).
        """
        now = self._wall()
        for rec in list(self.tasks.values()):
            if rec.instance_id in self._ops:
                continue
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

    def _stats_path(self, rec: TaskRecord) -> Path | None:
        """`stats_path` of the task, computed once per handle."""
        cached = self._stats_paths.get(rec.instance_id)
        if cached is not None and cached[0] is rec.handle:
            return cached[1]
        path = stats_path(rec.spec, rec.handle)
        self._stats_paths[rec.instance_id] = (rec.handle, path)
        return path

    def _read_inference(self, rec: TaskRecord) -> None:
        """The figures an inference worker wrote (issue 7); one stat() when unchanged."""
        path = self._stats_path(rec) if rec.state in ACTIVE else None
        stats = self._stats.read(path) if path is not None else None
        if stats is None:
            self._inference.pop(rec.instance_id, None)
        else:
            self._inference[rec.instance_id] = stats

    def _forget_inference(self, rec: TaskRecord) -> None:
        self._inference.pop(rec.instance_id, None)
        self._stats_paths.pop(rec.instance_id, None)
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
        self._start(rec, rt, "restart")

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
        system_stopped = self.store.take_system_stop()
        for rec in list(self.tasks.values()):
            live = found.pop(rec.instance_id, [])
            if rec.stopping:
                self._recover_stop(rec, live)
                continue
            wanted = rec.desired and (rec.state in ACTIVE or rec.restart_at is not None)
            if not wanted:
                self._stop_handles(rec.instance_id, live, "not desired")
                continue
            keep = self._pick(rec, live)
            self._stop_handles(rec.instance_id, [h for h in live if h is not keep], "duplicate")
            self._recover_one(rec, keep, system_stopped=rec.instance_id in system_stopped)
        for instance_id, handles in found.items():
            log.warning("found task %s that is not desired: stopping it", instance_id)
            self._stop_handles(instance_id, handles, "not desired")
        self._persist()

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

    def _stops(self, handles: list[TaskHandle]) -> list[tuple[TaskRuntime, TaskHandle]]:
        return [(rt, h) for h in handles if (rt := self.runtimes.get(h.runtime)) is not None]

    def _stop_handles(self, instance_id: str, handles: list[TaskHandle], why: str) -> None:
        """Stop tasks found at start-up that must not run (one operation per instance)."""
        stops = self._stops(handles)
        if not stops:
            return
        for _, handle in stops:
            log.warning("stopping %s task %s (%s)", handle.runtime.value, instance_id, why)
        call = functools.partial(_stop_each, stops, self.stop_timeout)
        self._begin(Operation(instance_id, "stop", "cleanup", call, reason=why))

    def _recover_stop(self, rec: TaskRecord, live: list[TaskHandle]) -> None:
        """Finish a terminate or shed stop that the previous engine run left unfinished
        (it persisted `stopping` before asking the runtime)."""
        purpose: OpPurpose = "shed" if rec.stopping == "shed" else "terminate"
        reason = rec.stop_reason or ("" if purpose == "terminate" else "shed")
        log.info(
            "task %s: finishing the %s begun before the engine restarted", rec.instance_id, purpose
        )
        call = functools.partial(_stop_each, self._stops(live), self.stop_timeout)
        self._begin(Operation(rec.instance_id, "stop", purpose, call, reason=reason))

    def _recover_one(
        self, rec: TaskRecord, live: TaskHandle | None, *, system_stopped: bool = False
    ) -> None:
        rt, why = self._runtime_for(rec.spec.runtime)
        if rt is None:
            log.warning("task %s kept as is: %s", rec.instance_id, why)
            return
        if live is None and system_stopped and rec.restart_at is None:
            # Stopped with the whole system (edgectl local down), not by itself: it runs
            # again in place, same instance id, whatever its restart policy, no restart
            # counted.
            if rec.handle is not None:
                try:  # release what is left of the old run (exit files, cgroup)
                    rt.stop(rec.handle, 0.0)
                except Exception as exc:
                    log.debug("cleanup of %s: %s", rec.instance_id, exc)
            rec.handle = None
            log.info("task %s was stopped with the system: starting it again", rec.instance_id)
            self._change(rec, TaskState.STARTING, "started again after the system was stopped")
            self._start(rec, rt, "recover")
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
        self._start(rec, rt, "recover")

    # ----- shedding hook (issue 7) -----

    def apply_shed(self, decision: ShedDecision) -> None:
        """Pause, stop or resume one task for the shedder, with an event carrying its data.

        Skipped while an operation on the task is in progress (the shedder asks again).
        """
        rec = self.tasks.get(decision.instance_id)
        if rec is None or rec.handle is None:
            return
        if rec.instance_id in self._ops:
            log.debug("shedding %s (%s) skipped: busy", rec.instance_id, decision.action)
            return
        rt = self.runtimes.get(rec.handle.runtime)
        if rt is None:
            return
        iid, reason, data = rec.instance_id, decision.reason, decision.data
        # Pause and resume are quick (signals, a freezer write) and run inline, so the
        # status published right after this decision already shows their result.
        if decision.action == "pause" and rec.state is TaskState.RUNNING:
            call = functools.partial(rt.pause, rec.handle)
            op = Operation(iid, "pause", "pause", call, reason=reason, data=data)
            self._begin(op, inline=True)
        elif decision.action == "resume" and rec.state is TaskState.PAUSED:
            call = functools.partial(rt.resume, rec.handle)
            op = Operation(iid, "resume", "resume", call, reason=reason, data=data)
            self._begin(op, inline=True)
        elif (
            decision.action == "resume"
            and rec.state is TaskState.SHED
            and rec.spec.on_shed is not ShedAction.RESCHEDULE
        ):  # stopped by the shedder: start it again
            rec.desired = True
            rec.restart_at = None
            self._change(rec, TaskState.STARTING, reason, data=data)
            self._start(rec, rt, "unshed")
        elif decision.action == "stop" and rec.state in ACTIVE:
            rec.stopping = "shed"
            rec.stop_reason = reason[:1024]
            self._persist()
            call = functools.partial(rt.stop, rec.handle, self.stop_timeout)
            self._begin(Operation(iid, "stop", "shed", call, reason=reason, data=data))

    def _shed_done(self, rec: TaskRecord, done: OpDone) -> None:
        rec.stopping = ""
        rec.stop_reason = ""
        if done.error is not None:
            self._persist()
            log.error("shedding %s (stop) failed: %s", rec.instance_id, done.error)
            return
        rec.desired = False
        rec.finished_at = self._wall()
        self._change(rec, TaskState.SHED, done.op.reason, data=done.op.data)

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
