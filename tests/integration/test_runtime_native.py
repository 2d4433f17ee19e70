"""NativeRuntime against real processes, real cgroups (where writable) and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
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
from tests.harness.wait import wait_for, wait_terminal

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


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
        rmdir_tree(root / parent)


def rmdir_tree(d: Path) -> None:
    """Remove a cgroup directory and its sub-cgroups, deepest first (cgroupfs only
    allows rmdir; its control files go with their directory)."""
    if not d.is_dir():
        return
    for child in d.iterdir():
        if child.is_dir():
            rmdir_tree(child)
    d.rmdir()


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
    assert rt.logs(h2).strip() == str(rt.work_dir("t-env2"))


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


# ------------------------------------------------------------ several engines on one host

SLEEPER = ("sh", "-c", "sleep 300 & wait")


def _started(h: TaskHandle) -> list[psutil.Process]:
    """The task's processes once its sleep runs (wrapper, sh, sleep)."""

    def sleeping() -> list[psutil.Process] | None:
        g = _group(h.pid)
        return g if any(p.name() == "sleep" for p in g) else None

    return wait_for(sleeping, what=f"{h.instance_id} started")


def test_cgroup_parent_is_per_engine_and_stable(tmp_path: Path, cgroup_parent: str) -> None:
    a = NativeRuntime(tmp_path / "a", cgroup_parent=cgroup_parent)
    b = NativeRuntime(tmp_path / "b", cgroup_parent=cgroup_parent)
    assert a.cgroup_parent.startswith(f"{cgroup_parent}/")
    assert a.cgroup_parent != b.cgroup_parent
    # An engine restart (same state dir, or same engine id) finds the same parent.
    assert NativeRuntime(tmp_path / "a", cgroup_parent=cgroup_parent).cgroup_parent == (
        a.cgroup_parent
    )
    e = NativeRuntime(tmp_path / "c", engine_id="e0123456789abcdef", cgroup_parent=cgroup_parent)
    assert e.cgroup_parent == f"{cgroup_parent}/e0123456789abcdef"
    with pytest.raises(ValueError):
        NativeRuntime(tmp_path / "d", engine_id="../escape", cgroup_parent=cgroup_parent)


def test_two_engines_run_the_same_instance_id(tmp_path: Path, cgroup_parent: str) -> None:
    """Regression: an instance moved from engine A to engine B on one host, both with a
    memory limit; terminating A's old copy must leave B's copy running."""
    rt_a = NativeRuntime(tmp_path / "a", engine_id="eaaaaaaaaaaaaaaaa", cgroup_parent=cgroup_parent)
    rt_b = NativeRuntime(tmp_path / "b", cgroup_parent=cgroup_parent)  # scope from state dir
    ha = rt_a.deploy("moved-1", spec(*SLEEPER, memory_mib=64, cpu=0.5))
    hb = rt_b.deploy("moved-1", spec(*SLEEPER, memory_mib=64, cpu=0.5))
    try:
        if cgroups_writable():
            assert ha.extra["memory_limit"] == hb.extra["memory_limit"] == "cgroup"
            assert ha.extra["cgroup_memory"] != hb.extra["cgroup_memory"]
            assert rt_a.cgroup_parent in ha.extra["cgroup_memory"]
            assert rt_b.cgroup_parent in hb.extra["cgroup_memory"]
        a_procs, b_procs = _started(ha), _started(hb)
        rt_a.stop(ha, timeout_s=5)
        assert not any(alive(p.pid) for p in a_procs)
        assert all(alive(p.pid) for p in b_procs), b_procs
        assert rt_b.status(hb).state is TaskState.RUNNING
        if cgroups_writable():
            assert Path(hb.extra["cgroup_memory"]).is_dir()
            assert not Path(ha.extra["cgroup_memory"]).exists()
        assert [h.instance_id for h in rt_b.adopt()] == ["moved-1"]
        rt_b.stop(hb, timeout_s=5)
        assert not any(alive(p.pid) for p in b_procs)
    finally:
        rt_a.stop(ha, timeout_s=1)
        rt_b.stop(hb, timeout_s=1)


