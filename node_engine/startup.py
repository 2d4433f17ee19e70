"""Build half of ``node-engine``: settings -> identity -> runtimes -> engine.

`build(argv, stopper)` returns a typed `NodePlan` (what will run: settings, usable and
unavailable runtimes, the joined identity, the wired `Engine`) or raises `StartupExit`
with the exit status and the one line for stderr; `node_engine.main` runs the plan.
Each step is a function of its own (`read_settings`, `build_host`, `join`,
`build_engine`) so tests can drive them one at a time.

Imports are kept lean on purpose (the engine targets small devices): no HTTP client
library (urllib does the one join request; the docker runtime speaks the Docker Engine
API with `node_engine.runtimes.docker_api`, stdlib only, imported only when the docker
runtime is enabled and a Docker endpoint exists); heavy modules are imported inside the
steps, after `node_engine.lean` has done its work.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_engine import __version__, lean

if TYPE_CHECKING:  # the real imports happen in the steps, after the footprint measures
    from node_engine.engine import Engine
    from node_engine.monitor import Monitor
    from node_engine.runtimes.base import TaskRuntime
    from node_engine.runtimes.native_policy import NativeGuard
    from node_engine.settings import NodeEngineSettings
    from schemas.common import Runtime
    from schemas.node import JoinRequest, JoinResponse, NodeInfo

log = logging.getLogger("node_engine")

EXIT_CONFIG = 2
EXIT_JOIN_REFUSED = 3
EXIT_JOIN_FAILED = 1


class StartupExit(Exception):
    """The engine cannot (or need not) start: exit with `code`, `message` on stderr
    (no message: a stop request arrived before the engine ran, exit 0)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"exit {code}")
        self.code = code
        self.message = message


@dataclass
class Stopper:
    """SIGTERM/SIGINT -> stop: before the engine exists it ends the join (and its
    backoff) through `stop`; once `engine` is set it asks the engine loop to stop."""

    stop: threading.Event = field(default_factory=threading.Event)
    inbox: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    engine: Engine | None = None

    def request(self, signum: int = 0, frame: Any = None) -> None:
        """Ask for a stop (the signal handler)."""
        self.stop.set()
        if self.engine is not None:
            self.engine.request_stop()
        else:
            self.inbox.put(None)

    def install(self) -> None:
        """Route SIGTERM and SIGINT to `request` (main thread only)."""
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)


@dataclass
class HostPlan:
    """What this host offers, known before the join: the native policy, the usable
    runtimes (and why the others are not), the monitor and the node description."""

    native_guard: NativeGuard
    runtimes: dict[Runtime, TaskRuntime]
    unavailable: dict[Runtime, str]
    monitor: Monitor
    info: NodeInfo


@dataclass
class NodePlan:
    """Everything `node_engine.main.run` needs: the settings, the host, the identity the
    cluster gave (or the stored one) and the wired engine, not yet running."""

    settings: NodeEngineSettings
    host: HostPlan
    identity: JoinResponse
    engine: Engine

    def describe(self) -> str:
        """The log line of a starting engine."""
        runtimes = [r.value for r in self.host.runtimes] or "none"
        return (
            f"node {self.identity.node_id} running: runtimes {runtimes}, status every "
            f"{self.engine.status_interval:.2f} s, state in {self.settings.state_dir}"
        )


