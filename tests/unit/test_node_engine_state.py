"""Local state: atomic files, seen-command LRU, bounded outbox, task store round-trip."""

from __future__ import annotations

import json
import os
import stat

import pytest

from node_engine.runtimes.base import TaskHandle
from node_engine.state import (
    CommandOutcome,
    Outbox,
    SeenCommands,
    TaskRecord,
    TaskStore,
    atomic_write,
    read_json,
)
from schemas.common import Runtime
from schemas.job import RestartPolicy, TaskSpec, TaskState


def test_atomic_write_mode_and_no_temp_left(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, b'{"a": 1}')
    atomic_write(path, b'{"a": 2}')
    assert json.loads(path.read_bytes()) == {"a": 2}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_read_json_moves_corrupt_file_aside(tmp_path):
    path = tmp_path / "x.json"
    assert read_json(path) is None
    path.write_text("{not json")
    assert read_json(path) is None
    assert not path.exists() and (tmp_path / "x.json.corrupt").exists()


def test_seen_commands_lru_bound_and_order(tmp_path):
    seen = SeenCommands(tmp_path / "commands.json", capacity=3)
    for i in range(3):
        seen.add(f"c{i}", CommandOutcome("deploy", True, instance_id=f"i{i}"))
    assert seen.get("c0") is not None  # c0 becomes most recently used
    seen.add("c3", CommandOutcome("terminate", False, "nope", "i3"))
    assert len(seen) == 3
    assert "c1" not in seen  # least recently used went
    assert all(c in seen for c in ("c0", "c2", "c3"))


def test_seen_commands_persist_round_trip(tmp_path):
    path = tmp_path / "commands.json"
    seen = SeenCommands(path, capacity=1000)
    for i in range(1500):
        seen.add(f"c{i}", CommandOutcome("deploy", i % 2 == 0, f"r{i}", f"i{i}"))
    seen.save()
    again = SeenCommands(path, capacity=1000)
    again.load()
    assert len(again) == 1000
    assert "c499" not in again and "c500" in again and "c1499" in again
    assert again.get("c1498") == CommandOutcome("deploy", True, "r1498", "i1498")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_seen_commands_rejects_zero_capacity():
    with pytest.raises(ValueError):
        SeenCommands(None, capacity=0)


def test_outbox_bound_drops_oldest_and_counts(tmp_path):
    box = Outbox(tmp_path / "outbox.json", capacity=5)
    for i in range(8):
        box.append("t", f"m{i}".encode())
    assert len(box) == 5
    assert box.dropped == 3
    assert [e.payload for e in box] == [b"m3", b"m4", b"m5", b"m6", b"m7"]


def test_outbox_remove_and_persist_with_seq(tmp_path):
    path = tmp_path / "outbox.json"
    box = Outbox(path, capacity=10)
    seqs = [box.take_seq() for _ in range(3)]
    assert seqs == [1, 2, 3]
    entries = [box.append("edge/v1/nodes/n/events", f"m{i}".encode()) for i in range(4)]
    assert box.remove(entries[1].key) is True
    assert box.remove(entries[1].key) is False
    box.dropped = 7
    box.save()
    assert not box.dirty
    again = Outbox(path, capacity=10)
    again.load()
    assert [e.payload for e in again] == [b"m0", b"m2", b"m3"]
    assert again.next_seq == 4 and again.dropped == 7
    assert again.take_seq() == 4


def test_outbox_save_only_when_dirty(tmp_path):
    path = tmp_path / "outbox.json"
    box = Outbox(path)
    box.save()
    assert not path.exists()
    box.append("t", b"x")
    box.save()
    assert path.exists()


def test_task_store_round_trip(tmp_path):
    store = TaskStore(tmp_path)
    spec = TaskSpec(
        runtime=Runtime.NATIVE,
        command=["sleep", "10"],
        restart_policy=RestartPolicy.ON_FAILURE,
        max_restarts=3,
    )
    handle = TaskHandle(
        instance_id="i1", runtime=Runtime.NATIVE, pid=123, pid_create_time=1.5, extra={"a": "b"}
    )
    store.tasks["i1"] = TaskRecord(
        instance_id="i1",
        job_id="j1",
        spec=spec,
        handle=handle,
        state=TaskState.RUNNING,
        restarts=2,
        restart_at=None,
        command_id="c1",
    )
    store.tasks["i2"] = TaskRecord(
        instance_id="i2", job_id="j1", spec=spec, state=TaskState.FAILED, desired=False
    )
    store.save()
    assert stat.S_IMODE(os.stat(tmp_path / "tasks.json").st_mode) == 0o600
    loaded = TaskStore(tmp_path).load()
    assert loaded == store.tasks


def test_task_store_drops_unreadable_records(tmp_path):
    (tmp_path / "tasks.json").write_text(
        json.dumps({"version": 1, "tasks": {"bad": {"instance_id": "bad"}}})
    )
    assert TaskStore(tmp_path).load() == {}


def test_task_store_commit_writes_only_when_changed(tmp_path):
    store = TaskStore(tmp_path)
    path = tmp_path / "tasks.json"
    assert store.commit() is False and not path.exists()
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["true"])
    store.tasks["i1"] = TaskRecord(instance_id="i1", job_id="j", spec=spec, stopping="terminate")
    store.mark_changed()
    assert store.commit() is True and path.exists()
    path.unlink()
    assert store.commit() is False and not path.exists()  # nothing changed since
    loaded = TaskStore(tmp_path)
    store.save()
    assert loaded.load()["i1"].stopping == "terminate" and loaded.dirty is False


def test_seen_commands_save_only_after_a_change(tmp_path):
    path = tmp_path / "commands.json"
    seen = SeenCommands(path)
    seen.save()
    assert not path.exists()
    seen.add("c1", CommandOutcome("deploy", True, instance_id="i1"))
    seen.save()
    path.unlink()
    seen.save()
    assert not path.exists()
    again = SeenCommands(path)
    seen.dirty = True
    seen.save()
    again.load()
    assert "c1" in again and again.dirty is False