@pytest.mark.skipif(not cgroups_writable(), reason="no writable memory cgroup on this machine")
def test_stop_spares_another_task_in_its_cgroup(tmp_path: Path, cgroup_parent: str) -> None:
    """Cgroups made before per-engine parents (`edge-tasks/<instance>`) could be shared by
    two engines' copies of one instance: stop() signals only the cgroup processes that
    belong to its task (not in another task wrapper's session, not older than its own)."""
    rt_a = NativeRuntime(tmp_path / "a", cgroup_parent=cgroup_parent)
    rt_b = NativeRuntime(tmp_path / "b", cgroup_parent=cgroup_parent)
    ha = rt_a.deploy("shared-1", spec(*SLEEPER, memory_mib=64))
    hb = rt_b.deploy("shared-1", spec(*SLEEPER, memory_mib=64))
    try:
        a_procs, b_procs = _started(ha), _started(hb)
        a_cg = cgroups.TaskCgroup.from_extra(ha.extra)
        assert a_cg is not None
        for d in a_cg.dirs:  # put B's copy into A's cgroup, as the old layout did
            for p in b_procs:
                (d / "cgroup.procs").write_text(str(p.pid))
        assert {p.pid for p in b_procs} <= set(a_cg.pids())
        rt_a.stop(ha, timeout_s=5)
        assert not any(alive(p.pid) for p in a_procs)
        assert all(alive(p.pid) for p in b_procs), b_procs
        assert rt_b.status(hb).state is TaskState.RUNNING
        rt_b.stop(hb, timeout_s=5)
        assert not any(alive(p.pid) for p in b_procs)
    finally:
        rt_a.stop(ha, timeout_s=1)
        rt_b.stop(hb, timeout_s=1)


@pytest.mark.skipif(not cgroups_writable(), reason="no writable memory cgroup on this machine")
def test_busy_cgroup_directory_is_not_shared(tmp_path: Path, cgroup_parent: str) -> None:
    """Two runtimes forced onto one engine scope get distinct task cgroups."""
    rt_a = NativeRuntime(tmp_path / "a", engine_id="esame", cgroup_parent=cgroup_parent)
    rt_b = NativeRuntime(tmp_path / "b", engine_id="esame", cgroup_parent=cgroup_parent)
    ha = rt_a.deploy("same-1", spec(*SLEEPER, memory_mib=64))
    hb = rt_b.deploy("same-1", spec(*SLEEPER, memory_mib=64))
    try:
        assert Path(hb.extra["cgroup_memory"]) == Path(ha.extra["cgroup_memory"] + ".1")
        b_procs = _started(hb)
        rt_a.stop(ha, timeout_s=5)
        assert all(alive(p.pid) for p in b_procs)
    finally:
        rt_a.stop(ha, timeout_s=1)
        rt_b.stop(hb, timeout_s=1)


@pytest.mark.skipif(not cgroups_writable(), reason="no writable memory cgroup on this machine")
def test_daemon_escaped_from_group_is_counted_and_stopped(rt: NativeRuntime) -> None:
    """A process that left the task's session (setsid) is still the task's in its cgroup."""
    h = rt.deploy("t-daemon", spec("sh", "-c", "setsid sleep 302 & sleep 303", memory_mib=64))

    def escaped() -> psutil.Process | None:
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] == ["sleep", "302"] and os.getsid(p.pid) != h.pid:
                return p
        return None

    daemon = wait_for(escaped, what="escaped daemon")
    cg = cgroups.TaskCgroup.from_extra(h.extra)
    assert cg is not None and daemon.pid in cg.pids()
    rt.stop(h, timeout_s=5)
    assert not alive(daemon.pid)


# ------------------------------------------------------------ status(): cost and usage

BUSY = "import time\nx = bytearray(80 * 1024 * 1024)\nwhile True: pass"


