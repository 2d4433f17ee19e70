"""Broker TLS settings of the cluster orchestrator and the join reply's TLS fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from cluster_orchestrator.settings import (
    ClusterSettings,
    build_parser,
    load_settings,
    startup_problem,
    tls_problem,
)
from node_engine.settings import build_parser as node_parser
from schemas.node import MqttConnectInfo

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text(PEM)
        files[name] = path
    return files


def tls_settings(files: dict[str, Path], *extra: str) -> ClusterSettings:
    return load_settings(
        [
            "--start-broker",
            "--broker-tls-certfile",
            str(files["cert"]),
            "--broker-tls-keyfile",
            str(files["key"]),
            "--broker-tls-cafile",
            str(files["ca"]),
            *extra,
        ]
    )


def test_without_tls_nothing_changes() -> None:
    s = load_settings(["--start-broker", "--broker-host", "0.0.0.0"])
    assert not s.serves_tls and not s.node_broker_tls
    assert s.plain_listen_host == "0.0.0.0"  # as before: broker_host
    assert s.node_broker_port == 1883
    assert tls_problem(s) is None


def test_tls_defaults(pem_files: dict[str, Path]) -> None:
    s = tls_settings(pem_files)
    assert s.serves_tls and s.node_broker_tls
    assert s.plain_listen_host == "127.0.0.1"
    assert s.node_broker_port == 8883
    assert (s.broker_tls_host, s.broker_tls_port) == ("0.0.0.0", 8883)
    assert startup_problem(s) is None


def test_tls_with_legacy_broker_host_all_interfaces(pem_files: dict[str, Path]) -> None:
    # a systemd unit of an older version passes --broker-host 0.0.0.0: with TLS the
    # plain listener still goes to loopback
    s = tls_settings(pem_files, "--broker-host", "0.0.0.0")
    assert s.plain_listen_host == "127.0.0.1" and tls_problem(s) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_tls_refuses_plain_listener_on_all_interfaces(
    pem_files: dict[str, Path], host: str
) -> None:
    problem = tls_problem(tls_settings(pem_files, "--broker-listen-host", host))
    assert problem is not None and "EDGE_BROKER_LISTEN_HOST" in problem


def test_tls_allows_a_named_plain_address(pem_files: dict[str, Path]) -> None:
    s = tls_settings(pem_files, "--broker-listen-host", "10.1.2.3")
    assert s.plain_listen_host == "10.1.2.3" and tls_problem(s) is None


def test_cert_without_key(pem_files: dict[str, Path]) -> None:
    s = load_settings(["--start-broker", "--broker-tls-certfile", str(pem_files["cert"])])
    problem = tls_problem(s)
    assert problem is not None and "EDGE_BROKER_TLS_KEYFILE" in problem


def test_unreadable_file(pem_files: dict[str, Path], tmp_path: Path) -> None:
    pem_files["ca"] = tmp_path / "missing.pem"
    problem = tls_problem(tls_settings(pem_files))
    assert problem is not None and "EDGE_BROKER_TLS_CAFILE" in problem and "missing.pem" in problem


def test_same_port_for_both_listeners(pem_files: dict[str, Path]) -> None:
    problem = tls_problem(tls_settings(pem_files, "--broker-tls-port", "1883"))
    assert problem is not None and "EDGE_BROKER_TLS_PORT" in problem


def test_nodes_told_tls_but_sent_to_the_plain_port(pem_files: dict[str, Path]) -> None:
    problem = tls_problem(tls_settings(pem_files, "--advertised-broker-port", "1883"))
    assert problem is not None and "EDGE_ADVERTISED_BROKER_PORT" in problem


def test_external_tls_broker(pem_files: dict[str, Path]) -> None:
    """An external broker (compose): nodes told TLS on its advertised port, our own
    clients plain or TLS."""
    s = load_settings(
        [
            "--broker-admin-password",
            "secret-password",
            "--broker-tls-cafile",
            str(pem_files["ca"]),
            "--advertised-broker-tls",
            "--advertised-broker-port",
            "8883",
            "--advertised-broker-server-name",
            "mqtt.example",
            "--broker-client-tls",
        ]
    )
    assert not s.serves_tls and s.node_broker_tls and s.broker_client_tls
    assert s.node_broker_port == 8883 and s.advertised_broker_server_name == "mqtt.example"
    assert startup_problem(s) is None


def test_help_names_the_tls_settings() -> None:
    text = build_parser().format_help()
    for env in (
        "EDGE_BROKER_TLS_CERTFILE",
        "EDGE_BROKER_TLS_KEYFILE",
        "EDGE_BROKER_TLS_CAFILE",
        "EDGE_BROKER_TLS_PORT",
        "EDGE_BROKER_TLS_HOST",
        "EDGE_BROKER_LISTEN_HOST",
        "EDGE_BROKER_CLIENT_TLS",
        "EDGE_ADVERTISED_BROKER_TLS",
        "EDGE_ADVERTISED_BROKER_SERVER_NAME",
    ):
        assert env in text, env
    node_help = node_parser().format_help()
    assert "--mqtt-server-name" in node_help and "EDGE_NODE_MQTT_SERVER_NAME" in node_help


def connect_info(**kwargs: object) -> MqttConnectInfo:
    return MqttConnectInfo.model_validate(
        {
            "host": "localhost",
            "port": 8883,
            "username": "node-n1",
            "password": SecretStr("x"),
            "client_id": "node-n1",
            **kwargs,
        }
    )


def test_join_reply_tls_fields() -> None:
    info = connect_info(tls=True, ca_pem=PEM, server_name="mqtt.example")
    assert info.tls and info.ca_pem == PEM and info.server_name == "mqtt.example"
    plain = connect_info()
    assert plain.ca_pem is None and plain.server_name is None
    with pytest.raises(ValidationError, match="ca_pem"):
        connect_info(tls=True, ca_pem="not a certificate")
    with pytest.raises(ValidationError, match="ca_pem"):
        connect_info(tls=True, ca_pem=PEM + "x" * 70_000)


def test_ca_file_must_be_pem(pem_files: dict[str, Path]) -> None:
    pem_files["ca"].write_text("not a certificate\n")
    problem = tls_problem(tls_settings(pem_files))
    assert problem is not None and "EDGE_BROKER_TLS_CAFILE" in problem and "PEM" in problem


def test_client_tls_is_for_an_external_broker(pem_files: dict[str, Path]) -> None:
    problem = tls_problem(tls_settings(pem_files, "--broker-client-tls"))
    assert problem is not None and "EDGE_BROKER_CLIENT_TLS" in problem
