"""node_engine.cgroups on fake cgroupfs trees: per-engine scope, never sharing a busy cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_engine import cgroups


def v1_support(tmp_path: Path) -> cgroups.CgroupSupport:
    mountinfo = tmp_path / "mountinfo"
    mem, cpu = tmp_path / "memory", tmp_path / "cpu,cpuacct"
    mem.mkdir()
    cpu.mkdir()
    mountinfo.write_text(
        f"35 31 0:32 / {mem} rw - cgroup cgroup rw,memory\n"
        f"32 31 0:29 / {cpu} rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    support = cgroups.detect(mountinfo)
    assert support.version == 1
    return support


def v2_support(tmp_path: Path) -> cgroups.CgroupSupport:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    support = cgroups.detect(mountinfo)
    assert support.version == 2
    return support


def test_engine_scope_from_engine_id_or_state_dir(tmp_path: Path) -> None:
    assert cgroups.engine_scope("e0123abcd", tmp_path / "a") == "e0123abcd"
    a = cgroups.engine_scope(None, tmp_path / "a")
    assert a == cgroups.engine_scope(None, tmp_path / "a")  # stable across restarts
    assert a == cgroups.engine_scope(None, tmp_path / "x" / ".." / "a")  # resolved path
    assert a != cgroups.engine_scope(None, tmp_path / "b")
    assert cgroups.check_parent(f"edge-tasks/{a}") == f"edge-tasks/{a}"
    for bad in ("a/b", "..", ".", "", "with space"):
        with pytest.raises(ValueError):
            cgroups.engine_scope(bad, tmp_path)


def test_v1_task_cgroup_under_engine_scope(tmp_path: Path) -> None:
    support = v1_support(tmp_path)
    cg = cgroups.create(support, "edge-tasks/eA", "inst-1", 64 * 1024 * 1024, 0.5)
    assert cg is not None
    assert cg.memory_dir == tmp_path / "memory" / "edge-tasks" / "eA" / "inst-1"
    assert cg.cpu_dir == tmp_path / "cpu,cpuacct" / "edge-tasks" / "eA" / "inst-1"
    assert (cg.memory_dir / "memory.limit_in_bytes").read_text() == str(64 * 1024 * 1024)
    assert (cg.cpu_dir / "cpu.cfs_quota_us").read_text() == "50000"
    other = cgroups.create(support, "edge-tasks/eB", "inst-1", 64 * 1024 * 1024, None)
    assert other is not None and other.memory_dir != cg.memory_dir


def test_v2_controllers_enabled_along_the_scoped_parent(tmp_path: Path) -> None:
    support = v2_support(tmp_path)
    root = tmp_path / "unified"
    cg = cgroups.create(support, "edge-tasks/eA", "inst-1", 64 * 1024 * 1024, 0.5)
    assert cg is not None and cg.memory_dir == cg.cpu_dir == root / "edge-tasks" / "eA" / "inst-1"
    for d in (root, root / "edge-tasks", root / "edge-tasks" / "eA"):
        assert (d / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (cg.memory_dir / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (cg.memory_dir / "cpu.max").read_text() == "50000 100000"


def test_empty_directory_is_reused_busy_one_is_not(tmp_path: Path) -> None:
    support = v1_support(tmp_path)
    first = cgroups.create(support, "edge-tasks/eA", "inst-1", 64 * 1024 * 1024, None)
    assert first is not None and first.memory_dir is not None
    (first.memory_dir / "cgroup.procs").write_text("")  # empty: a previous, finished run
    again = cgroups.create(support, "edge-tasks/eA", "inst-1", 32 * 1024 * 1024, None)
    assert again is not None and again.memory_dir == first.memory_dir
    assert (first.memory_dir / "memory.limit_in_bytes").read_text() == str(32 * 1024 * 1024)

    # Still holding a process (in either hierarchy): the new task gets its own directory.
    assert first.cpu_dir is not None
    (first.cpu_dir / "cgroup.procs").write_text("4242\n")
    busy = cgroups.create(support, "edge-tasks/eA", "inst-1", 64 * 1024 * 1024, None)
    assert busy is not None
    assert busy.memory_dir == first.memory_dir.with_name("inst-1.1")
    assert busy.cpu_dir == first.cpu_dir.with_name("inst-1.1")
    assert (first.cpu_dir / "cgroup.procs").read_text() == "4242\n"  # left alone
    assert cgroups.free_name(support, "edge-tasks/eA", "inst-1") == "inst-1.1"
