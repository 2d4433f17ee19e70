"""Settings of the cluster orchestrator: flags > ``EDGE_*`` environment > file > defaults.

Nothing here runs at import time. :func:`load_settings` parses the command line (flags
are generated from the fields: ``broker_data_dir`` -> ``--broker-data-dir``), reads
the optional settings file (``--config`` or ``EDGE_CONFIG``; JSON, YAML or TOML) and
builds one :class:`ClusterSettings`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from schemas.common import Labels, Name
from schemas.settings_file import FlagsEnvSettings, SettingsFileError, build_settings

__all__ = ["ClusterSettings", "SettingsFileError", "build_parser", "load_settings"]

ENV_PREFIX = "EDGE_"


class ClusterSettings(FlagsEnvSettings):
    """Everything a cluster orchestrator can be told. See docs/cluster-orchestrator.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # identity
    name: Name = Field(default="cluster", description="cluster name (DNS label)")
    location: str = Field(default="", max_length=128, description="free text, e.g. a site")
    labels: Labels = Field(default_factory=dict, description="cluster labels (JSON object)")

    # HTTP API
    host: str = Field(default="127.0.0.1", description="listen address of the API")
    port: int = Field(default=8100, ge=0, le=65535, description="listen port of the API")
    url: str | None = Field(
        default=None,
        description="URL where the root reaches this API (default http://host:port)",
    )
    operator_token: SecretStr | None = Field(
        default=None,
        description="bearer token of this API (operators and the root); generated into "
        "the data dir when unset",
    )
    join_token: SecretStr | None = Field(
        default=None,
        description="bearer token nodes present to join; generated into the data dir when unset",
    )

    # storage
    data_dir: Path = Field(default=Path("data/cluster"), description="state directory")
    store_url: str | None = Field(
        default=None,
        description="sqlite:///path.db or mongodb://...; default sqlite in data_dir",
    )

    # broker
    broker_host: str = Field(default="127.0.0.1", description="broker address (for us)")
    broker_port: int = Field(default=1883, ge=1, le=65535)
    broker_admin_username: str = Field(default="admin", description="dynsec admin user")
    broker_admin_password: SecretStr | None = Field(
        default=None, description="dynsec admin password (generated when we start the broker)"
    )
    broker_service_username: str = Field(
        default="", description="our own MQTT user (default cluster-<name>)"
    )
    advertised_broker_host: str | None = Field(
        default=None, description="broker host handed to nodes (default broker_host)"
    )
    advertised_broker_port: int | None = Field(default=None, ge=1, le=65535)
    start_broker: bool = Field(default=False, description="start our own mosquitto")
    broker_data_dir: Path | None = Field(
        default=None, description="mosquitto's directory when started by us (implies start)"
    )

    # root
    root_url: str | None = Field(default=None, description="root orchestrator base URL")
    registration_token: SecretStr | None = Field(
        default=None, description="bearer token for registering with the root"
    )

    # timing and scheduling
    status_interval: float = Field(default=1.0, gt=0, le=3600, description="node status period")
    lost_grace: float = Field(default=3.0, ge=0, le=3600, description="NOT_READY -> LOST grace")
    report_interval: float = Field(default=10.0, gt=0, le=3600, description="full report period")
    report_debounce: float = Field(
        default=0.1, ge=0, le=60, description="least time between two change reports"
    )
    reconcile_interval: float = Field(default=1.0, gt=0, le=600)
    ack_timeout: float = Field(default=5.0, gt=0, le=600, description="DEPLOY/TERMINATE ack wait")
    dispatch_attempts: int = Field(default=3, ge=1, le=20, description="nodes tried per deploy")
    status_snapshot_interval: float = Field(
        default=5.0, gt=0, le=3600, description="batch period of status writes to the store"
    )
    placement_policy: Literal["spread", "binpack"] = "spread"
    terminal_retention: float = Field(
        default=3600.0, ge=0, description="seconds finished instances stay in memory"
    )
    log_level: str = Field(default="INFO")

    @field_validator("root_url", "url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    # ---------------------------------------------------------------- derived

    @property
    def starts_broker(self) -> bool:
        """True when this process runs its own mosquitto."""
        return self.start_broker or self.broker_data_dir is not None

    @property
    def effective_store_url(self) -> str:
        """The store URL, defaulting to an SQLite file in the data directory."""
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'cluster.db').resolve()}"

    @property
    def effective_url(self) -> str:
        """Where the root reaches this cluster's API."""
        if self.url:
            return self.url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def service_username(self) -> str:
        """The orchestrator's own MQTT username."""
        return self.broker_service_username or f"cluster-{self.name}"

    @property
    def node_broker_host(self) -> str:
        """Broker host handed to joining nodes."""
        return self.advertised_broker_host or self.broker_host

    @property
    def node_broker_port(self) -> int:
        """Broker port handed to joining nodes."""
        return self.advertised_broker_port or self.broker_port

    @property
    def effective_broker_data_dir(self) -> Path:
        """mosquitto's directory when this process starts the broker."""
        return self.broker_data_dir or (self.data_dir / "broker")


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field (all default to unset)."""
    parser = argparse.ArgumentParser(
        prog="cluster-orchestrator",
        description="Edge cluster orchestrator: node join, MQTT ingestion, scheduling.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", type=Path, help="settings file (JSON, YAML or TOML)")
    for name, info in ClusterSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = info.description or name
        if info.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif name == "labels":
            parser.add_argument(flag, dest=name, help=help_text + "; JSON or k=v,k2=v2")
        else:
            parser.add_argument(flag, dest=name, help=help_text)
    return parser


def _parse_labels(value: str) -> dict[str, str]:
    value = value.strip()
    if value.startswith("{"):
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("labels must be a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"label {part!r} is not key=value")
        out[key.strip()] = val.strip()
    return out


def load_settings(argv: Sequence[str] | None = None) -> ClusterSettings:
    """Build settings from flags, ``EDGE_*`` environment and the optional settings file."""
    args = vars(build_parser().parse_args(argv))
    if "labels" in args:
        args["labels"] = _parse_labels(args["labels"])
    return build_settings(ClusterSettings, args, ENV_PREFIX)
