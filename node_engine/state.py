"""Persistent local state of a node engine, kept in its state directory.

Three small files, each rewritten atomically (temp file + fsync + rename + directory
fsync) so that a SIGKILL or a power cut leaves either the old or the new version:

* ``tasks.json``: the desired tasks (instance id -> spec, handle, restarts, state).
* ``commands.json``: the ids of the last commands seen (bounded LRU) and the answer
  each got, so a repeated command is acknowledged again and not run twice.
* ``outbox.json``: events not yet acknowledged by the broker (bounded, oldest dropped
  with a counter) and the per-node event sequence number.
* ``system-stop.json`` (only now and then): the instances that were stopped while the
  engine was down because the whole system was stopped (``edgectl local down``), written
  by `record_system_stop`. The next start runs them again in place instead of treating
  them as failed; the file goes once the new ``tasks.json`` is written.

Each keeps a `dirty` flag: the engine changes them in memory while it handles a batch of
queue items and writes what changed once per batch (`commit()` / `save()`), before it
acknowledges anything to the broker (group commit). Writing costs what changed, not what
is there: a task record and a seen command keep their JSON text until they change, and
the outbox writes a removal (the broker acknowledged an entry) only with the next append
or at `save(removals=True)` (the engine does that every few seconds), since a removal
that did not reach the disk costs at most a duplicate after a crash, never a loss.

Everything here is plain data and file I/O; no threads, no MQTT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from node_engine.runtimes.base import TaskHandle
from schemas.job import TaskSpec, TaskState

log = logging.getLogger(__name__)

TASKS_FILE = "tasks.json"
COMMANDS_FILE = "commands.json"
OUTBOX_FILE = "outbox.json"
SYSTEM_STOP_FILE = "system-stop.json"
STATE_VERSION = 1


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, sync_dir: bool = True) -> None:
    """Replace `path` with `data` atomically and durably, with file mode `mode`.

    Writes a temp file in the same directory, fsyncs it, renames it over `path` and
    fsyncs the directory, so readers see the old or the new content, never a mix. The
    temp file is named after the target and this process (the engine is the one writer
    of its state files), which spares a random name per write. `sync_dir=False` leaves
    the directory fsync to the caller: the engine writes several files in one commit and
    fsyncs their directory once, before it acknowledges anything.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power cut (best effort)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_json(path: Path) -> Any | None:
    """Load a JSON file; None if it does not exist. A corrupt file is moved aside."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        aside = path.with_name(path.name + ".corrupt")
        log.error("state file %s is corrupt (%s); moved to %s", path, exc, aside)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return None


# ---------------------------------------------------------------- desired tasks


class TaskRecord(BaseModel):
    """One task the engine was told to run, and what it knows about it."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str
    job_id: str
    spec: TaskSpec
    handle: TaskHandle | None = None
    state: TaskState = TaskState.STARTING
    desired: bool = Field(default=True, description="false once the task may stay stopped")
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    restart_at: float | None = Field(
        default=None, description="wall time of the next restart attempt (backoff)"
    )
    command_id: str = ""
    stopping: str = Field(
        default="",
        description="a stop in progress: 'terminate' or 'shed' (persisted before the "
        "runtime is asked, so a restarted engine finishes it)",
    )
    stop_reason: str = ""

    _json: str | None = PrivateAttr(default=None)
    """This record's JSON text as last written; any assignment to a field drops it."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name != "_json":
            self._json = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return self.__dict__ == other.__dict__  # the fields, not the cached text

    __hash__ = None  # type: ignore[assignment]  # mutable, like any BaseModel

    def json_text(self) -> str:
        """The record as JSON (cached until a field is assigned: fields hold immutable
        values, e.g. a new `TaskHandle`, never one changed in place)."""
        text = self._json
        if text is None:
            text = self._json = self.model_dump_json()
        return text


class TaskStore:
    """The desired tasks, persisted to ``tasks.json``.

    The records are mutated in place by the supervisor, which calls `mark_changed()`;
    `commit()` writes the file when something changed, `save()` always does.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TASKS_FILE
        self.system_stop_path = state_dir / SYSTEM_STOP_FILE
        self.tasks: dict[str, TaskRecord] = {}
        self.dirty = False
        self._drop_system_stop = False

    def take_system_stop(self) -> set[str]:
        """The instances a system stop ended while the engine was down (see
        `record_system_stop`); the record is deleted with the next write of the tasks,
        so a crash before that write finds it again."""
        data = read_json(self.system_stop_path)
        if not isinstance(data, dict):
            return set()
        self._drop_system_stop = True
        self.dirty = True
        return {str(i) for i in data.get("instances") or [] if isinstance(i, str)}

    def mark_changed(self) -> None:
        """Note that a record changed (written at the next `commit()`)."""
        self.dirty = True

    def commit(self, *, sync_dir: bool = True) -> bool:
        """Write the records if anything changed since the last write; True if written."""
        if not self.dirty:
            return False
        self.save(sync_dir=sync_dir)
        return True

    def load(self) -> dict[str, TaskRecord]:
        """Read the file (if any) and return the records; bad records are dropped loudly."""
        data = read_json(self.path)
        self.tasks = {}
        if isinstance(data, dict):
            for key, raw in (data.get("tasks") or {}).items():
                try:
                    self.tasks[key] = TaskRecord.model_validate(raw)
                except ValidationError as exc:
                    log.error("dropping unreadable task record %s: %s", key, exc)
        self.dirty = False
        return self.tasks

    def save(self, *, sync_dir: bool = True) -> None:
        """Write all records atomically (each record's JSON is reused while unchanged)."""
        tasks = ",".join(f"{json.dumps(k)}:{r.json_text()}" for k, r in self.tasks.items())
        body = f'{{"version":{STATE_VERSION},"tasks":{{{tasks}}}}}'
        atomic_write(self.path, body.encode(), sync_dir=sync_dir)
        self.dirty = False
        if self._drop_system_stop:
            self._drop_system_stop = False
            with contextlib.suppress(FileNotFoundError):
                self.system_stop_path.unlink()