def test_status_usage_covers_grandchildren_without_cgroup(rt: NativeRuntime) -> None:
    """No limits, so no cgroup: CPU and memory come from the whole process group."""
    h = rt.deploy("t-usage", spec("sh", "-c", f"sh -c '{sys.executable} -c \"{BUSY}\"' & wait"))
    assert "cgroup_memory" not in h.extra

    def busy() -> TaskObservation | None:
        time.sleep(0.3)  # past the shared-scan TTL and the CPU sampling interval
        obs = rt.status(h)
        return obs if obs.cpu_percent > 20 and obs.memory_mib > 80 else None

    obs = wait_for(busy, timeout=30, what="grandchild's CPU and memory in status()")
    assert obs.state is TaskState.RUNNING
    assert obs.cpu_percent < 100 * (psutil.cpu_count() or 1) + 10
    rt.pause(h)
    assert rt.status(h).state is TaskState.PAUSED
    rt.resume(h)
    assert rt.status(h).state is TaskState.RUNNING
    rt.stop(h, timeout_s=5)
    assert rt.status(h).state is TaskState.TERMINATED


def test_status_calls_of_one_tick_share_one_proc_scan(
    rt: NativeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node_engine.runtimes.native as native

    scans: list[object] = []

    class CountingScan(native._ProcScan):
        def __init__(self) -> None:
            super().__init__()
            scans.append(self)

    monkeypatch.setattr(native, "_ProcScan", CountingScan)
    handles = [rt.deploy(f"t-scan-{i}", spec(*SLEEPER)) for i in range(5)]
    for h in handles:
        _started(h)
    time.sleep(native.PROC_SCAN_TTL_S + 0.05)
    scans.clear()
    observations = [rt.status(h) for h in handles]
    assert len(scans) == 1
    assert all(o.state is TaskState.RUNNING and o.memory_mib > 0 for o in observations)
    # An exit is seen at once, whatever the age of the shared scan.
    rt.stop(handles[0], timeout_s=5)
    assert rt.status(handles[0]).state is TaskState.TERMINATED
    os.killpg(handles[1].pid or 0, signal.SIGKILL)
    wait_for(lambda: rt.status(handles[1]).state.terminal, what="killed task seen finished")


def test_concurrent_deploys_and_stops_from_worker_threads(rt: NativeRuntime) -> None:
    """The engine calls deploy/stop from its worker pool while its loop thread calls
    status() on other tasks: one runtime object must take that."""
    from concurrent.futures import ThreadPoolExecutor

    steady = [rt.deploy(f"t-steady{i}", spec("sleep", "60")) for i in range(2)]
    specs = {
        f"t-par{i}": spec("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done")
        if i % 2
        else spec("sleep", "60")
        for i in range(12)
    }

    def watch_steady_while(futures: list) -> int:  # type: ignore[type-arg]
        looks = 0
        while not all(f.done() for f in futures):
            for h in steady:
                assert rt.status(h).state is TaskState.RUNNING
            looks += 1
        return looks

    with ThreadPoolExecutor(4) as pool:
        deploys = [pool.submit(rt.deploy, iid, s) for iid, s in specs.items()]
        assert watch_steady_while(deploys) > 0
        handles = [f.result() for f in deploys]
        assert len({h.pid for h in handles}) == 12
        for h in handles:
            assert rt.status(h).state is TaskState.RUNNING
        for h in handles[1::2]:
            wait_for(lambda h=h: "ready" in rt.logs(h), what="trap installed")
        started = time.monotonic()
        stops = [pool.submit(rt.stop, h, 0.5) for h in handles]
        assert watch_steady_while(stops) > 0
        for f in stops:
            f.result()
    assert time.monotonic() - started < 10  # 0.5 s grace each, 4 at a time
    for h in handles:
        assert h.pid is not None and not _group(h.pid)
        assert rt.status(h).state is TaskState.TERMINATED
    assert {h.instance_id for h in rt.adopt()} == {h.instance_id for h in steady}
