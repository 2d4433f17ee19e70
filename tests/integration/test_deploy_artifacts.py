"""The deployment artefacts: docker-compose.yml, the Dockerfile, deploy/ and helm/.

Nothing here pulls an image or needs a Kubernetes cluster:

* the compose file is validated by Debian's ``docker-compose config`` (skipped only when
  the binary is missing) and every service running the project image is checked
  against the code: its command is a console script of pyproject.toml whose entry
  point exists, and every ``EDGE_*`` variable it sets is a setting of that program
  (the resolved values are loaded through the program's own ``load_settings``);
* the Dockerfile is checked at parse level (base image from ``BASE_IMAGE``, every
  COPY source exists and is not excluded by .dockerignore); it is built for real only
  when ``EDGE_TEST_BASE_IMAGE`` names a local image (plus ``EDGE_TEST_PIP_INSTALL_ARGS``
  for a build without network, e.g. ``--no-index --no-build-isolation``);
* deploy/mosquitto/init-dynsec.sh runs against the real ``mosquitto_ctrl`` and the
  broker configuration is started with the real ``mosquitto`` and used by a real
  cluster orchestrator as an external broker, with the settings of the compose file;
* the Helm charts are checked without ``helm``: well-formed YAML with the template
  actions stripped, balanced ``{{ }}``, every ``.Values`` path defined; and they are
  rendered with the small Go-template renderer below (the subset of Go templates and
  Sprig that the charts use; an unknown function is an error) and the manifests are
  checked like the compose services.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MOSQUITTO_DIR = REPO / "deploy" / "mosquitto"
MOSQUITTO_CONF = MOSQUITTO_DIR / "mosquitto.conf"
MOSQUITTO_TLS_CONF = MOSQUITTO_DIR / "mosquitto-tls.conf"
COMPOSE_TLS_FILE = REPO / "docker-compose.tls.yml"
INIT_DYNSEC = MOSQUITTO_DIR / "init-dynsec.sh"
HELM = REPO / "helm"
CHARTS = ("edge-root", "edge-cluster")

# program -> (settings module, settings class)
PROGRAMS: dict[str, tuple[str, str]] = {
    "root-orchestrator": ("root_orchestrator.settings", "RootSettings"),
    "cluster-orchestrator": ("cluster_orchestrator.settings", "ClusterSettings"),
    "node-engine": ("node_engine.settings", "NodeEngineSettings"),
}
MOSQUITTO_PLUGIN_IN_IMAGE = "/usr/lib/mosquitto_dynamic_security.so"


def console_scripts() -> dict[str, str]:
    """`[project.scripts]` of pyproject.toml."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


def check_entry_point(script: str) -> None:
    """The console script exists and its `module:function` target is importable."""
    scripts = console_scripts()
    assert script in scripts, f"{script!r} is not a console script of pyproject.toml"
    module, _, attr = scripts[script].partition(":")
    target = getattr(importlib.import_module(module), attr, None)
    assert callable(target), f"{scripts[script]} is not a callable"


def settings_class(program: str) -> Any:
    module, name = PROGRAMS[program]
    return getattr(importlib.import_module(module), name)


def env_prefix(program: str) -> str:
    return str(settings_class(program).model_config["env_prefix"])


def unknown_edge_variables(program: str, names: list[str]) -> list[str]:
    """The EDGE_* names that are no setting of `program` (EDGE_*CONFIG is the file)."""
    cls = settings_class(program)
    prefix = env_prefix(program)
    bad = []
    for name in names:
        if not name.startswith("EDGE_"):
            continue
        if not name.startswith(prefix):
            bad.append(name)
            continue
        key = name[len(prefix) :].lower()
        if key != "config" and key not in cls.model_fields:
            bad.append(name)
    return bad


@contextlib.contextmanager
def edge_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly these EDGE_* variables in os.environ (restored afterwards)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("EDGE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("EDGE_")]:
            del os.environ[key]
        os.environ.update(saved)


def load_program_settings(program: str, env: Mapping[str, str]) -> Any:
    """What the program's own `load_settings([])` makes of this environment."""
    module = importlib.import_module(PROGRAMS[program][0])
    with edge_environment({k: v for k, v in env.items() if k.startswith("EDGE_")}):
        return module.load_settings([])


def program_of(command: list[str]) -> str:
    """The console script a container command runs (first word, or python -c exec)."""
    if command and command[0] in console_scripts():
        return command[0]
    text = " ".join(command)
    for script in PROGRAMS:
        if f'os.execvp("{script}"' in text:
            return script
    raise AssertionError(f"command {command!r} runs no console script of the project")


# =================================================================== compose


def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    return binary


def compose_config(env_file: Path, *overlays: Path) -> dict[str, Any]:
    """`docker-compose config` with only `env_file` as the source of variables."""
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    files = [arg for path in (COMPOSE_FILE, *overlays) for arg in ("-f", str(path))]
    proc = subprocess.run(
        [compose_binary(), *files, "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=clean,
        check=False,
    )
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}{proc.stdout}"
    return dict(yaml.safe_load(proc.stdout))


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def resolved_compose() -> dict[str, Any]:
    return compose_config(ENV_EXAMPLE)


def is_project_service(service: Mapping[str, Any]) -> bool:
    return "build" in service


def command_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    with_defaults = compose_config(empty)
    with_example = compose_config(ENV_EXAMPLE)
    # .env.example documents exactly the defaults of the compose file
    assert with_example == with_defaults


def test_compose_variables_are_documented_in_env_example() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(
        re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    )
    assert used, "the compose file uses no variables?"
    assert sorted(used - documented) == []


def test_compose_secrets_come_from_variables(raw_compose: dict[str, Any]) -> None:
    for name, service in raw_compose["services"].items():
        for key, value in service_env(service).items():
            if re.search(r"TOKEN|PASSWORD", key):
                assert "${" in value, f"{name}: {key} is hard-coded, use a variable"


def test_compose_commands_are_console_scripts(raw_compose: dict[str, Any]) -> None:
    programs = set()
    for name, service in raw_compose["services"].items():
        if not is_project_service(service):
            continue
        command = command_list(service.get("command"))
        assert command, f"{name}: the project image needs an explicit command"
        check_entry_point(command[0])
        programs.add(command[0])
    assert programs == set(PROGRAMS)


def test_compose_edge_variables_are_real_settings(raw_compose: dict[str, Any]) -> None:
    for name, service in raw_compose["services"].items():
        if not is_project_service(service):
            continue
        program = program_of(command_list(service["command"]))
        env = service_env(service)
        assert unknown_edge_variables(program, list(env)) == [], name
        prefix = env_prefix(program)
        assert all(k.startswith(prefix) for k in env if k.startswith("EDGE_")), name


def test_compose_settings_load_in_each_program(resolved_compose: dict[str, Any]) -> None:
    for name, service in resolved_compose["services"].items():
        if not is_project_service(service):
            continue
        program = program_of(command_list(service["command"]))
        env = service_env(service)
        settings = load_program_settings(program, env)
        if program == "node-engine":
            assert settings.state_dir == Path("/var/lib/edge-node"), name
        else:
            assert settings.host == "0.0.0.0", f"{name} must listen on every interface"


def test_compose_start_order_has_no_races(resolved_compose: dict[str, Any]) -> None:
    services = resolved_compose["services"]
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        if one_shot:
            assert service.get("network_mode") == "none", f"{name} needs no network"
        else:
            assert service.get("healthcheck"), f"{name} has no healthcheck"
            assert service.get("restart") == "unless-stopped", name
        for dep, spec in (service.get("depends_on") or {}).items():
            condition = spec.get("condition")
            if services[dep].get("restart") == "no":
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}"


