"""`edgectl local`: the stored plan, readiness from the root's view, the lock, process records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edgectl import local
from edgectl.client import EdgectlError
from schemas.root_api import ClusterView
from tests.unit import edgectl_docs


def test_new_plan_names_ports_tokens(tmp_path: Path) -> None:
    plan, resumed = local.resolve_plan(tmp_path, clusters=2, nodes=3, store=None)
    assert not resumed
    assert [c.name for c in plan.clusters] == ["c1", "c2"]
    assert [n.name for n in plan.clusters[1].nodes] == ["c2-n1", "c2-n2", "c2-n3"]
    assert plan.clusters[0].nodes[0].labels == {"site": "c1", "camera": "yes"}
    assert plan.clusters[0].nodes[1].labels == {"site": "c1", "camera": "no"}
    ports = [plan.root_port] + [p for c in plan.clusters for p in (c.port, c.broker_port)]
    assert len(set(ports)) == len(ports) == 5
    secrets = [plan.operator_token, plan.registration_token] + [
        s for c in plan.clusters for s in (c.operator_token, c.join_token, c.broker_admin_password)
    ]
    assert len(set(secrets)) == len(secrets) and all(len(s) >= 16 for s in secrets)
    assert plan.store == "sqlite"
    assert plan.node_count == 6
    path = tmp_path / local.SYSTEM_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["root_port"] == plan.root_port


class _Quiet:
    def update(self, phase: str, done: int, total: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def test_launch_plan_lists_every_service_with_its_own_secrets(tmp_path: Path) -> None:
    """The build half of `LocalSystem.start`: what would run, nothing started."""
    import threading

    plan, _ = local.resolve_plan(tmp_path, clusters=2, nodes=2, store=None)
    layout = local.Layout(tmp_path)
    system = local.LocalSystem(layout, plan, progress=_Quiet(), stop=threading.Event())
    launch = system.launch_plan()
    assert [s.name for s in launch.all()] == [
        "root",
        "cluster-c1",
        "cluster-c2",
        "node-c1-n1",
        "node-c1-n2",
        "node-c2-n1",
        "node-c2-n2",
    ]
    assert [s.kind for s in launch.all()] == ["root"] + ["cluster"] * 2 + ["node"] * 4
    assert launch.root.url == plan.root_url
    assert launch.root.env["EDGE_OPERATOR_TOKENS"] == plan.operator_token
    assert launch.root.cwd == layout.root_dir
    for spec, c in zip(launch.clusters, plan.clusters, strict=True):
        assert spec.url == c.url
        assert spec.env["EDGE_JOIN_TOKEN"] == c.join_token
        assert spec.env["EDGE_REGISTRATION_TOKEN"] == plan.registration_token
        assert spec.cwd == layout.cluster_dir(c.name)
    c2 = plan.clusters[1]
    node = launch.nodes[2]
    assert node.env["EDGE_NODE_JOIN_TOKEN"] == c2.join_token
    assert node.argv[node.argv.index("--cluster-url") + 1] == c2.url
    assert node.cwd == layout.node_dir("c2-n1")
    # secrets go through the environment, never the argv (visible in ps)
    for spec in launch.all():
        assert not {plan.operator_token, c2.join_token} & set(spec.argv)
    assert not (tmp_path / "logs").exists()  # nothing was started or written


def test_resume_keeps_everything_and_refuses_another_shape(tmp_path: Path) -> None:
    first, _ = local.resolve_plan(tmp_path, clusters=1, nodes=2, store=None, root_port=None)
    again, resumed = local.resolve_plan(tmp_path, clusters=None, nodes=None, store=None)
    assert resumed
    assert again.to_doc() == first.to_doc()
    same, _ = local.resolve_plan(tmp_path, clusters=1, nodes=2, store=None)
    assert same.to_doc() == first.to_doc()
    with pytest.raises(EdgectlError, match=r"holds a system of 1 cluster\(s\) x 2 node\(s\)"):
        local.resolve_plan(tmp_path, clusters=2, nodes=None, store=None)
    with pytest.raises(EdgectlError):
        local.resolve_plan(tmp_path, clusters=None, nodes=3, store=None)
    with pytest.raises(EdgectlError, match="listens on port"):
        local.resolve_plan(tmp_path, clusters=None, nodes=None, store=None, root_port=1)
    mongo, _ = local.resolve_plan(tmp_path, clusters=None, nodes=None, store="mongodb://m/edge")
    assert mongo.store == "mongodb://m/edge"
    assert local.resolve_plan(tmp_path, clusters=None, nodes=None, store=None)[0].store == (
        "mongodb://m/edge"
    )


def test_unreadable_system_file(tmp_path: Path) -> None:
    (tmp_path / local.SYSTEM_FILE).write_text("{not json")
    with pytest.raises(EdgectlError, match="unreadable"):
        local.resolve_plan(tmp_path, clusters=None, nodes=None, store=None)


def test_data_dir_with_whitespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgectlError, match="must not contain whitespace"):
        local.resolve_plan(tmp_path / "a b", clusters=None, nodes=None, store=None)


def test_store_url(tmp_path: Path) -> None:
    layout = local.Layout(tmp_path)
    assert layout.store_url("sqlite") == f"sqlite:///{tmp_path}/root/root.db"
    assert layout.store_url("mongodb://m:27017/edge") == "mongodb://m:27017/edge"


def _cluster(name: str, liveness: str = "READY", ready: int | None = None) -> ClusterView:
    doc: dict[str, object] = {"name": name, "liveness": liveness}
    if ready is not None:
        doc["report"] = {"nodes_by_liveness": {"READY": ready, "NOT_READY": 1}}
    return edgectl_docs.cluster(doc)


def test_readiness(tmp_path: Path) -> None:
    plan = local.new_plan(2, 2, "sqlite")
    assert local.readiness([], plan) == (
        0,
        4,
        "cluster c1 not registered; cluster c2 not registered",
    )
    assert local.readiness([_cluster("c1", ready=2), _cluster("c2", "UNREACHABLE", 2)], plan) == (
        2,
        4,
        "cluster c2 UNREACHABLE",
    )
    assert local.readiness([_cluster("c1", ready=1), _cluster("c2")], plan) == (
        1,
        4,
        "cluster c1: 1/2 nodes ready; cluster c2: 0/2 nodes ready",
    )
    assert local.readiness([_cluster("c1", ready=2), _cluster("c2", ready=3)], plan) == (4, 4, "")


def test_lock_is_exclusive(tmp_path: Path) -> None:
    a, b = local.DataDirLock(tmp_path), local.DataDirLock(tmp_path)
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from edgectl.local import DataDirLock;"
        f"lock = DataDirLock(Path({str(tmp_path)!r})); assert lock.acquire(); "
        "print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert not local.DataDirLock(tmp_path).acquire()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    mine = local.DataDirLock(tmp_path)
    assert mine.acquire()  # released when its holder exited
    mine.release()


def test_terminate_records_stops_a_process_group_and_checks_identity(tmp_path: Path) -> None:
    # a group leader with a child that ignores nothing: both must go
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 600 & wait"], start_new_session=True, cwd=tmp_path
    )

    created = psutil.Process(proc.pid).create_time()
    record = {"name": "x", "kind": "node", "pid": proc.pid, "create_time": created}
    # a record whose create time does not match is someone else's process: untouched
    stranger = {**record, "create_time": created - 100}
    assert local.terminate_records([stranger], timeout=1) == []
    assert proc.poll() is None
    deadline = time.monotonic() + 30
    while not (children := psutil.Process(proc.pid).children()):
        assert time.monotonic() < deadline, "the shell did not start its child"
        time.sleep(0.05)
    assert local.terminate_records([record], timeout=10, popens={proc.pid: proc}) == []
    assert proc.returncode == -signal.SIGTERM
    for child in children:
        child.wait(10)  # gone (psutil.TimeoutExpired otherwise)


def test_leftover_processes_finds_tasks_by_their_directory(tmp_path: Path) -> None:
    work = tmp_path / "nodes" / "c1-n1" / "native" / "work" / "t"
    work.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "600"], cwd=work)
    try:
        assert [p.pid for p in local.leftover_processes(tmp_path)] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert local.leftover_processes(tmp_path) == []


def test_down_without_a_system(tmp_path: Path) -> None:
    with pytest.raises(EdgectlError, match="no local system"):
        local.down(tmp_path)
