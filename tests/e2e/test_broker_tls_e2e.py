"""End to end over TLS: a CA made by the test, a real cluster orchestrator that starts
its real Mosquitto with a TLS listener, and real node engines.

* A node joins over HTTP, is told ``tls: true`` with the CA, connects to the TLS port
  (verifying the CA and the host name) and sends status: READY with metrics.
* The plain listener is on loopback only; the orchestrator's own clients use it.
* A node pinned to another CA (``--mqtt-ca-file``) or expecting another server name
  (``--mqtt-server-name``) never connects and logs why.
* The files the cluster and the engine write have private modes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.fixtures.broker import _require_mosquitto
from tests.harness.certs import TestCa, make_ca, openssl_missing
from tests.harness.cluster_process import ClusterProcess, free_port
from tests.harness.engine_process import EngineFleet, NodeEngineProcess
from tests.harness.wait import wait_for

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(openssl_missing() is not None, reason=openssl_missing() or ""),
]

JOIN = "join-token"
OPERATOR = "operator-token"


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return make_ca(tmp_path / "pki", name="edge-test-ca", server_dns="localhost")


@pytest.fixture
def tls_cluster(tmp_path: Path, ca: TestCa) -> Iterator[ClusterProcess]:
    """A cluster that starts its own broker: plain listener on loopback, TLS for nodes."""
    _require_mosquitto()
    plain_port, tls_port = free_port(), free_port()
    proc = ClusterProcess(
        tmp_path / "cluster",
        broker_port=plain_port,
        operator_token=OPERATOR,
        join_token=JOIN,
        name="tls",
        extra_args=[
            "--broker-data-dir",
            str(tmp_path / "cluster" / "broker"),
            "--broker-tls-certfile",
            str(ca.server_cert),
            "--broker-tls-keyfile",
            str(ca.server_key),
            "--broker-tls-cafile",
            str(ca.ca_cert),
            "--broker-tls-port",
            str(tls_port),
            # nodes verify the certificate by this name (it is in the SAN)
            "--advertised-broker-host",
            "localhost",
        ],
    )
    proc.start()
    proc.tls_port = tls_port  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Callable[..., NodeEngineProcess]]:
    fleet = EngineFleet(tmp_path, join_token=JOIN)

    def start(cluster: ClusterProcess, name: str, *extra: str) -> NodeEngineProcess:
        return fleet.start(cluster.url, name, status_interval=0.5, extra_args=list(extra))

    try:
        yield start
    finally:
        fleet.stop_all()


def node(cluster: ClusterProcess, name: str) -> dict[str, Any] | None:
    with httpx.Client(
        base_url=cluster.url, headers={"authorization": f"Bearer {OPERATOR}"}, timeout=10
    ) as client:
        body = client.get("/api/v1/nodes").json()
    return next((n for n in body["nodes"] if n["info"]["name"] == name), None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def mosquitto_pid(cluster: ClusterProcess) -> int:
    children = psutil.Process(cluster.pid).children()
    return next(p.pid for p in children if p.name() == "mosquitto")


# ------------------------------------------------------------------ tests


def test_node_joins_over_tls_and_reports(
    tls_cluster: ClusterProcess, engines: Callable[..., NodeEngineProcess], ca: TestCa
) -> None:
    tls_port: int = tls_cluster.tls_port  # type: ignore[attr-defined]
    engine = engines(tls_cluster, "secure")

    identity = engine.wait_identity()
    mqtt = identity["mqtt"]
    assert mqtt["tls"] is True
    assert (mqtt["host"], mqtt["port"]) == ("localhost", tls_port)
    assert mqtt["ca_pem"].strip() == ca.ca_cert.read_text().strip()

    def ready() -> dict[str, Any] | None:
        view = node(tls_cluster, "secure")
        if view and view["liveness"] == "READY" and view.get("status"):
            return view
        return None

    view = wait_for(ready, 30, "the TLS node READY with a status")
    status = view["status"]
    assert status["memory"]["total_mib"] > 0 and status["disk"]["total_mib"] > 0
    assert 0 <= status["cpu_percent"] <= 100

    # the engine's broker connection is the TLS port; the plain port is loopback only
    conns = psutil.Process(engine.pid).net_connections(kind="tcp")
    assert any(c.raddr and c.raddr.port == tls_port for c in conns), conns
    assert not any(c.raddr and c.raddr.port == tls_cluster.broker_port for c in conns)
    bound = listeners(mosquitto_pid(tls_cluster))
    assert ("127.0.0.1", tls_cluster.broker_port) in bound
    assert ("0.0.0.0", tls_port) in bound
    assert not any(port == tls_cluster.broker_port and ip != "127.0.0.1" for ip, port in bound), (
        bound
    )

    conf = (tls_cluster.data_dir / "broker" / "mosquitto.conf").read_text()
    assert "set_tcp_nodelay true" in conf
    assert f"listener {tls_cluster.broker_port} 127.0.0.1" in conf
    assert f"listener {tls_port} 0.0.0.0" in conf

    # file modes after a real start of the cluster and the engine (issue 15)
    data = tls_cluster.data_dir
    assert mode(data) == 0o700
    for name in ("cluster.db", "cluster.db-wal", "cluster.db-shm"):
        assert mode(data / name) == 0o600, name
    for name in ("broker-admin-password",):
        assert mode(data / name) == 0o600, name
    broker_dir = data / "broker"
    assert mode(broker_dir) == 0o700
    for path in broker_dir.iterdir():
        assert mode(path) & 0o077 == 0, f"{path.name} is {oct(mode(path))}"
    # 0711 (passable, not listable) while native tasks run as another user: a root engine's
    # tasks run as edge-task and must reach their work directories inside it
    assert mode(engine.state_dir) == (0o711 if os.geteuid() == 0 else 0o700)
    files = [p for p in engine.state_dir.iterdir() if p.is_file()]
    assert any(p.name == "identity.json" for p in files)
    for path in files:
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "wrong-ca",
            "TLS certificate verification failed: unable to get local issuer certificate "
            "(trusting CA file ",
        ),
        (
            "wrong-name",
            "TLS certificate verification failed: Hostname mismatch, certificate is not valid "
            "for 'broker.example'",
        ),
    ],
)
def test_node_that_cannot_verify_the_broker_is_refused(
    tls_cluster: ClusterProcess,
    engines: Callable[..., NodeEngineProcess],
    tmp_path: Path,
    case: str,
    expected: str,
) -> None:
    if case == "wrong-ca":
        other = make_ca(tmp_path / "other-pki", name="someone-else")
        args = ["--mqtt-ca-file", str(other.ca_cert)]
    else:
        args = ["--mqtt-server-name", "broker.example"]
    engine = engines(tls_cluster, case, *args)
    engine.wait_identity()  # the HTTP join works; the broker connection must not

    wait_for(lambda: expected in engine.output(), 30, f"the engine to log {expected!r}")
    view = node(tls_cluster, case)
    assert view is not None and view["liveness"] != "READY"
    assert view.get("status") is None
    assert engine.running()


def test_external_tls_only_broker(
    tmp_path: Path, ca: TestCa, engines: Callable[..., NodeEngineProcess]
) -> None:
    """A broker the cluster does not start, with one TLS listener and nothing plain
    (docker-compose.tls.yml's layout): the orchestrator's own clients use TLS too."""
    from cluster_orchestrator.broker import TlsFiles
    from schemas.tls import client_context
    from tests.fixtures.broker import start_test_broker

    broker = start_test_broker(
        tmp_path / "external-broker",
        tls=TlsFiles(certfile=ca.server_cert, keyfile=ca.server_key),
        tls_context=client_context(cafile=ca.ca_cert),
    )
    try:
        cluster = ClusterProcess(
            tmp_path / "cluster-ext",
            broker_port=broker.port,
            broker_admin_password=broker.admin_password,
            operator_token=OPERATOR,
            join_token=JOIN,
            name="ext",
            extra_args=[
                "--broker-client-tls",
                "--broker-tls-cafile",
                str(ca.ca_cert),
                "--advertised-broker-tls",
                "--advertised-broker-host",
                "localhost",
            ],
        )
        with cluster:
            engine = engines(cluster, "ext-node")
            mqtt = engine.wait_identity()["mqtt"]
            assert mqtt["tls"] is True and mqtt["port"] == broker.port
            wait_for(
                lambda: (n := node(cluster, "ext-node")) and n["liveness"] == "READY",
                30,
                "the node READY through the external TLS broker",
            )
            assert "ca_pem" in mqtt
    finally:
        broker.close()
