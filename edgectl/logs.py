"""`edgectl logs`: which instances of a job to show, and how to label their lines.

Pure helpers (unit-tested); the command itself is in `edgectl.main`. Without
`--instance`, the job's active instances are shown (one: its output as is; several:
every line prefixed with its replica, like `docker compose logs`); a job with no active
instance shows its most recently ended one, so `edgectl logs JOB` explains a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgectl.client import EdgectlError
from schemas.root_api import InstanceView, JobView

__all__ = ["Source", "choose_instances", "label_width", "prefixed"]

_ENDED = {"SUCCEEDED", "FAILED", "TERMINATED", "LOST"}


@dataclass(frozen=True)
class Source:
    """One instance to read, and the label of its lines when several are shown."""

    instance_id: str
    label: str
    state: str


def choose_instances(job: JobView, instance: str | None) -> tuple[list[Source], str | None]:
    """The instances to show, and a note for stderr when the choice needs explaining.

    `instance` picks one by id (it must be the job's: the root refuses others anyway);
    otherwise the active instances, else the most recently ended one.
    """
    name = job.name or job.id
    items = list(job.instances)
    if instance is not None:
        found = next((i for i in items if i.id == instance), None)
        state = str(found.state) if found else ""
        return [Source(instance, instance, state)], None
    if not items:
        raise EdgectlError(f"job {name} has no instances yet", hint="`edgectl jobs get` shows why")
    active = [i for i in items if i.state not in _ENDED]
    note = None
    if not active:
        last = max(items, key=lambda i: i.updated_at)
        active = [last]
        note = f"job {name} has no active instance; showing the last one: {last.id} ({last.state})"
    active.sort(key=lambda i: (i.replica, i.created_at))
    return _labelled(name, active), note


def _labelled(name: str, items: Sequence[InstanceView]) -> list[Source]:
    labels = [f"{name}-{i.replica}" for i in items]
    out = []
    for item, label in zip(items, labels, strict=True):
        if labels.count(label) > 1:  # two instances of one replica (one being replaced)
            label = item.id
        out.append(Source(item.id, label, str(item.state)))
    return out


def label_width(sources: Iterable[Source]) -> int:
    """Width of the label column."""
    return max((len(s.label) for s in sources), default=0)


def prefixed(label: str, width: int, text: str) -> list[str]:
    """`text` as lines, each prefixed `label | ` (a last line without newline too)."""
    head = f"{label.ljust(width)} | "
    return [head + line for line in text.splitlines()]
