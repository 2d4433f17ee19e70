"""Config mistakes in the three programs: one line on stderr, exit status 2, nothing
written to the current directory.

Real subprocesses of the console scripts, each in an empty temporary working
directory, with no EDGE_* variable from the test environment: a bad value in a flag,
in an environment variable and in the settings file, a missing required value, an
unreadable or unparsable file, an unknown option.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(
    program: str, args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    clean.update(env or {})
    return subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _files(tmp_path: Path) -> Path:
    """A directory with settings files, outside the working directory."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "bad-port.yaml").write_text("port: lots\n")
    (files / "unknown.yaml").write_text("prot: 8000\n")
    (files / "broken.yaml").write_text("port: [8000\n")
    (files / "bad.json").write_text('{"stop_timeout": "abc"}')
    (files / "broken.json").write_text("{nope")
    (files / "unknown.toml").write_text('cluster_url = "http://x"\nfoo = 1\n')
    return files


OP = ["--operator-tokens", "operator-token-1"]

# (program, args, env, what the line must say)
CASES: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    # root-orchestrator
    ("root-orchestrator", ["--port", "abc", *OP], {}, ["--port", "EDGE_PORT", "'abc'"]),
    ("root-orchestrator", OP, {"EDGE_PORT": "99999"}, ["--port", "EDGE_PORT", "65535"]),
    ("root-orchestrator", OP, {"EDGE_LOG_LEVEL": "LOUD"}, ["--log-level", "EDGE_LOG_LEVEL"]),
    (
        "root-orchestrator",
        [*OP, "--store-url", "postgres://db/x"],
        {},
        ["--store-url", "EDGE_STORE_URL", "postgres"],
    ),
    (
        "root-orchestrator",
        [*OP, "--cluster-lost-after", "5"],
        {},
        ["--cluster-lost-after", "EDGE_CLUSTER_UNREACHABLE_AFTER"],
    ),
    ("root-orchestrator", [], {}, ["--operator-tokens", "EDGE_OPERATOR_TOKENS"]),
    (
        "root-orchestrator",
        ["--operator-tokens", "short"],
        {},
        ["--operator-tokens", "EDGE_OPERATOR_TOKENS", "8 characters"],
    ),
    (
        "root-orchestrator",
        [*OP, "--registration-token", "tiny"],
        {},
        ["--registration-token", "EDGE_REGISTRATION_TOKEN"],
    ),
    ("root-orchestrator", [*OP, "--config", "{files}/bad-port.yaml"], {}, ["--port", "'lots'"]),
    (
        "root-orchestrator",
        [*OP, "--config", "{files}/unknown.yaml"],
        {},
        ["unknown setting 'prot'"],
    ),
    (
        "root-orchestrator",
        [*OP, "--config", "{files}/broken.yaml"],
        {},
        ["--config", "EDGE_CONFIG"],
    ),
    (
        "root-orchestrator",
        [*OP],
        {"EDGE_CONFIG": "{files}/missing.yaml"},
        ["EDGE_CONFIG", "No such"],
    ),
    ("root-orchestrator", [*OP, "--config", "{files}"], {}, ["--config", "Is a directory"]),
    ("root-orchestrator", ["--no-such-flag"], {}, ["--no-such-flag", "--help"]),
    # cluster-orchestrator
    ("cluster-orchestrator", ["--port", "-1"], {}, ["--port", "EDGE_PORT"]),
    ("cluster-orchestrator", ["--start-broker", "--name", "Bad_Name"], {}, ["--name", "EDGE_NAME"]),
    ("cluster-orchestrator", ["--start-broker"], {"EDGE_LOG_LEVEL": "chatty"}, ["EDGE_LOG_LEVEL"]),
    (
        "cluster-orchestrator",
        ["--start-broker", "--root-url", "ftp://root"],
        {},
        ["--root-url", "EDGE_ROOT_URL", "http://"],
    ),
    (
        "cluster-orchestrator",
        ["--start-broker"],
        {"EDGE_LABELS": "zone"},
        ["--labels", "EDGE_LABELS"],
    ),
    (
        "cluster-orchestrator",
        [],
        {},
        ["--broker-admin-password", "EDGE_BROKER_ADMIN_PASSWORD", "required"],
    ),
    (
        "cluster-orchestrator",
        ["--start-broker", "--store-url", "sqlite:"],
        {},
        ["--store-url", "EDGE_STORE_URL"],
    ),
    (
        "cluster-orchestrator",
        ["--start-broker", "--config", "{files}/bad-port.yaml"],
        {},
        ["--port"],
    ),
    ("cluster-orchestrator", ["--config", "{files}/broken.yaml"], {}, ["--config", "EDGE_CONFIG"]),
    (
        "cluster-orchestrator",
        ["--start-broker", "--join-tokens", "a,b"],
        {},
        ["--join-tokens", "EDGE_JOIN_TOKENS"],
    ),
    # node-engine
    ("node-engine", [], {}, ["--cluster-url", "EDGE_NODE_CLUSTER_URL", "required"]),
    ("node-engine", ["--cluster-url", "cluster:8100"], {}, ["--cluster-url", "http://"]),
    (
        "node-engine",
        ["--cluster-url", "http://c:1"],
        {"EDGE_NODE_STOP_TIMEOUT": "soon"},
        ["--stop-timeout", "EDGE_NODE_STOP_TIMEOUT", "'soon'"],
    ),
    (
        "node-engine",
        ["--cluster-url", "http://c:1", "--runtime", "podman"],
        {},
        ["--runtime", "EDGE_NODE_RUNTIMES", "podman"],
    ),
    ("node-engine", ["--cluster-url", "http://c:1", "--label", "zone"], {}, ["--label"]),
    (
        "node-engine",
        ["--cluster-url", "http://c:1", "--shedding-cpu-exit", "95"],
        {},
        ["--shedding-cpu-exit", "EDGE_NODE_SHEDDING_CPU_ENTER"],
    ),
    (
        "node-engine",
        ["--cluster-url", "http://c:1", "--mqtt-ca-file", "{files}/none.pem"],
        {},
        ["--mqtt-ca-file", "EDGE_NODE_MQTT_CA_FILE"],
    ),
    (
        "node-engine",
        ["--cluster-url", "http://c:1", "--config", "{files}/bad.json"],
        {},
        ["--stop-timeout"],
    ),
    (
        "node-engine",
        ["--config", "{files}/broken.json"],
        {},
        ["--config", "EDGE_NODE_CONFIG", "parsed"],
    ),
    ("node-engine", [], {"EDGE_NODE_CONFIG": "{files}/unknown.toml"}, ["unknown setting 'foo'"]),
    ("node-engine", ["--config", "{files}"], {}, ["EDGE_NODE_CONFIG", "cannot be read"]),
    ("node-engine", ["--cluster-url", "http://c:1", "--log-level", "loud"], {}, ["--log-level"]),
]


@pytest.mark.parametrize(
    ("program", "args", "env", "needles"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_config_mistake_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, program: str, args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    files = _files(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    fill = {"files": str(files)}
    proc = _run(
        program,
        [a.format(**fill) for a in args],
        cwd,
        {k: v.format(**fill) for k, v in env.items()},
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"{program}: "), line
    assert "Traceback" not in proc.stderr and "pydantic.dev" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    assert proc.stdout == ""
    assert list(cwd.iterdir()) == [], list(cwd.iterdir())


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    proc = _run(
        "root-orchestrator",
        ["--operator-tokens", "sekrit1", "--registration-token", "hush"],
        tmp_path,
    )
    assert proc.returncode == 2
    assert "sekrit1" not in proc.stderr and "hush" not in proc.stderr
    assert "--operator-tokens" in proc.stderr
