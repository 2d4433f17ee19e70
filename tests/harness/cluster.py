"""`FakeCluster`: join endpoint + service MQTT client + node engine processes on one broker.

Build it on a running broker with a connected `DynsecAdmin` (the ``mosquitto_broker``
fixture's `BrokerHandle` has both):

    with FakeCluster(broker) as cluster:
        engine = cluster.engine(tmp_path / "node")      # started, joined
        node_id = engine.node_id
        cluster.service.deploy(node_id, "i1", spec)
"""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

from schemas.job import TaskState
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.join_server import JoinServer
from tests.harness.service import ServiceClient, WaitTimeout


class EngineUnderTest(NodeEngineProcess):
    """A node engine process that knows its node id once joined."""

    node_id: str = ""


class FakeCluster:
    """The cluster side of the node protocol, for tests and benchmarks."""

    def __init__(
        self,
        broker: Any,
        *,
        token: str = "join-token",
        status_interval_s: float = 0.5,
    ) -> None:
        self.broker = broker
        self.token = token
        self.join = JoinServer(
            broker.admin,
            broker.host,
            broker.port,
            token=token,
            status_interval_s=status_interval_s,
        )
        password = secrets.token_urlsafe(16)
        broker.admin.ensure_service_client("svc-test", password)
        self.service = ServiceClient(broker.host, broker.port, "svc-test", password)
        self.engines: list[EngineUnderTest] = []

    def start(self) -> FakeCluster:
        """Start the join endpoint and connect the service client."""
        self.join.start()
        self.service.start()
        return self

    def close(self) -> None:
        """Stop engines (SIGTERM), the service client and the join endpoint."""
        for engine in self.engines:
            with contextlib.suppress(Exception):
                engine.stop_quietly()
        with contextlib.suppress(Exception):
            self.service.stop()
        with contextlib.suppress(Exception):
            self.join.stop()

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def engine(
        self,
        state_dir: Path,
        *,
        start: bool = True,
        wait_online: bool = True,
        timeout: float = 20.0,
        **kwargs: Any,
    ) -> EngineUnderTest:
        """A node engine joined to this cluster (started and online unless told otherwise)."""
        kwargs.setdefault("join_token", self.token)
        engine = EngineUnderTest(state_dir, self.join.url, **kwargs)
        self.engines.append(engine)
        if start:
            engine.start()
            if wait_online:
                self.wait_online(engine, timeout)
        return engine

    def wait_online(self, engine: EngineUnderTest, timeout: float = 20.0) -> str:
        """Wait until the engine joined and announced itself online after this call."""
        since = time.monotonic()
        engine.node_id = str(engine.wait_identity(timeout)["node_id"])

        def online(s: ServiceClient) -> bool:
            if not engine.running():
                raise AssertionError(f"engine exited:\n{engine.output()}")
            return s.status_after(engine.node_id, since) is not None

        try:
            self.service.wait_for(online, timeout, "first status from the engine")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\nengine output:\n{engine.output()}") from None
        return engine.node_id

    def wait_state(
        self, engine: EngineUnderTest, instance_id: str, state: TaskState, timeout: float = 15.0
    ) -> Any:
        """Wait for a task event, with the engine output in the failure message."""
        try:
            return self.service.wait_task_state(engine.node_id, instance_id, state, timeout)
        except WaitTimeout as exc:
            events = [
                (e.payload.state.value, e.payload.reason)
                for e in self.service.task_events(engine.node_id, instance_id)
            ]
            raise AssertionError(
                f"{exc}\nevents: {events}\nengine output:\n{engine.output()[-6000:]}"
            ) from None