def _host_of(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return str(parts.hostname), parts.port


def _networks(service: Mapping[str, Any]) -> set[str]:
    return set(service.get("networks") or {})


def _volume_sources(service: Mapping[str, Any], target: str) -> list[str]:
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            dest = rest.split(":")[0]
        else:
            source, dest = volume.get("source", ""), volume.get("target", "")
        if dest == target:
            found.append(str(source))
    return found


def test_compose_wiring_between_services(resolved_compose: dict[str, Any]) -> None:
    services = resolved_compose["services"]
    by_program: dict[str, list[str]] = {}
    for name, service in services.items():
        if is_project_service(service):
            by_program.setdefault(program_of(command_list(service["command"])), []).append(name)
    assert len(by_program["root-orchestrator"]) == 1
    assert len(by_program["cluster-orchestrator"]) == 2
    assert len(by_program["node-engine"]) >= 2
    root_name = by_program["root-orchestrator"][0]
    root = services[root_name]
    root_env = service_env(root)
    store_host, _ = _host_of(root_env["EDGE_STORE_URL"])
    assert root_env["EDGE_STORE_URL"].startswith("mongodb://")
    assert _networks(root) & _networks(services[store_host])
    assert "service_healthy" in str(root["depends_on"][store_host])

    for cluster_name in by_program["cluster-orchestrator"]:
        cluster = services[cluster_name]
        env = service_env(cluster)
        # the root: URL, registration token, a shared network
        host, port = _host_of(env["EDGE_ROOT_URL"])
        assert host == root_name and port == int(root_env["EDGE_PORT"])
        assert env["EDGE_REGISTRATION_TOKEN"] == root_env["EDGE_REGISTRATION_TOKEN"]
        assert _networks(cluster) & _networks(root)
        host, port = _host_of(env["EDGE_URL"])
        assert host == cluster_name and port == int(env["EDGE_PORT"])
        # its broker: same admin credentials as the init service, shared data volume
        broker_name = env["EDGE_BROKER_HOST"]
        broker = services[broker_name]
        assert _networks(cluster) & _networks(broker)
        assert broker["image"] == services[next(iter(broker["depends_on"]))]["image"]
        broker_env = service_env(broker)
        assert broker_env["MQTT_ADMIN_PASSWORD"] == env["EDGE_BROKER_ADMIN_PASSWORD"]
        assert broker_env["MQTT_ADMIN_USERNAME"] == env["EDGE_BROKER_ADMIN_USERNAME"]
        (init_name,) = broker["depends_on"]
        init = services[init_name]
        init_env = service_env(init)
        assert init_env["MQTT_ADMIN_PASSWORD"] == env["EDGE_BROKER_ADMIN_PASSWORD"]
        assert init_env["MQTT_ADMIN_USERNAME"] == env["EDGE_BROKER_ADMIN_USERNAME"]
        assert command_list(init["entrypoint"]) == ["/bin/sh", "/deploy/init-dynsec.sh"]
        assert _volume_sources(init, "/deploy") == [str(MOSQUITTO_DIR)]
        data = _volume_sources(broker, "/mosquitto/data")
        assert data and data == _volume_sources(init, "/mosquitto/data")
        assert _volume_sources(broker, "/mosquitto/config/mosquitto.conf") == [str(MOSQUITTO_CONF)]
        assert int(env["EDGE_BROKER_PORT"]) == 1883
        # its nodes: join through this cluster, talk to this broker
        nodes = [
            n
            for n in by_program["node-engine"]
            if _host_of(service_env(services[n])["EDGE_NODE_CLUSTER_URL"])[0] == cluster_name
        ]
        assert len(nodes) >= 2, cluster_name
        for node_name in nodes:
            node = services[node_name]
            node_env = service_env(node)
            assert node_env["EDGE_NODE_JOIN_TOKEN"] == env["EDGE_JOIN_TOKEN"]
            assert _networks(node) & _networks(cluster)
            assert _networks(node) & _networks(broker)
            assert not _networks(node) & _networks(root), "nodes only reach their cluster"
            assert "docker" in node_env["EDGE_NODE_RUNTIMES"]
            assert _volume_sources(node, "/var/run/docker.sock"), node_name
            assert str(node.get("user", "")).split(":")[0] == "0", "docker socket needs root"
            assert node["hostname"] == node_env["EDGE_NODE_NAME"]
        assert env["EDGE_ADVERTISED_BROKER_HOST"] == broker_name
        assert env["EDGE_JOIN_TOKEN"] != env["EDGE_OPERATOR_TOKEN"]


# =================================================================== deploy/mosquitto


def parse_mosquitto_conf(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        out.setdefault(key, []).append(value.strip())
    return out


def test_mosquitto_conf_matches_the_generated_configuration() -> None:
    from cluster_orchestrator.broker import DYNSEC_FILE_NAME, BrokerLimits

    conf = parse_mosquitto_conf(MOSQUITTO_CONF.read_text())
    limits = BrokerLimits()
    expected = {
        "per_listener_settings": ["false"],
        "allow_anonymous": ["false"],
        "set_tcp_nodelay": ["true"],
        "plugin": [MOSQUITTO_PLUGIN_IN_IMAGE],
        "plugin_opt_config_file": [f"/mosquitto/data/{DYNSEC_FILE_NAME}"],
        "persistence": ["true"],
        "persistence_location": ["/mosquitto/data/"],
        "autosave_interval": [str(limits.autosave_interval)],
        "persistent_client_expiration": [limits.persistent_client_expiration],
        "max_packet_size": [str(limits.max_packet_size)],
        "max_queued_messages": [str(limits.max_queued_messages)],
        "max_inflight_messages": [str(limits.max_inflight_messages)],
        "max_keepalive": [str(limits.max_keepalive)],
        "max_connections": [str(limits.max_connections)],
        "listener": ["1883"],
    }
    for key, value in expected.items():
        assert conf.get(key) == value, key
    assert "password_file" not in conf and "acl_file" not in conf


TLS_LISTENER_KEYS = {"listener", "max_connections", "certfile", "keyfile", "tls_version"}


def test_mosquitto_tls_conf_differs_only_in_its_listeners() -> None:
    plain = parse_mosquitto_conf(MOSQUITTO_CONF.read_text())
    tls = parse_mosquitto_conf(MOSQUITTO_TLS_CONF.read_text())
    for key in set(plain) | set(tls):
        if key not in TLS_LISTENER_KEYS:
            assert plain.get(key) == tls.get(key), key
    assert tls["set_tcp_nodelay"] == ["true"]
    # plain MQTT on loopback only, TLS (>= 1.2) on every interface of the container
    assert tls["listener"] == ["1883 127.0.0.1", "8883"]
    assert tls["certfile"] == ["/mosquitto/tls/tls.crt"]
    assert tls["keyfile"] == ["/mosquitto/tls/tls.key"]
    assert tls["tls_version"] == ["tlsv1.2"]
    assert tls["max_connections"] == plain["max_connections"] * 2


def _require(binary: str) -> str:
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{binary} is not installed (Debian packages mosquitto, mosquitto-clients)"
        if os.environ.get("CI") or os.environ.get("EDGE_REQUIRE_MOSQUITTO"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _shells() -> list[Any]:
    params = [pytest.param(["/bin/sh"], id="sh")]
    busybox = shutil.which("busybox")
    # the eclipse-mosquitto image is Alpine: busybox sh, sed, grep, wc
    params.append(
        pytest.param(
            [busybox, "sh"] if busybox else None,
            id="busybox",
            marks=pytest.mark.skipif(busybox is None, reason="busybox is not installed"),
        )
    )
    return params


def run_init_dynsec(
    shell: list[str], dynsec_file: Path, password: str | None, username: str = "admin"
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "DYNSEC_FILE": str(dynsec_file),
        "MQTT_ADMIN_USERNAME": username,
        "MOSQUITTO_CTRL": _require("mosquitto_ctrl"),
        "DYNSEC_OWNER": f"{os.getuid()}:{os.getgid()}",
    }
    if password is not None:
        env["MQTT_ADMIN_PASSWORD"] = password
    return subprocess.run(
        [*shell, str(INIT_DYNSEC)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.broker
@pytest.mark.parametrize("shell", _shells())
def test_init_dynsec_creates_a_deny_by_default_file_once(shell: list[str], tmp_path: Path) -> None:
    from cluster_orchestrator.broker import DEFAULT_ACL_ACCESS

    target = tmp_path / "data" / "dynamic-security.json"
    proc = run_init_dynsec(shell, target, "s3cret pass$word'\"")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(target.read_text())
    assert [c["username"] for c in data["clients"]] == ["admin"]
    assert data["defaultACLAccess"] == DEFAULT_ACL_ACCESS
    assert target.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in target.read_text()
    assert not list(target.parent.glob("*.init*"))
    before = target.read_bytes()
    again = run_init_dynsec(shell, target, "another-password")
    assert again.returncode == 0, again.stderr
    assert target.read_bytes() == before, "an existing file must be kept"


@pytest.mark.broker
@pytest.mark.parametrize(
    ("password", "username"),
    [(None, "admin"), ("", "admin"), ("x" * 129, "admin"), ("good-password", "bad/user")],
)
def test_init_dynsec_refuses_bad_input(password: str | None, username: str, tmp_path: Path) -> None:
    target = tmp_path / "dynamic-security.json"
    proc = run_init_dynsec(["/bin/sh"], target, password, username)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not target.exists()


@dataclass
class RunningBroker:
    port: int
    proc: subprocess.Popen[bytes]
    directory: Path


@pytest.fixture
def compose_style_broker(tmp_path: Path, resolved_compose: dict[str, Any]) -> Iterator[Any]:
    """deploy/mosquitto as a compose broker service runs it, on a free loopback port."""
    from cluster_orchestrator.broker import BrokerConfigError, find_dynsec_plugin, find_free_port

    mosquitto = _require("mosquitto")
    try:
        plugin = find_dynsec_plugin()
    except BrokerConfigError as exc:
        pytest.skip(str(exc))
    env = service_env(resolved_compose["services"]["mqtt-init-a"])
    data = tmp_path / "mosquitto-data"
    data.mkdir(mode=0o700)
    proc = run_init_dynsec(["/bin/sh"], data / "dynamic-security.json", env["MQTT_ADMIN_PASSWORD"])
    assert proc.returncode == 0, proc.stderr
    port = find_free_port()
    text = MOSQUITTO_CONF.read_text()
    text = text.replace(MOSQUITTO_PLUGIN_IN_IMAGE, str(plugin))
    text = text.replace("/mosquitto/data/", f"{data}/")
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE)
    # as root, mosquitto would switch to the 'mosquitto' user (the image does the same)
    text += f"user {os.environ.get('USER') or 'root'}\n" if os.getuid() == 0 else ""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    log = (tmp_path / "mosquitto.out").open("wb")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield RunningBroker(port=port, proc=broker, directory=data)
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(10)
        log.close()


@pytest.mark.broker
@pytest.mark.slow
def test_compose_broker_serves_a_cluster_orchestrator(
    compose_style_broker: RunningBroker, resolved_compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compose broker + cluster settings work end to end (external broker mode)."""
    from tests.fixtures.broker import MqttProbe
    from tests.harness.cluster_process import ClusterProcess, free_port

    cluster_env = service_env(resolved_compose["services"]["cluster-a"])
    env = {
        **{k: v for k, v in cluster_env.items() if k.startswith("EDGE_")},
        "EDGE_ADVERTISED_BROKER_HOST": "127.0.0.1",
        "EDGE_ADVERTISED_BROKER_PORT": str(compose_style_broker.port),
    }
    for key in ("EDGE_ROOT_URL", "EDGE_URL", "EDGE_HOST", "EDGE_PORT", "EDGE_DATA_DIR"):
        env.pop(key)
    for key in ("EDGE_BROKER_HOST", "EDGE_BROKER_PORT"):
        env.pop(key)
    cluster = ClusterProcess(
        tmp_path / "cluster",
        broker_port=compose_style_broker.port,
        broker_admin_password=cluster_env["EDGE_BROKER_ADMIN_PASSWORD"],
        operator_token=cluster_env["EDGE_OPERATOR_TOKEN"],
        join_token=cluster_env["EDGE_JOIN_TOKEN"],
        name=cluster_env["EDGE_NAME"],
        port=free_port(),
        env=env,
    )
    with cluster:
        health = httpx.get(cluster.url + "/healthz", timeout=5).json()
        assert health["broker_connected"] is True
        assert health["cluster"] == cluster_env["EDGE_NAME"]
        join = httpx.post(
            cluster.url + "/api/v1/nodes",
            headers={"authorization": f"Bearer {cluster_env['EDGE_JOIN_TOKEN']}"},
            json={
                "info": {
                    "name": "probe-node",
                    "hostname": "probe-node",
                    "arch": "amd64",
                    "cpu_cores": 2,
                    "memory_mib": 1024,
                    "disk_mib": 1024,
                    "runtimes": ["native"],
                }
            },
            timeout=10,
        )
        assert join.status_code == 201, join.text
        grant = join.json()
        mqtt_info = grant["mqtt"]
        assert (mqtt_info["host"], mqtt_info["port"]) == ("127.0.0.1", compose_style_broker.port)
        node = MqttProbe.connect(
            "127.0.0.1",
            compose_style_broker.port,
            mqtt_info["username"],
            mqtt_info["password"],
            client_id=mqtt_info["client_id"],
        )
        try:
            assert node.connected, node.connack
            node_id = grant["node_id"]
            allowed = node.publish(f"edge/v1/nodes/{node_id}/events", b"{}", qos=1)
            assert allowed is not None and not allowed.is_failure
            denied = node.publish("edge/v1/nodes/someone-else/events", b"{}", qos=1)
            assert denied is not None and denied.is_failure
        finally:
            node.close()
        anonymous = MqttProbe.connect("127.0.0.1", compose_style_broker.port, None, None)
        assert not anonymous.connected


# =================================================================== Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def _ignore_match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        segments = path.split("/")
        return any(
            fnmatch.fnmatchcase("/".join(segments[i:]), pattern[3:]) for i in range(len(segments))
        )
    return fnmatch.fnmatchcase(path, pattern)


def is_dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent excludes."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in dockerignore_patterns():
        if any(_ignore_match(pattern, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_takes_its_base_image_from_a_build_argument() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    assert instructions[0] == Instruction("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert [f.args for f in froms] == ["${BASE_IMAGE}"], "one stage, from BASE_IMAGE"
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "the image runs unprivileged"


def test_dockerfile_copies_what_exists_and_everything_the_package_needs() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    copied: set[str] = set()
    for ins in instructions:
        if ins.keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in shlex.split(ins.args))
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
                assert not is_dockerignored(source), f"{source} is excluded by .dockerignore"
                copied.add(source.rstrip("/"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= copied, f"packages not copied: {sorted(packages - copied)}"
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    for secret in (".env", ".venv", "tests", ".git"):
        assert is_dockerignored(secret), f"{secret} should stay out of the build context"


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    proc = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return proc.returncode == 0


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_docker_build_from_a_local_base_image() -> None:
    base = os.environ.get("EDGE_TEST_BASE_IMAGE")
    if not base:
        pytest.skip(
            "set EDGE_TEST_BASE_IMAGE to a local image with Python >= 3.11 and pip to build "
            "the project image (and EDGE_TEST_PIP_INSTALL_ARGS for a build without network)"
        )
    if not _docker_ok():
        pytest.skip("no Docker engine answers")
    inspect = subprocess.run(
        ["docker", "image", "inspect", base], capture_output=True, timeout=60, check=False
    )
    if inspect.returncode != 0:
        pytest.skip(f"EDGE_TEST_BASE_IMAGE={base} is not a local image")
    tag = f"edge-test/edge-orchestrator:build-{uuid.uuid4().hex[:8]}"
    args = ["--build-arg", f"BASE_IMAGE={base}"]
    pip_args = os.environ.get("EDGE_TEST_PIP_INSTALL_ARGS")
    if pip_args:
        args += ["--build-arg", f"PIP_INSTALL_ARGS={pip_args}"]
    build = subprocess.run(
        ["docker", "build", "--pull=false", *args, "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    try:
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        for script in PROGRAMS:
            run = subprocess.run(
                ["docker", "run", "--rm", "--network", "none", tag, script, "--help"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.returncode == 0, run.stderr
            assert "usage:" in run.stdout
        user = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Config.User}}", tag],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert user.stdout.strip() and not user.stdout.strip().startswith("0")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120, check=False)


# =================================================================== Helm: static checks

ACTION_RE = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)
VALUES_RE = re.compile(r"(?<![\w$])\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def chart_dir(chart: str) -> Path:
    return HELM / chart


def template_files(chart: str) -> list[Path]:
    return sorted((chart_dir(chart) / "templates").iterdir())


def strip_template(text: str) -> str:
    """Template actions out: lines that are only actions go, inline ones become `x`."""
    out = []
    for line in text.splitlines():
        without = ACTION_RE.sub("", line)
        if ACTION_RE.search(line) and not without.strip():
            continue
        out.append(ACTION_RE.sub("x", line))
    return "\n".join(out) + "\n"


def lookup(values: Any, path: list[str]) -> bool:
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_metadata_and_values_parse(chart: str) -> None:
    meta = yaml.safe_load((chart_dir(chart) / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == chart
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert (
        meta["appVersion"]
        == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    )
    values = yaml.safe_load((chart_dir(chart) / "values.yaml").read_text())
    assert isinstance(values, dict)
    assert {"image", "resources", "livenessProbe", "readinessProbe", "auth"} <= set(values)


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_templates_are_balanced_yaml(chart: str) -> None:
    for path in template_files(chart):
        text = path.read_text()
        assert text.count("{{") == text.count("}}"), path.name
        depth = 0
        for match in re.finditer(r"\{\{|\}\}", text):
            depth += 1 if match.group() == "{{" else -1
            assert depth in (0, 1), f"{path.name}: nested or unbalanced braces"
        opened = len(re.findall(r"\{\{-?\s*(?:if|with|range|define)\b", text))
        closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", text))
        assert opened == closed, f"{path.name}: {opened} blocks opened, {closed} closed"
        if path.suffix == ".yaml":
            docs = [d for d in yaml.safe_load_all(strip_template(text)) if d is not None]
            assert docs, path.name
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_values_used_by_templates_are_defined(chart: str) -> None:
    values = yaml.safe_load((chart_dir(chart) / "values.yaml").read_text())
    used = set()
    for path in template_files(chart):
        for match in VALUES_RE.finditer(path.read_text()):
            used.add(match.group(1).lstrip("."))
    assert used
    undefined = sorted(p for p in used if not lookup(values, p.split(".")))
    assert undefined == []


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_includes_and_files_exist(chart: str) -> None:
    text = "\n".join(p.read_text() for p in template_files(chart))
    defined = set(re.findall(r'define\s+"([^"]+)"', text))
    included = set(re.findall(r'include\s+"([^"]+)"', text))
    assert included <= defined, sorted(included - defined)
    for name in re.findall(r'\.Files\.Get\s+"([^"]+)"', text):
        assert (chart_dir(chart) / name).is_file(), name


def test_cluster_chart_ships_the_deploy_broker_files() -> None:
    """One source: the chart's files are links to deploy/mosquitto/ (Helm can only read
    files inside the chart and follows links when it loads or packages it)."""
    files = chart_dir("edge-cluster") / "files"
    for name, source in (
        ("mosquitto.conf", MOSQUITTO_CONF),
        ("mosquitto-tls.conf", MOSQUITTO_TLS_CONF),
        ("init-dynsec.sh", INIT_DYNSEC),
    ):
        assert (files / name).is_symlink(), name
        assert (files / name).resolve() == source.resolve(), name
        assert (files / name).read_text() == source.read_text()


# =================================================================== Helm: rendering
#
# A renderer for the part of Go's text/template and Sprig that the charts use. It is
# strict: an unknown function, a missing .Values key or a malformed action raises.


class TemplateError(Exception):
    pass


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<assign>:=)
      | (?P<pipe>\|)
      | (?P<lp>\()
      | (?P<rp>\))
      | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN_RE.match(expr, pos)
        if match is None or match.end() == pos:
            raise TemplateError(f"cannot parse {expr[pos:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


@dataclass
class Node:
    kind: str  # text, action, if, with, range, define
    text: str = ""
    branches: list[tuple[str | None, list[Node]]] = field(default_factory=list)


def _parse(source: str, name: str) -> tuple[list[Node], dict[str, list[Node]]]:
    # split into text and actions, applying the trim markers
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in ACTION_RE.finditer(source):
        text = source[pos : match.start()]
        if match.group(1) == "-":
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2).strip()))
        pos = match.end()
        if match.group(3) == "-":
            while pos < len(source) and source[pos] in " \t\r\n":
                pos += 1
    parts.append(("text", source[pos:]))

    defines: dict[str, list[Node]] = {}
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for kind, value in parts:
        body = stack[-1][1]
        if kind == "text":
            if value:
                body.append(Node("text", value))
            continue
        if value.startswith("/*"):
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word) :].strip()
        if word in ("if", "with", "range", "define"):
            node = Node(word, branches=[(rest, [])])
            body.append(node)
            stack.append((node, node.branches[0][1]))
        elif word == "else":
            node_or_none = stack[-1][0]
            if node_or_none is None:
                raise TemplateError(f"{name}: else outside a block")
            cond = rest[2:].strip() if rest.startswith("if") else None
            node_or_none.branches.append((cond, []))
            stack[-1] = (node_or_none, node_or_none.branches[-1][1])
        elif word == "end":
            node_or_none, _ = stack.pop()
            if node_or_none is None:
                raise TemplateError(f"{name}: unmatched end")
            if node_or_none.kind == "define":
                body_of_parent = stack[-1][1]
                body_of_parent.remove(node_or_none)
                defines[_unquote(node_or_none.branches[0][0] or "")] = node_or_none.branches[0][1]
        else:
            body.append(Node("action", value))
    if len(stack) != 1:
        raise TemplateError(f"{name}: {len(stack) - 1} unclosed block(s)")
    return root, defines


def _unquote(text: str) -> str:
    return str(json.loads(text))


def go_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        raise TemplateError(f"printing a {type(value).__name__} directly: use toYaml/toJson")
    return str(value)


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, dict | list) and not value)


def _indent(width: int, text: str) -> str:
    pad = " " * width
    return pad + text.replace("\n", "\n" + pad)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(f"required: {message}")
    return value


def _fail(message: str) -> Any:
    raise TemplateError(f"fail: {message}")


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)
    return re.sub(r"%[sdv]", lambda m: go_str(next(values)), fmt)


def _and(*args: Any) -> Any:
    for arg in args:
        if not truthy(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if truthy(arg):
            return arg
    return args[-1]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "default": lambda d, v=None: v if truthy(v) else d,
    "trunc": lambda n, s: go_str(s)[:n],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "contains": lambda sub, s: sub in s,
    "replace": lambda old, new, s: s.replace(old, new),
    "printf": _printf,
    "print": lambda *a: "".join(go_str(x) for x in a),
    "quote": lambda v: json.dumps(go_str(v)),
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "b64enc": lambda s: base64.b64encode(go_str(s).encode()).decode(),
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "required": _required,
    "fail": _fail,
    "not": lambda v: not truthy(v),
    "and": _and,
    "or": _or,
    "eq": lambda a, *b: all(a == x for x in b),
    "join": lambda sep, items: sep.join(go_str(i) for i in items),
}


class Files:
    def __init__(self, root: Path) -> None:
        self._root = root

    def Get(self, name: str) -> str:  # Helm's name: .Files.Get
        path = self._root / name
        if not path.is_file():
            raise TemplateError(f".Files.Get: no file {name}")
        return path.read_text()


class Renderer:
    """Renders the templates of one chart with given values (release "rel" in "edge")."""

    def __init__(
        self,
        meta: Mapping[str, Any],
        sources: Mapping[str, str],
        values: dict[str, Any],
        files_root: Path | None = None,
    ) -> None:
        name = meta["name"]
        self.root_context = {
            "Values": values,
            "Release": {"Name": "rel", "Namespace": "edge", "Service": "Helm"},
            "Chart": {"Name": name, "Version": meta["version"], "AppVersion": meta["appVersion"]},
            "Template": {"BasePath": f"{name}/templates"},
            "Files": Files(files_root) if files_root is not None else None,
        }
        self.templates: dict[str, list[Node]] = {}
        self.defines: dict[str, list[Node]] = {}
        for file_name, source in sources.items():
            body, defines = _parse(source, file_name)
            self.templates[file_name] = body
            self.defines[f"{name}/templates/{file_name}"] = body
            self.defines.update(defines)

    @classmethod
    def for_chart(cls, chart: Path, values: dict[str, Any]) -> Renderer:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        sources = {p.name: p.read_text() for p in sorted((chart / "templates").iterdir())}
        return cls(meta, sources, values, chart)

    def render(self, name: str) -> str:
        return self._run(self.templates[name], self.root_context, {})

    def _run(self, nodes: list[Node], dot: Any, variables: dict[str, Any]) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                assign = re.match(r"^\$([A-Za-z0-9_]+)\s*:=\s*(.*)$", node.text, re.DOTALL)
                if assign:
                    variables[assign.group(1)] = self._eval(assign.group(2), dot, variables)
                else:
                    out.append(go_str(self._eval(node.text, dot, variables)))
            elif node.kind == "if":
                for cond, body in node.branches:
                    if cond is None or truthy(self._eval(cond, dot, variables)):
                        out.append(self._run(body, dot, variables))
                        break
            elif node.kind == "with":
                cond, body = node.branches[0]
                value = self._eval(cond or "", dot, variables)
                if truthy(value):
                    out.append(self._run(body, value, variables))
                elif len(node.branches) > 1:
                    out.append(self._run(node.branches[1][1], dot, variables))
            elif node.kind == "range":
                cond, body = node.branches[0]
                items = self._eval(cond or "", dot, variables) or []
                seq = [items[k] for k in sorted(items)] if isinstance(items, dict) else items
                out.extend(self._run(body, item, variables) for item in seq)
            else:
                raise TemplateError(f"unsupported node {node.kind}")
        return "".join(out)

    def _eval(self, expr: str, dot: Any, variables: dict[str, Any]) -> Any:
        tokens = _tokens(expr)
        value, pos = self._pipeline(tokens, 0, dot, variables)
        if pos != len(tokens):
            raise TemplateError(f"trailing tokens in {expr!r}")
        return value

    def _pipeline(
        self, tokens: list[tuple[str, str]], pos: int, dot: Any, variables: dict[str, Any]
    ) -> tuple[Any, int]:
        value: Any = None
        first = True
        while True:
            operands: list[tuple[str, Any]] = []
            while pos < len(tokens) and tokens[pos][0] not in ("pipe", "rp"):
                kind, text = tokens[pos]
                if kind == "lp":
                    inner, pos = self._pipeline(tokens, pos + 1, dot, variables)
                    if pos >= len(tokens) or tokens[pos][0] != "rp":
                        raise TemplateError("unbalanced parenthesis")
                    operands.append(("value", inner))
                elif kind == "ident":
                    operands.append(("ident", text))
                else:
                    operands.append(("value", self._operand(kind, text, dot, variables)))
                pos += 1
            if not first:
                operands.append(("value", value))
            value = self._command(operands, dot)
            first = False
            if pos < len(tokens) and tokens[pos][0] == "pipe":
                pos += 1
                continue
            return value, pos

    def _command(self, operands: list[tuple[str, Any]], dot: Any) -> Any:
        if not operands:
            raise TemplateError("empty command")
        kind, head = operands[0]
        args = [v if k == "value" else self._ident_value(v) for k, v in operands[1:]]
        if kind == "ident":
            if head == "include":
                name, context = args
                if name not in self.defines:
                    raise TemplateError(f"include: no template {name!r}")
                return self._run(self.defines[name], context, {})
            if head in ("true", "false", "nil"):
                return {"true": True, "false": False, "nil": None}[head]
            if head not in FUNCTIONS:
                raise TemplateError(f"unknown function {head!r}")
            return FUNCTIONS[head](*args)
        if callable(head):
            return head(*args)
        if args:
            raise TemplateError(f"{head!r} is not a function")
        return head

    def _ident_value(self, name: str) -> Any:
        if name in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[name]
        raise TemplateError(f"function {name!r} used as an argument")

    def _operand(self, kind: str, text: str, dot: Any, variables: dict[str, Any]) -> Any:
        if kind == "str":
            return json.loads(text)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "field":
            return self._walk(dot, [p for p in text.split(".") if p])
        if kind == "var":
            head, *rest = text.split(".")
            base = self.root_context if head == "$" else variables[head[1:]]
            return self._walk(base, rest)
        raise TemplateError(f"unexpected {text!r}")

    def _walk(self, base: Any, path: list[str]) -> Any:
        node = base
        for i, key in enumerate(path):
            if isinstance(node, dict):
                if key not in node:
                    raise TemplateError(f"no key {'.'.join(path[: i + 1])}")
                node = node[key]
            elif hasattr(node, key):
                node = getattr(node, key)
            else:
                raise TemplateError(f"cannot read {key} of {type(node).__name__}")
        return node


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render_chart(chart: str, overrides: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Render every manifest; returns kind -> objects (NOTES.txt is rendered too)."""
    defaults = yaml.safe_load((chart_dir(chart) / "values.yaml").read_text())
    renderer = Renderer.for_chart(chart_dir(chart), deep_merge(defaults, overrides))
    objects: dict[str, list[dict[str, Any]]] = {}
    for name in renderer.templates:
        if name.startswith("_"):
            continue
        text = renderer.render(name)
        if name == "NOTES.txt":
            assert "<no value>" not in text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name
            objects.setdefault(doc["kind"], []).append(doc)
    return objects


def secret_values(objects: Mapping[str, list[dict[str, Any]]], name: str) -> dict[str, str]:
    for secret in objects.get("Secret", []):
        if secret["metadata"]["name"] == name:
            return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return {}


def container_env(
    container: Mapping[str, Any], objects: Mapping[str, list[dict[str, Any]]]
) -> dict[str, str]:
    """The container's environment with secretKeyRefs resolved from rendered Secrets."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = secret_values(objects, ref["name"])
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{item['name']}: key {ref['key']} missing"
    return env


def check_pod(objects: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Generic checks of the one Deployment; returns it."""
    (deployment,) = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in objects.get("PersistentVolumeClaim", [])}
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    ports = {}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, mount
        for port in container.get("ports", []):
            ports[port["name"]] = port["containerPort"]
    for service in objects["Service"]:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, port
    return deployment


def check_project_container(
    container: Mapping[str, Any], objects: Mapping[str, list[dict[str, Any]]]
) -> tuple[str, dict[str, str], Any]:
    """A container of the project image: console script, settings, /healthz probes."""
    program = program_of([*container.get("command", []), *container.get("args", [])])
    check_entry_point(program)
    env = container_env(container, objects)
    assert unknown_edge_variables(program, list(env)) == []
    settings = load_program_settings(program, env)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["resources"]["requests"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    return program, env, settings


ROOT_VALUES = {"auth": {"operatorTokens": ["op-token-1", "op-token-2"]}}
CLUSTER_VALUES = {
    "cluster": {"name": "site-a", "labels": {"region": "eu"}},
    "auth": {"brokerAdminPassword": "broker-admin-pw"},
}


def test_root_chart_renders_a_working_root() -> None:
    objects = render_chart(
        "edge-root",
        {**ROOT_VALUES, "auth": {**ROOT_VALUES["auth"], "registrationToken": "reg-token-1"}},
    )
    assert set(objects) == {"Secret", "PersistentVolumeClaim", "Service", "Deployment"}
    deployment = check_pod(objects)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    program, _, settings = check_project_container(container, objects)
    assert program == "root-orchestrator"
    assert [t.get_secret_value() for t in settings.operator_tokens] == ["op-token-1", "op-token-2"]
    assert settings.registration_token.get_secret_value() == "reg-token-1"
    assert settings.store_url == "sqlite:///var/lib/edge/root.db"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/edge" in mounts


def test_root_chart_with_mongodb_and_an_existing_secret() -> None:
    objects = render_chart(
        "edge-root",
        {"auth": {"existingSecret": "my-root-secret"}, "persistence": {"enabled": False}},
    )
    assert "Secret" not in objects and "PersistentVolumeClaim" not in objects
    deployment = check_pod(objects)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"my-root-secret"}
    url = "mongodb://edge:pw@mongo:27017/edge_root?authSource=admin"
    objects = render_chart("edge-root", {**ROOT_VALUES, "store": {"url": url}})
    secret = secret_values(objects, objects["Secret"][0]["metadata"]["name"])
    assert secret["store-url"] == url
    assert "registration-token" not in secret, "an empty token must not be set"


def test_root_chart_refuses_to_render_without_an_operator_token() -> None:
    with pytest.raises(TemplateError, match="operatorTokens"):
        render_chart("edge-root", {})


def test_cluster_chart_renders_orchestrator_and_broker() -> None:
    objects = render_chart("edge-cluster", CLUSTER_VALUES)
    assert set(objects) == {"Secret", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment"}
    assert len(objects["PersistentVolumeClaim"]) == 2
    assert {p["name"] for s in objects["Service"] for p in s["spec"]["ports"]} == {"http", "mqtt"}
    deployment = check_pod(objects)
    spec = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"cluster", "mosquitto"}
    program, env, settings = check_project_container(containers["cluster"], objects)
    assert program == "cluster-orchestrator"
    assert settings.name == "site-a" and settings.labels == {"region": "eu"}
    assert settings.url == "http://rel-edge-cluster.edge.svc:8100"
    assert settings.node_broker_host == "rel-edge-cluster-mqtt.edge.svc"
    assert settings.node_broker_port == 1883
    assert settings.root_url is None
    assert settings.operator_token is None and settings.join_token is None  # generated
    assert (settings.broker_host, settings.broker_port) == ("127.0.0.1", 1883)
    assert settings.data_dir == Path("/var/lib/edge/cluster")
    assert settings.public_metrics is False and settings.broker_health_grace == 5.0
    # the wait-for-broker wrapper is valid Python that ends in the console script
    compile(containers["cluster"]["command"][2], "cluster-command", "exec")
    # the broker sidecar: the deploy/mosquitto configuration, its port, its data volume
    broker = containers["mosquitto"]
    assert broker["ports"] == [{"name": "mqtt", "containerPort": 1883, "protocol": "TCP"}]
    assert broker["securityContext"]["runAsUser"] == 1883
    (configmap,) = objects["ConfigMap"]
    assert configmap["data"]["mosquitto.conf"] == MOSQUITTO_CONF.read_text()
    assert configmap["data"]["init-dynsec.sh"] == INIT_DYNSEC.read_text()
    mounts = {m["mountPath"]: m for m in broker["volumeMounts"]}
    assert mounts["/mosquitto/config/mosquitto.conf"]["subPath"] == "mosquitto.conf"
    # the init container writes the dynsec file with the orchestrator's admin password
    (init,) = spec["initContainers"]
    assert init["image"] == broker["image"]
    assert init["command"] == ["/bin/sh", "/deploy/init-dynsec.sh"]
    init_env = container_env(init, objects)
    assert init_env["MQTT_ADMIN_PASSWORD"] == env["EDGE_BROKER_ADMIN_PASSWORD"]
    assert init_env["MQTT_ADMIN_USERNAME"] == env["EDGE_BROKER_ADMIN_USERNAME"]
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert init_mounts["/mosquitto/data"] == mounts["/mosquitto/data"]["name"]
    assert "/deploy" in init_mounts


def test_cluster_chart_with_a_root_and_outside_nodes() -> None:
    values = deep_merge(
        CLUSTER_VALUES,
        {
            "root": {"url": "http://rel-edge-root.edge.svc:8000"},
            "auth": {
                "registrationToken": "reg-token-1",
                "joinToken": "join-token-1",
                "operatorToken": "op-token-1",
            },
            "broker": {"advertisedHost": "mqtt.site-a.example", "advertisedPort": 31883},
            "service": {"mqtt": {"type": "NodePort", "nodePort": 31883}},
            "cluster": {"storeUrl": "sqlite:///var/lib/edge/cluster/other.db"},
        },
    )
    objects = render_chart("edge-cluster", values)
    deployment = check_pod(objects)
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    _, _, settings = check_project_container(containers["cluster"], objects)
    assert settings.root_url == "http://rel-edge-root.edge.svc:8000"
    assert settings.registration_token.get_secret_value() == "reg-token-1"
    assert settings.join_token.get_secret_value() == "join-token-1"
    assert (settings.node_broker_host, settings.node_broker_port) == ("mqtt.site-a.example", 31883)
    assert settings.effective_store_url == "sqlite:///var/lib/edge/cluster/other.db"
    mqtt_service = next(s for s in objects["Service"] if s["metadata"]["name"].endswith("-mqtt"))
    assert mqtt_service["spec"]["ports"][0]["nodePort"] == 31883


def test_cluster_chart_with_broker_tls() -> None:
    values = deep_merge(
        CLUSTER_VALUES,
        {
            "broker": {
                "advertisedHost": "mqtt.site-a.example",
                "tls": {"enabled": True, "secretName": "site-a-tls", "serverName": "mqtt.x"},
            },
            "service": {"mqtt": {"type": "LoadBalancer", "port": 8883}},
        },
    )
    objects = render_chart("edge-cluster", values)
    deployment = check_pod(objects)
    spec = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    (configmap,) = objects["ConfigMap"]
    assert configmap["data"]["mosquitto.conf"] == MOSQUITTO_TLS_CONF.read_text()
    broker = containers["mosquitto"]
    assert broker["ports"] == [{"name": "mqtts", "containerPort": 8883, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert broker[probe]["tcpSocket"] == {"port": "mqtts"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    broker_mounts = {m["mountPath"]: m["name"] for m in broker["volumeMounts"]}
    tls_volume = volumes[broker_mounts["/mosquitto/tls"]]["secret"]
    assert tls_volume["secretName"] == "site-a-tls"
    assert {i["path"] for i in tls_volume["items"]} == {"tls.crt", "tls.key"}
    cluster_mounts = {m["mountPath"]: m["name"] for m in containers["cluster"]["volumeMounts"]}
    ca_volume = volumes[cluster_mounts["/etc/edge/tls"]]["secret"]
    assert [i["path"] for i in ca_volume["items"]] == ["ca.crt"]  # not the key
    _, _, settings = check_project_container(containers["cluster"], objects)
    assert settings.node_broker_tls and not settings.starts_broker
    assert (settings.node_broker_host, settings.node_broker_port) == ("mqtt.site-a.example", 8883)
    assert settings.broker_tls_cafile == Path("/etc/edge/tls/ca.crt")
    assert settings.advertised_broker_server_name == "mqtt.x"
    # the orchestrator itself stays on the pod's loopback plain listener
    assert (settings.broker_host, settings.broker_port) == ("127.0.0.1", 1883)
    assert not settings.broker_client_tls
    mqtt_service = next(s for s in objects["Service"] if s["metadata"]["name"].endswith("-mqtt"))
    assert mqtt_service["spec"]["ports"][0] == {
        "name": "mqtts",
        "port": 8883,
        "targetPort": "mqtts",
        "protocol": "TCP",
    }
    with pytest.raises(TemplateError, match="secretName"):
        render_chart(
            "edge-cluster", deep_merge(CLUSTER_VALUES, {"broker": {"tls": {"enabled": True}}})
        )


def test_compose_tls_overlay(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    config = compose_config(empty, COMPOSE_TLS_FILE)
    for site in ("a", "b"):
        broker = config["services"][f"mosquitto-{site}"]
        volumes = [str(v) for v in broker["volumes"]]
        assert f"{MOSQUITTO_TLS_CONF}:/mosquitto/config/mosquitto.conf:ro" in volumes
        assert any(v.endswith(f"deploy/tls/mosquitto-{site}:/mosquitto/tls:ro") for v in volumes)
        env = service_env(config["services"][f"cluster-{site}"])
        settings = load_program_settings("cluster-orchestrator", env)
        assert settings.broker_client_tls and settings.node_broker_tls
        assert settings.broker_port == 8883 and settings.node_broker_port == 8883
        assert settings.broker_host == f"mosquitto-{site}"
        assert settings.broker_tls_cafile == Path("/etc/edge/tls/ca.crt")


@pytest.mark.broker
def test_mosquitto_tls_conf_serves_tls_with_script_made_certs(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto-tls.conf for real, with certificates from
    scripts/make-broker-certs.sh: TLS verified by name; plain MQTT on loopback."""
    from cluster_orchestrator.broker import BrokerConfigError, find_dynsec_plugin, find_free_port
    from schemas.tls import client_context
    from tests.fixtures.broker import MqttProbe

    mosquitto = _require("mosquitto")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    try:
        plugin = find_dynsec_plugin()
    except BrokerConfigError as exc:
        pytest.skip(str(exc))
    pki = tmp_path / "pki"
    made = subprocess.run(
        ["sh", str(REPO / "scripts" / "make-broker-certs.sh"), str(pki), "mosquitto-a"],
        env={**os.environ, "DAYS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    site = pki / "mosquitto-a"
    assert stat_mode(site / "tls.key") == 0o600 and stat_mode(pki / "ca.key") == 0o600
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    password = "tls-admin-password"
    assert run_init_dynsec(["/bin/sh"], data / "dynamic-security.json", password).returncode == 0
    plain, tls = find_free_port(), find_free_port()
    text = MOSQUITTO_TLS_CONF.read_text()
    text = text.replace(MOSQUITTO_PLUGIN_IN_IMAGE, str(plugin))
    text = text.replace("/mosquitto/data/", f"{data}/").replace("/mosquitto/tls/", f"{site}/")
    text = text.replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
    text = re.sub(r"^listener 8883$", f"listener {tls} 127.0.0.1", text, flags=re.MULTILINE)
    text += f"user {os.environ.get('USER') or 'root'}\n" if os.getuid() == 0 else ""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    log = (tmp_path / "mosquitto.out").open("wb")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    probes: list[Any] = []
    try:

        def connect(port: int, **kwargs: Any) -> Any:
            deadline = time.monotonic() + 10
            while True:
                try:
                    probe = MqttProbe.connect("127.0.0.1", port, "admin", password, **kwargs)
                    probes.append(probe)
                    return probe
                except ConnectionRefusedError:
                    assert broker.poll() is None, (tmp_path / "mosquitto.out").read_text()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        # 127.0.0.1 is in no SAN: the name nodes are told (server_name) is verified
        good = client_context(cafile=site / "ca.crt", server_name="mosquitto-a")
        assert connect(tls, tls_context=good).connected
        assert connect(plain).connected
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            connect(tls, tls_context=client_context(cafile=site / "ca.crt"))
    finally:
        for probe in probes:
            probe.close()
        broker.terminate()
        broker.wait(10)
        log.close()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "brokerAdminPassword"),
        (
            {"auth": {"brokerAdminPassword": "pw"}, "root": {"url": "http://root:8000"}},
            "registrationToken",
        ),
    ],
)
def test_cluster_chart_refuses_missing_secrets(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_chart("edge-cluster", values)


def test_renderer_follows_go_template_whitespace_rules() -> None:
    """A self-check of the renderer on the constructs the charts rely on."""
    meta = {"name": "c", "version": "0.1.0", "appVersion": "1"}

    def render(template: str, values: dict[str, Any]) -> str:
        return Renderer(meta, {"t": template}, values).render("t")

    assert render("a:\n  {{- if .Values.x }}\n  b: 1\n  {{- end }}\n", {"x": True}) == (
        "a:\n  b: 1\n"
    )
    assert render("a:\n  {{- if .Values.x }}\n  b: 1\n  {{- end }}\n", {"x": ""}) == "a:\n"
    assert render("r:\n  {{- toYaml .Values.r | nindent 2 }}\n", {"r": {"k": [1]}}) == (
        "r:\n  k:\n  - 1\n"
    )
    assert render('{{ default "d" .Values.v | quote }}', {"v": ""}) == '"d"'
    assert render("{{ .Values.f | quote }}", {"f": 2.0}) == '"2"'
    with pytest.raises(TemplateError, match="no key"):
        render("{{ .Values.missing }}", {})
    with pytest.raises(TemplateError, match="unknown function"):
        render("{{ lookup .Values }}", {})


# =================================================================== operator docs

DOCS = REPO / "docs"
OPERATOR_DOCS = ("architecture.md", "protocol.md", "operations.md", "deployment.md")
# EDGE_* names in the docs that are not program settings
NOT_SETTINGS = {"EDGE_UID", "EDGE_IMAGE", "EDGE_REQUIRE_MOSQUITTO"}


def code_blocks(text: str, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [body for lang, body in blocks if language is None or lang == language]


def test_protocol_doc_examples_are_valid_messages() -> None:
    from schemas.mqtt import CHANNEL_KINDS, KINDS, decode, topic

    channel_of = {kind: channel for channel, kinds in CHANNEL_KINDS.items() for kind in kinds}
    seen = set()
    for block in code_blocks((DOCS / "protocol.md").read_text(), "json"):
        data = json.loads(block)
        if "kind" not in data:
            continue
        message = decode(block, topic_name=topic(data["node_id"], channel_of[data["kind"]]))
        seen.add(message.kind)
    assert seen == KINDS


def test_protocol_doc_join_examples_are_valid() -> None:
    from schemas.node import JoinRequest, JoinResponse

    blocks = [
        json.loads(b.replace('"…"', '"x"'))
        for b in code_blocks((DOCS / "protocol.md").read_text(), "json")
    ]
    JoinRequest.model_validate(next(b for b in blocks if "info" in b))
    JoinResponse.model_validate(next(b for b in blocks if "mqtt" in b))


@pytest.mark.parametrize("doc", OPERATOR_DOCS)
def test_docs_name_only_real_settings_and_flags(doc: str) -> None:
    from cluster_orchestrator.settings import build_parser as cluster_parser
    from node_engine.settings import build_parser as node_parser
    from root_orchestrator.settings import build_parser as root_parser

    text = (DOCS / doc).read_text()
    for name in sorted(set(re.findall(r"\bEDGE_[A-Z0-9_]*[A-Z0-9]\b", text))):
        if name in NOT_SETTINGS or name.startswith("EDGE_TEST_"):
            continue
        program = "node-engine" if name.startswith("EDGE_NODE_") else None
        candidates = [program] if program else ["root-orchestrator", "cluster-orchestrator"]
        assert any(not unknown_edge_variables(p, [name]) for p in candidates), name
    parsers = {
        "root-orchestrator": root_parser(),
        "cluster-orchestrator": cluster_parser(),
        "node-engine": node_parser(),
    }
    for block in code_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for script, parser in parsers.items():
                match = re.search(rf"(?:^|[\s/]){script}\s+(--.*)$", line)
                if match is None:
                    continue
                known = {opt for action in parser._actions for opt in action.option_strings}
                for flag in re.findall(r"(--[a-z][a-z-]*)", match.group(1)):
                    assert flag in known, f"{doc}: {script} has no {flag}"


@pytest.mark.parametrize("unit", sorted(p.name for p in (REPO / "deploy" / "systemd").iterdir()))
def test_systemd_units_run_console_scripts_with_real_flags(unit: str) -> None:
    from cluster_orchestrator.settings import build_parser as cluster_parser
    from node_engine.settings import build_parser as node_parser
    from root_orchestrator.settings import build_parser as root_parser

    parsers = {
        "root-orchestrator": root_parser,
        "cluster-orchestrator": cluster_parser,
        "node-engine": node_parser,
    }
    text = (REPO / "deploy" / "systemd" / unit).read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, flags=re.MULTILINE)
    argv = shlex.split(exec_start)
    script = Path(argv[0]).name
    check_entry_point(script)
    assert unit == f"{script}.service"
    parsers[script]().parse_args(argv[1:])  # exits (SystemExit) on an unknown flag
    # private files (stores, tokens, identities) whatever the program forgets
    assert re.search(r"^UMask=0077$", text, re.M), unit
    assert "0.0.0.0" not in exec_start, "no listener on all interfaces by default"
    assert re.search(r"^EnvironmentFile=/etc/edge/" + re.escape(script) + r"\.env$", text, re.M)
    if script == "node-engine":
        assert "KillMode=process" in text, "stopping the engine must not stop its tasks"
        assert "RestartPreventExitStatus=3" in text
