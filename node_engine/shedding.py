"""Local priority shedding (DESIGN.md section 7): pure decisions plus a thin adapter.

`ShedPolicy` decides from readings and a clock it is given, nothing else, so it is
tested with recorded metric sequences (tests/unit/test_shedding.py). `NodeShedder` is
the engine's hook (`node_engine.engine.Shedder`): it turns a monitor `Sample` and the
task list into a `Reading` and `TaskView`s and asks the policy.

Signals (each with an enter threshold, a lower exit threshold and minimum durations):

============  ===============================================  ==================
signal        value                                            default enter/exit
============  ===============================================  ==================
cpu           host CPU use, % of all cores (or, with           90 / 70 %
              ``cpu_source=tasks``, the engine's tasks' use)
memory        host memory used, %                              90 / 80 %
temperature   hottest sensor, degrees C                        80 / 70 C
throttling    1 while the SoC reports throttling, frequency    1 / 0
              capping or its soft temperature limit, else 0
latency       worst p95 latency / budget among running         1.0 / 0.8
              inference tasks with fresh stats
============  ===============================================  ==================

A signal turns *on* when its value has stayed at or above `enter` for `enter_for_s`
and *off* when it has stayed at or below `exit` for `exit_for_s`; in between it keeps
its state (hysteresis), so a value hovering around one threshold does not flap.

While a signal is on, one task is shed per step, with at least `step_interval_s`
between steps so the effect of a step is measured before the next one. The victim is
the lowest-priority running task (newest first among equals), so a task is never shed
while a lower-priority one still runs. What may be shed depends on the signal:

* cpu and latency shed only to protect a more important task: a task is a candidate
  when its priority is below the highest priority running (cpu), or below that of the
  task missing its latency budget (latency);
* memory, temperature and throttling protect the device: every task is a candidate.

The action is the task's `on_shed`: ``pause`` (SIGSTOP / docker pause), ``stop``, or
``reschedule`` (stopped and reported SHED so the cluster places it elsewhere). Memory
pressure stops rather than pauses (a paused process keeps its memory), and also stops
tasks it paused earlier.

Once every signal is off and every value has stayed at or below its exit threshold
for `resume_after_s`, tasks come back one per step, in reverse order (highest priority
first; a stopped one is started again; a rescheduled one is gone). A task shed again
soon after coming back waits twice as long before its next return (up to
`resume_after_max_s`), which damps the pause/resume cycle of a load that is simply too
big. If a lower-priority task runs while a higher one is held back (it was deployed
meanwhile), it is shed too, even without pressure.

Every decision is a `ShedDecision` whose reason says why and whose data carries the
measured values and thresholds; the supervisor applies it and reports a task event.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from node_engine.supervisor import ShedDecision
from schemas.job import ShedAction, TaskSpec, TaskState

if TYPE_CHECKING:
    from node_engine.monitor import Sample
    from node_engine.settings import NodeEngineSettings
    from node_engine.state import TaskRecord
    from schemas.node import TaskStatus

log = logging.getLogger(__name__)

Signal = Literal["cpu", "memory", "temperature", "throttling", "latency"]
SIGNALS: tuple[Signal, ...] = ("cpu", "memory", "temperature", "throttling", "latency")
DEVICE_SIGNALS: frozenset[str] = frozenset({"memory", "temperature", "throttling"})
SHED_PREFIX = "shed"
"""Reasons of shed tasks start with this (how a restarted engine recognises them)."""
LATENCY_SATURATED = 10.0
"""Latency value of a worker that dropped frames and executed none (starved)."""


@dataclass(frozen=True)
class SignalConfig:
    """Thresholds of one signal: on at >= enter for enter_for_s, off at <= exit for exit_for_s."""

    enter: float
    exit: float
    enter_for_s: float = 5.0
    exit_for_s: float = 5.0

    def __post_init__(self) -> None:
        if self.exit > self.enter:
            raise ValueError(f"exit threshold {self.exit} is above enter threshold {self.enter}")
        if self.enter_for_s < 0 or self.exit_for_s < 0:
            raise ValueError("durations must be >= 0")


@dataclass(frozen=True)
class ShedConfig:
    """Everything the policy is told; the defaults are the node engine's defaults."""

    cpu: SignalConfig = SignalConfig(90.0, 70.0)
    memory: SignalConfig = SignalConfig(90.0, 80.0)
    temperature: SignalConfig = SignalConfig(80.0, 70.0)
    throttling: SignalConfig = SignalConfig(1.0, 0.0)
    latency: SignalConfig = SignalConfig(1.0, 0.8)
    signals: frozenset[str] = frozenset(SIGNALS)
    step_interval_s: float = 3.0
    resume_after_s: float = 10.0
    resume_after_max_s: float = 300.0
    flap_window_s: float = 600.0
    stale_after_s: float = 5.0

    def __post_init__(self) -> None:
        unknown = set(self.signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown shedding signal(s) {sorted(unknown)}; know {SIGNALS}")

    @property
    def enabled(self) -> tuple[str, ...]:
        """The signals acted on, in a fixed order."""
        return tuple(n for n in SIGNALS if n in self.signals)

    def signal(self, name: str) -> SignalConfig:
        """The thresholds of one signal by name."""
        config: SignalConfig = getattr(self, name)
        return config


@dataclass(frozen=True)
class Reading:
    """Host values at one instant (None: not measured here).

    `cpu_owned_percent` is the CPU of the engine process and its tasks, and
    `cpu_foreign_percent` the rest of the host's CPU use (processes this engine does not
    run), both % of all `cpu_count` cores; they explain a CPU signal, shedding acts on
    `cpu_percent` alone.
    """

    cpu_percent: float | None = None
    memory_percent: float | None = None
    temperature_c: float | None = None
    throttled: bool = False
    cpu_owned_percent: float | None = None
    cpu_foreign_percent: float | None = None
    cpu_count: int = 0


def cpu_split(
    host_percent: float, engine_core_percent: float, tasks_core_percent: float, cpu_count: int
) -> tuple[float, float]:
    """(owned, foreign) % of all cores: the engine's and its tasks' CPU (% of one core
    each, summed) against the host's use; owned is capped at the host's figure (the
    samples are not taken at the same instant), foreign is what remains."""
    cores = max(1, cpu_count)
    owned = min(host_percent, max(0.0, engine_core_percent + tasks_core_percent) / cores)
    return owned, max(0.0, host_percent - owned)


@dataclass(frozen=True)
class ShedNote:
    """Something the shedder says once without acting: pressure it cannot relieve."""

    at: float
    kind: Literal["foreign", "own"]
    text: str
    data: dict[str, Any]


@dataclass(frozen=True)
class TaskView:
    """What the policy knows of one task."""

    instance_id: str
    state: TaskState
    priority: int = 100
    on_shed: ShedAction = ShedAction.PAUSE
    started_at: float = 0.0
    reason: str = ""
    latency_budget_ms: float | None = None
    latency_p95_ms: float | None = None
    frames_executed: int = 0
    frames_dropped: int = 0
    inference_age_s: float | None = None
    cpu_percent: float = 0.0


@dataclass
class _SignalState:
    active: bool = False
    value: float | None = None
    above_since: float | None = None
    below_since: float | None = None
    since: float = 0.0  # when `active` last changed


@dataclass
class _Held:
    """A task the policy shed and may bring back."""

    instance_id: str
    priority: int
    action: Literal["pause", "stop"]
    at: float


@dataclass
class _Culprit:
    instance_id: str
    priority: int
    p95_ms: float | None
    budget_ms: float
    ratio: float


@dataclass
class ShedPolicy:
    """The decision logic; `decide()` once per engine tick with the current readings."""

    config: ShedConfig = field(default_factory=ShedConfig)
    _signals: dict[str, _SignalState] = field(default_factory=dict)
    _held: dict[str, _Held] = field(default_factory=dict)
    _history: dict[str, list[float]] = field(default_factory=dict)
    _last_step: float = -math.inf
    _latency_culprit: _Culprit | None = None
    _reading: Reading = field(default_factory=Reading)
    _noted: str | None = None
    notes: list[ShedNote] = field(default_factory=list)
    """What the shedder said without acting (newest last, the last 32)."""

    @property
    def active(self) -> bool:
        """True while tasks are held back (reported as `NodeStatus.shedding`)."""
        return bool(self._held)

    @property
    def held(self) -> list[str]:
        """Instance ids held back, in the order they were shed."""
        return [h.instance_id for h in sorted(self._held.values(), key=lambda h: h.at)]

    def signal_active(self, name: str) -> bool:
        """Whether one signal is on."""
        state = self._signals.get(name)
        return bool(state and state.active)

    # ----- measuring

    def _values(self, reading: Reading, tasks: Sequence[TaskView]) -> dict[str, float | None]:
        return {
            "cpu": reading.cpu_percent,
            "memory": reading.memory_percent,
            "temperature": reading.temperature_c,
            "throttling": 1.0 if reading.throttled else 0.0,
            "latency": self._latency(tasks),
        }

    def _latency(self, tasks: Sequence[TaskView]) -> float | None:
        """Worst p95/budget among running tasks with fresh stats that have a task of lower
        priority below them (running or held back): only those can be helped by shedding,
        so a starved low-priority worker neither triggers anything nor blocks resumes.
        The culprit (whose priority bounds what may be shed) is the most important task
        that is over the exit threshold."""
        present = [t.priority for t in tasks if t.state is TaskState.RUNNING]
        present += [h.priority for h in self._held.values()]
        lowest = min(present, default=None)
        worst: float | None = None
        culprit: _Culprit | None = None
        for t in tasks:
            if t.state is not TaskState.RUNNING or not t.latency_budget_ms:
                continue
            if t.inference_age_s is None or t.inference_age_s > self.config.stale_after_s:
                continue
            if lowest is None or t.priority <= lowest:
                continue
            if t.latency_p95_ms is not None and t.frames_executed > 0:
                ratio = t.latency_p95_ms / t.latency_budget_ms
            elif t.frames_dropped > 0:
                ratio = LATENCY_SATURATED
            else:
                continue
            worst = ratio if worst is None else max(worst, ratio)
            if ratio > self.config.latency.exit and (
                culprit is None or (t.priority, ratio) > (culprit.priority, culprit.ratio)
            ):
                culprit = _Culprit(
                    t.instance_id, t.priority, t.latency_p95_ms, t.latency_budget_ms, ratio
                )
        if culprit is not None:
            self._latency_culprit = culprit
        return worst

    def _update(self, now: float, values: Mapping[str, float | None]) -> None:
        for name in self.config.enabled:
            cfg = self.config.signal(name)
            st = self._signals.setdefault(name, _SignalState(since=now))
            value = values.get(name)
            st.value = value
            if value is None:  # not measured: counts as clear
                st.above_since = None
                if st.below_since is None:
                    st.below_since = now
            else:
                if value >= cfg.enter:
                    if st.above_since is None:
                        st.above_since = now
                else:
                    st.above_since = None
                if value <= cfg.exit:
                    if st.below_since is None:
                        st.below_since = now
                else:
                    st.below_since = None
            if (
                not st.active
                and st.above_since is not None
                and now - st.above_since >= cfg.enter_for_s
            ):
                st.active, st.since = True, now
                log.warning(
                    "shedding: %s pressure (%s >= %g for %gs)",
                    name,
                    _fmt(value),
                    cfg.enter,
                    cfg.enter_for_s,
                )
            elif (
                st.active and st.below_since is not None and now - st.below_since >= cfg.exit_for_s
            ):
                st.active, st.since = False, now
                log.info(
                    "shedding: %s pressure over (%s <= %g for %gs)",
                    name,
                    _fmt(value),
                    cfg.exit,
                    cfg.exit_for_s,
                )

    def _reconcile(self, now: float, tasks: Sequence[TaskView]) -> None:
        """Forget held tasks that are gone or came back by other means; adopt tasks a
        previous engine run shed (recognised by their reason)."""
        by_id = {t.instance_id: t for t in tasks}
        for iid, held in list(self._held.items()):
            task = by_id.get(iid)
            expected = TaskState.PAUSED if held.action == "pause" else TaskState.SHED
            if task is None or task.state is not expected:
                del self._held[iid]
        adopt = [
            t
            for t in tasks
            if t.instance_id not in self._held
            and t.reason.startswith(SHED_PREFIX)
            and (
                t.state is TaskState.PAUSED
                or (t.state is TaskState.SHED and t.on_shed is not ShedAction.RESCHEDULE)
            )
        ]
        for t in sorted(adopt, key=lambda t: t.priority):
            action: Literal["pause", "stop"] = "pause" if t.state is TaskState.PAUSED else "stop"
            self._held[t.instance_id] = _Held(t.instance_id, t.priority, action, now)
            log.info("shedding: %s was shed before the engine restarted; holding it", t.instance_id)

    # ----- deciding

    def decide(self, now: float, reading: Reading, tasks: Sequence[TaskView]) -> list[ShedDecision]:
        """At most one decision (shed one task, or bring one back) for this instant."""
        self._reading = reading
        values = self._values(reading, tasks)
        self._update(now, values)
        self._reconcile(now, tasks)
        if now - self._last_step < self.config.step_interval_s:
            return []
        active = [n for n in self.config.enabled if self._signals[n].active]
        # Between steps, re-measure: shed more only while a value is still at or above
        # its enter threshold; in the hysteresis band, hold (shed nothing more, resume
        # nothing), except a task running while a more important one is held back.
        pressing = [n for n in active if self._pressing(n, now)]
        decision = self._shed(now, pressing, values, tasks) if pressing else None
        if decision is None and pressing:
            self._nothing_left(now, pressing, tasks)
        elif not pressing:
            self._noted = None  # a new episode of pressure may say it again
        if decision is None and not pressing:
            decision = self._inversion(now, values, tasks)
        if decision is None and not active:
            decision = self._resume(now, values, tasks)
        if decision is None:
            return []
        self._noted = None
        self._last_step = now
        return [decision]

    def cpu_share(self) -> dict[str, Any] | None:
        """The last reading's split of host CPU: % of all cores and cores, owned by this
        engine and its tasks vs. foreign (None when the reading had no split)."""
        r = self._reading
        if r.cpu_owned_percent is None or r.cpu_foreign_percent is None:
            return None
        cores = max(1, r.cpu_count)
        return {
            "cores": cores,
            "owned_percent": round(r.cpu_owned_percent, 1),
            "foreign_percent": round(r.cpu_foreign_percent, 1),
            "owned_cores": round(r.cpu_owned_percent * cores / 100.0, 2),
            "foreign_cores": round(r.cpu_foreign_percent * cores / 100.0, 2),
        }

    def pressure_is_foreign(self) -> bool:
        """The host is busy (CPU at or above the cpu exit threshold) while this engine and
        its tasks alone would be below it: the load comes from other processes, which
        shedding cannot relieve."""
        r = self._reading
        if r.cpu_owned_percent is None or r.cpu_percent is None:
            return False
        exit_ = self.config.cpu.exit
        return r.cpu_percent >= exit_ and r.cpu_owned_percent < exit_

    def _nothing_left(self, now: float, pressing: Sequence[str], tasks: Sequence[TaskView]) -> None:
        """Pressure is on but no task may be shed for it: say why, once per episode."""
        running = [t for t in tasks if t.state is TaskState.RUNNING]
        if any(t.priority < self._bound(s, running) for s in pressing for t in running):
            return  # a candidate exists (e.g. busy with another operation): not this case
        share = self.cpu_share()
        kind: Literal["foreign", "own"] = "foreign" if self.pressure_is_foreign() else "own"
        if self._noted == kind:
            return
        self._noted = kind
        why = "; ".join(self._why(s, share=False) for s in pressing)
        if kind == "foreign" and share is not None:
            text = (
                f"{why}: pressure is from processes this engine does not run (they use "
                f"{share['foreign_cores']:.1f} of {share['cores']} cores, this engine and its "
                f"tasks {share['owned_cores']:.1f}): nothing left to shed"
            )
        else:
            top = max((t.priority for t in running), default=None)
            detail = [f"the tasks still running have priority {top} or more"] if top else []
            if share is not None:
                detail.append(
                    f"this engine and its tasks use {share['owned_cores']:.1f} of "
                    f"{share['cores']} cores, other processes {share['foreign_cores']:.1f}"
                )
            text = f"{why}: nothing left to shed" + (f" ({'; '.join(detail)})" if detail else "")
        data: dict[str, Any] = {"signals": list(pressing), "cpu_share": share}
        self.notes = [*self.notes, ShedNote(now, kind, text, data)][-32:]
        log.warning("shedding: %s", text)

    def _pressing(self, name: str, now: float) -> bool:
        """Still at or above `enter`, for long enough to be measured after the last step."""
        cfg = self.config.signal(name)
        st = self._signals[name]
        hold = min(cfg.enter_for_s, self.config.step_interval_s)
        return st.above_since is not None and now - st.above_since >= hold

    def _bound(self, signal: str, running: Sequence[TaskView]) -> int:
        """Tasks with a priority below this may be shed for `signal`."""
        if signal in DEVICE_SIGNALS:
            return 1 << 30
        if signal == "latency":
            return self._latency_culprit.priority if self._latency_culprit else -1
        return max((t.priority for t in running), default=-1)

    def _shed(
        self,
        now: float,
        active: Sequence[str],
        values: Mapping[str, float | None],
        tasks: Sequence[TaskView],
    ) -> ShedDecision | None:
        running = [t for t in tasks if t.state is TaskState.RUNNING]
        memory = "memory" in active
        pool = list(running)
        if memory:  # a paused task keeps its memory: stop those too
            pool += [
                t
                for t in tasks
                if t.state is TaskState.PAUSED
                and (h := self._held.get(t.instance_id)) is not None
                and h.action == "pause"
            ]
        if not pool:
            return None
        victim = min(pool, key=_victim_order)
        causes = [s for s in active if victim.priority < self._bound(s, running)]
        if not causes:
            return None
        stop = memory or victim.on_shed is not ShedAction.PAUSE
        action: Literal["pause", "stop"] = "stop" if stop else "pause"
        reason = f"{SHED_PREFIX} ({action}): " + "; ".join(self._why(s) for s in causes)
        return self._take(now, victim, action, reason, causes, values)

    def _take(
        self,
        now: float,
        victim: TaskView,
        action: Literal["pause", "stop"],
        reason: str,
        causes: Sequence[str],
        values: Mapping[str, float | None],
        extra: dict[str, Any] | None = None,
    ) -> ShedDecision:
        escalation = victim.instance_id in self._held  # paused before, stopped now
        if victim.on_shed is ShedAction.RESCHEDULE and action == "stop":
            self._held.pop(victim.instance_id, None)  # gone for good: the cluster moves it
        else:
            self._held[victim.instance_id] = _Held(victim.instance_id, victim.priority, action, now)
        if not escalation:  # counts toward the resume backoff
            recent = [t for t in self._history.get(victim.instance_id, []) if now - t < 3600]
            self._history[victim.instance_id] = [*recent, now][-32:]
        data = self._data(action, causes, values, victim)
        if extra:
            data.update(extra)
        log.warning(
            "shedding: %s %s (priority %d): %s", action, victim.instance_id, victim.priority, reason
        )
        return ShedDecision(victim.instance_id, action, reason[:1024], data)

    def _inversion(
        self, now: float, values: Mapping[str, float | None], tasks: Sequence[TaskView]
    ) -> ShedDecision | None:
        """A task runs while a more important one is held back: shed it too."""
        if not self._held:
            return None
        top_held = max(self._held.values(), key=lambda h: h.priority)
        running = [
            t for t in tasks if t.state is TaskState.RUNNING and t.priority < top_held.priority
        ]
        if not running:
            return None
        victim = min(running, key=_victim_order)
        action: Literal["pause", "stop"] = "pause" if victim.on_shed is ShedAction.PAUSE else "stop"
        reason = (
            f"{SHED_PREFIX} ({action}): {top_held.instance_id} (priority {top_held.priority}) "
            f"is held back and this task has priority {victim.priority}"
        )
        return self._take(
            now, victim, action, reason, [], values, {"held_back": top_held.instance_id}
        )

    def resume_hold(self, instance_id: str, now: float) -> float:
        """How long pressure must have been clear before `instance_id` comes back."""
        cfg = self.config
        recent = [t for t in self._history.get(instance_id, []) if now - t <= cfg.flap_window_s]
        doublings = max(0, len(recent) - 1)
        return float(min(cfg.resume_after_max_s, cfg.resume_after_s * 2 ** min(doublings, 30)))

    def _resume(
        self, now: float, values: Mapping[str, float | None], tasks: Sequence[TaskView]
    ) -> ShedDecision | None:
        if not self._held:
            return None
        states = [self._signals[n] for n in self.config.enabled]
        below = [st.below_since for st in states]
        if any(b is None for b in below):
            return None  # some value is still above its exit threshold
        clear_since = max([b for b in below if b is not None] + [self._last_step])
        held = max(self._held.values(), key=lambda h: (h.priority, h.at))
        hold = self.resume_hold(held.instance_id, now)
        clear_for = now - clear_since
        if clear_for < hold:
            return None
        del self._held[held.instance_id]
        reason = (
            f"resumed: pressure clear for {clear_for:.0f}s ("
            + ", ".join(
                f"{n} {_fmt(values.get(n))} <= {self.config.signal(n).exit:g}"
                for n in self.config.enabled
                if values.get(n) is not None
            )
            + ")"
        )
        data = self._data("resume", [], values, None)
        data.update(priority=held.priority, was=held.action, hold_s=hold)
        log.info("shedding: resume %s (priority %d): %s", held.instance_id, held.priority, reason)
        return ShedDecision(held.instance_id, "resume", reason[:1024], data)

    # ----- texts

    def _why(self, signal: str, *, share: bool = True) -> str:
        cfg = self.config.signal(signal)
        st = self._signals[signal]
        if signal == "latency" and self._latency_culprit is not None:
            c = self._latency_culprit
            p95 = f"p95 {c.p95_ms:.0f} ms" if c.p95_ms is not None else "frames dropped, none run"
            return (
                f"latency of {c.instance_id} (priority {c.priority}) {p95} over its "
                f"{c.budget_ms:g} ms budget"
            )
        unit = {"cpu": "%", "memory": "%", "temperature": " C"}.get(signal, "")
        if signal == "throttling":
            return f"throttling for {cfg.enter_for_s:g}s"
        text = f"{signal} {_fmt(st.value)}{unit} >= {cfg.enter:g}{unit} for {cfg.enter_for_s:g}s"
        split = self.cpu_share() if signal == "cpu" and share else None
        if split is not None:
            text += (
                f" (other processes {split['foreign_cores']:.1f} of {split['cores']} cores, "
                f"this engine and its tasks {split['owned_cores']:.1f})"
            )
        return text

    def _data(
        self,
        action: str,
        causes: Sequence[str],
        values: Mapping[str, float | None],
        victim: TaskView | None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "shedder": action,
            "signals": list(causes),
            "values": {n: _round(values.get(n)) for n in self.config.enabled},
            "thresholds": {
                n: {
                    "enter": self.config.signal(n).enter,
                    "exit": self.config.signal(n).exit,
                    "enter_for_s": self.config.signal(n).enter_for_s,
                    "exit_for_s": self.config.signal(n).exit_for_s,
                }
                for n in causes
            },
        }
        share = self.cpu_share()
        if share is not None:
            data["cpu_share"] = share
        if victim is not None:
            data["priority"] = victim.priority
            data["on_shed"] = victim.on_shed.value
        if "latency" in causes and self._latency_culprit is not None:
            c = self._latency_culprit
            data["latency"] = {
                "instance_id": c.instance_id,
                "priority": c.priority,
                "p95_ms": c.p95_ms,
                "budget_ms": c.budget_ms,
            }
        return data


def _victim_order(t: TaskView) -> tuple[int, float, str]:
    return (t.priority, -t.started_at, t.instance_id)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


# ---------------------------------------------------------------- the engine adapter


class NodeShedder:
    """The engine's shedder hook: `Sample` + task list -> readings -> `ShedPolicy`."""

    def __init__(
        self,
        policy: ShedPolicy,
        records: Callable[[], Mapping[str, TaskRecord]],
        *,
        cpu_source: Literal["host", "tasks"] = "host",
        cpu_count: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._records = records
        self.cpu_source = cpu_source
        self.cpu_count = max(1, cpu_count)
        self._clock = clock
        self._wall = wall

    @property
    def active(self) -> bool:
        """True while the policy holds tasks back."""
        return self.policy.active

    def reading(self, sample: Sample, tasks: Sequence[TaskStatus]) -> Reading:
        """Host values for the policy (CPU from the host or from the engine's tasks), with
        the host's CPU split into what the engine and its tasks use and the rest."""
        tasks_cpu = sum(t.cpu_percent for t in tasks)  # only active tasks report any
        if self.cpu_source == "tasks":
            used = sum(t.cpu_percent for t in tasks if t.state is TaskState.RUNNING)
            cpu = min(100.0, used / self.cpu_count)
        else:
            cpu = sample.cpu_percent
        owned, foreign = cpu_split(
            sample.cpu_percent, sample.engine_cpu_percent, tasks_cpu, self.cpu_count
        )
        th = sample.throttling
        return Reading(
            cpu_percent=cpu,
            memory_percent=sample.memory.used_percent,
            temperature_c=sample.max_temperature_c,
            throttled=th.throttled or th.frequency_capped or th.soft_temperature_limit,
            cpu_owned_percent=round(owned, 2),
            cpu_foreign_percent=round(foreign, 2),
            cpu_count=self.cpu_count,
        )

    @property
    def notes(self) -> list[ShedNote]:
        """What the policy said without acting (e.g. foreign pressure, nothing to shed)."""
        return self.policy.notes

    def views(self, tasks: Sequence[TaskStatus]) -> list[TaskView]:
        """`TaskView`s from the status list and the specs the supervisor holds."""
        records = self._records()
        wall = self._wall()
        out = []
        for t in tasks:
            rec = records.get(t.instance_id)
            spec: TaskSpec | None = rec.spec if rec is not None else None
            inf = t.inference
            budget = (spec.latency_budget_ms if spec else None) or (inf.budget_ms if inf else None)
            out.append(
                TaskView(
                    instance_id=t.instance_id,
                    state=t.state,
                    priority=t.priority,
                    on_shed=spec.on_shed if spec else ShedAction.PAUSE,
                    started_at=t.started_at or 0.0,
                    reason=t.reason,
                    latency_budget_ms=budget,
                    latency_p95_ms=inf.latency_p95_ms if inf else None,
                    frames_executed=inf.frames_executed if inf else 0,
                    frames_dropped=inf.frames_dropped if inf else 0,
                    inference_age_s=(max(0.0, wall - inf.ts) if inf and inf.ts else None),
                    cpu_percent=t.cpu_percent,
                )
            )
        return out

    def evaluate(self, sample: Sample, tasks: Sequence[TaskStatus]) -> Sequence[ShedDecision]:
        """The engine's per-tick call."""
        return self.policy.decide(self._clock(), self.reading(sample, tasks), self.views(tasks))


def config_from_settings(settings: NodeEngineSettings) -> ShedConfig:
    """The policy configuration from the node engine's settings."""
    s = settings
    enter_for, exit_for = s.shedding_enter_for, s.shedding_exit_for
    return ShedConfig(
        cpu=SignalConfig(s.shedding_cpu_enter, s.shedding_cpu_exit, enter_for, exit_for),
        memory=SignalConfig(s.shedding_memory_enter, s.shedding_memory_exit, enter_for, exit_for),
        temperature=SignalConfig(
            s.shedding_temperature_enter, s.shedding_temperature_exit, enter_for, exit_for
        ),
        throttling=SignalConfig(1.0, 0.0, enter_for, exit_for),
        latency=SignalConfig(
            s.shedding_latency_enter, s.shedding_latency_exit, enter_for, exit_for
        ),
        signals=frozenset(s.shedding_signals),
        step_interval_s=s.shedding_step_interval,
        resume_after_s=s.shedding_resume_after,
        resume_after_max_s=max(s.shedding_resume_after, s.shedding_resume_after_max),
    )


def build_shedder(
    settings: NodeEngineSettings,
    records: Callable[[], Mapping[str, TaskRecord]],
    cpu_count: int,
) -> NodeShedder:
    """The shedder the engine runs with these settings."""
    config = config_from_settings(settings)
    log.info(
        "shedding on: signals %s; cpu %g/%g%% (%s), memory %g/%g%%, temperature %g/%g C, "
        "latency p95/budget %g/%g; on after %gs, off after %gs; a step every %gs; "
        "resume after %gs clear",
        ",".join(config.enabled),
        config.cpu.enter,
        config.cpu.exit,
        settings.shedding_cpu_source,
        config.memory.enter,
        config.memory.exit,
        config.temperature.enter,
        config.temperature.exit,
        config.latency.enter,
        config.latency.exit,
        settings.shedding_enter_for,
        settings.shedding_exit_for,
        config.step_interval_s,
        config.resume_after_s,
    )
    return NodeShedder(
        ShedPolicy(config),
        records,
        cpu_source=settings.shedding_cpu_source,
        cpu_count=cpu_count,
    )
