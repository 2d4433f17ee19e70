"""Settings of the node engine: flags > ``EDGE_NODE_*`` environment > config file > defaults.

Nothing is read at import time: `load_settings(argv)` parses the flags, picks the
config file (``--config`` or ``EDGE_NODE_CONFIG``, JSON or TOML) and lets
pydantic-settings merge the sources.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.common import NAME_PATTERN, Labels, Name, Runtime

ENV_PREFIX = "EDGE_NODE_"
DEFAULT_STATE_DIR = Path("/var/lib/edge-node")


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


class NodeEngineSettings(BaseSettings):
    """Everything the node engine can be told; see docs/node-engine.md for the table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, case_sensitive=False
    )

    cluster_url: str = Field(
        description="base URL of the cluster orchestrator, e.g. http://10.0.0.2:8080"
    )
    join_token: SecretStr | None = Field(
        default=None,
        description="join token (sent as Authorization: Bearer); needed for the first join",
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
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify a TLS broker (default: the system store)",
    )
    join_max_delay: float = Field(
        default=30.0, gt=0, le=3600, description="cap of the join retry backoff (seconds)"
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

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

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
    "join_max_delay": ("--join-max-delay", "SECONDS"),
    "mqtt_ca_file": ("--mqtt-ca-file", "FILE"),
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; help texts come from the settings fields."""
    parser = argparse.ArgumentParser(
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
        env = ENV_PREFIX + name.upper()
        default = "" if info.is_required() else _default_text(name)
        parser.add_argument(
            flag,
            dest=name,
            metavar=metavar,
            default=None,
            help=f"{info.description} [env {env}]{default}",
        )
    parser.add_argument(
        "--label",
        dest="labels",
        metavar="KEY=VALUE",
        action="append",
        default=None,
        help=f"a node label; repeat for more [env {ENV_PREFIX}LABELS=k=v,k2=v2]",
    )
    parser.add_argument(
        "--runtime",
        dest="runtimes",
        metavar="RUNTIME",
        action="append",
        default=None,
        help=(
            "a runtime to enable (native, docker); repeat or comma-separate "
            f"[env {ENV_PREFIX}RUNTIMES] (default: native,docker)"
        ),
    )
    parser.add_argument(
        "--config",
        dest="config",
        metavar="FILE",
        default=None,
        help=f"JSON or TOML file with the same keys as the options [env {ENV_PREFIX}CONFIG]",
    )
    return parser


def _default_text(name: str) -> str:
    if name == "name":
        return " (default: the host name)"
    if name == "status_interval":
        return ""
    if name in ("join_token", "mqtt_ca_file"):
        return ""
    default = NodeEngineSettings.model_fields[name].default
    return f" (default: {default})"


def load_settings(
    argv: list[str] | None = None, environ: dict[str, str] | None = None
) -> NodeEngineSettings:
    """Parse flags and merge them with the environment and the optional config file.

    `environ` only serves to find ``EDGE_NODE_CONFIG``; the variables themselves are read
    by pydantic-settings from the process environment.
    """
    import os

    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    config = flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config is None:
        return NodeEngineSettings(**flags)
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")

    class _WithFile(NodeEngineSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            file_source: PydanticBaseSettingsSource
            if path.suffix.lower() == ".toml":
                file_source = TomlConfigSettingsSource(settings_cls, toml_file=path)
            else:
                file_source = JsonConfigSettingsSource(settings_cls, json_file=path)
            return (init_settings, env_settings, file_source)

    return _WithFile(**flags)


__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "NodeEngineSettings",
    "build_parser",
    "default_node_name",
    "load_settings",
]
