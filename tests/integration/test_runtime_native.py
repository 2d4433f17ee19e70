"""NativeRuntime against real processes, real cgroups (where writable) and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from node_engine import cgroups
from node_engine.runtimes.base import RuntimeFailure, TaskHandle, TaskObservation, TaskRuntime
from node_engine.runtimes.native import NativeRuntime
from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.resources import Resources

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_terminal(rt: NativeRuntime, h: TaskHandle, timeout: float = 10.0) -> TaskObservation:
    """Poll status() until the task has finished; return the final observation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = rt.status(h)
        if obs.state.terminal:
            return obs
        time.sleep(0.02)
    raise AssertionError(f"task {h.instance_id} still {obs.state} after {timeout}s")


def spec(*argv: str, memory_mib: int = 0, cpu: float = 0.0, **kw: object) -> TaskSpec:
    return TaskSpec(
        runtime=Runtime.NATIVE,
        command=list(argv),
        resources=Resources(memory_mib=memory_mib, cpu=cpu),
        **kw,
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cgroups_writable() -> bool:
    support = cgroups.detect()
    parent = f"edge-test-probe-{os.getpid()}"
    ok, _ = cgroups.writable(support, parent)
    for root in {r for r in (support.memory_root, support.cpu_root) if r is not None}:
        if (root / parent).is_dir():
            (root / parent).rmdir()
    return ok


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A per-test cgroup parent, removed (with any leftovers) at teardown."""
    parent = f"edge-test-{uuid.uuid4().hex[:8]}"
    yield parent
    support = cgroups.detect()
    for root in {r for r in (support.memory_root, support.cpu_root) if r is not None}:
        base = root / parent
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir():
                    child.rmdir()
            base.rmdir()


@pytest.fixture
def rt(tmp_path: Path, cgroup_parent: str) -> Iterator[NativeRuntime]:
    runtime = NativeRuntime(tmp_path / "state", cgroup_parent=cgroup_parent)
    yield runtime
    for d in (tmp_path / "state" / "tasks").glob("*/handle.json"):
        runtime.stop(TaskHandle.model_validate_json(d.read_text()), timeout_s=1.0)


def test_implements_protocol(rt: NativeRuntime) -> None:
    assert isinstance(rt, TaskRuntime)
    ok, why = rt.available()
    assert ok, why


def test_running_task_and_logs(rt: NativeRuntime) -> None:
    h = rt.deploy("t-run", spec("sh", "-c", "echo hi; echo oops >&2; sleep 30"))
    assert h.pid and h.pid_create_time and h.log_path
    obs = rt.status(h)
    assert obs.state is TaskState.RUNNING
    wait_for(lambda: "hi" in rt.logs(h) and "oops" in rt.logs(h), what="output in logs")
    assert rt.logs(h, tail=1) == "oops"
    assert rt.status(h).memory_mib > 0
    saved = json.loads((rt.task_dir("t-run") / "handle.json").read_text())
    assert saved["pid"] == h.pid
    rt.stop(h, timeout_s=5)
    assert not alive(h.pid)
    assert rt.status(h).state is TaskState.TERMINATED
    assert "hi" in rt.logs(h)  # logs outlive stop


def test_exit_zero_succeeds(rt: NativeRuntime) -> None:
    h = rt.deploy("t-ok", spec("sh", "-c", "echo done"))
    obs = wait_terminal(rt, h)
    assert obs.state is TaskState.SUCCEEDED
    assert obs.exit_code == 0
    assert not obs.oom_killed


def test_exit_three_fails(rt: NativeRuntime) -> None:
    h = rt.deploy("t-fail", spec("sh", "-c", "exit 3"))
    obs = wait_terminal(rt, h)
    assert obs.state is TaskState.FAILED
    assert obs.exit_code == 3
    assert "exit code 3" in obs.reason
    assert rt.status(h) == obs  # the result is persisted, not recomputed


def test_env_and_workdir(
    rt: NativeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_SECRET", "leak")
    wd = tmp_path / "wd"
    wd.mkdir()
    h = rt.deploy(
        "t-env",
        spec(
            "sh",
            "-c",
            'echo "foo=$FOO secret=${ENGINE_SECRET:-none} lang=$LANG"; pwd; echo "home=$HOME"',
            env={"FOO": "bar"},
            workdir=str(wd),
        ),
    )
    wait_for(lambda: rt.status(h).state.terminal, what="exit")
    out = rt.logs(h)
    assert "foo=bar secret=none lang=C.UTF-8" in out
    assert str(wd) in out
    h2 = rt.deploy("t-env2", spec("sh", "-c", "pwd"))
    wait_for(lambda: rt.status(h2).state.terminal, what="exit")
    assert rt.logs(h2).strip() == str(rt.task_dir("t-env2") / "work")


def test_missing_executable_is_refused(rt: NativeRuntime) -> None:
    with pytest.raises(RuntimeFailure, match="executable not found: no-such-program-xyz"):
        rt.deploy("t-missing", spec("no-such-program-xyz", "arg"))
    with pytest.raises(RuntimeFailure, match=r"executable not found: \./nope"):
        rt.deploy("t-missing2", spec("./nope"))
    with pytest.raises(RuntimeFailure, match="working directory does not exist"):
        rt.deploy("t-missing3", spec("true", workdir="/no/such/dir"))
    assert rt.adopt() == []


def _group(pid: int | None) -> list[psutil.Process]:
    """Live processes whose process group is `pid`."""
    out: list[psutil.Process] = []
    if pid is None:
        return out
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


def test_stop_kills_whole_group_including_grandchild(rt: NativeRuntime) -> None:
    h = rt.deploy("t-group", spec("sh", "-c", "sh -c 'sleep 300' & sleep 301 & wait"))
    assert h.pid is not None

    def both_sleeps() -> list[psutil.Process] | None:
        g = _group(h.pid)
        return g if sum("sleep" in p.name() for p in g) == 2 else None

    procs = wait_for(both_sleeps, what="both sleeps")
    assert len(procs) >= 4  # wrapper, sh, sh (grandchild's parent), sleeps
    t0 = time.monotonic()
    rt.stop(h, timeout_s=5)
    assert time.monotonic() - t0 < 3  # SIGTERM was enough, no wait for the timeout
    for p in procs:
        assert not alive(p.pid), p
    assert rt.adopt() == []


def test_stop_escalates_to_sigkill(rt: NativeRuntime) -> None:
    h = rt.deploy(
        "t-stubborn", spec("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
    )
    wait_for(lambda: "ready" in rt.logs(h), what="trap installed")
    t0 = time.monotonic()
    rt.stop(h, timeout_s=0.5)
    assert 0.4 < time.monotonic() - t0 < 5
    assert h.pid is not None and not _group(h.pid)
    assert rt.status(h).state is TaskState.TERMINATED


def test_pause_and_resume(rt: NativeRuntime) -> None:
    h = rt.deploy("t-pause", spec("sh", "-c", "while :; do sleep 0.05; done"))
    assert h.pid is not None
    wait_for(lambda: len(_group(h.pid)) >= 2, what="task started")
    rt.pause(h)
    assert rt.status(h).state is TaskState.PAUSED
    # Every process is stopped; one caught between vfork and exec is stopped while its
    # parent waits in the kernel (D) for it.
    states = [p.status() for p in _group(h.pid)]
    assert psutil.STATUS_STOPPED in states, states
    assert set(states) <= {psutil.STATUS_STOPPED, psutil.STATUS_DISK_SLEEP}, states
    rt.resume(h)
    assert wait_for(lambda: rt.status(h).state is TaskState.RUNNING, what="resumed")
    wait_for(
        lambda: all(p.status() != psutil.STATUS_STOPPED for p in _group(h.pid)),
        what="processes continued",
    )
    # A paused task can still be stopped (SIGTERM is followed by SIGCONT).
    rt.pause(h)
    assert rt.status(h).state is TaskState.PAUSED
    t0 = time.monotonic()
    rt.stop(h, timeout_s=5)
    assert time.monotonic() - t0 < 2  # SIGTERM worked, no SIGKILL after the timeout
    assert not _group(h.pid)


ALLOC = "x = bytearray(300 * 1024 * 1024); import time; time.sleep(30)"


@pytest.mark.skipif(not cgroups_writable(), reason="no writable memory cgroup on this machine")
def test_memory_limit_cgroup_oom_kill(rt: NativeRuntime) -> None:
    h = rt.deploy("t-oom", spec(sys.executable, "-c", ALLOC, memory_mib=64))
    assert h.extra["memory_limit"] == "cgroup"
    mem_dir = Path(h.extra["cgroup_memory"])
    assert mem_dir.is_dir()
    obs = wait_terminal(rt, h, timeout=30)
    assert obs.state is TaskState.FAILED
    assert obs.oom_killed
    assert obs.exit_code == 137
    assert "memory limit exceeded" in obs.reason
    assert not mem_dir.exists()  # cgroup released once the result was recorded
    assert rt.status(h) == obs


def test_memory_limit_rlimit_fallback(tmp_path: Path) -> None:
    rt = NativeRuntime(tmp_path / "state", use_cgroups=False)
    assert "RLIMIT_AS" in rt.available()[1]
    h = rt.deploy("t-rlimit", spec(sys.executable, "-c", ALLOC, memory_mib=64))
    assert h.extra["memory_limit"] == "rlimit"
    obs = wait_terminal(rt, h, timeout=30)
    assert obs.state is TaskState.FAILED
    assert obs.exit_code == 1
    assert "memory limit exceeded" in obs.reason
    assert "MemoryError" in rt.logs(h)


@pytest.mark.skipif(not cgroups_writable(), reason="no writable cpu cgroup on this machine")
def test_cpu_limit_cgroup(rt: NativeRuntime) -> None:
    h = rt.deploy("t-cpu", spec("sh", "-c", "while :; do :; done", cpu=0.2))
    assert h.extra["cpu_limit"] == "cgroup"
    cpu_dir = Path(h.extra["cgroup_cpu"])
    if h.extra["cgroup_version"] == "1":
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "20000"
        throttled = lambda: "nr_throttled 0" not in (cpu_dir / "cpu.stat").read_text()  # noqa: E731
    else:
        assert (cpu_dir / "cpu.max").read_text().split()[0] == "20000"
        throttled = lambda: "nr_throttled 0" not in (cpu_dir / "cpu.stat").read_text()  # noqa: E731
    wait_for(throttled, what="CFS throttling")
    rt.status(h)  # primes cpu_percent
    start = time.monotonic()
    samples = []
    while time.monotonic() - start < 1.0:  # a measurement window, not a wait
        time.sleep(0.25)
        samples.append(rt.status(h).cpu_percent)
    assert max(samples) < 45, samples
    assert sum(samples) > 0, samples


def test_adopt_after_restart_and_exit_code_kept(rt: NativeRuntime, cgroup_parent: str) -> None:
    running = rt.deploy("t-adopt-run", spec("sh", "-c", "sleep 60"))
    gate = rt.task_dir("t-adopt-exit") / "go"
    exiting = rt.deploy(
        "t-adopt-exit", spec("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7")
    )
    # A new runtime on the same state dir: what a restarted engine builds.
    rt2 = NativeRuntime(rt.state_dir, cgroup_parent=cgroup_parent)
    found = {h.instance_id: h for h in rt2.adopt()}
    assert set(found) == {"t-adopt-run", "t-adopt-exit"}
    assert found["t-adopt-run"] == running
    assert rt2.status(found["t-adopt-run"]).state is TaskState.RUNNING
    gate.touch()
    obs = wait_terminal(rt2, found["t-adopt-exit"])
    assert (obs.state, obs.exit_code) == (TaskState.FAILED, 7)
    # A third restart still knows the exit code and still offers the finished task.
    rt3 = NativeRuntime(rt.state_dir, cgroup_parent=cgroup_parent)
    assert {h.instance_id for h in rt3.adopt()} == {"t-adopt-run", "t-adopt-exit"}
    assert rt3.status(exiting).exit_code == 7
    rt3.stop(running, timeout_s=2)
    assert {h.instance_id for h in rt3.adopt()} == {"t-adopt-exit"}


ENGINE = """
import json, sys, time
from pathlib import Path
from node_engine.runtimes.native import NativeRuntime
from schemas.job import TaskSpec
rt = NativeRuntime(Path(sys.argv[1]), cgroup_parent=sys.argv[2])
gate = Path(sys.argv[1]) / "gate"
a = rt.deploy("crash-run", TaskSpec(runtime="native", command=["sleep", "60"],
              resources={"memory_mib": 64}))
b = rt.deploy("crash-exit", TaskSpec(runtime="native",
              command=["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 5"]))
print(json.dumps([a.model_dump(), b.model_dump()]), flush=True)
time.sleep(120)
"""


def test_tasks_survive_engine_sigkill(tmp_path: Path, cgroup_parent: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, str(state), cgroup_parent],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert engine.stdout is not None
        line = engine.stdout.readline()
        handles = [TaskHandle.model_validate(d) for d in json.loads(line)]
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait()
    rt = NativeRuntime(state, cgroup_parent=cgroup_parent)
    try:
        found = {h.instance_id: h for h in rt.adopt()}
        assert set(found) == {"crash-run", "crash-exit"}
        run = found["crash-run"]
        assert run.pid is not None and psutil.Process(run.pid).ppid() != engine.pid
        assert rt.status(run).state is TaskState.RUNNING
        (state / "gate").touch()
        obs = wait_terminal(rt, found["crash-exit"])
        assert (obs.state, obs.exit_code) == (TaskState.FAILED, 5)
    finally:
        for h in handles:
            rt.stop(h, timeout_s=1)


def test_recycled_pid_is_not_adopted(rt: NativeRuntime) -> None:
    me = psutil.Process()
    d = rt.task_dir("t-recycled")
    d.mkdir(parents=True)
    fake = TaskHandle(
        instance_id="t-recycled",
        runtime=Runtime.NATIVE,
        pid=me.pid,  # alive, but not the process that was started
        pid_create_time=me.create_time() - 1000,
        log_path=str(d / "output.log"),
        exit_code_path=str(d / "exit_code"),
    )
    (d / "handle.json").write_text(fake.model_dump_json())
    assert rt.adopt() == []
    obs = rt.status(fake)
    assert obs.state is TaskState.FAILED
    assert "no exit code" in obs.reason
    rt.stop(fake, timeout_s=0.2)  # must not signal this (unrelated, live) process
    assert me.is_running()


def test_log_is_bounded(tmp_path: Path) -> None:
    limit = 64 * 1024
    rt = NativeRuntime(tmp_path / "state", max_log_bytes=limit)
    line = "x" * 90
    h = rt.deploy(
        "t-log",
        spec(
            "sh",
            "-c",
            f'i=0; while [ $i -lt 20000 ]; do echo "$i {line}"; i=$((i+1)); done; echo done',
        ),
    )
    log = Path(h.log_path or "")
    rotated = log.with_name(log.name + ".1")
    rotations = 0
    while not rt.status(h).state.terminal:
        if rotated.exists():
            assert rotated.stat().st_size <= limit
            rotations += 1
    rt.status(h)
    assert log.stat().st_size <= limit
    assert rotated.stat().st_size <= limit
    assert rt.logs(h, tail=1) == "done"
    assert rt.logs(h, tail=2).splitlines()[0] == f"19999 {line}"
    assert len(rt.logs(h, tail=300).splitlines()) == 300
    assert rotations > 0 or rotated.exists()


def test_stop_right_after_deploy_needs_no_sigkill(rt: NativeRuntime) -> None:
    for i in range(10):
        h = rt.deploy(f"t-quick-{i}", spec("sh", "-c", "sleep 60"))
        t0 = time.monotonic()
        rt.stop(h, timeout_s=5)
        assert time.monotonic() - t0 < 1, f"SIGTERM lost on round {i}"
        assert h.pid is not None and not _group(h.pid)


def test_redeploy_replaces_running_instance(rt: NativeRuntime) -> None:
    first = rt.deploy("t-again", spec("sleep", "60"))
    t0 = time.monotonic()
    second = rt.deploy("t-again", spec("sleep", "61"))
    assert time.monotonic() - t0 < 1
    assert first.pid is not None and not alive(first.pid)
    assert rt.status(second).state is TaskState.RUNNING
    assert [h.pid for h in rt.adopt()] == [second.pid]


def test_cgroup_v2_layout(tmp_path: Path) -> None:
    """The v2 code path writes the right files (on a directory tree shaped like cgroupfs)."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    support = cgroups.detect(mountinfo)
    assert support.version == 2 and support.unified_root == root
    cg = cgroups.create(support, "edge-tasks", "inst-1", 64 * 1024 * 1024, 0.5)
    assert cg is not None and cg.memory_dir == cg.cpu_dir == root / "edge-tasks" / "inst-1"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (root / "edge-tasks" / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (cg.memory_dir / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (cg.memory_dir / "cpu.max").read_text() == "50000 100000"
    (cg.memory_dir / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    again = cgroups.TaskCgroup.from_extra(cg.to_extra())
    assert again is not None and again.oom_kills() == 1 and again.memory_limit_hit()


def test_cgroup_detection_hybrid_prefers_v1(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    support = cgroups.detect(mountinfo)
    assert support.version == 1
    assert support.memory_root == Path("/sys/fs/cgroup/memory")
    assert support.cpu_root == Path("/sys/fs/cgroup/cpu,cpuacct")
    mountinfo.write_text("")
    assert not cgroups.detect(mountinfo).usable
