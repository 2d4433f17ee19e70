"""Test harness for the root orchestrator (no tests here; imported by test_root_*).

* `ServerThread`: any ASGI app served by a real uvicorn on a free port, in a thread.
* `FakeCluster`: a small real HTTP server playing a cluster orchestrator's API for
  the root (place, delete, list nodes), with scriptable accept/reject. It is a test
  harness, not a mock of our code: the root talks to it over real HTTP.
* `FakeClock`: an injectable clock for the root's liveness decisions.
* `wait_for`: poll a condition with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Response

from schemas.cluster import (
    ClusterRegistration,
    ClusterReport,
    InstanceChange,
    NodeCapacity,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.common import Arch, Runtime
from schemas.job import InstanceState
from schemas.node import Liveness
from schemas.resources import Resources
from tests.harness.wait import wait_for

T = TypeVar("T")

OPERATOR_TOKEN = "operator-token-1"
REGISTRATION_TOKEN = "registration-token-1"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
REG_AUTH = {"Authorization": f"Bearer {REGISTRATION_TOKEN}"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """A clock that only moves when told to (thread-safe)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward; return the new time."""
        with self._lock:
            self._now += seconds
            return self._now


class ServerThread:
    """Serve an ASGI app with uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 10.0) -> ServerThread:
        """Start and wait until the server accepts connections."""
        self.thread.start()
        wait_for(lambda: self.server.started, timeout, f"server on port {self.port}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Decider = Callable[[PlaceInstanceRequest], PlaceInstanceResponse | None]


@dataclass
class FakeNode:
    """A node of a fake cluster (its capacity goes into reports)."""

    id: str
    cpu: float = 4.0
    memory_mib: int = 4096
    runtimes: tuple[Runtime, ...] = (Runtime.NATIVE, Runtime.DOCKER)
    arch: Arch = Arch.AMD64
    labels: dict[str, str] = field(default_factory=dict)
    temperature_c: float | None = None


class FakeCluster:
    """A cluster orchestrator's root-facing API, scriptable, over real HTTP.

    `mode`: "accept" (choose the first node; idempotent by instance id), "reject"
    (refuse with `reject_reasons`), or "hold" (block until `release()` is called,
    then accept). `decide` overrides both when it returns a response.
    """

    def __init__(self, name: str, api_token: str | None = None) -> None:
        self.name = name
        self.api_token = api_token or f"cluster-{name}-token"
        self.nodes: list[FakeNode] = [FakeNode(id=f"{name}-n1")]
        self.mode = "accept"
        self.reject_reasons: dict[str, int] = {"insufficient memory": 1}
        self.decide: Decider | None = None
        self.placed: dict[str, PlaceInstanceRequest] = {}
        self.node_of: dict[str, str] = {}
        self.place_calls: list[str] = []
        self.deletes: list[str] = []
        self.bad_auth = 0
        self._held = threading.Event()
        self._lock = threading.Lock()
        self.cluster_id: str | None = None
        self.credential: str | None = None
        self.seq = 0
        self.server = ServerThread(self._app())

    # ------------------------------------------------------------------ server

    def _check(self, authorization: str | None) -> None:
        if authorization != f"Bearer {self.api_token}":
            with self._lock:
                self.bad_auth += 1
            raise HTTPException(401, "bad token", headers={"WWW-Authenticate": "Bearer"})

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/v1/instances")
        async def place(
            body: PlaceInstanceRequest,
            response: Response,
            authorization: str | None = Header(default=None),
        ) -> PlaceInstanceResponse:
            self._check(authorization)
            with self._lock:
                self.place_calls.append(body.instance_id)
            if self.mode == "hold":
                await asyncio.to_thread(self._held.wait, 30)
            decided = self.decide(body) if self.decide else None
            if decided is not None:
                if decided.accepted:
                    self._accept(body, decided.node_id or self.nodes[0].id)
                return decided
            with self._lock:
                known = self.node_of.get(body.instance_id)
            if known is not None:
                return PlaceInstanceResponse(
                    accepted=True, instance_id=body.instance_id, node_id=known, node_name=known
                )
            if self.mode == "reject":
                return PlaceInstanceResponse(
                    accepted=False,
                    instance_id=body.instance_id,
                    reasons=dict(self.reject_reasons),
                    explanation=", ".join(
                        f"{n} node{'s' if n != 1 else ''}: {r}"
                        for r, n in self.reject_reasons.items()
                    ),
                )
            node = self.nodes[0].id
            self._accept(body, node)
            response.status_code = 202
            return PlaceInstanceResponse(
                accepted=True, instance_id=body.instance_id, node_id=node, node_name=node
            )

        @app.delete("/api/v1/instances/{instance_id}", status_code=202)
        async def delete(
            instance_id: str, authorization: str | None = Header(default=None)
        ) -> dict[str, str]:
            self._check(authorization)
            with self._lock:
                self.deletes.append(instance_id)
                known = self.placed.pop(instance_id, None)
                self.node_of.pop(instance_id, None)
            if known is None:
                raise HTTPException(404, "unknown instance")
            return {"id": instance_id, "state": "TERMINATED"}

        @app.get("/api/v1/nodes")
        async def nodes(authorization: str | None = Header(default=None)) -> dict[str, Any]:
            self._check(authorization)
            items = [{"id": n.id, "name": n.id, "liveness": "READY"} for n in self.nodes]
            return {"nodes": items, "count": len(items)}

        return app

    def _accept(self, body: PlaceInstanceRequest, node: str) -> None:
        with self._lock:
            self.placed[body.instance_id] = body
            self.node_of[body.instance_id] = node

    def release(self) -> None:
        """Let held placements through (mode "hold")."""
        self._held.set()

    def start(self) -> FakeCluster:
        """Start serving."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._held.set()
        self.server.stop()

    @property
    def url(self) -> str:
        """Where the root reaches this cluster."""
        return self.server.url

    # ------------------------------------------------------------------ root side

    def registration(self, **extra: Any) -> dict[str, Any]:
        """A ClusterRegistration body for this cluster (JSON-ready)."""
        reg = ClusterRegistration(
            name=self.name,
            url=self.url,
            api_token=self.api_token,
            cluster_id=self.cluster_id,
            credential=self.credential,
            **extra,
        )
        return reg.model_dump(mode="json")

    def register(self, client: Any) -> str:
        """Register with the root through `client` (TestClient or httpx.Client)."""
        r = client.post("/api/v1/clusters/register", json=self.registration(), headers=REG_AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        self.cluster_id, self.credential = body["cluster_id"], body["credential"]
        return str(body["cluster_id"])

    def report_body(
        self,
        changes: list[InstanceChange] | None = None,
        *,
        full: bool = True,
        include_placed: bool = True,
        state: InstanceState = InstanceState.RUNNING,
    ) -> dict[str, Any]:
        """A ClusterReport of the current nodes (and, when full, every placed instance)."""
        self.seq += 1
        caps = [
            NodeCapacity(
                free=Resources(cpu=n.cpu, memory_mib=n.memory_mib, disk_mib=10_000),
                arch=n.arch,
                runtimes=list(n.runtimes),
                labels=n.labels,
                temperature_c=n.temperature_c,
            )
            for n in self.nodes
        ]
        instances = list(changes or [])
        if full and include_placed:
            listed = {c.instance_id for c in instances}
            with self._lock:
                placed = dict(self.placed)
                nodes = dict(self.node_of)
            now = time.time()
            for iid, req in placed.items():
                if iid not in listed:
                    instances.append(
                        InstanceChange(
                            instance_id=iid,
                            job_id=req.job_id,
                            state=state,
                            node_id=nodes.get(iid),
                            ts=now,
                        )
                    )
        report = ClusterReport(
            ts=time.time(),
            seq=self.seq,
            full=full,
            nodes_by_liveness={Liveness.READY: len(self.nodes)},
            total=Resources(
                cpu=sum(n.cpu for n in self.nodes),
                memory_mib=sum(n.memory_mib for n in self.nodes),
                disk_mib=10_000 * len(self.nodes),
            ),
            free=Resources(
                cpu=sum(n.cpu for n in self.nodes),
                memory_mib=sum(n.memory_mib for n in self.nodes),
                disk_mib=10_000 * len(self.nodes),
            ),
            largest_free_cpu=max((n.cpu for n in self.nodes), default=0.0),
            largest_free_memory_mib=max((n.memory_mib for n in self.nodes), default=0),
            nodes=caps,
            runtimes=sorted({r for n in self.nodes for r in n.runtimes}),
            archs=sorted({n.arch for n in self.nodes}),
            instances=instances,
        )
        return report.model_dump(mode="json")

    def report(self, client: Any, **kwargs: Any) -> httpx.Response | Any:
        """POST a report to the root; asserts 200."""
        assert self.cluster_id and self.credential, "register first"
        r = client.post(
            f"/api/v1/clusters/{self.cluster_id}/report",
            json=self.report_body(**kwargs),
            headers={"Authorization": f"Bearer {self.credential}"},
        )
        assert r.status_code == 200, r.text
        return r


def job_body(name: str = "web", **extra: Any) -> dict[str, Any]:
    """A valid native JobSpec body."""
    body: dict[str, Any] = {
        "name": name,
        "runtime": "native",
        "command": ["sleep", "600"],
        "replicas": 1,
        "resources": {"cpu": 0.5, "memory_mib": 256},
    }
    body.update(extra)
    return body
