"""The pure parts of the native policy (node_engine/runtimes/native_policy.py) and the
state-directory modes it needs; the real-process tests are in
tests/integration/test_native_security.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node_engine.runtimes.native_policy import (
    NativeGuard,
    PolicyRefusal,
    RunAs,
    guarded_env_name,
    may_access,
    within,
)
from node_engine.startup import prepare_state_dir


def test_within_compares_whole_components() -> None:
    assert within("/srv/jobs", "/srv/jobs") and within("/srv/jobs/a/b", "/srv/jobs/")
    assert not within("/srv/jobsx", "/srv/jobs") and not within("/srv", "/srv/jobs")
    assert within("/anything", "/")


def test_guarded_environment_names() -> None:
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PATH", "GCONV_PATH"):
        assert guarded_env_name(name)
    for name in ("HOME", "LANG", "PYTHONPATH", "MY_LD_THING", "path"):
        assert not guarded_env_name(name)


def test_filter_env_keeps_allowed_globs_and_counts_drops() -> None:
    guard = NativeGuard(allow_env=["LD_LIBRARY_*"])
    kept, dropped = guard.filter_env(
        {"LD_PRELOAD": "x", "LD_LIBRARY_PATH": "/opt/lib", "PATH": "/evil", "A": "1"}
    )
    assert kept == {"LD_LIBRARY_PATH": "/opt/lib", "A": "1"}
    assert sorted(dropped) == ["LD_PRELOAD", "PATH"]
    assert guard.refusals["native_allow_env_overrides"] == 1
    assert guard.filter_env({"A": "1"}) == ({"A": "1"}, [])
    assert guard.refusals["native_allow_env_overrides"] == 1


def test_may_access_by_owner_group_other(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    other = RunAs(uid=st.st_uid + 1, gid=st.st_gid + 1, groups=(st.st_gid + 1,), name="x")
    os.chmod(tmp_path, 0o750)
    assert not may_access(os.stat(tmp_path), other, 1)
    member = RunAs(uid=st.st_uid + 1, gid=5, groups=(5, st.st_gid), name="m")
    assert may_access(os.stat(tmp_path), member, 5) and not may_access(os.stat(tmp_path), member, 2)
    os.chmod(tmp_path, 0o711)
    assert may_access(os.stat(tmp_path), other, 1) and not may_access(os.stat(tmp_path), other, 4)
    assert may_access(os.stat(tmp_path), RunAs(0, 0, (0,), "root"), 7)


def test_command_globs_match_the_path_or_its_target(tmp_path: Path) -> None:
    guard = NativeGuard(allowed_commands=["/opt/apps/*", "/usr/bin/true"])
    link = tmp_path / "t"
    link.symlink_to("/usr/bin/true")
    guard.check_command(str(link), None)  # its target is allowed
    guard.check_command("/opt/apps/bin/x", None)  # * crosses /
    with pytest.raises(PolicyRefusal) as info:
        guard.check_command("/opt/apps/../../usr/bin/id", None)  # normalized first
    assert info.value.setting == "native_allowed_commands"
    assert "/usr/bin/id" in info.value.reason


def test_state_dir_is_traversable_only_for_a_run_as_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    (state / "loose.json").write_text("{}")
    (state / "loose.json").chmod(0o644)
    (state / "native").mkdir(mode=0o755)
    prepare_state_dir(state, traversable=True)
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    assert stat.S_IMODE((state / "docker").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "loose.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "native").stat().st_mode) == 0o755  # the runtime's own
    prepare_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
