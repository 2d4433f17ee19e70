"""`edgectl`: the command line of the edge orchestrator.

Talks to the root orchestrator's REST API (docs/api.md) and runs a whole local system
(`edgectl local up`). See docs/edgectl.md for every command with examples.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from edgectl import output
from edgectl.client import EdgectlError, RootClient
from edgectl.config import Target, resolve_data_dir, resolve_target
from edgectl.jobs import (
    DEFAULT_SETTLE_S,
    WaitMemo,
    failed_ids,
    load_job_file,
    rollout_verdict,
    update_body,
    wait_verdict,
)
from edgectl.logs import Source, choose_instances, label_width, prefixed
from schemas.cluster_api import NodeDetail
from schemas.root_api import EventRecord, JobView, NodeList

if TYPE_CHECKING:  # imported lazily at run time: `local` pulls in the node engine
    from edgectl import local as local_mod

__all__ = ["app", "main", "make_client"]

P = ParamSpec("P")
R = TypeVar("R")

HELP = """Command line of the edge orchestrator.

Talks to the root orchestrator's REST API. Where the root is and its operator token
come from --root-url/--token, else EDGE_ROOT_URL/EDGE_TOKEN, else the local.json that
`edgectl local up` writes in its data directory (--data-dir, EDGE_DATA_DIR,
~/.local/share/edge).

Start here: `edgectl local up` runs a whole system on this machine.
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
jobs_app = typer.Typer(
    help="Submit, list, inspect, update, scale and delete jobs.", no_args_is_help=True
)
clusters_app = typer.Typer(help="Clusters registered with the root.", no_args_is_help=True)
nodes_app = typer.Typer(
    help="Nodes of the clusters (fetched live): list, drain, cordon, uncordon.",
    no_args_is_help=True,
)
local_app = typer.Typer(
    help="Run a whole system on this machine (local processes).",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(clusters_app, name="clusters")
app.add_typer(nodes_app, name="nodes")
app.add_typer(local_app, name="local")


class OutputFormat(StrEnum):
    """How results are printed."""

    TABLE = "table"
    JSON = "json"


# ----------------------------------------------------------------------------- options

RootUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--root-url",
        help="URL of the root orchestrator (else EDGE_ROOT_URL, else local.json).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="operator token (else EDGE_TOKEN, else local.json).",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="data directory of `edgectl local up` (else EDGE_DATA_DIR, else ~/.local/share/edge).",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table (for people) or json (for scripts)."),
]


