"""Joining the cluster and the node's stored identity.

The node POSTs a `JoinRequest` to ``{cluster_url}/api/v1/nodes`` with the join token as a
bearer token. The `JoinResponse` (node id, node secret, MQTT credentials) is stored in
``identity.json`` (mode 0600) in the state directory; on a restart the node sends the
stored id and secret ("rejoin"). The cluster authenticates a rejoin by that secret, not
by the join token, so rotating the cluster's join tokens does not lock out joined nodes
(the join token is still sent when configured: a cluster that lost its store admits
an unknown id only with it). HTTP goes through the standard library (`urllib`) to keep
the engine small; the transport is injectable for tests.

A refusal (4xx other than 408/429) is final, for a first join and for a rejoin alike:
the cluster decided (bad join token, wrong node secret, node removed by the operator),
and retrying cannot change that; `refusal_message` says what to do about it. Only an
unreachable or unavailable cluster (network error, 5xx, 408, 429) is worth retrying.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from node_engine.state import atomic_write, read_json
from schemas.common import Labels, Runtime, normalize_arch
from schemas.node import JoinRequest, JoinResponse, NodeInfo
from schemas.resources import Accelerator

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
JOIN_PATH = "/api/v1/nodes"


#: ``reason`` codes a cluster puts beside ``detail`` when it refuses a join.
REASON_JOIN_TOKEN_MISSING = "join_token_missing"
REASON_JOIN_TOKEN_INVALID = "join_token_invalid"
REASON_NODE_UNKNOWN = "node_unknown"
REASON_NODE_SECRET_WRONG = "node_secret_wrong"
REASON_NODE_REMOVED = "node_removed"


class JoinRefused(Exception):
    """The cluster answered the join with a definitive no (401/403/422/other 4xx).

    `reason` is the cluster's machine-readable code when it sent one (``REASON_*``);
    `node_id` is the stored id the node presented (None for a first join).
    """

    def __init__(
        self, status: int, message: str, *, reason: str | None = None, node_id: str | None = None
    ) -> None:
        what = "join" if node_id is None else f"rejoin of node {node_id}"
        super().__init__(f"{what} refused (HTTP {status}): {message}")
        self.status = status
        self.message = message
        self.reason = reason
        self.node_id = node_id

    @property
    def rejoin(self) -> bool:
        """Whether the node presented a stored identity."""
        return self.node_id is not None


def refusal_message(exc: JoinRefused, cluster_url: str, state_dir: Path) -> str:
    """One line for the operator: what the cluster said and what to do about it.

    Secrets never appear: only the status, the cluster's detail and the node id.
    """
    if not exc.rejoin:
        msg = f"node-engine: the cluster at {cluster_url} refused the join "
        msg += f"(HTTP {exc.status}): {exc.message}"
        if exc.status in (401, 403):
            msg += " - check the join token"
        return msg
    path = identity_path(state_dir)
    msg = f"node-engine: the cluster at {cluster_url} refused the rejoin of node "
    msg += f"{exc.node_id} with its stored identity (HTTP {exc.status}): {exc.message}"
    if exc.reason == REASON_NODE_REMOVED:
        msg += (
            " - the operator removed this node from the cluster; to join it again as a new "
            f"node, delete {path} and restart with a join token"
        )
    elif exc.reason == REASON_NODE_UNKNOWN:
        msg += (
            " - the cluster does not know this node (its store was reset or restored?) and "
            "no accepted join token came with the rejoin: set EDGE_NODE_JOIN_TOKEN to one "
            "of the cluster's join tokens and restart (the node keeps its id)"
        )
    elif exc.reason == REASON_NODE_SECRET_WRONG or (exc.status == 403 and exc.reason is None):
        msg += (
            f" - the node secret in {path} does not match the cluster's record; to join "
            "this machine as a new node, delete that file and restart with a join token"
        )
    elif exc.status == 401:
        msg += " - check the join token (this cluster asks for one at every rejoin)"
    return msg


class JoinUnavailable(Exception):
    """The cluster could not be reached or answered 5xx; worth retrying."""


@dataclass(frozen=True)
class HttpResult:
    """Status code and body of one HTTP exchange."""

    status: int
    body: bytes


HttpPost = Callable[[str, bytes, dict[str, str], float], HttpResult]


def urllib_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> HttpResult:
    """POST with urllib; HTTP errors become results, network errors `JoinUnavailable`."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read(1024 * 1024))
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read(64 * 1024)
        except OSError:
            data = b""
        return HttpResult(exc.code, data)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JoinUnavailable(f"cannot reach {url}: {reason}") from None


# ---------------------------------------------------------------- stored identity


def identity_path(state_dir: Path) -> Path:
    """Where the join response is kept."""
    return state_dir / IDENTITY_FILE