def docker_endpoint_present(environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """Cheap check before importing the docker runtime: DOCKER_HOST set or the socket exists."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_HOST"):
        return True, ""
    sock = Path("/var/run/docker.sock")
    if sock.exists():
        return True, ""
    return False, f"no Docker engine socket ({sock}) and DOCKER_HOST is not set"


def _docker_client() -> Any:
    from node_engine.runtimes.docker_api import DockerClient

    return DockerClient.from_env(timeout=30)


def build_runtimes(
    enabled: list[Runtime],
    state_dir: Path,
    engine_id: str,
    native_guard: NativeGuard | None = None,
) -> tuple[dict[Runtime, TaskRuntime], dict[Runtime, str]]:
    """Instantiate the enabled runtimes and keep those that say they are usable here.

    `native_guard` is the node's native policy (None: tasks run as this process and
    anything is allowed, what ``edgectl local down`` needs to find and stop tasks)."""
    from schemas.common import Runtime

    usable: dict[Runtime, TaskRuntime] = {}
    unavailable: dict[Runtime, str] = {}
    for kind in enabled:
        runtime: TaskRuntime
        try:
            if kind is Runtime.NATIVE:
                from node_engine.runtimes.native import NativeRuntime

                runtime = NativeRuntime(
                    state_dir / "native", engine_id=engine_id, guard=native_guard
                )
            elif kind is Runtime.DOCKER:
                present, why = docker_endpoint_present()
                if not present:
                    unavailable[kind] = why
                    log.info("runtime docker unavailable: %s", why)
                    continue
                from node_engine.runtimes.docker import DockerRuntime

                runtime = DockerRuntime(_docker_client, engine_id, state_dir=state_dir / "docker")
            else:  # pragma: no cover - enum is exhaustive
                continue
            ok, why = runtime.available()
        except Exception as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if ok:
            usable[kind] = runtime
            log.info("runtime %s usable%s", kind.value, f" ({why})" if why else "")
        else:
            unavailable[kind] = why
            log.warning("runtime %s unavailable: %s", kind.value, why)
    return usable, unavailable


STATE_PRIVATE = ("docker",)
"""Directories of the state directory made 0700 before the runtimes fill them."""


def prepare_state_dir(path: Path, *, traversable: bool = False) -> None:
    """Create the state directory with mode 0700 (it holds secrets) or tighten it.

    `traversable` (native tasks run as another user, whose working directories are under
    ``native/work/``): 0711, others may pass through but not list it; then nothing else
    in it may be open to others (group/other bits are removed from its entries but
    ``native``, which the native runtime sets up itself)."""
    wanted = 0o711 if traversable else 0o700
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != wanted:
        os.chmod(path, wanted)
    if not traversable:
        return
    for name in STATE_PRIVATE:
        (path / name).mkdir(exist_ok=True, mode=0o700)
    for entry in os.scandir(path):
        if entry.name == "native":
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if mode & 0o077 and not entry.is_symlink():
            os.chmod(entry.path, mode & 0o7700)


def obtain_identity(
    settings: NodeEngineSettings,
    request_factory: Callable[[JoinResponse | None], JoinRequest],
    stop: threading.Event,
) -> JoinResponse:
    """Join (or rejoin with the stored id) and store the response.

    With a stored identity one attempt is made; if the cluster is unreachable the node
    starts with the stored credentials (autonomy). Without one it retries with backoff
    until it gets an answer. `JoinRefused` propagates.
    """
    from node_engine.identity import Joiner, JoinUnavailable, load_identity, save_identity

    stored = load_identity(settings.state_dir)
    joiner = Joiner(
        settings.cluster_url,
        settings.join_token,
        sleep=stop.wait,
        max_delay=settings.join_max_delay,
    )
    request = request_factory(stored)
    if stored is not None:
        try:
            response = joiner.join(request, attempts=1)
        except JoinUnavailable as exc:
            log.warning(
                "cluster unreachable (%s): starting with the stored identity of node %s",
                exc,
                stored.node_id,
            )
            return stored
        if response.node_id != stored.node_id:
            log.warning(
                "cluster assigned a new node id %s (was %s)", response.node_id, stored.node_id
            )
    else:
        if settings.join_token is None:
            raise ValueError(
                "no stored identity and no join token: set --join-token or EDGE_NODE_JOIN_TOKEN"
            )
        response = joiner.join(request, should_stop=stop.is_set)
    save_identity(settings.state_dir, response)
    log.info("joined cluster %s as node %s", response.cluster_name, response.node_id)
    return response


def needs_tls_at_start(settings: NodeEngineSettings) -> bool:
    """Whether OpenSSL must stay loadable: https join URL, docker runtime over TLS,
    stored TLS broker (a plain unix-socket docker runtime needs no ``ssl``)."""
    from schemas.common import Runtime

    if settings.cluster_url.startswith("https:"):
        return True
    if Runtime.DOCKER in settings.runtimes:
        from node_engine.runtimes.docker_api import tls_wanted

        if tls_wanted():
            return True
    try:
        stored = json.loads((settings.state_dir / "identity.json").read_text())
        return bool(stored.get("mqtt", {}).get("tls"))
    except (OSError, ValueError, AttributeError):
        return False


def read_settings(argv: list[str] | None) -> NodeEngineSettings:
    """Settings from flags, environment and file; `StartupExit(2)` naming the flag and
    the variable of a bad value. Imports pydantic-settings the lean way first."""
    # Footprint: keep OpenSSL out until we know something needs TLS, and import
    # pydantic-settings without asyncio (see node_engine/lean.py).
    lean.hide_openssl()
    lean.import_pydantic_settings()
    from pydantic import ValidationError

    from node_engine.settings import ENV_PREFIX, FLAG_NAMES, NodeEngineSettings, load_settings
    from schemas.settings_cli import settings_error

    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        line = settings_error(
            exc, model=NodeEngineSettings, env_prefix=ENV_PREFIX, flags=FLAG_NAMES
        )
        raise StartupExit(EXIT_CONFIG, f"node-engine: {line}") from None
    except ValueError as exc:
        raise StartupExit(EXIT_CONFIG, f"node-engine: invalid settings: {exc}") from None
    if needs_tls_at_start(settings):
        lean.allow_tls()
    return settings


def configure_logging(settings: NodeEngineSettings) -> None:
    """Log lines to stderr at the configured level (paho only from WARNING)."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("paho").setLevel(logging.WARNING)


