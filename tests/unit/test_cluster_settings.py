"""Settings precedence: flags > EDGE_* environment > settings file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster_orchestrator.settings import (
    ClusterSettings,
    InvalidSetting,
    SettingsFileError,
    load_settings,
)


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


# ------------------------------------------------------------------ labels


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ("EDGE_LABELS", "EDGE_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("value", "labels"),
    [
        pytest.param("region=eu,tier=edge", {"region": "eu", "tier": "edge"}, id="k=v-list"),
        pytest.param(" region = eu , tier=edge ,", {"region": "eu", "tier": "edge"}, id="spaces"),
        pytest.param('{"region": "eu"}', {"region": "eu"}, id="json-object"),
        pytest.param('{"gpu": true, "rev": 2}', {"gpu": "true", "rev": "2"}, id="json-scalars"),
        pytest.param("", {}, id="empty"),
        pytest.param("k8s-io/zone=a:b", {"k8s-io/zone": "a:b"}, id="path-key-colon-value"),
    ],
)
def test_env_labels_accept_kv_and_json(
    clean_env: pytest.MonkeyPatch, value: str, labels: dict[str, str]
) -> None:
    clean_env.setenv("EDGE_LABELS", value)
    assert load_settings([]).labels == labels
    assert ClusterSettings().labels == labels  # also without load_settings


BAD_LABELS = [
    pytest.param("region", "'region' is not key=value", id="no-equals"),
    pytest.param("{bad", "invalid JSON", id="broken-json"),
    pytest.param('["a=b"]', "or a JSON object, got a JSON array", id="json-array"),
    pytest.param('{"a": {"b": "c"}}', "value of label 'a' must be a string", id="nested"),
    pytest.param("A B=c", "invalid label key 'A B'", id="bad-key"),
    pytest.param("=eu", "invalid label key ''", id="empty-key"),
    pytest.param("a=b c", "invalid value 'b c' for label 'a'", id="bad-value"),
    pytest.param("a=1,a=2", "label 'a' given twice", id="duplicate"),
    pytest.param(",".join(f"k{i}=v" for i in range(33)), "at most 32 labels", id="too-many"),
]


@pytest.mark.parametrize(("value", "message"), BAD_LABELS)
def test_invalid_env_labels_name_the_variable(
    clean_env: pytest.MonkeyPatch, value: str, message: str
) -> None:
    clean_env.setenv("EDGE_LABELS", value)
    with pytest.raises(InvalidSetting) as info:
        load_settings([])
    text = str(info.value)
    assert text.startswith("EDGE_LABELS (--labels): ") and message in text and "\n" not in text


@pytest.mark.parametrize(("value", "message"), BAD_LABELS)
def test_invalid_flag_labels_name_the_flag(
    clean_env: pytest.MonkeyPatch, value: str, message: str
) -> None:
    with pytest.raises(InvalidSetting) as info:
        load_settings(["--labels", value])
    text = str(info.value)
    assert text.startswith("--labels (EDGE_LABELS): ") and message in text and "\n" not in text


def test_main_exits_2_with_one_clear_line(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster_orchestrator.main import main

    clean_env.setenv("EDGE_LABELS", "region")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "EDGE_LABELS" in line]
    assert lines == [
        "cluster-orchestrator: invalid settings: EDGE_LABELS (--labels): 'region' is not "
        "key=value; expected k=v,k2=v2 or a JSON object"
    ]


def test_labels_merge_across_file_env_and_flags(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("labels: site=f,region=file,tier=file\n")  # the k=v form in a file too
    clean_env.setenv("EDGE_LABELS", "region=env,tier=env")
    s = load_settings(["--config", str(cfg), "--labels", "tier=flag"])
    assert s.labels == {"site": "f", "region": "env", "tier": "flag"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: nope\n")
    with pytest.raises(
        InvalidSetting,
        match=r"^labels in .*bad\.yaml \(--labels, EDGE_LABELS\): 'nope' is not key=value",
    ):
        load_settings(["--config", str(bad)])


def test_latency_first_reporting_and_overload_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings([])
    assert s.report_debounce == 0.0 and s.overload_cpu_percent is None
    s = load_settings(["--report-debounce", "0.05", "--overload-cpu-percent", "90"])
    assert s.report_debounce == 0.05 and s.overload_cpu_percent == 90.0
    with pytest.raises(ValidationError):
        load_settings(["--overload-cpu-percent", "120"])
