"""Settings of the node engine: flags > ``EDGE_NODE_*`` environment > config file > defaults.

Nothing is read at import time: `load_settings(argv)` parses the flags, picks the
config file (``--config`` or ``EDGE_NODE_CONFIG``, JSON or TOML) and merges the sources
with `schemas.settings_file.build_settings`, the loader of the orchestrators too (what
differs here: only JSON and TOML files, and the ``--config`` error lines' wording).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from schemas.common import NAME_PATTERN, Labels, Name, Runtime
from schemas.settings_cli import OneLineParser, default_text, env_name, option_help
from schemas.settings_file import FlagsEnvSettings, SettingsFileError, build_settings

ENV_PREFIX = "EDGE_NODE_"
DEFAULT_STATE_DIR = Path("/var/lib/edge-node")
SHEDDING_SIGNALS = ("cpu", "memory", "temperature", "throttling", "latency")


def default_node_name() -> str:
    """The host name turned into a DNS label (lowercase, [a-z0-9-], at most 63 chars)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    name = name[:63].strip("-")
    return name if re.match(NAME_PATTERN, name) else "node"


def _parse_pairs(value: Any) -> Any:
    """Accept labels as a dict, JSON object text, or ``k=v,k2=v2`` text."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        out: dict[str, str] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"label {part!r} is not KEY=VALUE")
            out[key.strip()] = val.strip()
        return out
    if isinstance(value, list | tuple):
        return _parse_pairs(",".join(str(v) for v in value))
    return value


def _parse_list(value: Any) -> Any:
    """Accept runtimes as a list, JSON array text, or ``a,b`` text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [p.strip() for p in text.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        out: list[str] = []
        for item in value:
            out.extend(_parse_list(item) if isinstance(item, str) else [item])
        return out
    return value


class NodeEngineSettings(FlagsEnvSettings):
    """Everything the node engine can be told; see docs/node-engine.md for the table.

    Sources (`FlagsEnvSettings`): flags, then ``EDGE_NODE_*``, then the config file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, case_sensitive=False
    )

    cluster_url: str = Field(
        description="base URL of the cluster orchestrator, e.g. http://10.0.0.2:8080"
    )
    join_token: SecretStr | None = Field(
        default=None,
        description="join token (sent as Authorization: Bearer); needed for the first join "
        "only: a joined node rejoins with its stored node secret (the token is still sent "
        "when set, so a cluster that lost its store re-admits the node under its id)",
    )
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR, description="directory for identity, tasks, logs (mode 0700)"
    )
    name: Name = Field(default_factory=default_node_name, description="node name (DNS label)")
    labels: Annotated[Labels, NoDecode] = Field(
        default_factory=dict, description="node labels, KEY=VALUE[,KEY=VALUE]"
    )
    status_interval: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="seconds between status messages (default: the cluster's value, 1 s)",
    )
    runtimes: Annotated[list[Runtime], NoDecode] = Field(
        default_factory=lambda: [Runtime.NATIVE, Runtime.DOCKER],
        description="runtimes to enable, e.g. native,docker (only usable ones are reported)",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    stop_timeout: float = Field(
        default=10.0, ge=0, le=300, description="seconds a task gets to stop before SIGKILL"
    )
    runtime_workers: int = Field(
        default=4,
        ge=0,
        le=64,
        description="runtime calls (deploys, stops) running at once off the engine loop; "
        "0 runs them in the loop",
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify a TLS broker (default: the CA in the cluster's join "
        "reply, else the system store); set it to pin the CA instead of trusting the reply",
    )
    mqtt_server_name: str | None = Field(
        default=None,
        max_length=253,
        description="name the TLS broker's certificate must carry (default: the cluster's "
        "server_name, else the broker host)",
    )
    # native tasks: who they run as, what they may run (docs/node-engine.md, security)
    native_run_as: str = Field(
        default="edge-task",
        description="user native tasks run as when the engine is root: a name or "
        "uid[:gid] (user:group too); 'root' keeps them root (logged as a warning); an "
        "engine that is not root runs them as itself",
    )
    native_allowed_commands: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="executables native tasks may run: absolute paths or globs "
        "(comma-separated), matched before and after symlinks; * allows any",
    )
    native_allowed_workdirs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="directories (absolute path prefixes, comma-separated, compared after "
        "realpath) a job may name as its workdir; each task's own directory is always "
        "allowed (default: only that one)",
    )
    native_allow_env_overrides: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="environment names a job may set although the node guards them "
        "(LD_*, PATH, GCONV_PATH, ...): names or globs, comma-separated (default: none, "
        "they are dropped)",
    )
    join_max_delay: float = Field(
        default=30.0, gt=0, le=3600, description="cap of the join retry backoff (seconds)"
    )
    # local priority shedding (docs/shedding.md)
    shedding: bool = Field(default=True, description="local priority shedding: on or off")
    shedding_signals: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SHEDDING_SIGNALS),
        description="pressure signals to act on: cpu,memory,temperature,throttling,latency",
    )
    shedding_cpu_source: Literal["host", "tasks"] = Field(
        default="host",
        description="cpu signal: whole host, or only the engine's own tasks (percent of all cores)",
    )
    shedding_cpu_enter: float = Field(
        default=90.0, gt=0, le=100, description="cpu signal on at (percent)"
    )
    shedding_cpu_exit: float = Field(
        default=70.0, ge=0, le=100, description="cpu signal off at (percent)"
    )
    shedding_memory_enter: float = Field(
        default=90.0, gt=0, le=100, description="memory signal on at (percent used)"
    )
    shedding_memory_exit: float = Field(
        default=80.0, ge=0, le=100, description="memory signal off at (percent used)"
    )
    shedding_temperature_enter: float = Field(
        default=80.0, gt=0, le=150, description="temperature on at, degrees C"
    )
    shedding_temperature_exit: float = Field(
        default=70.0, ge=0, le=150, description="temperature off at, degrees C"
    )
    shedding_latency_enter: float = Field(
        default=1.0, gt=0, le=100, description="latency on at p95/budget of a running task"
    )
    shedding_latency_exit: float = Field(
        default=0.8, ge=0, le=100, description="latency off at p95/budget"
    )
    shedding_enter_for: float = Field(
        default=5.0, ge=0, le=3600, description="seconds a value must stay >= enter to act"
    )
    shedding_exit_for: float = Field(
        default=5.0, ge=0, le=3600, description="seconds a value must stay <= exit to clear"
    )
    shedding_step_interval: float = Field(
        default=3.0, ge=0, le=3600, description="seconds between two shed/resume steps"
    )
    shedding_resume_after: float = Field(
        default=10.0, ge=0, le=3600, description="seconds of clear pressure before a resume"
    )
    shedding_resume_after_max: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="cap of the resume wait, which doubles for a task shed again soon",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return _parse_pairs(value)

    @field_validator("runtimes", mode="before")
    @classmethod
    def _runtimes(cls, value: Any) -> Any:
        return _parse_list(value)

    @field_validator("runtimes")
    @classmethod
    def _dedupe(cls, value: list[Runtime]) -> list[Runtime]:
        return list(dict.fromkeys(value))

    @field_validator(
        "native_allowed_commands",
        "native_allowed_workdirs",
        "native_allow_env_overrides",
        mode="before",
    )
    @classmethod
    def _native_lists(cls, value: Any) -> Any:
        return _parse_list(value)

    @field_validator("native_run_as")
    @classmethod
    def _run_as(cls, value: str) -> str:
        value = value.strip()
        if not re.fullmatch(
            r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", value
        ):
            raise ValueError("must be a user name or uid, optionally :group or :gid")
        return value

    @field_validator("native_allowed_commands")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        for item in value:
            if item != "*" and not item.startswith("/"):
                raise ValueError(f"{item!r} is neither * nor an absolute path or glob")
        return list(dict.fromkeys(value))

    @field_validator("native_allowed_workdirs")
    @classmethod
    def _workdirs(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                raise ValueError(f"{item!r} is not an absolute path")
        return list(dict.fromkeys(value))

    @field_validator("native_allow_env_overrides")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z_*][A-Za-z0-9_*]*", item):
                raise ValueError(f"{item!r} is not an environment name or glob")
        return list(dict.fromkeys(value))

    @field_validator("shedding_signals", mode="before")
    @classmethod
    def _signals(cls, value: Any) -> Any:
        return _parse_list(value)

    @field_validator("shedding_signals")
    @classmethod
    def _known_signals(cls, value: list[str]) -> list[str]:
        names = [v.strip().lower() for v in value]
        unknown = sorted(set(names) - set(SHEDDING_SIGNALS))
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; known: {', '.join(SHEDDING_SIGNALS)}")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        for name in ("cpu", "memory", "temperature", "latency"):
            enter = getattr(self, f"shedding_{name}_enter")
            exit_ = getattr(self, f"shedding_{name}_exit")
            if exit_ > enter:
                raise ValueError(
                    f"shedding_{name}_exit ({exit_:g}) must not be above "
                    f"shedding_{name}_enter ({enter:g})"
                )
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @field_validator("mqtt_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("cluster_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("cluster_url must be an http:// or https:// URL")
        return value.rstrip("/")


_FLAG_HELP: dict[str, tuple[str, str | None]] = {
    # field: (flag, metavar)
    "cluster_url": ("--cluster-url", "URL"),
    "join_token": ("--join-token", "TOKEN"),
    "state_dir": ("--state-dir", "DIR"),
    "name": ("--name", "NAME"),
    "status_interval": ("--status-interval", "SECONDS"),
    "log_level": ("--log-level", "LEVEL"),
    "stop_timeout": ("--stop-timeout", "SECONDS"),
    "runtime_workers": ("--runtime-workers", "N"),
    "join_max_delay": ("--join-max-delay", "SECONDS"),
    "mqtt_ca_file": ("--mqtt-ca-file", "FILE"),
    "mqtt_server_name": ("--mqtt-server-name", "NAME"),
    "native_run_as": ("--native-run-as", "USER"),
    "native_allowed_commands": ("--native-allowed-commands", "LIST"),
    "native_allowed_workdirs": ("--native-allowed-workdirs", "LIST"),
    "native_allow_env_overrides": ("--native-allow-env-overrides", "LIST"),
    "shedding": ("--shedding", "on|off"),
    "shedding_signals": ("--shedding-signals", "LIST"),
    "shedding_cpu_source": ("--shedding-cpu-source", "host|tasks"),
    "shedding_cpu_enter": ("--shedding-cpu-enter", "PERCENT"),
    "shedding_cpu_exit": ("--shedding-cpu-exit", "PERCENT"),
    "shedding_memory_enter": ("--shedding-memory-enter", "PERCENT"),
    "shedding_memory_exit": ("--shedding-memory-exit", "PERCENT"),
    "shedding_temperature_enter": ("--shedding-temperature-enter", "CELSIUS"),
    "shedding_temperature_exit": ("--shedding-temperature-exit", "CELSIUS"),
    "shedding_latency_enter": ("--shedding-latency-enter", "RATIO"),
    "shedding_latency_exit": ("--shedding-latency-exit", "RATIO"),
    "shedding_enter_for": ("--shedding-enter-for", "SECONDS"),
    "shedding_exit_for": ("--shedding-exit-for", "SECONDS"),
    "shedding_step_interval": ("--shedding-step-interval", "SECONDS"),
    "shedding_resume_after": ("--shedding-resume-after", "SECONDS"),
    "shedding_resume_after_max": ("--shedding-resume-after-max", "SECONDS"),
}


#: Flags that differ from the field name (for error messages).
FLAG_NAMES = {"labels": "--label", "runtimes": "--runtime"}

#: Defaults help shows in words rather than as a value.
_DEFAULTS = {"name": "the host name", "shedding": "on"}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; help texts come from the settings fields, each with its
    environment variable and default (`schemas.settings_cli.option_help`)."""
    parser = OneLineParser(
        prog="node-engine",
        description=(
            "Edge node engine: joins a cluster over outbound HTTP, then runs the tasks it is "
            "given (docker or native) and reports status over an outbound MQTT connection. "
            f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
            f"(e.g. {ENV_PREFIX}CLUSTER_URL) or in a JSON/TOML config file; flags win over "
            "the environment, which wins over the file."
        ),
    )
    fields = NodeEngineSettings.model_fields
    for name, (flag, metavar) in _FLAG_HELP.items():
        info = fields[name]
        parser.add_argument(
            flag,
            dest=name,
            metavar=metavar,
            default=None,
            help=option_help(
                info.description,
                env_name(name, ENV_PREFIX),
                _DEFAULTS.get(name, default_text(info)),
                required=info.is_required(),
            ),
        )
    parser.add_argument(
        "--label",
        dest="labels",
        metavar="KEY=VALUE",
        action="append",
        default=None,
        help=option_help("a node label; repeat for more", f"{ENV_PREFIX}LABELS=k=v,k2=v2", None),
    )
    parser.add_argument(
        "--runtime",
        dest="runtimes",
        metavar="RUNTIME",
        action="append",
        default=None,
        help=option_help(
            "a runtime to enable (native, docker); repeat or comma-separate",
            f"{ENV_PREFIX}RUNTIMES",
            default_text(fields["runtimes"]),
        ),
    )
    parser.add_argument(
        "--config",
        dest="config",
        metavar="FILE",
        default=None,
        help=option_help(
            "JSON or TOML file with the same keys as the options", f"{ENV_PREFIX}CONFIG", None
        ),
    )
    return parser


def load_settings(
    argv: list[str] | None = None, environ: dict[str, str] | None = None
) -> NodeEngineSettings:
    """Parse flags and merge them with the environment and the optional config file
    (`schemas.settings_file.build_settings`, the loader the orchestrators use too).

    `environ` only serves to find ``EDGE_NODE_CONFIG``; the variables themselves are read
    by pydantic-settings from the process environment. A config file that cannot be
    used raises ValueError naming ``--config`` and ``EDGE_NODE_CONFIG``.
    """
    args = build_parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return build_settings(
            NodeEngineSettings, flags, ENV_PREFIX, environ=environ, yaml_files=False
        )
    except SettingsFileError as exc:
        where = f"--config ({ENV_PREFIX}CONFIG): config file {exc.path}"
        raise ValueError(f"{where} {exc.reason}") from None


__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "FLAG_NAMES",
    "SHEDDING_SIGNALS",
    "NodeEngineSettings",
    "build_parser",
    "default_node_name",
    "load_settings",
]
