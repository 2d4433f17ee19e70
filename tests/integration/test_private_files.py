"""Files that hold credentials are private (issue 15): SQLite stores, broker files,
and a real Mosquitto with a TLS listener beside a loopback plain one.

Every test runs with a permissive umask (0022, the usual default) so that a file
left to the umask would show up as 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_orchestrator.broker import (
    MosquittoProcess,
    TlsFiles,
    TlsListener,
    find_free_port,
    generate_password,
    write_broker_files,
)
from schemas.tls import TlsSetupError, client_context
from store.sqlite import SQLiteStore
from tests.fixtures.broker import MqttProbe, _require_mosquitto
from tests.harness.certs import TestCa, make_ca, openssl_missing


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------ SQLite


def test_new_sqlite_store_files_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "root.db"
    store = SQLiteStore(str(path))
    try:
        store.put("t", {"_id": "k", "secret": "x"})
        assert store.get("t", "k") is not None
        for name in ("root.db", "root.db-wal", "root.db-shm"):
            assert (tmp_path / name).exists(), name
            assert mode(tmp_path / name) == 0o600, name
    finally:
        store.close()


def test_existing_loose_sqlite_files_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "cluster.db"
    store = SQLiteStore(str(path))
    store.put("t", {"_id": "k", "v": 1})
    store.close()
    for name in ("cluster.db", "cluster.db-wal", "cluster.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    store = SQLiteStore(str(path))
    try:
        assert store.get("t", "k") is not None
        for name in ("cluster.db", "cluster.db-wal", "cluster.db-shm"):
            if (tmp_path / name).exists():
                assert mode(tmp_path / name) == 0o600, name
    finally:
        store.close()


def test_memory_store_touches_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    SQLiteStore(":memory:").close()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ broker


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    if openssl_missing():
        pytest.skip(openssl_missing() or "")
    return make_ca(tmp_path / "pki")


@pytest.mark.broker
def test_tls_broker_files_and_listeners(tmp_path: Path, ca: TestCa) -> None:
    """Plain listener on loopback, TLS listener beside it; every file private."""
    _require_mosquitto()
    password = generate_password()
    plain, tls = find_free_port(), find_free_port()
    files = write_broker_files(
        tmp_path / "broker",
        host="127.0.0.1",
        port=plain,
        admin_username="admin",
        admin_password=password,
        tls_listener=TlsListener(
            host="127.0.0.1",
            port=tls,
            files=TlsFiles(certfile=ca.server_cert, keyfile=ca.server_key),
        ),
    )
    assert (files.tls_host, files.tls_port) == ("127.0.0.1", tls)
    conf = files.config_file.read_text()
    assert conf.count("set_tcp_nodelay true") == 1  # a general option: every listener
    plain_at, tls_at = conf.index(f"listener {plain} 127.0.0.1"), conf.index(f"listener {tls} ")
    assert plain_at < tls_at
    assert "certfile" not in conf[plain_at:tls_at]  # the plain listener stays plain
    assert f"certfile {ca.server_cert}" in conf[tls_at:]

    with MosquittoProcess(files, admin_username="admin", admin_password=password) as broker:
        with broker.admin() as admin:
            creds = admin.ensure_node_client("n1", generate_password())
        good = client_context(cafile=ca.ca_cert)
        probe = MqttProbe.connect(
            "localhost", tls, creds.username, creds.password, client_id=creds.client_id,
            tls_context=good,
        )  # fmt: skip
        try:
            assert probe.connected
        finally:
            probe.close()
        other = make_ca(tmp_path / "other", name="other-ca")
        with pytest.raises(OSError, match="certificate verify failed"):
            MqttProbe.connect(
                "localhost", tls, creds.username, creds.password, client_id=creds.client_id,
                tls_context=client_context(cafile=other.ca_cert),
            )  # fmt: skip
    directory = files.directory
    assert mode(directory) == 0o700
    made = sorted(p.name for p in directory.iterdir())
    assert {"mosquitto.conf", "dynamic-security.json", "mosquitto.log", "mosquitto.db"} <= set(made)
    for path in directory.iterdir():
        assert mode(path) & 0o077 == 0, f"{path.name} is {oct(mode(path))}"


def test_client_context_refuses_unusable_ca(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsSetupError, match="cannot load the CA"):
        client_context(cafile=missing)
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(TlsSetupError):
        client_context(cafile=not_pem)
