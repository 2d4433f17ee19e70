"""Settings precedence: flags > EDGE_* environment > settings file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster_orchestrator.settings import ClusterSettings, SettingsFileError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("EDGE_PORT", "EDGE_NAME", "EDGE_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings([])
    assert (s.status_interval, s.lost_grace, s.placement_policy) == (1.0, 3.0, "spread")
    assert s.root_url is None and not s.starts_broker
    assert s.effective_store_url.startswith("sqlite:///")
    assert s.service_username == "cluster-cluster"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps({"name": "from-file", "port": 1111, "lost-grace": 9, "labels": {"site": "f"}})
    )
    monkeypatch.setenv("EDGE_PORT", "2222")
    monkeypatch.setenv("EDGE_LABELS", '{"site": "env"}')
    s = load_settings(["--config", str(cfg)])
    assert (s.name, s.port, s.lost_grace, s.labels) == ("from-file", 2222, 9.0, {"site": "env"})
    s = load_settings(["--config", str(cfg), "--port", "3333", "--labels", "a=b,c=d"])
    # labels from every source are merged; a higher source wins per key
    assert s.port == 3333 and s.labels == {"site": "env", "a": "b", "c": "d"}


def test_yaml_file_and_env_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: yaml-cluster\nplacement_policy: binpack\nbroker_data_dir: /tmp/b\n")
    monkeypatch.setenv("EDGE_CONFIG", str(cfg))
    s = load_settings([])
    assert s.name == "yaml-cluster" and s.placement_policy == "binpack" and s.starts_broker


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_OPERATOR_TOKEN", "very-secret")
    s = load_settings(["--join-token", "also-secret"])
    assert "very-secret" not in repr(s) and "also-secret" not in repr(s)
    assert s.operator_token is not None and s.operator_token.get_secret_value() == "very-secret"


@pytest.mark.parametrize(
    "argv",
    [
        ["--placement-policy", "random"],
        ["--status-interval", "0"],
        ["--name", "Bad_Name"],
        ["--root-url", "ftp://x"],
        ["--port", "70000"],
    ],
)
def test_invalid_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValidationError):
        load_settings(argv)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError):
        load_settings(["--config", str(tmp_path / "missing.toml")])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SettingsFileError):
        load_settings(["--config", str(bad)])


def test_advertised_broker_defaults_to_broker() -> None:
    s = ClusterSettings(broker_host="10.0.0.2", broker_port=1884)
    assert (s.node_broker_host, s.node_broker_port) == ("10.0.0.2", 1884)
    s = ClusterSettings(
        broker_host="127.0.0.1", advertised_broker_host="gw.example", advertised_broker_port=8883
    )
    assert (s.node_broker_host, s.node_broker_port) == ("gw.example", 8883)
    assert ClusterSettings(host="0.0.0.0", port=9).effective_url == "http://127.0.0.1:9"
