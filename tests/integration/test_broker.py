"""Integration tests for the broker tooling: real mosquitto, real paho clients.

Negative checks ("X is not delivered") use a barrier instead of a sleep: after the
forbidden message, a permitted one is sent along the same path, and the subscriber
collects everything up to the permitted one. Mosquitto delivers in order per
publisher and subscriber, so a forbidden message that got through would show up first.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from cluster_orchestrator.broker import (
    DEFAULT_ACL_ACCESS,
    MAX_ADMIN_PASSWORD_LENGTH,
    SERVICE_ROLE,
    Acl,
    BrokerConfigError,
    BrokerStartError,
    DynsecAdmin,
    DynsecError,
    DynsecTimeout,
    MosquittoProcess,
    NodeCredentials,
    ServiceCredentials,
    TlsFiles,
    find_free_port,
    generate_password,
    node_acls,
    node_topic,
    validate_node_id,
    write_broker_files,
)
from tests.fixtures.broker import BrokerHandle, MqttProbe, start_test_broker

pytestmark = pytest.mark.broker

Connect = Callable[..., MqttProbe]


@pytest.fixture
def connect(mosquitto_broker: BrokerHandle) -> Iterator[Connect]:
    """Connect probes to the test broker; all are closed at the end."""
    made: list[MqttProbe] = []

    def _connect(username: str | None, password: str | None, **kwargs: Any) -> MqttProbe:
        probe = mosquitto_broker.probe(username, password, **kwargs)
        made.append(probe)
        return probe

    yield _connect
    for probe in made:
        probe.close()


@dataclass
class Cluster:
    a: NodeCredentials
    b: NodeCredentials
    service: ServiceCredentials


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle) -> Cluster:
    admin = mosquitto_broker.admin
    return Cluster(
        a=admin.ensure_node_client("A", generate_password()),
        b=admin.ensure_node_client("B", generate_password()),
        service=admin.ensure_service_client("cluster-svc", generate_password()),
    )


def node(connect: Connect, creds: NodeCredentials, **kwargs: Any) -> MqttProbe:
    probe = connect(creds.username, creds.password, client_id=creds.client_id, **kwargs)
    assert probe.connected, probe.connack
    return probe


def service(connect: Connect, cluster: Cluster, *topics: str) -> MqttProbe:
    probe = connect(cluster.service.username, cluster.service.password)
    assert probe.connected, probe.connack
    for topic in topics:
        codes = probe.subscribe(topic)
        assert not codes[0].is_failure, codes
    return probe


# ---------------------------------------------------------------- authentication


def test_anonymous_connection_refused(mosquitto_broker: BrokerHandle, connect: Connect) -> None:
    probe = connect(None, None)
    assert probe.connack is not None and probe.connack.is_failure


def test_wrong_password_refused(cluster: Cluster, connect: Connect) -> None:
    probe = connect(cluster.a.username, "not-the-password", client_id=cluster.a.client_id)
    assert probe.connack is not None and probe.connack.is_failure


def test_node_client_id_is_bound(cluster: Cluster, connect: Connect) -> None:
    """Node B cannot use node A's client id (and so cannot take over A's session)."""
    hijack = connect(cluster.b.username, cluster.b.password, client_id=cluster.a.client_id)
    assert hijack.connack is not None and hijack.connack.is_failure
    other_id = connect(cluster.a.username, cluster.a.password, client_id="something-else")
    assert other_id.connack is not None and other_id.connack.is_failure


def test_admin_with_wrong_password_refused(mosquitto_broker: BrokerHandle) -> None:
    from cluster_orchestrator.broker import DynsecConnectError

    bad = DynsecAdmin(mosquitto_broker.host, mosquitto_broker.port, "admin", "wrong", timeout=5)
    with pytest.raises(DynsecConnectError):
        bad.connect()


# ---------------------------------------------------------------- ACLs


def test_default_acl_access_is_deny(mosquitto_broker: BrokerHandle) -> None:
    assert mosquitto_broker.admin.get_default_acl_access() == DEFAULT_ACL_ACCESS
    data = json.loads(mosquitto_broker.files.dynsec_file.read_text())
    assert data["defaultACLAccess"] == DEFAULT_ACL_ACCESS


def test_node_status_reaches_service(cluster: Cluster, connect: Connect) -> None:
    svc = service(connect, cluster, "edge/v1/nodes/+/status")
    a = node(connect, cluster.a)
    rc = a.publish(node_topic("A", "status"), b'{"cpu": 1}', qos=0)
    assert rc is None
    msg = svc.next_message()
    assert (msg.topic, msg.payload) == ("edge/v1/nodes/A/status", b'{"cpu": 1}')


def test_node_events_reach_service_at_qos1(cluster: Cluster, connect: Connect) -> None:
    svc = service(connect, cluster, "edge/v1/nodes/+/events")
    a = node(connect, cluster.a)
    rc = a.publish(node_topic("A", "events"), b"evt", qos=1)
    assert rc is not None and not rc.is_failure
    msg = svc.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("edge/v1/nodes/A/events", b"evt", 1)


@pytest.mark.parametrize(
    "topic",
    [
        "edge/v1/nodes/B/status",
        "edge/v1/nodes/B/events",
        "edge/v1/nodes/B/presence",
        "edge/v1/nodes/A/commands",
        "edge/v1/nodes/B/commands",
        "edge/v1/other",
        "$CONTROL/dynamic-security/v1",
    ],
)
def test_node_cannot_publish_outside_its_topics(
    cluster: Cluster, connect: Connect, topic: str
) -> None:
    svc = service(
        connect,
        cluster,
        "edge/v1/nodes/+/status",
        "edge/v1/nodes/+/events",
        "edge/v1/nodes/+/presence",
    )
    a = node(connect, cluster.a)
    rc = a.publish(topic, b"forged", qos=1)
    assert rc is not None and rc.is_failure and rc.getName() == "Not authorized", rc
    # Barrier: a permitted message from the same publisher on a subscribed topic.
    a.publish(node_topic("A", "status"), b"barrier", qos=1)
    seen = svc.messages_until("edge/v1/nodes/A/status", b"barrier")
    assert [m.payload for m in seen] == [b"barrier"]


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311], ids=["v5", "v311"]
)
def test_node_cannot_subscribe_to_other_topics(
    cluster: Cluster, connect: Connect, protocol: MQTTProtocolVersion
) -> None:
    a = node(connect, cluster.a, protocol=protocol)
    for topic in (
        "edge/v1/nodes/B/commands",
        "edge/v1/nodes/#",
        "edge/v1/nodes/+/commands",
        "#",
        "edge/v1/nodes/A/#",
        "edge/v1/nodes/A/status",
        "$CONTROL/dynamic-security/#",
        "$SYS/#",
    ):
        codes = a.subscribe(topic)
        assert codes[0].is_failure, (topic, codes)
    assert not a.subscribe(node_topic("A", "commands"))[0].is_failure

    svc = service(connect, cluster)
    assert not svc.publish(node_topic("B", "commands"), b"for-B", qos=1).is_failure  # type: ignore[union-attr]
    assert not svc.publish(node_topic("A", "commands"), b"for-A", qos=1).is_failure  # type: ignore[union-attr]
    seen = a.messages_until("edge/v1/nodes/A/commands", b"for-A")
    assert [m.payload for m in seen] == [b"for-A"]


def test_service_command_qos1_reaches_node(cluster: Cluster, connect: Connect) -> None:
    a = node(connect, cluster.a)
    assert not a.subscribe(node_topic("A", "commands"), qos=1)[0].is_failure
    svc = service(connect, cluster)
    rc = svc.publish(node_topic("A", "commands"), b'{"kind": "DEPLOY"}', qos=1)
    assert rc is not None and not rc.is_failure
    msg = a.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (
        "edge/v1/nodes/A/commands",
        b'{"kind": "DEPLOY"}',
        1,
    )


def test_service_cannot_publish_status_or_subscribe_commands(
    cluster: Cluster, connect: Connect
) -> None:
    svc = service(connect, cluster)
    rc = svc.publish(node_topic("A", "status"), b"forged", qos=1)
    assert rc is not None and rc.is_failure
    assert svc.subscribe("edge/v1/nodes/+/commands")[0].is_failure
    assert svc.subscribe("#")[0].is_failure


# ---------------------------------------------------------------- logs


def test_node_logs_reach_service_only_from_their_own_node(
    cluster: Cluster, connect: Connect
) -> None:
    svc = service(connect, cluster, "edge/v1/nodes/+/logs")
    a = node(connect, cluster.a)
    assert a.publish(node_topic("A", "logs"), b"chunk-of-A", qos=0) is None
    msg = svc.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("edge/v1/nodes/A/logs", b"chunk-of-A", 0)
    # B cannot answer for A (QoS 1 so the broker's refusal is visible) ...
    b = node(connect, cluster.b)
    rc = b.publish(node_topic("A", "logs"), b"forged-by-B", qos=1)
    assert rc is not None and rc.is_failure and rc.getName() == "Not authorized", rc
    # ... nor can the service forge replies
    rc = svc.publish(node_topic("A", "logs"), b"forged-by-service", qos=1)
    assert rc is not None and rc.is_failure
    b.publish(node_topic("B", "logs"), b"barrier", qos=1)
    seen = svc.messages_until(node_topic("B", "logs"), b"barrier")
    assert [m.payload for m in seen] == [b"barrier"]


def test_another_node_cannot_read_a_nodes_logs_requests(cluster: Cluster, connect: Connect) -> None:
    a = node(connect, cluster.a)
    assert not a.subscribe(node_topic("A", "commands"))[0].is_failure
    b = node(connect, cluster.b)
    for pattern in (
        node_topic("A", "commands"),
        "edge/v1/nodes/+/commands",
        "edge/v1/nodes/+/logs",
    ):
        assert b.subscribe(pattern)[0].is_failure, pattern
    assert not b.subscribe(node_topic("B", "commands"))[0].is_failure
    svc = service(connect, cluster)
    request = b'{"kind": "logs_request", "for": "A"}'
    assert svc.publish(node_topic("A", "commands"), request, qos=0) is None
    assert svc.publish(node_topic("B", "commands"), b"barrier", qos=1) is not None
    assert [m.payload for m in b.messages_until(node_topic("B", "commands"), b"barrier")] == [
        b"barrier"
    ]
    assert a.next_message().payload == request


def test_roles_of_nodes_joined_before_logs_existed_are_upgraded(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    admin = mosquitto_broker.admin
    old_acls = [acl for acl in node_acls("A") if not acl.topic.endswith("/logs")]
    admin.ensure_role("node-A", old_acls)  # what an older cluster version wrote
    svc = service(connect, cluster, "edge/v1/nodes/+/logs", "edge/v1/nodes/+/status")
    a = node(connect, cluster.a)
    rc = a.publish(node_topic("A", "logs"), b"refused", qos=1)
    assert rc is not None and rc.is_failure
    assert admin.upgrade_node_roles() == ["node-A"]
    role = admin.get_role("node-A")
    assert role is not None and {Acl.from_json(x) for x in role["acls"]} == set(node_acls("A"))
    # the same live connection (no new password, no reconnect) may now answer
    rc = a.publish(node_topic("A", "logs"), b"answered", qos=1)
    assert rc is not None and not rc.is_failure
    assert svc.next_message().payload == b"answered"
    assert admin.upgrade_node_roles() == []  # idempotent; other roles untouched
    assert admin.get_role("admin") is not None


# ---------------------------------------------------------------- last will


def test_last_will_delivered_retained_when_connection_drops(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    presence = node_topic("A", "presence")
    svc = service(connect, cluster, "edge/v1/nodes/+/presence")
    a = node(connect, cluster.a, will=(presence, b"offline", 1, True))
    assert not a.publish(presence, b"online", qos=1, retain=True).is_failure  # type: ignore[union-attr]
    assert svc.next_message().payload == b"online"

    a.drop()
    msg = svc.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (presence, b"offline", 1)

    # A subscriber arriving later gets the will as the retained presence.
    late = service(connect, cluster, "edge/v1/nodes/+/presence")
    msg = late.next_message()
    assert (msg.topic, msg.payload, msg.retain) == (presence, b"offline", True)


def test_no_will_on_clean_disconnect(cluster: Cluster, connect: Connect) -> None:
    presence = node_topic("A", "presence")
    svc = service(connect, cluster, "edge/v1/nodes/+/presence", "edge/v1/nodes/+/status")
    a = node(connect, cluster.a, will=(presence, b"offline", 1, True))
    a.close()
    a2 = node(connect, cluster.a)
    a2.publish(node_topic("A", "status"), b"barrier", qos=1)
    seen = svc.messages_until(node_topic("A", "status"), b"barrier")
    assert [m.payload for m in seen] == [b"barrier"]


def test_will_on_another_nodes_topic_not_delivered(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    svc = service(connect, cluster, "edge/v1/nodes/+/presence", "edge/v1/nodes/+/status")
    # Mosquitto accepts the CONNECT; the will is checked (and dropped) when it fires.
    a = connect(
        cluster.a.username,
        cluster.a.password,
        client_id=cluster.a.client_id,
        will=(node_topic("B", "presence"), b"forged-offline", 1, True),
    )
    assert a.connected
    a.drop()
    # Server-side barrier: the broker has processed the drop (and so the will) ...
    mosquitto_broker.wait_for_log(f"Client {cluster.a.client_id} closed its connection")
    # ... and a message published afterwards arrives with nothing before it.
    a2 = node(connect, cluster.a)
    a2.publish(node_topic("A", "status"), b"barrier", qos=1)
    seen = svc.messages_until(node_topic("A", "status"), b"barrier")
    assert [m.payload for m in seen] == [b"barrier"]
    # And nothing was retained on B's presence topic.
    late = service(connect, cluster, node_topic("B", "presence"), "edge/v1/nodes/+/status")
    a2.publish(node_topic("A", "status"), b"barrier2", qos=1)
    seen = late.messages_until(node_topic("A", "status"), b"barrier2")
    assert [m.payload for m in seen] == [b"barrier2"]


# ---------------------------------------------------------------- credential lifecycle


def test_password_rotation_refuses_old_and_drops_live_connection(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    live = node(connect, cluster.a)
    new_password = generate_password()
    mosquitto_broker.admin.set_client_password(cluster.a.username, new_password)
    live.wait_disconnect()
    old = connect(cluster.a.username, cluster.a.password, client_id=cluster.a.client_id)
    assert old.connack is not None and old.connack.is_failure
    new = connect(cluster.a.username, new_password, client_id=cluster.a.client_id)
    assert new.connected


def test_deleted_client_refused(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    live = node(connect, cluster.a)
    mosquitto_broker.admin.delete_node_client("A")
    live.wait_disconnect()
    probe = connect(cluster.a.username, cluster.a.password, client_id=cluster.a.client_id)
    assert probe.connack is not None and probe.connack.is_failure
    assert mosquitto_broker.admin.get_client(cluster.a.username) is None
    assert mosquitto_broker.admin.get_role("node-A") is None
    mosquitto_broker.admin.delete_node_client("A")  # idempotent


def test_disable_and_enable_client(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    admin = mosquitto_broker.admin
    live = node(connect, cluster.a)
    admin.disable_client(cluster.a.username)
    live.wait_disconnect()
    refused = connect(cluster.a.username, cluster.a.password, client_id=cluster.a.client_id)
    assert refused.connack is not None and refused.connack.is_failure
    admin.enable_client(cluster.a.username)
    assert node(connect, cluster.a).connected


def test_ensure_node_client_is_idempotent_and_repairs(
    mosquitto_broker: BrokerHandle, connect: Connect
) -> None:
    admin = mosquitto_broker.admin
    first = admin.ensure_node_client("n1", "pw-1-aaaaaaaaaaaaaaaa")
    second = admin.ensure_node_client("n1", "pw-1-aaaaaaaaaaaaaaaa")
    assert first == second
    assert "password" not in repr(first) and "pw-1" not in repr(first)
    # Tamper: extra ACL, extra role, disabled.
    admin.add_role_acl("node-n1", Acl("subscribePattern", "#"))
    admin.create_role("extra", [Acl("publishClientSend", "#")])
    admin.add_client_role("node-n1", "extra")
    admin.disable_client("node-n1")
    admin.ensure_node_client("n1", "pw-2-bbbbbbbbbbbbbbbb")
    role = admin.get_role("node-n1")
    assert role is not None
    assert {Acl.from_json(a) for a in role["acls"]} == set(node_acls("n1"))
    client = admin.get_client("node-n1")
    assert client is not None
    assert [r["rolename"] for r in client["roles"]] == ["node-n1"]
    assert not client.get("disabled")
    assert client.get("clientid") == "node-n1"
    assert connect("node-n1", "pw-2-bbbbbbbbbbbbbbbb", client_id="node-n1").connected
    assert {"admin", "node-n1"} <= set(admin.list_clients())
    assert {"admin", "node-n1", "extra"} <= set(admin.list_roles())


def test_service_client_roles(mosquitto_broker: BrokerHandle) -> None:
    admin = mosquitto_broker.admin
    creds = admin.ensure_service_client("cluster-svc", "svc-password-xxxxxxxxx")
    assert creds.role == SERVICE_ROLE
    client = admin.get_client("cluster-svc")
    assert client is not None and [r["rolename"] for r in client["roles"]] == [SERVICE_ROLE]
    assert admin.ensure_service_client("cluster-svc", "svc-password-xxxxxxxxx") == creds


def test_dynsec_errors_carry_broker_text(mosquitto_broker: BrokerHandle) -> None:
    admin = mosquitto_broker.admin
    admin.create_client("dup", "pw")
    with pytest.raises(DynsecError) as info:
        admin.create_client("dup", "pw")
    assert info.value.already_exists and "already exists" in str(info.value)
    with pytest.raises(DynsecError) as info:
        admin.delete_role("no-such-role")
    assert info.value.not_found
    assert admin.get_client("no-such-client") is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+b", "x" * 65, "a\n", "a b", "é", "..."])
def test_invalid_node_ids_rejected(mosquitto_broker: BrokerHandle, bad: str) -> None:
    with pytest.raises(ValueError):
        validate_node_id(bad)
    with pytest.raises(ValueError):
        mosquitto_broker.admin.ensure_node_client(bad, "pw")
    with pytest.raises(ValueError):
        node_topic(bad, "status")


def test_concurrent_admin_requests(mosquitto_broker: BrokerHandle) -> None:
    admin = mosquitto_broker.admin
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                creds = admin.ensure_node_client(f"c{i}-{j}", generate_password())
                client = admin.get_client(creds.username)
                assert client is not None and client["username"] == creds.username
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len([c for c in admin.list_clients() if c.startswith("node-c")]) == 60


def test_admin_times_out_when_broker_is_gone(mosquitto_broker: BrokerHandle) -> None:
    mosquitto_broker.admin.close()  # else its paho thread idles in a 1 s reconnect wait
    admin = mosquitto_broker.new_admin()
    try:
        mosquitto_broker.process.stop()
        with pytest.raises(DynsecTimeout):
            admin.execute([{"command": "listClients"}], timeout=0.5)
    finally:
        admin.close()


# ---------------------------------------------------------------- restart / persistence


def test_restart_keeps_clients_roles_and_queued_commands(
    mosquitto_broker: BrokerHandle, cluster: Cluster, connect: Connect
) -> None:
    # Node A has a persistent session with its commands subscription, then goes away.
    a = node(connect, cluster.a, clean_start=False, session_expiry=3600)
    assert not a.subscribe(node_topic("A", "commands"))[0].is_failure
    a.close()
    svc = service(connect, cluster)
    rc = svc.publish(node_topic("A", "commands"), b"queued-while-away", qos=1)
    assert rc is not None and not rc.is_failure
    svc.close()

    mosquitto_broker.restart()

    admin = mosquitto_broker.admin
    assert {cluster.a.username, cluster.b.username, cluster.service.username} <= set(
        admin.list_clients()
    )
    role = admin.get_role("node-A")
    assert role is not None and {Acl.from_json(x) for x in role["acls"]} == set(node_acls("A"))
    assert admin.get_default_acl_access() == DEFAULT_ACL_ACCESS

    # The queued QoS 1 command survived the restart and reaches A on reconnect.
    a2 = node(connect, cluster.a, clean_start=False, session_expiry=3600)
    msg = a2.next_message()
    assert (msg.topic, msg.payload) == (node_topic("A", "commands"), b"queued-while-away")
    # ACLs still enforced after the restart.
    assert a2.subscribe("edge/v1/nodes/#")[0].is_failure
    assert connect(cluster.b.username, "wrong", client_id=cluster.b.client_id).connack.is_failure  # type: ignore[union-attr]


def test_clients_survive_broker_crash(mosquitto_broker: BrokerHandle, connect: Connect) -> None:
    """The dynsec file is written on every change, so a SIGKILL loses no client."""
    creds = mosquitto_broker.admin.ensure_node_client("crash", generate_password())
    mosquitto_broker.admin.close()
    mosquitto_broker.process.kill()
    mosquitto_broker.process.start()
    mosquitto_broker.admin = mosquitto_broker.process.admin()
    assert node(connect, creds).connected


def test_resume_keeps_dynsec_file(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    files = write_broker_files(
        directory, host="127.0.0.1", port=1883, admin_username="admin", admin_password="pw-1"
    )
    before = files.dynsec_file.read_bytes()
    again = write_broker_files(
        directory, host="127.0.0.1", port=1884, admin_username="admin", admin_password="pw-2"
    )
    assert again.dynsec_file.read_bytes() == before
    assert "listener 1884 127.0.0.1" in again.config_file.read_text()
    assert files.dynsec_file.stat().st_mode & 0o077 == 0
    assert directory.stat().st_mode & 0o077 == 0


def test_config_contents(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    ca = tmp_path / "ca.pem"
    for f in (cert, key, ca):
        f.write_text("x")
    files = write_broker_files(
        tmp_path / "b",
        host="0.0.0.0",
        port=8883,
        admin_username="admin",
        admin_password=generate_password(),
        tls=TlsFiles(certfile=cert, keyfile=key, cafile=ca),
    )
    lines = files.config_file.read_text().splitlines()
    for expected in (
        "per_listener_settings false",
        "listener 8883 0.0.0.0",
        "allow_anonymous false",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {files.directory}/",
        f"plugin_opt_config_file {files.dynsec_file}",
        "max_packet_size 262144",
        f"log_dest file {files.log_file}",
        f"certfile {cert}",
        f"keyfile {key}",
        f"cafile {ca}",
    ):
        assert expected in lines, expected
    assert any(line.startswith("plugin /") and line.endswith(".so") for line in lines)
    assert any(line.startswith("max_queued_messages ") for line in lines)
    assert any(line.startswith("max_inflight_messages ") for line in lines)
    # Admin password never written in clear.
    assert "password" not in files.config_file.read_text().lower()


@pytest.mark.parametrize("host", ["127.0.0.1\nlistener 1 0.0.0.0", " 127.0.0.1", ""])
def test_config_rejects_injection(tmp_path: Path, host: str) -> None:
    with pytest.raises(BrokerConfigError):
        write_broker_files(
            tmp_path / "b", host=host, port=1883, admin_username="admin", admin_password="pw"
        )


@pytest.mark.parametrize(
    "password", ["", "x" * (MAX_ADMIN_PASSWORD_LENGTH + 1), "é" * 65, "a\nb", "a\x00b"]
)
def test_bad_admin_password_rejected(tmp_path: Path, password: str) -> None:
    with pytest.raises(BrokerConfigError):
        write_broker_files(
            tmp_path / "b", host="127.0.0.1", port=1883, admin_username="admin",
            admin_password=password,
        )  # fmt: skip
    assert not (tmp_path / "b" / "dynamic-security.json").exists()


def test_longest_admin_password_works(tmp_path: Path) -> None:
    """mosquitto_ctrl truncates long passwords silently; the limit keeps us below that."""
    handle = start_test_broker(tmp_path / "b", admin_password="Z" * MAX_ADMIN_PASSWORD_LENGTH)
    try:
        assert "admin" in handle.admin.list_clients()
    finally:
        handle.close()


def test_admin_password_not_written_in_clear(tmp_path: Path) -> None:
    password = generate_password()
    files = write_broker_files(
        tmp_path / "b", host="127.0.0.1", port=1883, admin_username="admin", admin_password=password
    )
    for path in files.directory.iterdir():
        assert password not in path.read_text(errors="replace"), path


def test_start_fails_clearly_when_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        files = write_broker_files(
            tmp_path / "b", host="127.0.0.1", port=port, admin_username="admin", admin_password="pw"
        )
        process = MosquittoProcess(files, admin_username="admin", admin_password="pw")
        with pytest.raises(BrokerStartError) as info:
            process.start(timeout=10)
        assert info.value.address_in_use
        assert "Address already in use" in str(info.value)
        assert not process.running


def test_process_context_manager_and_stop(tmp_path: Path) -> None:
    port = find_free_port()
    files = write_broker_files(
        tmp_path / "b", host="127.0.0.1", port=port, admin_username="admin", admin_password="pw"
    )
    with MosquittoProcess(files, admin_username="admin", admin_password="pw") as proc:
        assert proc.running and proc.port == port and proc.host == "127.0.0.1"
        with proc.admin() as admin:
            assert "admin" in admin.list_clients()
    assert not proc.running
    assert "terminating" in files.log_file.read_text()


# ---------------------------------------------------------------- TLS


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    handle = start_test_broker(
        tmp_path / "b", tls=TlsFiles(certfile=cert, keyfile=key), tls_context=context
    )
    try:
        creds = handle.admin.ensure_node_client("tls", generate_password())
        probe = handle.probe(
            creds.username, creds.password, client_id=creds.client_id, tls_context=context
        )
        try:
            assert probe.connected
        finally:
            probe.close()
        # Plain MQTT on the TLS port does not get a CONNACK.
        with pytest.raises((AssertionError, OSError)):
            plain = handle.probe(creds.username, creds.password, client_id="x", timeout=1)
            plain.close()
    finally:
        handle.close()


def test_start_reports_admin_refusal_after_resume_with_other_password(tmp_path: Path) -> None:
    """Resuming keeps the stored admin hash, so a different password fails clearly."""
    port = find_free_port()
    write_broker_files(
        tmp_path / "b", host="127.0.0.1", port=port, admin_username="admin", admin_password="one"
    )
    files = write_broker_files(
        tmp_path / "b", host="127.0.0.1", port=port, admin_username="admin", admin_password="two"
    )
    process = MosquittoProcess(files, admin_username="admin", admin_password="two")
    with pytest.raises(BrokerStartError) as info:
        process.start(timeout=1)
    assert "refused admin" in str(info.value)
    assert not process.running
