"""Settings: flags > EDGE_NODE_* environment > config file > defaults."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from node_engine.settings import build_parser, load_settings
from schemas.common import Runtime


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("EDGE_NODE_"):
            monkeypatch.delenv(key)


def test_defaults_and_flags(tmp_path):
    s = load_settings(["--cluster-url", "http://c:8080/", "--state-dir", str(tmp_path)])
    assert s.cluster_url == "http://c:8080"
    assert s.state_dir == tmp_path
    assert s.runtimes == [Runtime.NATIVE, Runtime.DOCKER]
    assert s.status_interval is None and s.join_token is None
    s = load_settings(
        [
            "--cluster-url",
            "http://c",
            "--label",
            "zone=a",
            "--label",
            "gpu=none",
            "--runtime",
            "native",
            "--status-interval",
            "0.5",
            "--join-token",
            "s3cr3t-tok3n",
        ]
    )
    assert s.labels == {"zone": "a", "gpu": "none"}
    assert s.runtimes == [Runtime.NATIVE]
    assert s.status_interval == 0.5
    assert s.join_token is not None and s.join_token.get_secret_value() == "s3cr3t-tok3n"
    assert "s3cr3t" not in repr(s)


def test_environment_and_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_NODE_CLUSTER_URL", "http://env:1")
    monkeypatch.setenv("EDGE_NODE_LABELS", "a=1,b=2")
    monkeypatch.setenv("EDGE_NODE_RUNTIMES", "docker,native")
    monkeypatch.setenv("EDGE_NODE_NAME", "env-node")
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"name": "file-node", "status_interval": 2, "log_level": "debug"}))
    s = load_settings(["--config", str(config), "--name", "flag-node"])
    assert s.cluster_url == "http://env:1"
    assert s.labels == {"a": "1", "b": "2"}
    assert s.runtimes == [Runtime.DOCKER, Runtime.NATIVE]
    assert s.name == "flag-node"  # flag > env > file
    assert s.status_interval == 2.0  # only in the file
    assert s.log_level == "DEBUG"
    s = load_settings(["--config", str(config)])
    assert s.name == "env-node"  # env > file


def test_toml_config_and_json_labels(monkeypatch, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('cluster_url = "http://toml:9"\nruntimes = ["native"]\n')
    monkeypatch.setenv("EDGE_NODE_CONFIG", str(config))
    monkeypatch.setenv("EDGE_NODE_LABELS", '{"k": "v"}')
    s = load_settings([])
    assert s.cluster_url == "http://toml:9" and s.runtimes == [Runtime.NATIVE]
    assert s.labels == {"k": "v"}


@pytest.mark.parametrize(
    "argv",
    [
        [],  # cluster url missing
        ["--cluster-url", "ftp://x"],
        ["--cluster-url", "http://x", "--name", "Not_A_Label"],
        ["--cluster-url", "http://x", "--runtime", "podman"],
        ["--cluster-url", "http://x", "--status-interval", "0"],
        ["--cluster-url", "http://x", "--label", "novalue"],
    ],
)
def test_invalid_settings(argv):
    with pytest.raises((ValidationError, ValueError)):
        load_settings(argv)


def test_help_mentions_every_option_and_env():
    text = build_parser().format_help()
    for flag, env in [
        ("--cluster-url", "EDGE_NODE_CLUSTER_URL"),
        ("--join-token", "EDGE_NODE_JOIN_TOKEN"),
        ("--state-dir", "EDGE_NODE_STATE_DIR"),
        ("--name", "EDGE_NODE_NAME"),
        ("--label", "EDGE_NODE_LABELS"),
        ("--status-interval", "EDGE_NODE_STATUS_INTERVAL"),
        ("--runtime", "EDGE_NODE_RUNTIMES"),
        ("--config", "EDGE_NODE_CONFIG"),
    ]:
        assert flag in text and env in text


def test_help_says_the_join_token_is_for_the_first_join_only():
    text = " ".join(build_parser().format_help().split())
    assert "needed for the first join only" in text
    assert "rejoins with its stored node secret" in text


def test_native_policy_settings(monkeypatch):
    defaults = load_settings(["--cluster-url", "http://x"])
    assert defaults.native_run_as == "edge-task"
    assert defaults.native_allowed_commands == ["*"]
    assert defaults.native_allowed_workdirs == [] and defaults.native_allow_env_overrides == []
    monkeypatch.setenv("EDGE_NODE_NATIVE_ALLOWED_WORKDIRS", "/srv/jobs,/data")
    monkeypatch.setenv("EDGE_NODE_NATIVE_ALLOW_ENV_OVERRIDES", "LD_LIBRARY_PATH,LC_*")
    s = load_settings(
        [
            "--cluster-url",
            "http://x",
            "--native-run-as",
            "1234:1234",
            "--native-allowed-commands",
            "/opt/apps/*, /usr/bin/python3",
        ]
    )
    assert s.native_run_as == "1234:1234"
    assert s.native_allowed_commands == ["/opt/apps/*", "/usr/bin/python3"]
    assert s.native_allowed_workdirs == ["/srv/jobs", "/data"]
    assert s.native_allow_env_overrides == ["LD_LIBRARY_PATH", "LC_*"]
    text = build_parser().format_help()
    for flag in ("--native-run-as", "--native-allowed-commands", "--native-allowed-workdirs"):
        assert flag in text
    assert "EDGE_NODE_NATIVE_ALLOW_ENV_OVERRIDES" in text


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--native-allowed-commands", "python3", "native_allowed_commands"),
        ("--native-allowed-workdirs", "relative/dir", "native_allowed_workdirs"),
        ("--native-allow-env-overrides", "LD PRELOAD", "native_allow_env_overrides"),
        ("--native-run-as", "a b", "native_run_as"),
        ("--native-run-as", "", "native_run_as"),
    ],
)
def test_native_policy_settings_refuse_bad_values(flag, value, field):
    with pytest.raises(ValidationError, match=field):
        load_settings(["--cluster-url", "http://x", flag, value])