def build_host(settings: NodeEngineSettings) -> HostPlan:
    """Native policy, state directory, usable runtimes, monitor and node description;
    `StartupExit(2)` when the state directory cannot be used."""
    from node_engine.runtimes.native_policy import NativeGuard
    from schemas.common import Runtime as RuntimeKind

    native_guard = NativeGuard(
        settings.native_run_as,
        allowed_commands=settings.native_allowed_commands,
        allowed_workdirs=settings.native_allowed_workdirs,
        allow_env=settings.native_allow_env_overrides,
    )
    try:
        prepare_state_dir(
            settings.state_dir,
            traversable=native_guard.switches and RuntimeKind.NATIVE in settings.runtimes,
        )
    except OSError as exc:
        raise StartupExit(
            EXIT_CONFIG, f"node-engine: cannot use state directory {settings.state_dir}: {exc}"
        ) from None

    import psutil

    from node_engine.identity import describe_node, engine_id
    from node_engine.monitor import Monitor

    runtimes, unavailable = build_runtimes(
        settings.runtimes, settings.state_dir, engine_id(settings.state_dir), native_guard
    )
    if RuntimeKind.NATIVE in runtimes:
        for level, line in native_guard.describe():
            log.log(level, "%s", line)
    monitor = Monitor(psutil, settings.state_dir)
    monitor.probe()
    info = describe_node(
        name=settings.name,
        labels=settings.labels,
        runtimes=list(runtimes),
        accelerators=monitor.accelerators,
        disk_path=settings.state_dir,
        psutil_mod=psutil,
        engine_version=__version__,
    )
    return HostPlan(native_guard, runtimes, unavailable, monitor, info)


