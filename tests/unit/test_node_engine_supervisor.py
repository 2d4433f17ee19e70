"""Supervisor: deploy/terminate semantics, restart policy with backoff, recovery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node_engine.runtimes.base import LogRead, RuntimeFailure, TaskHandle, TaskObservation
from node_engine.state import TaskStore
from node_engine.supervisor import (
    ShedDecision,
    Supervisor,
    TaskChange,
    restart_delay,
    run_operation,
    wants_restart,
)
from schemas.common import Runtime
from schemas.job import RestartPolicy, TaskSpec, TaskState


class FakeRuntime:
    """In-memory runtime: tasks 'run' until the test ends them."""

    kind = Runtime.NATIVE

    def __init__(self) -> None:
        self.running: dict[str, TaskHandle] = {}
        self.results: dict[str, TaskObservation] = {}
        self.deploys: list[str] = []
        self.stops: list[str] = []
        self.fail_next: str | None = None
        self.discarded: list[str] = []
        self._pid = 1000

    def available(self):
        return True, ""

    def deploy(self, instance_id, spec):
        self.deploys.append(instance_id)
        if self.fail_next:
            reason, self.fail_next = self.fail_next, None
            raise RuntimeFailure(reason)
        self._pid += 1
        handle = TaskHandle(
            instance_id=instance_id, runtime=Runtime.NATIVE, pid=self._pid, started_at=1.0
        )
        self.running[instance_id] = handle
        self.results.pop(instance_id, None)
        return handle

    def stop(self, handle, timeout_s=10.0):
        self.stops.append(handle.instance_id)
        if self.running.get(handle.instance_id) == handle:
            del self.running[handle.instance_id]
            self.results.setdefault(handle.instance_id, TaskObservation(state=TaskState.TERMINATED))

    def pause(self, handle):
        pass

    def resume(self, handle):
        pass

    def status(self, handle):
        if self.running.get(handle.instance_id) == handle:
            return TaskObservation(state=TaskState.RUNNING, cpu_percent=1.5, memory_mib=3.0)
        return self.results.get(
            handle.instance_id, TaskObservation(state=TaskState.FAILED, reason="gone")
        )

    def logs(self, handle, tail=100):
        return ""

    def read_logs(self, instance_id, handle, *, tail=100, cursor=None, max_bytes=262144):
        return LogRead([], "")

    def discard_logs(self, instance_id):
        self.discarded.append(instance_id)

    def adopt(self):
        return (
            list(self.running.values())
            + [
                TaskHandle(instance_id=i, runtime=Runtime.NATIVE, pid=1)
                for i in self.results
                if i not in self.running
            ][:0]
        )

    # test helpers
    def exit(self, instance_id, code, oom=False):
        del self.running[instance_id]
        state = TaskState.SUCCEEDED if code == 0 and not oom else TaskState.FAILED
        self.results[instance_id] = TaskObservation(
            state=state, exit_code=code, oom_killed=oom, reason="OOM" if oom else ""
        )


class Wall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def env(tmp_path):
    rt = FakeRuntime()
    events: list[TaskChange] = []
    wall = Wall()
    store = TaskStore(tmp_path)
    sup = Supervisor(
        {Runtime.NATIVE: rt},
        {Runtime.DOCKER: "no docker here"},
        store,
        events.append,
        wall=wall,
        backoff_base=1.0,
        backoff_cap=8.0,
    )
    return sup, rt, events, wall, tmp_path


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "100"], **kw)


def states(events: list[TaskChange], instance_id: str = "i1") -> list[TaskState]:
    return [e.state for e in events if e.instance_id == instance_id]


def test_restart_helpers():
    assert [restart_delay(n, 1.0, 8.0) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    s = spec(restart_policy=RestartPolicy.ON_FAILURE, max_restarts=2)
    assert wants_restart(s, TaskState.FAILED, 0)
    assert not wants_restart(s, TaskState.SUCCEEDED, 0)
    assert not wants_restart(s, TaskState.FAILED, 2)
    assert wants_restart(spec(restart_policy=RestartPolicy.ALWAYS), TaskState.SUCCEEDED, 0)
    assert not wants_restart(spec(), TaskState.FAILED, 0)


def test_deploy_and_duplicate_deploy_not_run_twice(env):
    sup, rt, events, _, _ = env
    out = sup.deploy("i1", "j1", spec(), "c1")
    assert out.accepted and rt.deploys == ["i1"]
    assert states(events) == [TaskState.STARTING, TaskState.RUNNING]
    again = sup.deploy("i1", "j1", spec(), "c2")
    assert again.accepted and "already present" in again.reason
    assert rt.deploys == ["i1"]
    other = sup.deploy("i1", "j1", spec(priority=5), "c3")
    assert not other.accepted and "another spec" in other.reason


def test_runtime_unavailable_and_runtime_failure(env):
    sup, rt, events, _, _ = env
    out = sup.deploy("d1", "j1", TaskSpec(runtime=Runtime.DOCKER, image="busybox"))
    assert not out.accepted and "runtime docker unavailable: no docker here" in out.reason
    assert states(events, "d1") == [TaskState.FAILED]
    rt.fail_next = "executable not found: nope"
    out = sup.deploy("i1", "j1", spec())
    assert not out.accepted and out.reason == "executable not found: nope"
    assert states(events) == [TaskState.STARTING, TaskState.FAILED]
    assert events[-1].reason == "executable not found: nope"
    status = {s.instance_id: s for s in sup.statuses()}
    assert status["i1"].state is TaskState.FAILED and "executable" in status["i1"].reason


def test_never_policy_exit_codes(env):
    sup, rt, events, _, _ = env
    sup.deploy("i1", "j1", spec())
    sup.deploy("i2", "j1", spec())
    rt.exit("i1", 0)
    rt.exit("i2", 3)
    sup.poll()
    assert states(events, "i1")[-1] is TaskState.SUCCEEDED
    assert events[-1].state is TaskState.FAILED and events[-1].exit_code == 3
    assert events[-1].reason == "exited with code 3"
    assert sup.tasks["i2"].desired is False
    sup.poll()
    assert len(rt.deploys) == 2  # nothing restarted


def test_on_failure_backoff_and_max_restarts(env):
    sup, rt, events, wall, _ = env
    sup.deploy("i1", "j1", spec(restart_policy=RestartPolicy.ON_FAILURE, max_restarts=2))
    rt.exit("i1", 1, oom=True)
    sup.poll()
    failed = events[-1]
    assert failed.state is TaskState.FAILED and failed.data["oom_killed"] is True
    assert "memory limit" in failed.reason and failed.data["restart_in_s"] == 1.0
    wall.now += 0.5
    sup.poll()
    assert rt.deploys == ["i1"]  # backoff not over
    wall.now += 0.6
    sup.poll()
    assert rt.deploys == ["i1", "i1"] and sup.tasks["i1"].restarts == 1
    assert states(events)[-2:] == [TaskState.STARTING, TaskState.RUNNING]
    rt.exit("i1", 2)
    sup.poll()
    assert events[-1].data["restart_in_s"] == 2.0
    wall.now += 2.0
    sup.poll()
    rt.exit("i1", 2)
    sup.poll()
    assert events[-1].state is TaskState.FAILED and events[-1].data["max_restarts_reached"]
    wall.now += 100
    sup.poll()
    assert len(rt.deploys) == 3


def test_always_restarts_after_success(env):
    sup, rt, _events, wall, _ = env
    sup.deploy("i1", "j1", spec(restart_policy=RestartPolicy.ALWAYS, max_restarts=5))
    rt.exit("i1", 0)
    sup.poll()
    wall.now += 1.0
    sup.poll()
    assert rt.deploys == ["i1", "i1"]


def test_failed_restart_attempt_counts_and_backs_off(env):
    sup, rt, events, wall, _ = env
    sup.deploy("i1", "j1", spec(restart_policy=RestartPolicy.ON_FAILURE, max_restarts=3))
    rt.exit("i1", 1)
    sup.poll()
    rt.fail_next = "image gone"
    wall.now += 1.0
    sup.poll()
    assert events[-1].state is TaskState.FAILED and events[-1].reason == "image gone"
    assert events[-1].data["restart_in_s"] == 2.0
    wall.now += 2.0
    sup.poll()
    assert sup.tasks["i1"].state is TaskState.RUNNING and sup.tasks["i1"].restarts == 2


def test_terminate(env):
    sup, rt, events, _, _ = env
    sup.deploy("i1", "j1", spec())
    out = sup.terminate("i1", "scale down")
    assert out.accepted and rt.stops == ["i1"]
    assert events[-1].state is TaskState.TERMINATED and events[-1].reason == "scale down"
    assert "i1" not in sup.tasks
    assert rt.discarded == ["i1"]  # a forgotten task's output goes with it
    again = sup.terminate("i1")
    assert again.accepted and "unknown instance" in again.reason


def test_recover_adopts_restarts_and_stops_undesired(env):
    sup, rt, _events, wall, tmp_path = env
    sup.deploy("keep", "j1", spec())
    sup.deploy("died", "j1", spec(restart_policy=RestartPolicy.ON_FAILURE))
    sup.deploy("done", "j1", spec())
    rt.exit("died", 9)
    # an unknown task of ours that is not desired
    rt.running["stray"] = TaskHandle(instance_id="stray", runtime=Runtime.NATIVE, pid=42)
    # a task persisted as STARTING without a handle (engine died mid-deploy)
    from node_engine.state import TaskRecord

    sup.tasks["midway"] = TaskRecord(instance_id="midway", job_id="j1", spec=spec())
    sup.store.save()
    # "restart the engine": a new supervisor on the same state
    events2: list[TaskChange] = []
    store = TaskStore(tmp_path)
    store.load()
    sup2 = Supervisor({Runtime.NATIVE: rt}, {}, store, events2.append, wall=wall)
    deploys_before = list(rt.deploys)
    sup2.recover()
    assert sup2.tasks["keep"].state is TaskState.RUNNING
    assert "stray" in rt.stops and "stray" not in rt.running
    assert [e.state for e in events2 if e.instance_id == "died"] == [TaskState.FAILED]
    assert sup2.tasks["died"].restart_at is not None
    # only "midway" was started again; "keep" was adopted, not redeployed
    assert rt.deploys == [*deploys_before, "midway"]
    assert sup2.tasks["midway"].state is TaskState.RUNNING


def test_recover_stops_duplicates(env):
    sup, rt, _events, wall, tmp_path = env
    sup.deploy("i1", "j1", spec())
    original = rt.running["i1"]
    dup = TaskHandle(instance_id="i1", runtime=Runtime.NATIVE, pid=999)

    class DupRuntime(FakeRuntime):
        pass

    rt.adopt = lambda: [dup, original]
    stopped: list[int | None] = []
    real_stop = rt.stop

    def stop(handle, timeout_s=10.0):
        stopped.append(handle.pid)
        real_stop(handle, timeout_s)

    rt.stop = stop
    store = TaskStore(tmp_path)
    store.load()
    sup2 = Supervisor({Runtime.NATIVE: rt}, {}, store, lambda e: None, wall=wall)
    sup2.recover()
    assert stopped == [999]
    assert sup2.tasks["i1"].handle == original


def test_statuses_carry_usage(env):
    sup, rt, _, _, _ = env
    sup.deploy("i1", "j1", spec(priority=7))
    sup.poll()
    (status,) = sup.statuses()
    assert status.priority == 7 and status.cpu_percent == 1.5 and status.memory_mib == 3.0
    assert status.pid == rt.running["i1"].pid


# ---------------------------------------------------------------- deferred operations


def test_deferred_deploy_is_busy_until_completed(env):
    sup, rt, events, _, _ = env
    sup.defer = True
    assert sup.deploy("i1", "j1", spec(), "c1") is None  # the outcome comes later
    assert rt.deploys == [] and sup.tasks["i1"].state is TaskState.STARTING
    assert sup.busy("i1") is not None and sup.in_flight == 1
    assert sup.blocks("terminate", "i1") and not sup.blocks("deploy", "i1")
    again = sup.deploy("i1", "j1", spec(), "c2")  # answered at once, nothing started
    assert again is not None and again.reason == "instance already present (STARTING)"
    (op,) = sup.take_operations()
    assert sup.take_operations() == [] and op.command_id == "c1"
    outcome = sup.complete(run_operation(op))
    assert outcome is not None and outcome.accepted and rt.deploys == ["i1"]
    assert sup.busy("i1") is None and states(events) == [TaskState.STARTING, TaskState.RUNNING]
    assert sup.complete(run_operation(op)) is None  # a second result is ignored


def test_task_being_stopped_is_not_seen_as_exited_nor_restarted(env):
    sup, rt, events, wall, tmp_path = env
    sup.deploy("i1", "j1", spec(restart_policy=RestartPolicy.ALWAYS, max_restarts=5))
    sup.defer = True
    assert sup.terminate("i1", "scale down", "t1") is None
    saved = json.loads((tmp_path / "tasks.json").read_text())["tasks"]["i1"]
    assert saved["stopping"] == "terminate" and saved["stop_reason"] == "scale down"
    assert sup.blocks("deploy", "i1") and sup.blocks("terminate", "i1")
    refused = sup.deploy("i1", "j1", spec(restart_policy=RestartPolicy.ALWAYS, max_restarts=5))
    assert refused is not None and not refused.accepted  # the engine queues it instead
    rt.exit("i1", 143)  # the process is gone while the stop still waits
    wall.now += 100
    sup.poll()
    sup.apply_shed(ShedDecision("i1", "pause", "hot", {}))
    assert states(events) == [TaskState.STARTING, TaskState.RUNNING]
    assert rt.deploys == ["i1"]  # not restarted
    (op,) = sup.take_operations()
    outcome = sup.complete(run_operation(op))
    assert outcome is not None and outcome.accepted
    assert events[-1].state is TaskState.TERMINATED and events[-1].reason == "scale down"
    assert "i1" not in sup.tasks


def test_failed_stop_is_refused_and_the_task_kept(env):
    sup, rt, _events, _, _ = env
    sup.deploy("i1", "j1", spec())

    def broken_stop(handle, timeout_s=10.0):
        raise RuntimeFailure("docker daemon gone")

    rt.stop = broken_stop
    outcome = sup.terminate("i1")
    assert outcome is not None and not outcome.accepted
    assert outcome.reason == "stop failed: docker daemon gone"
    assert sup.tasks["i1"].stopping == "" and sup.busy("i1") is None


@pytest.mark.parametrize("purpose", ["terminate", "shed"])
def test_recover_finishes_a_stop_interrupted_by_an_engine_crash(env, purpose):
    sup, rt, _events, wall, tmp_path = env
    sup.deploy("i1", "j1", spec())
    sup.tasks["i1"].stopping = purpose
    sup.tasks["i1"].stop_reason = "why"
    sup.store.save()  # what a crash after persisting the intent leaves
    events2: list[TaskChange] = []
    store = TaskStore(tmp_path)
    store.load()
    sup2 = Supervisor({Runtime.NATIVE: rt}, {}, store, events2.append, wall=wall)
    sup2.recover()
    assert rt.stops == ["i1"] and "i1" not in rt.running
    assert rt.deploys == ["i1"]  # not started again
    if purpose == "terminate":
        assert "i1" not in sup2.tasks
        assert [(e.state, e.reason) for e in events2] == [(TaskState.TERMINATED, "why")]
    else:
        assert sup2.tasks["i1"].state is TaskState.SHED and not sup2.tasks["i1"].desired
        assert [e.state for e in events2] == [TaskState.SHED]
    assert (
        json.loads((tmp_path / "tasks.json").read_text())["tasks"].get("i1", {}).get("stopping", "")
        == ""
    )


def test_recover_runs_tasks_stopped_with_the_system_again_in_place(env):
    sup, rt, _events, wall, tmp_path = env
    from node_engine.state import SYSTEM_STOP_FILE, record_system_stop

    sup.deploy("never", "j1", spec())  # restart_policy never: would end FAILED
    sup.deploy("capped", "j1", spec(restart_policy=RestartPolicy.ON_FAILURE, max_restarts=0))
    sup.deploy("crashed", "j1", spec())  # died by itself before the system stop
    sup.store.save()
    rt.exit("crashed", 3)
    # `edgectl local down` while the engine is down marks the tasks that still ran (two
    # stops before one start add up), then stops them
    record_system_stop(tmp_path, ["never"], at=wall.now, by="test")
    record_system_stop(tmp_path, ["capped"], at=wall.now, by="test")
    for iid in ("never", "capped"):
        rt.stop(rt.running[iid])
    events2: list[TaskChange] = []
    store = TaskStore(tmp_path)
    store.load()
    # as the engine runs it: one commit per batch, not a write per change
    sup2 = Supervisor({Runtime.NATIVE: rt}, {}, store, events2.append, wall=wall, autosave=False)
    sup2.recover()
    for iid in ("never", "capped"):
        rec = sup2.tasks[iid]
        assert rec.state is TaskState.RUNNING and rec.restarts == 0, rec
        assert [e.state for e in events2 if e.instance_id == iid] == [
            TaskState.STARTING,
            TaskState.RUNNING,
        ]
        assert "system was stopped" in next(e.reason for e in events2 if e.instance_id == iid)
    assert rt.deploys.count("never") == 2 and rt.deploys.count("capped") == 2
    # a task that had already failed on its own (not marked) follows its restart policy
    assert sup2.tasks["crashed"].state is TaskState.FAILED
    assert "crashed" not in rt.running
    # the marker goes with the write of the new task state (the restart's intent is on
    # disk first: a crash after it starts the task again as an unfinished deploy)
    assert not (tmp_path / SYSTEM_STOP_FILE).exists()
    on_disk = json.loads((tmp_path / "tasks.json").read_text())["tasks"]
    assert on_disk["never"]["restarts"] == 0 and on_disk["never"]["desired"] is True


def test_without_a_system_stop_a_stopped_task_follows_its_restart_policy(env):
    sup, rt, _events, wall, tmp_path = env
    sup.deploy("never", "j1", spec())
    sup.store.save()
    rt.stop(rt.running["never"])
    events2: list[TaskChange] = []
    store = TaskStore(tmp_path)
    store.load()
    sup2 = Supervisor({Runtime.NATIVE: rt}, {}, store, events2.append, wall=wall)
    sup2.recover()
    assert sup2.tasks["never"].state is TaskState.FAILED
    assert rt.deploys.count("never") == 1