def load_identity(state_dir: Path) -> JoinResponse | None:
    """The stored join response, or None (no file, or unreadable: then a fresh join)."""
    path = identity_path(state_dir)
    data = read_json(path)
    if data is None:
        return None
    try:
        return JoinResponse.model_validate(data)
    except ValidationError as exc:
        log.error("stored identity %s is invalid, ignoring it: %s", path, exc)
        return None


def save_identity(state_dir: Path, response: JoinResponse) -> None:
    """Store the join response atomically with mode 0600 (it holds secrets)."""
    atomic_write(identity_path(state_dir), response.model_dump_json().encode(), mode=0o600)


def engine_id(state_dir: Path) -> str:
    """A random id of this engine installation, created once and kept in the state dir.

    Runtimes label what they start with it, so two engines on one host (two state
    directories) never adopt each other's tasks.
    """
    path = state_dir / "engine-id"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = "e" + os.urandom(8).hex()
    atomic_write(path, value.encode(), mode=0o600)
    return value


# ---------------------------------------------------------------- node description


def describe_node(
    *,
    name: str,
    labels: Labels,
    runtimes: list[Runtime],
    accelerators: list[Accelerator],
    disk_path: Path,
    psutil_mod: Any,
    engine_version: str,
) -> NodeInfo:
    """The static facts a node reports when it joins (host, arch, cores, memory, disk)."""
    cores = psutil_mod.cpu_count(logical=True) or 1
    memory_mib = max(1, int(psutil_mod.virtual_memory().total // (1024 * 1024)))
    try:
        disk_mib = int(psutil_mod.disk_usage(str(disk_path)).total // (1024 * 1024))
    except OSError:
        disk_mib = 0
    return NodeInfo(
        name=name,
        hostname=socket.gethostname()[:253] or name,
        arch=normalize_arch(platform.machine()),
        os=platform.system().lower()[:128] or "linux",
        cpu_cores=float(cores),
        memory_mib=memory_mib,
        disk_mib=disk_mib,
        accelerators=accelerators,
        runtimes=runtimes,
        labels=labels,
        engine_version=engine_version,
    )


# ---------------------------------------------------------------- joining


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform(c/2, c) with c = min(cap, base * 2**attempt).

    The jitter spreads a fleet of nodes that lost their cluster at the same moment.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


def _error_reason(body: bytes) -> str | None:
    """The machine-readable ``reason`` of a refusal body, if any."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason[:64] if isinstance(reason, str) else None


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300] or "(no detail)"
    if isinstance(data, dict):
        detail = data.get("detail", data.get("error", data))
        if isinstance(detail, list):  # FastAPI validation errors
            parts = []
            for item in detail[:3]:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []))
                    parts.append(f"{loc}: {item.get('msg', '')}")
            return "; ".join(parts) or json.dumps(detail)[:300]
        return str(detail)[:300]
    return str(data)[:300]


class Joiner:
    """Performs the join handshake with retries (backoff + jitter) on transient errors."""

    def __init__(
        self,
        cluster_url: str,
        join_token: SecretStr | None,
        *,
        post: HttpPost = urllib_post,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = cluster_url.rstrip("/") + JOIN_PATH
        self._token = join_token
        self._post = post
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout

    def attempt(self, request: JoinRequest) -> JoinResponse:
        """One join attempt: the response, or `JoinRefused` / `JoinUnavailable`.

        The join token goes along whenever one is configured, also on a rejoin (a
        cluster that lost its store needs it to admit the stored id again); a cluster
        that knows the node authenticates the rejoin by its node secret alone.
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        result = self._post(self.url, request.model_dump_json().encode(), headers, self.timeout)
        if 200 <= result.status < 300:
            try:
                return JoinResponse.model_validate_json(result.body)
            except ValidationError as exc:
                raise JoinUnavailable(f"cluster sent an invalid join response: {exc}") from None
        if result.status >= 500 or result.status in (408, 429):
            raise JoinUnavailable(f"cluster answered HTTP {result.status}")
        raise JoinRefused(
            result.status,
            _error_text(result.body),
            reason=_error_reason(result.body),
            node_id=request.node_id,
        )

    def join(
        self,
        request: JoinRequest,
        *,
        attempts: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> JoinResponse:
        """Join, retrying transient failures up to `attempts` times (None: forever).

        Raises `JoinRefused` at once on a definitive answer, and the last
        `JoinUnavailable` when the attempts run out or `should_stop()` turns true.
        """
        attempt = 0
        while True:
            try:
                return self.attempt(request)
            except JoinUnavailable as exc:
                attempt += 1
                if (attempts is not None and attempt >= attempts) or should_stop():
                    raise
                delay = backoff_delay(attempt - 1, self.base_delay, self.max_delay, self._rng)
                log.warning("join failed (%s); retrying in %.1f s", exc, delay)
                self._sleep(delay)
                if should_stop():
                    raise