def join(settings: NodeEngineSettings, host: HostPlan, stop: threading.Event) -> JoinResponse:
    """The identity to run with (`obtain_identity`); `StartupExit` with 3 for a refusal,
    2 for a missing token, 1 when the cluster cannot be reached, 0 (no message) when a
    stop request came during the join."""
    from node_engine.identity import JoinRefused, refusal_message
    from schemas.node import JoinRequest

    def request_factory(stored: JoinResponse | None) -> JoinRequest:
        if stored is None:
            return JoinRequest(info=host.info)
        return JoinRequest(info=host.info, node_id=stored.node_id, node_secret=stored.node_secret)

    try:
        identity = obtain_identity(settings, request_factory, stop)
    except JoinRefused as exc:
        message = refusal_message(exc, settings.cluster_url, settings.state_dir)
        raise StartupExit(EXIT_JOIN_REFUSED, message) from None
    except ValueError as exc:
        raise StartupExit(EXIT_CONFIG, f"node-engine: {exc}") from None
    except Exception as exc:  # JoinUnavailable after a stop request
        if stop.is_set():
            log.info("stopped before joining")
            raise StartupExit(0) from None
        raise StartupExit(EXIT_JOIN_FAILED, f"node-engine: cannot join: {exc}") from None
    if stop.is_set():
        raise StartupExit(0)
    if identity.mqtt.tls:
        lean.allow_tls()
    return identity


def build_engine(
    settings: NodeEngineSettings,
    host: HostPlan,
    identity: JoinResponse,
    inbox: queue.SimpleQueue[Any],
) -> Engine:
    """Transport, durable state (tasks, seen commands, outbox) and the engine wired to
    them, not yet running; `StartupExit(2)` when the broker's CA cannot be loaded."""
    lean.import_paho_client()  # before node_engine.mqtt: without dnspython
    from node_engine.engine import Engine, offline_presence
    from node_engine.mqtt import MqttTransport
    from node_engine.state import Outbox, SeenCommands, TaskStore
    from node_engine.supervisor import Supervisor

    node_id = identity.node_id
    try:
        transport = MqttTransport(
            identity.mqtt,
            node_id,
            inbox,
            will_payload=offline_presence(node_id, __version__, "connection lost"),
            ca_file=settings.mqtt_ca_file,
            server_name=settings.mqtt_server_name,
        )
    except ValueError as exc:  # schemas.tls.TlsSetupError: the CA cannot be loaded
        raise StartupExit(
            EXIT_CONFIG,
            f"node-engine: broker TLS: {exc} (--mqtt-ca-file, EDGE_NODE_MQTT_CA_FILE)",
        ) from None
    store = TaskStore(settings.state_dir)
    store.load()
    seen = SeenCommands(settings.state_dir / "commands.json")
    seen.load()
    outbox = Outbox(settings.state_dir / "outbox.json")
    outbox.load()
    runtimes, unavailable = host.runtimes, host.unavailable

    def supervisor_factory(emit: Any) -> Supervisor:
        return Supervisor(runtimes, unavailable, store, emit, stop_timeout=settings.stop_timeout)

    engine = Engine(
        node_id=node_id,
        inbox=inbox,
        transport=transport,
        monitor=host.monitor,
        supervisor_factory=supervisor_factory,
        outbox=outbox,
        seen=seen,
        status_interval=settings.status_interval or identity.status_interval_s,
        runtimes=list(runtimes),
        engine_version=__version__,
        workers=settings.runtime_workers,
    )
    if settings.shedding:
        import psutil

        from node_engine.monitor import host_cpu_count
        from node_engine.shedding import build_shedder

        engine.shedder = build_shedder(
            settings, lambda: engine.supervisor.tasks, host_cpu_count(psutil)
        )
    return engine


def build(argv: list[str] | None, stopper: Stopper) -> NodePlan:
    """Settings -> logging and signals -> host -> identity -> engine: the `NodePlan`
    ready to run, or `StartupExit`. Signals are routed to `stopper` as soon as the
    settings are valid, so a SIGTERM during a long join ends the start with status 0."""
    settings = read_settings(argv)
    configure_logging(settings)
    stopper.install()
    host = build_host(settings)
    identity = join(settings, host, stopper.stop)
    engine = build_engine(settings, host, identity, stopper.inbox)
    return NodePlan(settings, host, identity, engine)
