"""The build half of ``node-engine`` (node_engine/startup.py), one step at a time.

Each step raises `StartupExit` with the status and line `node_engine.main` prints; the
CLI itself is covered by tests/integration/test_config_errors.py and test_node_engine.py.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from node_engine.settings import load_settings
from node_engine.startup import (
    EXIT_CONFIG,
    EXIT_JOIN_FAILED,
    StartupExit,
    Stopper,
    build_host,
    join,
    read_settings,
)
from schemas.common import Runtime


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_read_settings_names_the_flag_of_a_bad_value() -> None:
    with pytest.raises(StartupExit) as caught:
        read_settings(["--cluster-url", "http://c:1", "--stop-timeout", "-1"])
    assert caught.value.code == EXIT_CONFIG
    assert caught.value.message.startswith("node-engine: ")
    assert "--stop-timeout" in caught.value.message


def test_read_settings_names_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(StartupExit) as caught:
        read_settings(["--cluster-url", "http://c:1", "--config", str(tmp_path / "no.toml")])
    assert caught.value.code == EXIT_CONFIG
    assert "EDGE_NODE_CONFIG" in caught.value.message
    assert "does not exist" in caught.value.message


def test_build_host_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = load_settings(["--cluster-url", "http://c:1", "--state-dir", str(blocker / "state")])
    with pytest.raises(StartupExit) as caught:
        build_host(settings)
    assert caught.value.code == EXIT_CONFIG
    assert "cannot use state directory" in caught.value.message


def test_build_host_plans_the_usable_runtimes(tmp_path: Path) -> None:
    settings = load_settings(
        [
            "--cluster-url",
            "http://c:1",
            "--state-dir",
            str(tmp_path / "state"),
            "--runtime",
            "native",
            "--name",
            "planned",
            "--label",
            "zone=a",
        ]
    )
    host = build_host(settings)
    assert list(host.runtimes) == [Runtime.NATIVE]
    assert host.unavailable == {}
    assert host.info.name == "planned"
    assert host.info.labels == {"zone": "a"}
    assert host.info.runtimes == [Runtime.NATIVE]
    # 0711 when native tasks run as another user (the engine is root), else 0700
    wanted = 0o711 if host.native_guard.switches else 0o700
    assert (tmp_path / "state").stat().st_mode & 0o777 == wanted


def test_join_without_identity_or_token_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(
        ["--cluster-url", "http://c:1", "--state-dir", str(tmp_path), "--runtime", "native"]
    )
    host = build_host(settings)
    with pytest.raises(StartupExit) as caught:
        join(settings, host, threading.Event())
    assert caught.value.code == EXIT_CONFIG
    assert "no stored identity and no join token" in caught.value.message


def test_join_ends_with_status_0_when_stopped_while_the_cluster_is_away(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        [
            "--cluster-url",
            f"http://127.0.0.1:{_closed_port()}",
            "--join-token",
            "t" * 16,
            "--state-dir",
            str(tmp_path),
            "--runtime",
            "native",
        ]
    )
    host = build_host(settings)
    stop = threading.Event()
    stop.set()
    with pytest.raises(StartupExit) as caught:
        join(settings, host, stop)
    assert (caught.value.code, caught.value.message) == (0, "")


def test_stopper_before_the_engine_wakes_the_inbox() -> None:
    stopper = Stopper()
    stopper.request()
    assert stopper.stop.is_set()
    assert stopper.inbox.get_nowait() is None


def test_exit_codes_are_the_documented_ones() -> None:
    from node_engine import main

    assert (main.EXIT_CONFIG, main.EXIT_JOIN_REFUSED, EXIT_JOIN_FAILED) == (2, 3, 1)
    assert main.__doc__ is not None and "3 when" in main.__doc__


def test_yaml_named_files_are_json_for_the_node(tmp_path: Path) -> None:
    """The node reads only JSON and TOML: a ``.yaml`` name is parsed as JSON."""
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"cluster_url": "http://from-file:1"}))
    assert load_settings(["--config", str(config)]).cluster_url == "http://from-file:1"
    config.write_text("cluster_url: http://yaml:1\n")
    with pytest.raises(ValueError, match="cannot be parsed"):
        load_settings(["--config", str(config)])


def test_node_config_keys_read_like_the_orchestrators(tmp_path: Path) -> None:
    """The shared loader: ``-`` in a file key reads as ``_``, a JSON null sets nothing."""
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"cluster-url": "http://dashed:1", "stop-timeout": 3}))
    settings = load_settings(["--config", str(config)])
    assert (settings.cluster_url, settings.stop_timeout) == ("http://dashed:1", 3.0)
    config.write_text("null")
    empty = load_settings(["--config", str(config), "--cluster-url", "http://f:1"])
    assert (empty.cluster_url, empty.stop_timeout) == ("http://f:1", 10.0)
