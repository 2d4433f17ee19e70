"""Rendering of API documents for people: rich tables, detail views, event lines.

Pure functions from the models of the root's API (schemas/root_api.py and, for nodes,
schemas/cluster_api.py, as edgectl's client returns them; docs/api.md) to rich
renderables; ``edgectl local status`` renders its own local.json document. Nothing
here does I/O except :func:`print_json`. ``now`` is passed in so that ages are
testable.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from pydantic import BaseModel
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.table import Table
from rich.text import Text

from schemas.cluster_api import NodeDetail
from schemas.decision import PlacementDecision
from schemas.job import JobSpec
from schemas.node import Liveness
from schemas.resources import Resources
from schemas.root_api import (
    ClusterView,
    EventRecord,
    InstanceView,
    JobSummary,
    JobView,
    NodeActionResult,
    PlacementInfo,
    RolloutView,
    UpdatePlan,
    VersionView,
)

__all__ = [
    "Col",
    "FitTable",
    "age",
    "cluster_names",
    "clusters_table",
    "event_line",
    "event_view",
    "explain_view",
    "is_ended",
    "job_view",
    "jobs_table",
    "local_view",
    "node_action_view",
    "nodes_table",
    "plan_view",
    "print_json",
    "replicas_table",
    "resources",
    "rollout_line",
    "state_text",
    "versions_table",
]

_STATE_STYLES = {
    "RUNNING": "green",
    "READY": "green",
    "SUCCEEDED": "cyan",
    "PENDING": "yellow",
    "SCHEDULED": "yellow",
    "ASSIGNED": "yellow",
    "STARTING": "yellow",
    "DEGRADED": "yellow",
    "NOT_READY": "yellow",
    "UNREACHABLE": "yellow",
    "TERMINATING": "magenta",
    "SHED": "magenta",
    "FAILED": "bold red",
    "LOST": "bold red",
    "OFFLINE": "red",
    "TERMINATED": "dim",
    "STOPPED": "dim",
}


def _json_default(value: Any) -> Any:
    """API models (edgectl's client returns them) as the JSON the root sent."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def print_json(doc: Any, file: IO[str] | None = None) -> None:
    """Indented JSON on stdout (no colours: meant for scripts and `jq`); models print as
    `model_dump(mode="json")`, the shape of the API's answer."""
    out = file or sys.stdout
    out.write(json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n")
    out.flush()


def state_text(state: Any) -> Text:
    """A state name in its colour."""
    name = str(state or "-")
    return Text(name, style=_STATE_STYLES.get(name, ""))


def age(ts: Any, now: float) -> str:
    """Time since `ts` (epoch seconds) as `42s`, `5m`, `3h`, `2d`; `-` when unknown."""
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    seconds = max(0.0, now - float(ts))
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def _num(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cpu(cores: Any) -> str:
    if not isinstance(cores, int | float):
        return "-"
    return f"{round(float(cores), 1):g}"


def _mem(mib: Any) -> str:
    if not isinstance(mib, int | float):
        return "-"
    if mib >= 10240:
        return f"{mib / 1024:.0f}Gi"
    if mib >= 1024:
        return f"{mib / 1024:.1f}Gi"
    return f"{mib:g}Mi" if isinstance(mib, float) else f"{mib}Mi"


def resources(res: Resources | None) -> str:
    """`cpu 0.5, mem 256Mi` (only what is set)."""
    if res is None:
        return "-"
    parts = []
    if res.cpu:
        parts.append(f"cpu {_num(res.cpu)}")
    if res.memory_mib:
        parts.append(f"mem {_mem(res.memory_mib)}")
    if res.disk_mib:
        parts.append(f"disk {_mem(res.disk_mib)}")
    for kind, count in res.accelerators.items():
        parts.append(f"{kind} x{count}")
    return ", ".join(parts) or "-"


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


#: Columns between two cells of a table: padding, divider, padding.
_GAP = 3


@dataclass(frozen=True, slots=True)
class Col:
    """A column of a `FitTable`.

    ``kind``: ``id`` (identifiers: never wrapped nor cut, so they stay copyable),
    ``short`` (small values such as a state or an age: kept on one line), ``text``
    (wraps at words, long words fold; never narrower than ``min_width``).
    ``drop``: 0 = always shown; otherwise columns go highest number first when the
    terminal is too narrow for every column.
    """

    header: str
    kind: Literal["id", "short", "text"] = "short"
    drop: int = 0
    min_width: int = 12
    justify: Literal["left", "right"] = "left"


class FitTable:
    """A table that fits the width it is rendered at (an 80-column terminal too).

    When every column does not fit, the least important columns are left out (ids
    never: they are kept whole on one line, so they can be copied), and text columns
    wrap. At a wide terminal it is the plain table with every column.
    """

    def __init__(self, columns: Sequence[Col]) -> None:
        self.columns = list(columns)
        self.rows: list[list[RenderableType]] = []

    def add_row(self, *cells: RenderableType) -> None:
        """One row, a cell per column (str or rich Text)."""
        self.rows.append(list(cells))

    @property
    def row_count(self) -> int:
        """Rows added so far."""
        return len(self.rows)

    def _natural(self, i: int) -> int:
        width = cell_len(self.columns[i].header)
        for row in self.rows:
            cell = row[i]
            text = cell.plain if isinstance(cell, Text) else str(cell)
            width = max(width, *(cell_len(line) for line in text.splitlines() or [""]))
        return width

    def _floor(self, i: int, natural: int) -> int:
        col = self.columns[i]
        return min(natural, col.min_width) if col.kind == "text" else natural

    def widths(self, width: int) -> dict[int, int]:
        """Column index -> width for the columns shown at `width` terminal columns."""
        natural = [self._natural(i) for i in range(len(self.columns))]
        floor = [self._floor(i, natural[i]) for i in range(len(self.columns))]
        keep = list(range(len(self.columns)))

        def gaps() -> int:
            return _GAP * max(0, len(keep) - 1)

        while sum(floor[i] for i in keep) + gaps() > width:
            droppable = [i for i in keep if self.columns[i].drop > 0]
            if not droppable:
                break
            keep.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        out = {i: natural[i] for i in keep}
        if sum(out.values()) + gaps() <= width:
            return out
        # text columns share what the others leave, each at least its floor, the
        # room above the floors in proportion to what each would like to have
        texts = [i for i in keep if self.columns[i].kind == "text"]
        room = width - gaps() - sum(out[i] for i in keep if i not in texts)
        for i in texts:
            out[i] = floor[i]
        spare = room - sum(floor[i] for i in texts)
        wants = {i: natural[i] - floor[i] for i in texts}
        total_wants = sum(wants.values())
        if spare > 0 and total_wants > 0:
            given = 0
            for i in texts:
                share = min(wants[i], spare * wants[i] // total_wants)
                out[i] += share
                given += share
            for i in sorted(texts, key=lambda i: -wants[i]):  # the rounding remainder
                if given >= spare:
                    break
                if out[i] < natural[i]:
                    out[i] += 1
                    given += 1
        return out

    def kept(self, width: int) -> list[int]:
        """Indexes of the columns shown at `width` columns."""
        return sorted(self.widths(width))

    def table(self, width: int) -> Table:
        """The rich Table for `width` columns (every column at an exact width)."""
        widths = self.widths(width)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
        keep = sorted(widths)
        for i in keep:
            col = self.columns[i]
            table.add_column(
                col.header,
                width=widths[i],
                no_wrap=col.kind != "text",
                overflow="fold",
                justify=col.justify,
            )
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        """Render for the width the console gives."""
        yield self.table(options.max_width)


def jobs_table(jobs: Iterable[JobSummary], now: float) -> FitTable:
    """`edgectl jobs ls` (on a narrow terminal: no RUNTIME, PRIO, then REASON)."""
    table = FitTable(
        [
            Col("NAME", "text", min_width=16),
            Col("ID", "id"),
            Col("STATE"),
            Col("READY"),
            Col("PRIO", drop=4, justify="right"),
            Col("RUNTIME", drop=5),
            Col("AGE", drop=3),
            Col("REASON", "text", drop=2, min_width=16),
        ]
    )
    for job in jobs:
        table.add_row(
            job.name,
            job.id,
            state_text(job.state),
            f"{job.actual_replicas}/{job.desired_replicas}",
            _num(job.priority),
            job.runtime,
            age(job.created_at, now),
            job.reason,
        )
    return table


def _where(inst: InstanceView) -> str:
    cluster = inst.cluster_name or inst.cluster_id or ""
    node = inst.node_name or inst.node_id or ""
    if cluster and node:
        return f"{cluster}/{node}"
    return str(cluster or node or "-")


def replicas_table(instances: Iterable[InstanceView], now: float) -> FitTable:
    """The instances of a job: replica, state, where, restarts, reason (on a narrow
    terminal: no RESTARTS, AGE, then REPLICA, which the instance id holds too)."""
    table = FitTable(
        [
            Col("REPLICA", drop=3, justify="right"),
            Col("INSTANCE", "id"),
            Col("VER", drop=1, justify="right"),
            Col("STATE"),
            Col("WHERE", "text", min_width=12),
            Col("RESTARTS", drop=5, justify="right"),
            Col("AGE", drop=4),
            Col("REASON", "text", drop=2, min_width=14),
        ]
    )
    for inst in sorted(instances, key=lambda i: (i.replica, i.created_at)):
        reason = inst.reason
        code = inst.exit_code
        if code is not None and is_ended(inst) and "exit" not in reason:
            reason = f"{reason} (exit code {code})".strip()
        if inst.terminating:
            reason = f"terminating; {reason}".rstrip("; ")
        table.add_row(
            str(inst.replica),
            inst.id,
            str(inst.job_version),
            state_text(inst.state),
            _where(inst),
            str(inst.restarts),
            age(inst.updated_at, now),
            reason,
        )
    return table


def _fields(rows: Sequence[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else str(value))
    return grid


def _constraints(spec: JobSpec) -> str:
    cons = spec.constraints
    parts = [f"{k}={v}" for k, v in cons.labels.items()]
    for key, value in (
        ("cluster", cons.cluster),
        ("node", cons.node),
        ("accelerator", cons.accelerator),
    ):
        if value:
            parts.append(f"{key}={value}")
    if cons.arch:
        parts.append("arch=" + "|".join(cons.arch))
    if cons.max_temperature_c is not None:
        parts.append(f"max_temperature_c={_num(cons.max_temperature_c)}")
    return ", ".join(parts) or "-"


def job_view(job: JobView, now: float, *, ended: bool = False) -> Group:
    """`edgectl jobs get`: the job's facts, then its instances (ended ones if `ended`)."""
    spec = job.spec
    what = spec.image if spec.runtime == "docker" else None
    command = " ".join(spec.command)
    if what and command:
        what = f"{what}  {command}"
    rows: list[tuple[str, Any]] = [
        ("name", job.name),
        ("id", job.id),
        ("state", state_text(job.state)),
        ("version", _version_text(job)),
        ("replicas", f"{job.actual_replicas}/{job.desired_replicas} running"),
        ("runtime", f"{spec.runtime}  {what or command}".rstrip()),
        ("resources", resources(spec.resources)),
        ("priority", _num(job.priority)),
        ("restart", f"{spec.restart_policy} (max {spec.max_restarts})"),
        ("constraints", _constraints(spec)),
        ("age", age(job.created_at, now)),
    ]
    if job.reason:
        rows.append(("reason", job.reason))
    if job.rollout is not None:
        rows.append(("rollout", rollout_line(job.rollout)))
    counts = job.instance_counts
    if counts:
        rows.append(("instances", ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))
    instances = [i for i in job.instances if ended or not is_ended(i)]
    parts: list[RenderableType] = [_fields(rows)]
    if instances:
        parts.append(Text(""))
        parts.append(replicas_table(instances, now))
    hidden = len(job.instances) - len(instances)
    if hidden:
        parts.append(Text(f"({hidden} ended instances not shown; --all shows them)", style="dim"))
    return Group(*parts)


_ENDED = frozenset({"SUCCEEDED", "FAILED", "TERMINATED", "LOST"})


def is_ended(inst: InstanceView) -> bool:
    """True for an instance that has ended (and is not being stopped any more)."""
    return inst.state in _ENDED and not inst.terminating


def cluster_names(clusters: Iterable[ClusterView]) -> dict[str, str]:
    """Cluster id -> name."""
    return {c.id: c.name for c in clusters if c.id}


def _named(cid: Any, names: Mapping[str, str]) -> str:
    return names.get(str(cid), str(cid))


def _decision_rows(decision: PlacementDecision | None) -> list[tuple[str, Any]]:
    if decision is None:
        return []
    return [
        (
            "policy",
            f"{decision.policy}: {decision.considered} considered, {decision.feasible} feasible",
        )
    ]


def _placement_block(
    title: str, placement: PlacementInfo, names: Mapping[str, str]
) -> list[RenderableType]:
    out: list[RenderableType] = [Text(title, style="bold")]
    rows: list[tuple[str, Any]] = [
        ("outcome", placement.outcome),
        ("explanation", placement.explanation),
    ]
    if placement.cluster_name or placement.cluster_id:
        rows.insert(1, ("cluster", placement.cluster_name or _named(placement.cluster_id, names)))
    decision = placement.decision
    rows.extend(_decision_rows(decision))
    out.append(_fields(rows))
    if decision is not None and decision.scores:
        table = _table("CANDIDATE", "SCORE", "BREAKDOWN")
        chosen = decision.chosen.id if decision.chosen is not None else None
        for item in decision.scores:
            name = _named(item.id, names)
            if item.id == chosen:
                name = f"{name} (chosen)"
            breakdown = ", ".join(
                f"{k} {_num(round(v, 1) if isinstance(v, float) else v)}"
                for k, v in item.breakdown.items()
            )
            table.add_row(name, _num(round(float(item.score), 1)), breakdown)
        out.append(table)
    if decision is not None and decision.rejections:
        table = _table("REJECTED", "REASON")
        for reason, count in decision.rejections.items():
            ids = decision.rejected.get(reason) or []
            who = ", ".join(_named(i, names) for i in ids) or f"{count}"
            if ids and len(ids) < int(count):
                who += f" (+{int(count) - len(ids)} more)"
            table.add_row(who, str(reason))
        out.append(table)
    if placement.cluster_rejections:
        table = _table("REFUSED BY", "REASONS")
        for refusal in placement.cluster_rejections:
            reasons = refusal.explanation or ", ".join(
                f"{n} node{'s' if n != 1 else ''}: {r}" for r, n in refusal.reasons.items()
            )
            table.add_row(refusal.cluster_name or refusal.cluster_id, reasons)
        out.append(table)
    return out


def explain_view(job: JobView, names: Mapping[str, str]) -> Group:
    """`edgectl jobs explain`: why each active instance runs where it runs, or why pending."""
    parts: list[RenderableType] = [
        _fields(
            [
                ("job", f"{job.name} ({job.id})"),
                ("state", state_text(job.state)),
                ("reason", job.reason or "-"),
            ]
        )
    ]
    shown = False
    for inst in sorted(job.instances, key=lambda i: i.replica):
        if is_ended(inst) or inst.placement is None:
            continue
        parts.append(Text(""))
        title = f"replica {inst.replica} ({inst.id}): {inst.state}"
        if inst.node_name or inst.node_id:
            title += f" on {_where(inst)}"
        parts.extend(_placement_block(title, inst.placement, names))
        shown = True
    if not shown and job.placement is not None:
        parts.append(Text(""))
        parts.extend(_placement_block("latest placement", job.placement, names))
        shown = True
    if not shown:
        parts.append(Text("no placement decision recorded", style="dim"))
    return Group(*parts)


def clusters_table(clusters: Iterable[ClusterView], now: float) -> FitTable:
    """`edgectl clusters ls` (on a narrow terminal: no URL, REPORT, RUNNING, ...).

    NODES is READY/all, with the cordoned (or draining) ones, whose capacity the
    cluster leaves out of its report, counted after it.
    """
    table = FitTable(
        [
            Col("NAME", "text", min_width=12),
            Col("ID", "id"),
            Col("LIVENESS"),
            Col("NODES", "text", min_width=10),
            Col("CPU FREE", drop=2),
            Col("MEM FREE", drop=3),
            Col("RUNNING", drop=4, justify="right"),
            Col("REPORT", drop=5),
            Col("URL", "text", drop=6, min_width=20),
        ]
    )
    for c in clusters:
        report = c.report
        since = c.seconds_since_report
        nodes, cpu, mem = "-", "-", "-"
        if report is not None:
            by_liveness = report.nodes_by_liveness
            nodes = f"{by_liveness.get(Liveness.READY, 0)}/{sum(by_liveness.values())}"
            if report.nodes_cordoned:
                nodes += f" ({report.nodes_cordoned} cordoned)"
            cpu = f"{_cpu(report.free.cpu)}/{_cpu(report.total.cpu)}"
            mem = f"{_mem(report.free.memory_mib)}/{_mem(report.total.memory_mib)}"
        table.add_row(
            c.name,
            c.id,
            state_text(c.liveness),
            nodes,
            cpu,
            mem,
            str(c.instances.get("RUNNING", 0)),
            f"{since:.0f}s ago" if since is not None else "never",
            c.url,
        )
    return table


def nodes_table(rows: Iterable[tuple[str, NodeDetail]]) -> FitTable:
    """`edgectl nodes ls`: (cluster name, node of the cluster API) pairs.

    On a narrow terminal LABELS, RUNTIMES, ARCH, TEMP, then the load columns go.
    """
    table = FitTable(
        [
            Col("CLUSTER", "text", drop=1, min_width=8),
            Col("NAME", "text", min_width=12),
            Col("ID", "id"),
            Col("LIVENESS", "text", min_width=9),
            Col("ARCH", drop=6),
            Col("CPU", drop=3),
            Col("MEMORY", drop=4),
            Col("TEMP", drop=5),
            Col("TASKS", drop=2),
            Col("RUNTIMES", drop=7),
            Col("LABELS", "text", drop=8, min_width=12),
        ]
    )
    for cluster, node in rows:
        info = node.info
        status = node.status
        liveness = state_text(node.liveness)
        if node.cordoned:
            liveness.append(" cordoned", style="magenta")
        if node.draining:
            liveness.append(" draining", style="magenta")
        cpu = f"{_num(info.cpu_cores)} cores"
        mem = _mem(info.memory_mib)
        temp, tasks = "-", "-"
        if status is not None:
            cpu += f", {status.cpu_percent:.0f}%"
            mem += f", {status.memory.used_percent:.0f}%"
            if status.max_temperature_c is not None:
                temp = f"{status.max_temperature_c:.0f}C"
            running = sum(1 for t in status.tasks if t.state == "RUNNING")
            tasks = f"{running}/{len(status.tasks)}"
        table.add_row(
            cluster,
            info.name,
            node.id,
            liveness,
            str(info.arch),
            cpu,
            mem,
            temp,
            tasks,
            ",".join(info.runtimes) or "-",
            ",".join(f"{k}={v}" for k, v in info.labels.items()) or "-",
        )
    return table


def node_action_view(result: NodeActionResult, node: NodeDetail) -> Group:
    """`edgectl nodes drain|cordon|uncordon`: the node now (`result.node` as a model),
    what moved, what is stuck."""
    action = result.action
    flags = [f for f, on in (("cordoned", node.cordoned), ("draining", node.draining)) if on]
    done = {"drain": "draining", "cordon": "cordoned", "uncordon": "uncordoned"}[action]
    head = Text()
    head.append(f"node {node.info.name} ", style="bold")
    head.append(f"({node.id}) in cluster {result.cluster_name}: {done}")
    parts: list[RenderableType] = [head]
    state = state_text(node.liveness)
    state.append(f"  {', '.join(flags) or 'schedulable'}", style="magenta" if flags else "green")
    parts.append(_fields([("liveness", state)]))
    moved = result.moved
    stuck = result.stuck
    if action == "drain":
        if moved:
            table = FitTable([Col("MOVED", "id"), Col("NOW ON", "text", min_width=12)])
            for m in moved:
                where = m.node_name or m.node_id or "?"
                if m.node_name and m.node_id:
                    where = f"{m.node_name} ({m.node_id})"
                table.add_row(m.instance_id, where)
            parts.append(table)
        if stuck:
            table = FitTable([Col("STUCK", "id"), Col("WHY", "text", min_width=16)])
            for item in stuck:
                table.add_row(item.instance_id, item.reason)
            parts.append(table)
            parts.append(
                Text(
                    "stuck instances stay where they are; the cluster retries moving them on "
                    "every reconcile pass",
                    style="dim",
                )
            )
        if not moved and not stuck:
            parts.append(Text("nothing ran there: nothing to move", style="dim"))
    return Group(*parts)


def _event_prefix(event: EventRecord) -> Text:
    when = dt.datetime.fromtimestamp(float(event.ts)).strftime("%H:%M:%S.%f")[:-3]
    return Text(f"{event.seq:>6} {when}", style="dim")


def _event_body(event: EventRecord, names: Mapping[str, str]) -> Text:
    line = Text()
    line.append(f"{event.kind:<20} ", style="bold")
    line.append(event.subject)
    if event.state:
        line.append(" ")
        line.append_text(state_text(event.state))
    where = []
    if event.cluster_id and event.kind != "cluster.liveness":
        where.append(_named(event.cluster_id, names))
    if event.node_id:
        where.append(event.node_id)
    if where:
        line.append(" @" + "/".join(where), style="cyan")
    if event.reason:
        line.append(f"  {event.reason}", style="dim" if event.state else "")
    return line


def event_line(event: EventRecord, names: Mapping[str, str] | None = None) -> Text:
    """One event on one line: seq, time, kind, subject, state, where, reason."""
    line = _event_prefix(event)
    line.append(" ")
    line.append_text(_event_body(event, names or {}))
    return line


def event_view(event: EventRecord, names: Mapping[str, str] | None = None) -> Table:
    """One event for a terminal: `event_line`, its text wrapped under itself (hanging
    after the seq and time) when it is wider than the terminal."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(_event_prefix(event), _event_body(event, names or {}))
    return grid


def local_view(
    doc: Mapping[str, Any], processes: Iterable[Mapping[str, Any]], running: bool
) -> Group:
    """`edgectl local status`: the system's state, URLs, and one row per process."""
    state = str(doc.get("state", "-"))
    if not running and state != "stopped":
        state = f"{state} (its edgectl local up is gone)"
    rows: list[tuple[str, Any]] = [
        ("state", state_text(state) if running or state == "stopped" else Text(state, "red")),
        ("data", str(doc.get("data_dir", ""))),
        ("root", str(doc.get("root_url", ""))),
    ]
    for c in doc.get("clusters") or []:
        rows.append(
            (
                "cluster",
                f"{c.get('name')}  {c.get('url')}  broker {c.get('broker')}  "
                f"nodes {', '.join(c.get('nodes') or [])}",
            )
        )
    sup = doc.get("supervisor") or {}
    if sup:
        rows.append(("edgectl", f"pid {sup.get('pid')}  log {sup.get('log')}"))
    parts: list[RenderableType] = [_fields(rows)]
    procs = list(processes)
    if procs:
        table = FitTable(
            [
                Col("PROCESS", "text", min_width=10),
                Col("KIND", drop=2),
                Col("PID", "id", justify="right"),
                Col("ALIVE"),
                Col("LOG", "text", drop=1, min_width=20),
            ]
        )
        for p in procs:
            table.add_row(
                str(p.get("name", "")),
                str(p.get("kind", "")),
                str(p.get("pid", "")),
                Text("yes", "green") if p.get("alive") else Text("no", "red"),
                str(p.get("log", "")),
            )
        parts.append(Text(""))
        parts.append(table)
    return Group(*parts)


def _version_text(job: JobView) -> str:
    version = job.job_version
    latest = job.latest_version
    return f"{version}" if latest == version else f"{version} (latest {latest})"


def rollout_line(rollout: RolloutView) -> Text:
    """One line on a job's latest rollout: state, versions, counts, reason."""
    state = str(rollout.state)
    style = {
        "complete": "green",
        "progressing": "yellow",
        "rolling_back": "magenta",
        "rolled_back": "red",
        "failed": "bold red",
        "cancelled": "dim",
    }.get(state, "")
    text = Text(state, style=style)
    text.append(
        f"  {rollout.from_version} -> {rollout.to_version}"
        f"  {rollout.updated}/{rollout.replicas} updated,"
        f" {rollout.healthy} healthy, {rollout.unavailable} unavailable"
    )
    detail = rollout.waiting if rollout.state.active else ""
    reason = rollout.reason
    for part in (reason, detail):
        if part:
            text.append(f"; {part}", style="dim")
    return text


def versions_table(versions: Iterable[VersionView], current: int) -> Table:
    """`edgectl jobs history`: each kept version, newest first (* marks the target)."""
    table = _table("VERSION", "STATE", "CREATED", "CHANGED", "REASON")
    for item in versions:
        mark = "*" if item.version == current else ""
        when = dt.datetime.fromtimestamp(float(item.created_at)).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            f"{item.version}{mark}",
            item.state,
            when,
            ", ".join(item.changed) or "-",
            item.reason,
        )
    return table


def _short_why(why: str) -> str:
    """A stop's reason in at most 16 characters (the plan table fits 80 columns)."""
    if "max_unavailable" in why:
        return "max_unavailable"
    if "healthy instance" in why:
        return "new one healthy"
    if "(it was " in why:
        return "not running"
    if "scaled down" in why:
        return "scaled down"
    return why if len(why) <= 16 else why[:13] + "..."


def _compact_table(*columns: str) -> Table:
    """Like `_table` with two spaces between columns; ids never wrap (80 columns)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        header_style="bold",
        collapse_padding=True,
    )
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column == "INSTANCE")
    return table


def plan_view(plan: UpdatePlan) -> Group:
    """`edgectl jobs update --dry-run`: the version, the batches and the placements.

    Meant for an 80-column terminal: one row per start or stop, short reasons.
    """
    parts: list[RenderableType] = []
    new = plan.new_version
    changed = ", ".join(plan.changed) or "nothing"
    head = Text()
    head.append(f"{plan.name} ", style="bold")
    if new is None:
        head.append(f"version {plan.current_version} stays ({changed} changed)")
    else:
        head.append(f"version {plan.current_version} -> {new} ({changed} changed)")
    parts.append(head)
    strategy = plan.strategy
    if new is not None:
        parts.append(
            Text(
                f"strategy: max_surge {strategy.max_surge}, max_unavailable "
                f"{strategy.max_unavailable}, healthy after "
                f"{_num(strategy.min_healthy_s)}s, deadline "
                f"{_num(strategy.progress_deadline_s)}s, auto_rollback "
                f"{'on' if strategy.auto_rollback else 'off'}",
                style="dim",
            )
        )
        parts.append(
            Text(
                f"replaces {len(plan.replaced)} instance(s) of "
                f"{plan.replicas} replica(s) in {len(plan.batches)} "
                f"step(s); replay: {plan.outcome}"
            )
        )
    batches = plan.batches
    if batches:
        table = _compact_table("STEP", "DO", "REP", "INSTANCE", "VER", "WHY", "AVAIL", "MAX")
        for batch in batches:
            rows: list[tuple[str, str, str, str, str]] = [
                ("start", str(r), "(new)", f"{new}", "") for r in batch.start
            ]
            for stop in batch.stop:
                rows.append(
                    (
                        "stop",
                        "-" if stop.replica is None else str(stop.replica),
                        stop.instance_id,
                        "-" if stop.job_version is None else str(stop.job_version),
                        _short_why(stop.why),
                    )
                )
            for index, (action, replica, instance, version, why) in enumerate(rows):
                first = index == 0
                table.add_row(
                    str(batch.step) if first else "",
                    action,
                    replica,
                    instance,
                    version,
                    why,
                    f">={batch.available_at_least}" if first else "",
                    f"<={batch.instances_at_most}" if first else "",
                )
        parts.append(Text(""))
        parts.append(table)
    placements = plan.placements
    if placements:
        table = _compact_table("REP", "PLACED", "CLUSTER", "WHY")
        for item in placements:
            outcome = item.outcome
            table.add_row(
                str(item.replica),
                Text(outcome, style="yellow" if outcome == "pending" else "green"),
                item.cluster_name or "-",
                item.explanation,
            )
        parts.append(Text(""))
        parts.append(table)
    pending = plan.pending
    if pending:
        parts.append(
            Text(
                f"{len(pending)} replica(s) would stay PENDING: "
                + ", ".join(str(r) for r in pending),
                style="yellow",
            )
        )
    for note in plan.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    parts.append(Text("dry run: nothing was changed", style="bold"))
    return Group(*parts)
