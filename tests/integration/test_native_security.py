"""Native tasks under the node's policy, with real processes: the run-as user, the
command and working-directory allow-lists, the guarded environment names, the root
opt-in (node_engine/runtimes/native_policy.py, docs/node-engine.md "security").

The tests that switch users need the engine side to be root and the unprivileged user
of scripts/setup.sh (``edge-task``) to exist; CI runs `make test` as root after
setup.sh, so they run there. The node-engine test at the end runs a real engine
process with its default settings.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from pathlib import Path

import pytest

from node_engine.runtimes.base import RuntimeFailure
from node_engine.runtimes.native import SAFE_PATH, NativeRuntime
from node_engine.runtimes.native_policy import (
    DEFAULT_RUN_AS,
    NativeGuard,
    PolicyRefusal,
    resolve_run_as,
)
from schemas.common import Runtime
from schemas.job import TaskSpec, TaskState
from schemas.resources import Resources
from tests.harness.wait import wait_terminal


def _task_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(DEFAULT_RUN_AS)
    except KeyError:
        return None


TASK_USER = _task_user()
needs_switch = pytest.mark.skipif(
    os.geteuid() != 0 or TASK_USER is None,
    reason=f"switching users needs root and the user {DEFAULT_RUN_AS} (scripts/setup.sh)",
)


def spec(*argv: str, **kw: object) -> TaskSpec:
    return TaskSpec(runtime=Runtime.NATIVE, command=list(argv), **kw)  # type: ignore[arg-type]


@pytest.fixture
def runtimes(tmp_path: Path):
    made: list[NativeRuntime] = []

    def make(guard: NativeGuard, name: str = "state") -> NativeRuntime:
        rt = NativeRuntime(tmp_path / name, guard=guard)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        for h in rt.adopt():
            rt.stop(h, timeout_s=2)


@needs_switch
def test_task_runs_as_the_unprivileged_user_with_its_groups_only(runtimes) -> None:
    rt = runtimes(NativeGuard(DEFAULT_RUN_AS))
    assert TASK_USER is not None
    script = "id -u > uid.txt; grep CapEff /proc/self/status; id -u; id -G; echo home=$HOME"
    h = rt.deploy("who", spec("sh", "-c", script))
    obs = wait_terminal(rt, h)
    assert obs.state is TaskState.SUCCEEDED, rt.logs(h)
    written = (rt.work_dir("who") / "uid.txt").read_text().strip()
    assert written == str(TASK_USER.pw_uid) != "0"
    caps, uid, groups, home = rt.logs(h).splitlines()[-4:]
    assert caps.split() == ["CapEff:", "0" * 16]  # no capabilities left either
    assert uid == str(TASK_USER.pw_uid)
    assert "0" not in groups.split()  # root's supplementary groups are dropped
    assert home == f"home={rt.work_dir('who')}"
    own = rt.work_dir("who").stat()
    assert (own.st_uid, own.st_mode & 0o777) == (TASK_USER.pw_uid, 0o700)
    assert (rt.tasks_dir.stat().st_mode & 0o777) == 0o700  # logs, handles, exit codes
    assert h.extra["run_as"] == f"{TASK_USER.pw_uid}:{TASK_USER.pw_gid}"


@needs_switch
def test_task_in_a_cgroup_runs_unprivileged_and_is_placed_by_the_engine(runtimes) -> None:
    rt = runtimes(NativeGuard(DEFAULT_RUN_AS))
    if rt.limits_mode() == "rlimit":
        pytest.skip(f"no writable cgroup hierarchy here ({rt.available()[1]})")
    h = rt.deploy(
        "cg",
        spec(
            sys.executable,
            "-c",
            "import os; print(os.getuid()); print(open('/proc/self/cgroup').read())",
            resources=Resources(memory_mib=64),
        ),
    )
    obs = wait_terminal(rt, h)
    assert obs.state is TaskState.SUCCEEDED, rt.logs(h)
    out = rt.logs(h)
    assert out.splitlines()[0] == str(TASK_USER.pw_uid)  # type: ignore[union-attr]
    assert "/cg" in out and rt.cgroup_scope in out  # in its own task cgroup
    assert h.extra["memory_limit"] == "cgroup"


@needs_switch
def test_explicit_root_opt_in_runs_as_root_and_warns(runtimes) -> None:
    guard = NativeGuard("root")
    assert not guard.switches
    assert any(level == logging.WARNING and "root" in text for level, text in guard.describe())
    rt = runtimes(guard)
    h = rt.deploy("root", spec("sh", "-c", "id -u"))
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED
    assert rt.logs(h).strip() == "0"


def test_missing_run_as_user_fails_deploys_with_the_reason(runtimes) -> None:
    guard = NativeGuard("no-such-user-xyz", euid=0)
    assert guard.error and "no-such-user-xyz" in guard.error
    assert any(level == logging.ERROR for level, _ in guard.describe())
    rt = runtimes(guard)
    with pytest.raises(PolicyRefusal, match="native_run_as: user 'no-such-user-xyz' does not"):
        rt.deploy("nouser", spec("true"))
    assert guard.refusals["native_run_as"] == 1
    assert rt.adopt() == []


def test_engine_that_is_not_root_runs_tasks_as_itself_and_says_so() -> None:
    guard = NativeGuard(DEFAULT_RUN_AS, euid=12345)
    assert not guard.switches and guard.error is None
    (first, *_) = guard.describe()
    assert "cannot switch" in first[1] and "uid 12345" in first[1]


def test_run_as_values_resolve() -> None:
    assert resolve_run_as("0").uid == 0
    numeric = resolve_run_as("54321:54322")
    assert (numeric.uid, numeric.gid, numeric.groups) == (54321, 54322, (54322,))
    with pytest.raises(LookupError, match="user 'nobody-here-xyz' does not exist"):
        resolve_run_as("nobody-here-xyz")


def test_command_outside_the_allow_list_is_refused_and_counted(runtimes, tmp_path) -> None:
    guard = NativeGuard(allowed_commands=["/usr/bin/true", "/opt/edge/*"])
    rt = runtimes(guard)
    with pytest.raises(PolicyRefusal, match=r"command /usr/bin/sh .*native_allowed_commands"):
        rt.deploy("sh", spec("sh", "-c", "echo no"))
    with pytest.raises(PolicyRefusal, match="native_allowed_commands"):
        rt.deploy("abs", spec("/bin/echo", "no"))
    assert guard.refusals["native_allowed_commands"] == 2
    assert not (rt.task_dir("sh") / "output.log").exists()  # nothing ran
    h = rt.deploy("ok", spec("true"))
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED
    # a symlink to an allowed program matches by its target
    link = tmp_path / "my-true"
    link.symlink_to("/usr/bin/true")
    h = rt.deploy("link", spec(str(link)))
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED


@needs_switch
def test_workdir_escapes_are_refused(runtimes, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for d in (allowed, allowed / "sub", outside):
        d.chmod(0o777)
    (allowed / "link").symlink_to(outside)
    guard = NativeGuard(DEFAULT_RUN_AS, allowed_workdirs=[str(allowed)])
    rt = runtimes(guard)
    for i, bad in enumerate(
        [str(allowed / ".." / "outside"), str(allowed / "link"), str(tmp_path / "allowedx")]
    ):
        if bad.endswith("allowedx"):
            Path(bad).mkdir(mode=0o777)
        with pytest.raises(PolicyRefusal, match="outside native_allowed_workdirs"):
            rt.deploy(f"esc{i}", spec("sh", "-c", "pwd", workdir=bad))
    assert guard.refusals["native_allowed_workdirs"] == 3
    h = rt.deploy(
        "inside", spec("sh", "-c", "pwd; id -u > made-here", workdir=str(allowed / "sub"))
    )
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED, rt.logs(h)
    assert rt.logs(h).strip() == str(allowed / "sub")
    assert (allowed / "sub" / "made-here").read_text().strip() == str(TASK_USER.pw_uid)  # type: ignore[union-attr]
    # a directory the run-as user may not enter is refused before anything starts
    closed = allowed / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(PolicyRefusal, match="not accessible to the run-as user"):
        rt.deploy("closed", spec("true", workdir=str(closed)))


def test_default_policy_allows_only_the_task_own_directory(runtimes, tmp_path: Path) -> None:
    rt = runtimes(NativeGuard("root", allowed_workdirs=[]))
    with pytest.raises(PolicyRefusal, match=r"outside native_allowed_workdirs \(none"):
        rt.deploy("tmp", spec("true", workdir=str(tmp_path)))
    own = rt.work_dir("own")
    own.mkdir(parents=True)
    h = rt.deploy("own", spec("sh", "-c", "pwd", workdir=str(own)))
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED
    with pytest.raises(RuntimeFailure, match="does not exist"):
        rt.deploy("gone", spec("true", workdir=str(rt.work_dir("gone") / "nope")))


def test_ld_preload_and_path_from_the_job_do_not_reach_the_task(runtimes, tmp_path) -> None:
    guard = NativeGuard(DEFAULT_RUN_AS if os.geteuid() == 0 and TASK_USER else None)
    rt = runtimes(guard)
    env = {
        "LD_PRELOAD": str(tmp_path / "evil.so"),
        "LD_LIBRARY_PATH": str(tmp_path),
        "PATH": str(tmp_path),
        "GREETING": "hi",
    }
    (tmp_path / "sh").write_text("#!/bin/sh\necho hijacked\n")
    (tmp_path / "sh").chmod(0o755)
    script = (
        'echo "pre=${LD_PRELOAD:-unset} lib=${LD_LIBRARY_PATH:-unset} g=$GREETING"; echo "$PATH"'
    )
    h = rt.deploy("env", spec("sh", "-c", script, env=env))
    assert wait_terminal(rt, h).state is TaskState.SUCCEEDED
    lines = rt.logs(h).splitlines()
    assert lines[0].startswith("edge: dropped environment LD_LIBRARY_PATH, LD_PRELOAD, PATH")
    assert lines[1:] == ["pre=unset lib=unset g=hi", SAFE_PATH]
    assert h.extra["env_dropped"] == "LD_LIBRARY_PATH,LD_PRELOAD,PATH"
    assert guard.refusals["native_allow_env_overrides"] == 1

    allowing = NativeGuard(allow_env=["LD_LIBRARY_PATH"])
    rt2 = runtimes(allowing, "state2")
    h = rt2.deploy("env2", spec("sh", "-c", script, env=env))
    assert wait_terminal(rt2, h).state is TaskState.SUCCEEDED
    assert f"pre=unset lib={tmp_path} g=hi" in rt2.logs(h)


# ---------------------------------------------------------------- a real engine process


@pytest.mark.broker
@pytest.mark.slow
@needs_switch
def test_node_engine_defaults_run_tasks_unprivileged_and_refuse_by_policy(
    mosquitto_broker, tmp_path
) -> None:
    from tests.harness import FakeCluster

    with FakeCluster(mosquitto_broker) as cluster:
        engine = cluster.engine(
            tmp_path / "node", extra_args=["--native-allowed-commands", "/bin/sh,/usr/bin/sh"]
        )
        svc, node_id = cluster.service, engine.node_id
        svc.deploy(
            node_id,
            "who",
            spec("sh", "-c", "id -u; echo pre=${LD_PRELOAD:-unset}", env={"LD_PRELOAD": "/x.so"}),
        )
        assert cluster.wait_state(engine, "who", TaskState.SUCCEEDED)
        log = (tmp_path / "node" / "native" / "tasks" / "who" / "output.log").read_text()
        assert log.splitlines()[1:] == [str(TASK_USER.pw_uid), "pre=unset"]  # type: ignore[union-attr]
        cid = svc.deploy(node_id, "py", spec("/usr/bin/env", "true"))
        ack = svc.wait_ack(node_id, cid)
        assert not ack.payload.accepted and "native_allowed_commands" in ack.payload.reason
        failed = cluster.wait_state(engine, "py", TaskState.FAILED)
        assert "is not allowed on this node (native_allowed_commands" in failed.payload.reason
        out = engine.output()
        assert f"native tasks run as {DEFAULT_RUN_AS} (uid {TASK_USER.pw_uid}" in out  # type: ignore[union-attr]
        assert "native deploy refused" in out
        mode = (tmp_path / "node").stat().st_mode & 0o777
        assert mode == 0o711  # traversable to the task's own directory, not listable