def record_system_stop(state_dir: Path, instance_ids: Iterable[str], *, at: float, by: str) -> None:
    """Note, for the engine's next start, that these instances are being stopped because
    the whole system stops (not because they failed): it runs them again in place, with
    their instance ids, whatever their restart policy, without counting a restart.

    Called by `edgectl local down` before it stops the tasks of an engine that is down;
    adds to a record that is still there (two stops before one start).
    """
    path = state_dir / SYSTEM_STOP_FILE
    old = read_json(path)
    ids = set(old.get("instances") or []) if isinstance(old, dict) else set()
    ids.update(instance_ids)
    body = {"at": at, "by": by, "instances": sorted(ids)}
    atomic_write(path, json.dumps(body).encode())


# ---------------------------------------------------------------- seen commands


@dataclass(frozen=True)
class CommandOutcome:
    """The answer a command got; repeated to a duplicate of that command."""

    kind: str
    accepted: bool
    reason: str = ""
    instance_id: str | None = None


class SeenCommands:
    """Bounded LRU of command ids -> outcome, persisted to ``commands.json``.

    MQTT QoS 1 delivers at least once and a cluster may resend a command it got no
    answer to; remembering the last `capacity` ids makes commands idempotent.
    """

    def __init__(self, path: Path | None, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        self._items: OrderedDict[str, CommandOutcome] = OrderedDict()
        self._json: dict[str, str] = {}
        """command id -> its entry's JSON text (built once, at `add`)."""
        self.dirty = False

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._items

    def get(self, command_id: str) -> CommandOutcome | None:
        """The outcome of an earlier command with this id (and mark it recently used)."""
        outcome = self._items.get(command_id)
        if outcome is not None:
            self._items.move_to_end(command_id)
        return outcome

    def add(self, command_id: str, outcome: CommandOutcome) -> None:
        """Remember a command; the least recently used id goes when full."""
        self._items[command_id] = outcome
        self._items.move_to_end(command_id)
        self._json[command_id] = json.dumps(
            {
                "id": command_id,
                "kind": outcome.kind,
                "accepted": outcome.accepted,
                "reason": outcome.reason,
                "instance_id": outcome.instance_id,
            },
            separators=(",", ":"),
        )
        while len(self._items) > self.capacity:
            old, _ = self._items.popitem(last=False)
            self._json.pop(old, None)
        self.dirty = True

    def load(self) -> None:
        """Read the persisted ids (oldest first)."""
        if self.path is None:
            return
        data = read_json(self.path)
        self._items.clear()
        self._json.clear()
        if not isinstance(data, dict):
            return
        for item in data.get("commands") or []:
            try:
                outcome = CommandOutcome(
                    kind=str(item["kind"]),
                    accepted=bool(item["accepted"]),
                    reason=str(item.get("reason", "")),
                    instance_id=item.get("instance_id"),
                )
                self.add(str(item["id"]), outcome)
            except (KeyError, TypeError):
                continue
        self.dirty = False

    def save(self, *, sync_dir: bool = True) -> bool:
        """Write the ids atomically (only when one was added since the last write);
        True if written."""
        if self.path is None or not self.dirty:
            return False
        items = ",".join(self._json[cid] for cid in self._items)
        body = f'{{"version":{STATE_VERSION},"commands":[{items}]}}'
        atomic_write(self.path, body.encode(), sync_dir=sync_dir)
        self.dirty = False
        return True


# ---------------------------------------------------------------- outbox


@dataclass
class OutboxEntry:
    """One message waiting for the broker's PUBACK."""

    key: int
    topic: str
    payload: bytes
    qos: int = 1


class Outbox:
    """Bounded FIFO of QoS 1 messages not yet acknowledged by the broker.

    Entries stay until the broker acknowledges them, across reconnects and (through
    ``outbox.json``) across engine restarts. When full, the oldest entry is dropped and
    counted in `dropped`. `next_seq` is the per-node event sequence, persisted with the
    entries so it keeps increasing across restarts.

    An append makes the outbox `dirty` (written at the next `save()`); a removal only
    `stale`: it is written with the next append, or by `save(removals=True)`. A removal
    lost in a crash makes the entry go out once more after the restart (a duplicate,
    which consumers tolerate), so it is not worth a disk write of its own per message.
    """

    def __init__(self, path: Path | None, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        self.dropped = 0
        self.next_seq = 1
        self._entries: deque[OutboxEntry] = deque()
        self._next_key = 1
        self.dirty = False
        self.stale = False
        """Entries were removed since the last write (see the class docstring)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[OutboxEntry]:
        return iter(self._entries)

    def take_seq(self) -> int:
        """Return the next event sequence number and advance it."""
        seq = self.next_seq
        self.next_seq += 1
        self.dirty = True
        return seq

    def append(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        """Queue a message; drop (and count) the oldest when the outbox is full."""
        entry = OutboxEntry(self._next_key, topic, payload, qos)
        self._next_key += 1
        self._entries.append(entry)
        while len(self._entries) > self.capacity:
            old = self._entries.popleft()
            self.dropped += 1
            log.warning(
                "outbox full (%d): dropped the oldest undelivered message for %s",
                self.capacity,
                old.topic,
            )
        self.dirty = True
        return entry

    def remove(self, key: int) -> bool:
        """Forget a delivered entry; False if it is not (or no longer) here."""
        for i, entry in enumerate(self._entries):
            if entry.key == key:
                del self._entries[i]
                self.stale = True
                return True
        return False

    def contains(self, key: int) -> bool:
        """Whether the entry with this key is still waiting."""
        return any(e.key == key for e in self._entries)

    def load(self) -> None:
        """Read the persisted entries and counters."""
        if self.path is None:
            return
        data = read_json(self.path)
        self._entries.clear()
        if not isinstance(data, dict):
            return
        self.next_seq = max(1, int(data.get("next_seq", 1)))
        self.dropped = max(0, int(data.get("dropped", 0)))
        for item in data.get("entries") or []:
            try:
                self.append(str(item["topic"]), str(item["payload"]).encode(), int(item["qos"]))
            except (KeyError, TypeError, ValueError):
                continue
        self.dirty = False
        self.stale = False

    def save(self, *, removals: bool = False, sync_dir: bool = True) -> bool:
        """Write entries and counters atomically when something was appended (or, with
        `removals`, also when entries were only removed); True if written."""
        if self.path is None or not (self.dirty or (removals and self.stale)):
            return False
        body = {
            "version": STATE_VERSION,
            "next_seq": self.next_seq,
            "dropped": self.dropped,
            "entries": [
                {"topic": e.topic, "payload": e.payload.decode(), "qos": e.qos}
                for e in self._entries
            ],
        }
        atomic_write(self.path, json.dumps(body, separators=(",", ":")).encode(), sync_dir=sync_dir)
        self.dirty = False
        self.stale = False
        return True