# ----------------------------------------------------------------------------- plumbing


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("edge-orchestrator")
        except PackageNotFoundError:
            text = "unknown"
        typer.echo(f"edgectl {text}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Command line of the edge orchestrator."""


def _console(stderr: bool = False) -> Console:
    """A console created when needed (never at import time)."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=None if stderr else wide, highlight=False)


def _err(text: str, style: str = "") -> None:
    _console(stderr=True).print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def make_client(target: Target) -> RootClient:
    """The API client for a target (tests replace this to inject a transport)."""
    return RootClient(target.root_url, target.token)


def _client(root_url: str | None, token: str | None, data_dir: Path | None) -> RootClient:
    return make_client(resolve_target(root_url, token, data_dir))


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print an EdgectlError as `error: ...` (and its hint) and exit with its status."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EdgectlError as exc:
            _err(f"error: {exc.message}", style="red")
            if exc.hint:
                _err(f"hint: {exc.hint}", style="dim")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _print(renderable: Any) -> None:
    _console().print(renderable)


# ----------------------------------------------------------------------------- jobs


def _wait_job(
    client: RootClient,
    job_id: str,
    *,
    goal: str,
    timeout: float,
    settle: float = DEFAULT_SETTLE_S,
    known_failures: frozenset[str] = frozenset(),
    interval: float = 0.5,
) -> JobView:
    """Poll the job until `wait_verdict` says done (returned) or failed (raised)."""
    console = _console(stderr=True)
    start = time.monotonic()
    memo = WaitMemo(started=start, known_failures=known_failures)
    job = client.get_job(job_id)
    last_line = ""

    def render(job: JobView, message: str) -> Group:
        header = Text()
        header.append(f"{job.name} ", style="bold")
        header.append_text(output.state_text(job.state))
        header.append(
            f"  {job.actual_replicas}/{job.desired_replicas} running"
            f"  {time.monotonic() - start:.0f}s  {message}",
            style="dim",
        )
        active = [i for i in job.instances if not output.is_ended(i)]
        return Group(header, output.replicas_table(active, time.time()))

    live = (
        Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else None
    )
    try:
        if live is not None:
            live.start()
        while True:
            now = time.monotonic()
            verdict = wait_verdict(job, goal, now=now, memo=memo, settle=settle, timeout=timeout)
            memo = verdict.memo
            message = verdict.message
            if live is not None:
                live.update(render(job, message))
            else:
                line = f"{job.state} {job.actual_replicas}/" + (
                    f"{job.desired_replicas} running: {message}"
                )
                if "settling (" in line:
                    line = line.split("settling (", 1)[0] + "settling"
                if line != last_line:
                    console.print(f"[{now - start:5.1f}s] {line}", markup=False)
                    last_line = line
            if verdict.verdict == "done":
                return job
            if verdict.verdict == "failed":
                raise EdgectlError(
                    f"job {job.name}: {message}",
                    hint=f"`edgectl jobs explain {job.name}` shows why"
                    if message.startswith("not ")
                    else f"`edgectl jobs get {job.name} --all` shows every instance",
                )
            time.sleep(interval)
            job = client.get_job(job_id)
    except KeyboardInterrupt:
        raise EdgectlError(
            "interrupted; the job goes on", exit_code=130, hint="`edgectl jobs get` shows it"
        ) from None
    finally:
        if live is not None:
            live.stop()


def _show_job(job: JobView, fmt: OutputFormat, *, ended: bool = False) -> None:
    if fmt is OutputFormat.JSON:
        output.print_json(job)
    else:
        _print(output.job_view(job, time.time(), ended=ended))


WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="wait until it is done (see above).")]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds --wait waits before giving up.", min=1)
]
SettleOpt = Annotated[
    float,
    typer.Option(
        "--settle",
        help="with --wait: seconds every replica must stay RUNNING (same instances, no "
        "restart) before the job counts as up.",
        min=0,
        max=3600,
    ),
]


@jobs_app.command("submit")
@handles_errors
def jobs_submit(
    file: Annotated[
        str,
        typer.Option(
            "--file", "-f", help="job spec, YAML or JSON (- reads stdin).", show_default=False
        ),
    ],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    settle: SettleOpt = DEFAULT_SETTLE_S,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Submit a job from a YAML or JSON file.

    With --wait, show the replicas live and exit 0 once every replica has been RUNNING
    for --settle seconds (or the job finished with success). Exit 1 with the reason as
    soon as the job or a replica FAILED (e.g. `replica 0 FAILED: exited with code 3`),
    or when it still is not up after --timeout (with why it is pending).
    """
    spec = load_job_file(file)
    with _client(root_url, token, data_dir) as client:
        job = client.submit_job(spec)
        if fmt is OutputFormat.TABLE:
            _err(f"job {job.name} submitted: {job.id}")
        if wait:
            job = _wait_job(client, job.id, goal="running", timeout=timeout, settle=settle)
        _show_job(job, fmt)


@jobs_app.command("ls")
@handles_errors
def jobs_ls(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="only jobs in this state (PENDING, RUNNING, DEGRADED, SUCCEEDED, FAILED, "
            "STOPPED, TERMINATING, TERMINATED).",
            show_default=False,
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", help="only jobs with instances on this cluster.", show_default=False
        ),
    ] = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """List jobs, oldest first."""
    with _client(root_url, token, data_dir) as client:
        jobs = client.list_jobs(state=state.upper() if state else None, cluster=cluster)
    if fmt is OutputFormat.JSON:
        output.print_json({"jobs": jobs})
    elif not jobs:
        _err("no jobs")
    else:
        _print(output.jobs_table(jobs, time.time()))


JobArg = Annotated[str, typer.Argument(help="job id or name.", metavar="JOB", show_default=False)]


@jobs_app.command("get")
@handles_errors
def jobs_get(
    job: JobArg,
    all_instances: Annotated[
        bool, typer.Option("--all", "-a", help="also show instances that ended.")
    ] = False,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Show one job: spec, state, replicas and where each instance runs."""
    with _client(root_url, token, data_dir) as client:
        _show_job(client.get_job(job), fmt, ended=all_instances)


@jobs_app.command("scale")
@handles_errors
def jobs_scale(
    job: JobArg,
    replicas: Annotated[
        int, typer.Argument(help="new number of replicas.", metavar="REPLICAS", min=0, max=1000)
    ],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    settle: SettleOpt = DEFAULT_SETTLE_S,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Change a job's number of replicas.

    Scaling down stops the highest replica numbers.

    With --wait, wait until the new count has been RUNNING for --settle seconds (for 0,
    until nothing runs); exit 1 with the reason as soon as a replica FAILED (failures
    from before the scale do not count), or after --timeout.
    """
    with _client(root_url, token, data_dir) as client:
        view = client.scale_job(job, replicas)
        if fmt is OutputFormat.TABLE:
            _err(f"job {view.name} scaled to {replicas} replica(s)")
        if wait:
            view = _wait_job(
                client,
                view.id,
                goal="running",
                timeout=timeout,
                settle=settle,
                known_failures=failed_ids(view),
            )
        _show_job(view, fmt)


@jobs_app.command("rm")
@handles_errors
def jobs_rm(
    job: JobArg,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 120.0,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Delete a job and stop its instances.

    The job is TERMINATING, then TERMINATED once every instance has ended.

    With --wait, wait until every instance has ended.
    """
    with _client(root_url, token, data_dir) as client:
        view = client.delete_job(job)
        if wait:
            view = _wait_job(client, view.id, goal="terminated", timeout=timeout)
    if fmt is OutputFormat.JSON:
        output.print_json(view)
    else:
        _print(f"job {view.name} ({view.id}) {view.state}")


_EXPLAIN_KEYS = ("id", "replica", "state", "cluster_name", "node_name", "placement")


@jobs_app.command("explain")
@handles_errors
def jobs_explain(
    job: JobArg,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Why each replica runs where it runs, or why it is pending.

    Shows the root's placement decision per active instance: the chosen cluster, the
    scores of the feasible clusters, the rejected ones by reason, and the refusals of
    clusters (with their nodes' reasons).
    """
    with _client(root_url, token, data_dir) as client:
        view = client.get_job(job)
        try:
            names = output.cluster_names(client.list_clusters())
        except EdgectlError:
            names = {}
    if fmt is OutputFormat.JSON:
        output.print_json(
            {
                "id": view.id,
                "name": view.name,
                "state": view.state,
                "reason": view.reason,
                "placement": view.placement,
                "instances": [
                    i.model_dump(mode="json", include=set(_EXPLAIN_KEYS))
                    for i in view.instances
                    if not output.is_ended(i)
                ],
            }
        )
    else:
        _print(output.explain_view(view, names))


def _wait_rollout(
    client: RootClient, job_id: str, version: int, *, timeout: float, interval: float = 0.5
) -> JobView:
    """Poll the job until the rollout of `version` completes (returned) or ends
    otherwise (raised, with the reason)."""
    console = _console(stderr=True)
    start = time.monotonic()
    deadline = start + timeout
    last: tuple[Any, ...] = ()
    try:
        while True:
            job = client.get_job(job_id)
            verdict, message = rollout_verdict(job, version)
            rollout = job.rollout
            state = str(rollout.state) if rollout is not None else "?"
            # a line when the state or the counts change (not for every second waited)
            key: tuple[Any, ...] = (state,)
            if rollout is not None:
                key += (rollout.updated, rollout.healthy, rollout.unavailable)
            if key != last or verdict != "waiting":
                console.print(
                    f"[{time.monotonic() - start:5.1f}s] {state}: {message}",
                    markup=False,
                    soft_wrap=True,
                )
                last = key
            if verdict == "done":
                return job
            if verdict == "failed":
                raise EdgectlError(f"job {job.name}: {message}")
            if time.monotonic() >= deadline:
                raise EdgectlError(
                    f"job {job.name}: version {version} not rolled out after "
                    f"{timeout:.0f}s: {message}",
                    hint=f"`edgectl jobs get {job.name}` shows the rollout",
                )
            time.sleep(interval)
    except KeyboardInterrupt:
        raise EdgectlError(
            "interrupted; the rollout goes on", exit_code=130, hint="`edgectl jobs get` shows it"
        ) from None


@jobs_app.command("update")
@handles_errors
def jobs_update(
    file: Annotated[
        str,
        typer.Option(
            "--file",
            "-f",
            help="the job's new spec, YAML or JSON (- reads stdin); its name says which job.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="print the plan (version, batches, placements); change nothing."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", "-w", help="follow the rollout until it completes (see above)."),
    ] = False,
    timeout: TimeoutOpt = 600.0,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Update a job from a file (rolling update).

    Sends the fields of the file that differ from the job's spec now (fields the file
    leaves out stay as they are). A change to image, command, env, resources,
    constraints and the other task fields makes a new job version, rolled out under
    the job's `update` strategy; replicas, priority and the strategy change in place.

    --dry-run prints the plan: the version it would create, which instances are
    replaced in which steps, and where each new replica would be placed now.

    With --wait, follow the rollout: exit 0 once it is complete, 1 if it rolled back,
    stopped or was superseded (with the reason), or after --timeout.
    """
    spec = load_job_file(file)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise EdgectlError(f"job file {file} has no name: the name says which job to update")
    with _client(root_url, token, data_dir) as client:
        current = client.get_job(name)
        body = update_body(current.spec, spec)
        if dry_run:
            plan = client.plan_update(current.id, body)
            if fmt is OutputFormat.JSON:
                output.print_json(plan)
            else:
                Console(width=80, highlight=False).print(output.plan_view(plan))
            return
        if not body:
            if fmt is OutputFormat.TABLE:
                _err(f"job {name}: no change (the file matches its spec)")
            _show_job(current, fmt)
            return
        before = current.job_version
        view = client.update_job(current.id, body)
        version = view.job_version
        if fmt is OutputFormat.TABLE:
            old_spec = current.spec.model_dump(mode="json")
            new_spec = view.spec.model_dump(mode="json")
            changed = [k for k in new_spec if old_spec.get(k) != new_spec[k]]
            if version != before:
                _err(f"job {name}: version {version} rolling out ({', '.join(changed)} changed)")
            elif not changed:
                _err(f"job {name}: no change")
            else:
                _err(f"job {name} updated in place ({', '.join(changed)} changed)")
        if wait:
            if version != before:
                view = _wait_rollout(client, view.id, version, timeout=timeout)
            else:  # like `jobs scale --wait`: failures from before the change do not count
                view = _wait_job(
                    client,
                    view.id,
                    goal="running",
                    timeout=timeout,
                    known_failures=failed_ids(current),
                )
        _show_job(view, fmt)


@jobs_app.command("history")
@handles_errors
def jobs_history(
    job: JobArg,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """List the versions of a job's spec, newest first.

    The latest ten are kept.

    The version the job targets now is marked with *; states: current (the last
    complete version), rolling_out, superseded, failed, cancelled.
    """
    with _client(root_url, token, data_dir) as client:
        doc = client.job_versions(job)
    if fmt is OutputFormat.JSON:
        output.print_json(doc)
    else:
        _print(output.versions_table(doc.versions, doc.job_version))


# ----------------------------------------------------------------------------- clusters, nodes


@clusters_app.command("ls")
@handles_errors
def clusters_ls(
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """List clusters: liveness, ready nodes, free capacity, running instances."""
    with _client(root_url, token, data_dir) as client:
        clusters = client.list_clusters()
    if fmt is OutputFormat.JSON:
        output.print_json({"clusters": clusters})
    elif not clusters:
        _err("no clusters registered")
    else:
        _print(output.clusters_table(clusters, time.time()))


ClusterArg = Annotated[str, typer.Argument(help="cluster id or name.", show_default=False)]


@clusters_app.command("reset-identity")
@handles_errors
def clusters_reset_identity(
    cluster: ClusterArg,
    ttl: Annotated[
        float,
        typer.Option("--ttl", help="seconds the approval waits for the cluster's registration."),
    ] = 3600.0,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Approve a new identity for a cluster (e.g. it lost its disk).

    Its credential stops working now; the next registration of its name within --ttl
    seconds takes the record over (same id, jobs and history) with a new credential.
    Without this (or a token from `clusters token create`), the root refuses a
    registration that names a known cluster without its credential.
    """
    with _client(root_url, token, data_dir) as client:
        view = client.reset_cluster_identity(cluster, ttl)
    if fmt is OutputFormat.JSON:
        output.print_json(view)
    else:
        _print(
            f"cluster {view.name} ({view.id}): identity reset; its next "
            f"registration within {ttl:g} s takes the record over"
        )


clusters_token_app = typer.Typer(
    help="Registration tokens bound to one cluster name.", no_args_is_help=True
)
clusters_app.add_typer(clusters_token_app, name="token")


@clusters_token_app.command("create")
@handles_errors
def clusters_token_create(
    name: Annotated[str, typer.Argument(help="the cluster name it registers.")],
    ttl: Annotated[
        float,
        typer.Option("--ttl", help="seconds within which it must be used (0: no limit)."),
    ] = 86400.0,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Create a registration token that registers only NAME, once (printed once).

    Give it to the cluster as its registration token. It registers a new cluster of
    that name, or takes over the record of a known one (an operator's approval);
    afterwards it only re-registers the cluster it registered.
    """
    with _client(root_url, token, data_dir) as client:
        created = client.create_registration_token(name, ttl if ttl > 0 else None)
    if fmt is OutputFormat.JSON:
        output.print_json(created)
    else:
        _print(f"registration token {created.id} for cluster name {name} (shown once):")
        typer.echo(created.token)


@clusters_token_app.command("ls")
@handles_errors
def clusters_token_ls(
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """List name-bound registration tokens (never the tokens themselves)."""
    with _client(root_url, token, data_dir) as client:
        tokens = client.list_registration_tokens()
    if fmt is OutputFormat.JSON:
        output.print_json({"tokens": tokens})
        return
    if not tokens:
        _err("no registration tokens")
    for t in tokens:
        state = f"used by {t.used_by}" if t.used_by else "unused"
        if t.expired:
            state = "expired unused"
        typer.echo(f"{t.id}  {t.name}  {state}")


@clusters_token_app.command("rm")
@handles_errors
def clusters_token_rm(
    token_id: Annotated[str, typer.Argument(help="the token id (from `token ls`).")],
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Delete (revoke) a name-bound registration token."""
    with _client(root_url, token, data_dir) as client:
        gone = client.delete_registration_token(token_id)
    if fmt is OutputFormat.JSON:
        output.print_json(gone)
    else:
        _print(f"registration token {gone.id} for {gone.name} deleted")


@nodes_app.command("ls")
@handles_errors
def nodes_ls(
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", "-c", help="only this cluster (id or name).", show_default=False),
    ] = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """List nodes of every cluster (or one): liveness, CPU, memory, temperature, tasks.

    The root fetches them live from each cluster; a cluster that does not answer is
    reported on stderr and makes the exit status 1.
    """
    failed: list[str] = []
    nodes: list[tuple[NodeList, NodeDetail]] = []
    with _client(root_url, token, data_dir) as client:
        targets = [cluster] if cluster else [c.name for c in client.list_clusters()]
        for name in targets:
            try:
                page, found = client.cluster_nodes(name)
            except EdgectlError as exc:
                if cluster:
                    raise
                failed.append(name)
                _err(f"warning: cluster {name}: {exc.message}", style="yellow")
                continue
            nodes.extend((page, node) for node in found)
    if fmt is OutputFormat.JSON:
        docs = [
            {
                **node.model_dump(mode="json"),
                "cluster_id": page.cluster_id,
                "cluster_name": page.cluster_name,
            }
            for page, node in nodes
        ]
        output.print_json({"nodes": docs, "unreachable_clusters": failed})
    elif nodes:
        _print(output.nodes_table((page.cluster_name, node) for page, node in nodes))
    else:
        _err("no nodes")
    if failed:
        raise typer.Exit(1)


NodeArg = Annotated[str, typer.Argument(help="node id or name.", metavar="NODE")]
NodeClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        "-c",
        help="the node's cluster (id or name); without it the node is looked up in every "
        "cluster by id, then by name.",
        show_default=False,
    ),
]


def _node_action(
    action: str,
    node: str,
    cluster: str | None,
    root_url: str | None,
    token: str | None,
    data_dir: Path | None,
    fmt: OutputFormat,
) -> None:
    """Find the node (unless --cluster names its cluster), act on it through the root."""
    from edgectl.nodes import find_node

    with _client(root_url, token, data_dir) as client:
        if cluster is None:
            found: list[tuple[str, str, NodeDetail]] = []
            unreachable: list[str] = []
            for c in client.list_clusters():
                try:
                    _, nodes = client.cluster_nodes(c.name)
                except EdgectlError as exc:
                    unreachable.append(c.name)
                    _err(f"warning: cluster {c.name}: {exc.message}", style="yellow")
                    continue
                found.extend((c.id, c.name, n) for n in nodes)
            hit = find_node(found, node, unreachable=unreachable)
            cluster, node = hit.cluster_id, hit.node_id
        result = client.node_action(cluster, node, action)
    if fmt is OutputFormat.JSON:
        output.print_json(result)
    else:
        _print(output.node_action_view(result, client.action_node(result)))


@nodes_app.command("drain")
@handles_errors
def nodes_drain(
    node: NodeArg,
    cluster: NodeClusterOpt = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Drain a node: no new placements, its instances move to other nodes now.

    Prints what moved (and where) and what is stuck (and why: such instances stay
    and are retried on every reconcile of the cluster). `uncordon` ends it.
    """
    _node_action("drain", node, cluster, root_url, token, data_dir, fmt)


@nodes_app.command("cordon")
@handles_errors
def nodes_cordon(
    node: NodeArg,
    cluster: NodeClusterOpt = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Cordon a node: no new placements on it; what runs there stays.

    Its capacity leaves the cluster's reports, so the root sends new work elsewhere.
    """
    _node_action("cordon", node, cluster, root_url, token, data_dir, fmt)


@nodes_app.command("uncordon")
@handles_errors
def nodes_uncordon(
    node: NodeArg,
    cluster: NodeClusterOpt = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Uncordon a node: it takes new placements again (ends a drain too).

    Instances a drain moved stay where they are now.
    """
    _node_action("uncordon", node, cluster, root_url, token, data_dir, fmt)


# ----------------------------------------------------------------------------- events


@app.command("events")
@handles_errors
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events as they happen.")
    ] = False,
    since: Annotated[
        int | None,
        typer.Option("--since", help="only events after this seq (the first column).", min=0),
    ] = None,
    tail: Annotated[
        int, typer.Option("--tail", help="show at most the last N past events (0: all).", min=0)
    ] = 50,
    job: Annotated[
        str | None, typer.Option("--job", "-j", help="only this job's events (id or name).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="only this kind, e.g. instance.state.")
    ] = None,
    category: Annotated[
        str | None,
        typer.Option("--category", help="only job, instance, cluster, node or scheduling events."),
    ] = None,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    fmt: OutputOpt = OutputFormat.TABLE,
) -> None:
    """Show the event log; --follow streams it live.

    Every state change and decision, oldest first. With --follow, then stream new
    events live (server-sent events; reconnects without losing any) until Ctrl-C.
    -o json prints one JSON object per line.
    """
    console = _console()
    with _client(root_url, token, data_dir) as client:
        filters: dict[str, str | None] = {"kind": kind, "category": category}
        if job:
            filters["job_id"] = client.get_job(job).id
        try:
            names = output.cluster_names(client.list_clusters())
        except EdgectlError:
            names = {}

        def emit(event: EventRecord) -> None:
            if fmt is OutputFormat.JSON:
                import json

                sys.stdout.write(json.dumps(event.model_dump(mode="json")) + "\n")
                sys.stdout.flush()
            else:
                console.print(output.event_view(event, names))

        from collections import deque

        cursor = since or 0
        past: deque[EventRecord] = deque(maxlen=tail or None)
        while True:
            page = client.events(since=cursor, filters=filters)
            batch = page.events
            past.extend(batch)
            cursor = page.next_since or cursor
            if len(batch) < 1000:
                break
        for event in past:
            emit(event)
        if not follow:
            return
        with _interrupt_quietly():
            for event in client.stream_events(
                since=cursor, filters=filters, on_retry=lambda m: _err(m, style="yellow")
            ):
                emit(event)


@contextmanager
def _interrupt_quietly() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# ----------------------------------------------------------------------------- local


class _RichSink:
    """Start-up progress on the terminal (stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("preparing", total=None)

    def __enter__(self) -> _RichSink:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, phase: str, done: int, total: int) -> None:
        self.progress.update(self.task, description=phase, completed=done, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


class _PlainSink:
    """Start-up progress as plain lines (no terminal: logs, pipes, `--detach`)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.monotonic()
        self.last = ""

    def __enter__(self) -> _PlainSink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, phase: str, done: int, total: int) -> None:
        if phase != self.last:
            self.last = phase
            self.note(f"[{time.monotonic() - self.start:6.1f}s] {phase} ({done}/{total})")

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _sink(console: Console) -> _RichSink | _PlainSink:
    return _RichSink(console) if console.is_terminal else _PlainSink(console)


def _summary(local: Mapping[str, Any], data_dir: Path, *, elapsed: float, resumed: bool) -> None:
    console = _console()
    clusters = local.get("clusters") or []
    nodes = sum(len(c.get("nodes") or []) for c in clusters)
    what = "resumed" if resumed else "ready"
    console.print(
        f"local system {what} in {elapsed:.1f}s: {len(clusters)} cluster(s), {nodes} node(s)",
        style="bold green",
        markup=False,
    )
    console.print(f"  root      {local.get('root_url')}", markup=False)
    console.print(f"  token     {local.get('token')}", markup=False)
    for c in clusters:
        console.print(
            f"  cluster   {c.get('name')}  {c.get('url')}  broker {c.get('broker')}  "
            f"nodes {', '.join(c.get('nodes') or [])}",
            markup=False,
        )
    console.print(f"  data      {data_dir}   (logs in {data_dir / 'logs'})", markup=False)
    flag = "" if resolve_data_dir(None) == data_dir else f" --data-dir {data_dir}"
    examples = Path(__file__).resolve().parents[1] / "examples"
    try:
        shown = examples.relative_to(Path.cwd())
    except ValueError:
        shown = examples
    console.print("next steps:", style="bold", markup=False)
    if flag:
        console.print(
            f"  export EDGE_DATA_DIR={data_dir}   # or add{flag} to each command", markup=False
        )
    console.print("  edgectl clusters ls", markup=False)
    console.print("  edgectl nodes ls", markup=False)
    console.print(f"  edgectl jobs submit -f {shown / 'native-job.yaml'} --wait", markup=False)
    console.print("  edgectl jobs ls", markup=False)
    console.print("  edgectl events --follow", markup=False)
    console.print(f"  edgectl local down{flag}", markup=False)


@contextmanager
def _stop_on_signals(stop: threading.Event, say: Callable[[str], None]) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set `stop` (the first time) instead of killing us."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            say("already stopping; please wait")
            return
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _local_up_argv(
    data_dir: Path,
    clusters: int | None,
    nodes: int | None,
    store: str | None,
    root_port: int | None,
    timeout: float,
) -> list[str]:
    argv = [sys.executable, "-m", "edgectl.main", "local", "up", "--data-dir", str(data_dir)]
    if clusters is not None:
        argv += ["--clusters", str(clusters)]
    if nodes is not None:
        argv += ["--nodes-per-cluster", str(nodes)]
    if store is not None:
        argv += ["--store", store]
    if root_port is not None:
        argv += ["--root-port", str(root_port)]
    return [*argv, "--timeout", str(timeout)]


def _store_option(value: str | None) -> str | None:
    if value is None or value == "sqlite" or value.startswith(("mongodb://", "mongodb+srv://")):
        return value
    raise typer.BadParameter("use sqlite or a mongodb:// URL")


@local_app.command("up")
@handles_errors
def local_up(
    clusters: Annotated[
        int | None,
        typer.Option(
            "--clusters",
            help="clusters to run (a new system: 2).",
            min=1,
            max=20,
            show_default=False,
        ),
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes-per-cluster",
            help="node engines per cluster (a new system: 2).",
            min=1,
            max=50,
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="the root's store: sqlite (in the data directory) or a mongodb:// URL "
            "(a new system: sqlite).",
            callback=_store_option,
            show_default=False,
        ),
    ] = None,
    root_port: Annotated[
        int | None,
        typer.Option(
            "--root-port",
            help="port of the root's API (a new system: any free port).",
            min=1,
            max=65535,
            show_default=False,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", "-d", help="run in the background; return once every node has joined."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for every node to join.", min=1)
    ] = 180.0,
) -> None:
    """Start a local system: brokers, root, clusters, node engines.

    One Mosquitto per cluster, the root, the cluster orchestrators and the node
    engines, as local processes with their logs in DATA_DIR/logs. Waits until every
    node has joined and its cluster reported it to the root, prints the root URL, the
    operator token and next steps, and writes DATA_DIR/local.json, which the other
    commands read. Stays in the foreground; Ctrl-C, SIGTERM or `edgectl local down`
    stops everything, including the tasks the nodes run. Running it again on the same
    data directory resumes the same system (same ids and jobs).
    """
    directory = resolve_data_dir(data_dir)
    if detach:
        _local_up_detached(directory, clusters, nodes, store, root_port, timeout)
    elif not _local_up_foreground(directory, clusters, nodes, store, root_port, timeout):
        raise typer.Exit(1)


def _already_running(directory: Path) -> EdgectlError:
    return EdgectlError(
        f"a local system already runs in {directory}",
        hint=f"`edgectl local down --data-dir {directory}` stops it",
    )


def _local_up_detached(
    directory: Path,
    clusters: int | None,
    nodes: int | None,
    store: str | None,
    root_port: int | None,
    timeout: float,
) -> None:
    """`local up --detach`: start `local up` in the background, return once it is ready."""
    from edgectl import local

    started = time.monotonic()
    probe = local.DataDirLock(directory)
    if not probe.acquire():
        raise _already_running(directory)
    probe.release()
    resumed = (directory / local.SYSTEM_FILE).exists()
    argv = _local_up_argv(directory, clusters, nodes, store, root_port, timeout)
    with _sink(_console(stderr=True)) as sink:
        doc = local.start_detached(
            directory,
            argv,
            timeout=timeout + 60,
            on_progress=lambda p: sink.update(
                str(p.get("phase", "starting")), int(p.get("done", 0)), int(p.get("total", 1))
            ),
        )
    _summary(doc, directory, elapsed=time.monotonic() - started, resumed=resumed)
    pid = doc["supervisor"]["pid"]
    _err(f"running in the background (pid {pid}, log {local.Layout(directory).log('edgectl')})")


def _local_up_foreground(
    directory: Path,
    clusters: int | None,
    nodes: int | None,
    store: str | None,
    root_port: int | None,
    timeout: float,
) -> bool:
    """`local up` in the foreground: hold the data directory's lock, build the system,
    run it until a signal or `local down`, stop it. False if it failed."""
    from edgectl import local

    lock = local.DataDirLock(directory)
    if not lock.acquire():
        raise _already_running(directory)
    stop = threading.Event()
    try:
        with _stop_on_signals(stop, _err):
            return _run_local_system(directory, clusters, nodes, store, root_port, timeout, stop)
    finally:
        lock.release()


def _run_local_system(
    directory: Path,
    clusters: int | None,
    nodes: int | None,
    store: str | None,
    root_port: int | None,
    timeout: float,
    stop: threading.Event,
) -> bool:
    """Start, watch and stop one local system (lock held); False if it failed."""
    from edgectl import local

    started = time.monotonic()
    layout = local.Layout(directory)
    system: local.LocalSystem | None = None
    try:
        with _sink(_console(stderr=True)) as sink:
            local.stale_cleanup(layout, sink.note)
            plan, resumed = local.resolve_plan(
                directory, clusters=clusters, nodes=nodes, store=store, root_port=root_port
            )
            log = os.environ.get(local.DETACHED_LOG_ENV)
            system = local.LocalSystem(
                layout,
                plan,
                progress=sink,
                stop=stop,
                resumed=resumed,
                log=Path(log) if log else None,
            )
            system.start(timeout=timeout)
        _summary(system.document(), directory, elapsed=time.monotonic() - started, resumed=resumed)
        _err("running; Ctrl-C here (or `edgectl local down`) stops everything")
        system.watch()
    except local.StartupInterrupted:
        _err("interrupted while starting")
    except EdgectlError as exc:
        _err(f"error: {exc.message}", style="red")
        if exc.hint:
            _err(f"hint: {exc.hint}", style="dim")
        return False
    finally:
        if system is not None:
            _stop_local_system(system, directory)
    return True


def _stop_local_system(system: local_mod.LocalSystem, directory: Path) -> None:
    """Stop every process of `system` and say whether anything is left."""
    from edgectl import local

    _err("stopping the local system ...")
    t0 = time.monotonic()
    system.shutdown(note=_err)
    left = local.leftover_processes(directory)
    for proc in left:
        _err(f"warning: still running: pid {proc.pid} {_cmdline(proc)}")
    gone = "" if left else "; no process left"
    _err(f"stopped in {time.monotonic() - t0:.1f}s{gone}")


def _cmdline(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline())
    except Exception:
        return "?"


@local_app.command("down")
@handles_errors
def local_down(
    data_dir: DataDirOpt = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="seconds to wait for `local up` to stop everything.", min=1),
    ] = 120.0,
) -> None:
    """Stop a local system (from any shell), tasks included.

    Asks its `edgectl local up` to stop everything and waits for it; if that process is
    gone, stops the recorded processes itself. Either way the tasks the node engines
    started are stopped too, and no process of the system is left.
    """
    from edgectl import local

    directory = resolve_data_dir(data_dir)
    t0 = time.monotonic()
    done = local.down(directory, timeout=timeout, note=lambda s: _err(s, style="dim"))
    left = local.leftover_processes(directory)
    for proc in left:
        _err(f"warning: still running: pid {proc.pid} {_cmdline(proc)}", style="yellow")
    if not done:
        _print(f"nothing was running in {directory}")
    else:
        _print(f"local system in {directory} stopped in {time.monotonic() - t0:.1f}s")
    if left:
        raise typer.Exit(1)


@local_app.command("status")
@handles_errors
def local_status(data_dir: DataDirOpt = None, fmt: OutputOpt = OutputFormat.TABLE) -> None:
    """Show a local system: state, URLs, processes.

    Exit status: 0 when it runs and every process is alive; 1 when a process is down
    (or its `local up` is gone) although the system was not stopped; 3 when it is
    stopped (like `systemctl status`).
    """
    from edgectl import local
    from edgectl.config import read_local_file

    directory = resolve_data_dir(data_dir)
    doc = read_local_file(directory)
    if doc is None:
        raise EdgectlError(
            f"no local system in {directory}", hint="start one with `edgectl local up`"
        )
    rows = []
    for record in doc.get("processes") or []:
        alive = local._same_process(record) is not None
        rows.append({**record, "alive": alive})
    sup = doc.get("supervisor") or {}
    stopped = doc.get("state") == "stopped"
    running = not stopped and local._same_process(sup) is not None
    down = [str(r.get("name")) for r in rows if not r["alive"]]
    if not stopped and not running:
        down.insert(0, "edgectl local up")
    healthy = running and not down
    if fmt is OutputFormat.JSON:
        output.print_json({**doc, "processes": rows, "running": running, "down": down})
    else:
        _print(output.local_view(doc, rows, running))
    if stopped:
        raise typer.Exit(3)
    if not healthy:
        _err(
            f"error: {len(down)} process(es) of the local system are down: {', '.join(down)}"
            + (f" (logs in {directory / 'logs'})" if down else ""),
        )
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- logs


@app.command("logs")
@handles_errors
def logs(
    job: Annotated[str, typer.Argument(help="the job (id or name).", show_default=False)],
    instance: Annotated[
        str | None,
        typer.Option("--instance", "-i", help="only this instance (id); default: the active ones."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="keep printing new output until the task ends."),
    ] = False,
    tail: Annotated[
        int,
        typer.Option("--tail", "-n", help="lines from the end to show first.", min=0, max=10000),
    ] = 100,
    root_url: RootUrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Show the output (stdout and stderr) of a job's tasks; -f follows it.

    One active instance: its output as it is. Several: every line prefixed with its
    replica (`NAME-REPLICA | ...`), like `docker compose logs`. A job with no active
    instance shows its last one (e.g. why it failed). The output is read from the node
    through its cluster; with --follow the stream ends with a line saying how the task
    ended. Exits 1 if the job, the instance, its cluster or its node cannot be reached.
    """
    with _client(root_url, token, data_dir) as client:
        view = client.get_job(job)
        sources, note = choose_instances(view, instance)
        if note:
            _err(note, style="dim")
        job_ref = view.id or job
        if len(sources) == 1:
            _single_logs(client, job_ref, sources[0].instance_id, tail=tail, follow=follow)
            return
        width = label_width(sources)
        if follow:
            failed = _follow_many(client, job_ref, sources, width, tail)
        else:
            failed = _print_many(client, job_ref, sources, width, tail)
        if failed:
            raise typer.Exit(1)


def _single_logs(
    client: RootClient, job: str, instance_id: str, *, tail: int, follow: bool
) -> None:
    if not follow:
        sys.stdout.write(client.instance_logs(job, instance_id, tail=tail))
        sys.stdout.flush()
        return
    with _interrupt_quietly():
        for text in client.follow_logs(job, instance_id, tail=tail):
            sys.stdout.write(text)
            sys.stdout.flush()


def _print_many(client: RootClient, job: str, sources: list[Source], width: int, tail: int) -> bool:
    failed = False
    for source in sources:
        try:
            text = client.instance_logs(job, source.instance_id, tail=tail)
        except EdgectlError as exc:
            _err(f"error: {source.label}: {exc.message}", style="red")
            failed = True
            continue
        for line in prefixed(source.label, width, text):
            sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return failed


def _follow_many(
    client: RootClient, job: str, sources: list[Source], width: int, tail: int
) -> bool:
    """Follow several instances at once (a thread each), printing whole lines as they come."""
    import queue

    lines: queue.SimpleQueue[tuple[str, str | None, str | None]] = queue.SimpleQueue()

    def pump(source: Source) -> None:
        try:
            for line in client.follow_logs(job, source.instance_id, tail=tail, lines=True):
                lines.put((source.label, line, None))
        except EdgectlError as exc:
            lines.put((source.label, None, exc.message))
        except Exception as exc:  # a thread must report, never die silently
            lines.put((source.label, None, str(exc)))
        lines.put((source.label, None, None))

    for source in sources:
        threading.Thread(target=pump, args=(source,), daemon=True).start()
    running = len(sources)
    failed = False
    with _interrupt_quietly():
        while running:
            label, line, error = lines.get()
            if line is not None:
                sys.stdout.write(f"{label.ljust(width)} | {line}\n")
                sys.stdout.flush()
            elif error is not None:
                _err(f"error: {label}: {error}", style="red")
                failed = True
            else:
                running -= 1
    return failed


def main() -> None:
    """Console script entry point."""
    app(prog_name="edgectl")


if __name__ == "__main__":  # pragma: no cover
    main()
