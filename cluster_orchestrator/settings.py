"""Settings of the cluster orchestrator: flags > ``EDGE_*`` environment > file > defaults.

Nothing here runs at import time. :func:`load_settings` parses the command line (flags
are generated from the fields: ``broker_data_dir`` -> ``--broker-data-dir``), reads
the optional settings file (``--config`` or ``EDGE_CONFIG``; JSON, YAML or TOML) and
builds one :class:`ClusterSettings`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from schemas.common import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS, Labels, Name
from schemas.settings_cli import OneLineParser, default_text, env_name, option_help
from schemas.settings_file import (
    FlagsEnvSettings,
    SettingsFileError,
    build_settings,
    check_log_level,
    check_store_url,
    check_token_lengths,
    read_settings_file,
    split_tokens,
    token_accepted,
)

__all__ = [
    "ClusterSettings",
    "InvalidSetting",
    "SettingsFileError",
    "build_parser",
    "load_settings",
    "parse_labels",
    "split_tokens",
    "startup_problem",
    "tls_problem",
    "token_accepted",
]

ENV_PREFIX = "EDGE_"


class ClusterSettings(FlagsEnvSettings):
    """Everything a cluster orchestrator can be told. See docs/cluster-orchestrator.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # identity
    name: Name = Field(default="cluster", description="cluster name (DNS label)")
    location: str = Field(default="", max_length=128, description="free text, e.g. a site")
    labels: Annotated[Labels, NoDecode] = Field(
        default_factory=dict,
        description="cluster labels, sent to the root and matched by placement under each "
        "node's own labels",
    )

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
        description="bearer token new nodes present to join (a joined node rejoins with its "
        "node secret); generated into the data dir when neither join_token nor join_tokens "
        "is set",
    )
    join_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="more accepted join tokens (comma-separated or a JSON list, 8+ characters "
        "each), accepted besides join_token: for a rolling rotation add the new token, move "
        "the nodes' EDGE_NODE_JOIN_TOKEN to it, then drop the old one. Only a first join "
        "needs a join token: a joined node rejoins with its own node secret",
    )
    public_metrics: bool = Field(
        default=False, description="serve /metrics without the operator token"
    )

    # storage
    data_dir: Path = Field(default=Path("data/cluster"), description="state directory")
    store_url: str | None = Field(
        default=None,
        description="sqlite:///path.db or mongodb://...; default sqlite in data_dir",
    )

    # broker
    broker_host: str = Field(default="127.0.0.1", description="broker address (for us)")
    broker_port: int = Field(default=1883, ge=1, le=65535, description="broker port (for us)")
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
    advertised_broker_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="broker port handed to nodes (default broker_port)",
    )
    broker_health_grace: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="/healthz turns 503 once the broker connection is down this long",
    )
    start_broker: bool = Field(default=False, description="start our own mosquitto")
    broker_data_dir: Path | None = Field(
        default=None, description="mosquitto's directory when started by us (implies start)"
    )
    broker_listen_host: str | None = Field(
        default=None,
        description="address the plain MQTT listener binds when we start the broker (default: "
        "127.0.0.1 with TLS, else broker_host); with TLS, all interfaces (0.0.0.0, ::) are "
        "refused: nodes use the TLS listener",
    )
    broker_tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the broker's TLS listener; with "
        "broker_tls_keyfile it turns TLS on for a broker we start",
    )
    broker_tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of broker_tls_certfile"
    )
    broker_tls_cafile: Path | None = Field(
        default=None,
        description="PEM certificate(s) of the CA that signed the broker certificate: sent to "
        "nodes in the join reply, and trusted by our own clients with broker_client_tls",
    )
    broker_tls_host: str = Field(
        default="0.0.0.0", description="address the TLS listener binds (broker we start)"
    )
    broker_tls_port: int = Field(
        default=8883, ge=1, le=65535, description="port of the TLS listener (broker we start)"
    )
    broker_client_tls: bool = Field(
        default=False,
        description="our own MQTT clients (dynsec admin, service) use TLS to "
        "broker_host:broker_port, verifying broker_tls_cafile (an external broker without a "
        "loopback plain listener); off: plain MQTT, meant for loopback",
    )
    advertised_broker_tls: bool | None = Field(
        default=None,
        description="tell nodes to use TLS (default: on when broker_tls_certfile is set; set "
        "it for an external broker with a TLS listener)",
    )
    advertised_broker_server_name: str | None = Field(
        default=None,
        description="name nodes verify in the broker certificate (default: the advertised "
        "broker host)",
    )

    # root
    root_url: str | None = Field(default=None, description="root orchestrator base URL")
    registration_token: SecretStr | None = Field(
        default=None, description="bearer token for registering with the root"
    )

    # timing and scheduling
    status_interval: float = Field(default=1.0, gt=0, le=3600, description="node status period")
    lost_grace: float = Field(default=3.0, ge=0, le=3600, description="NOT_READY -> LOST grace")
    restart_grace: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="after a restart, how long the nodes loaded from the store have to send "
        "a first status before they can become LOST and their instances move",
    )
    report_interval: float = Field(default=10.0, gt=0, le=3600, description="full report period")
    report_debounce: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="optional least time between the starts of two change-triggered reports "
        "(0: none; one report is in flight at a time and changes made meanwhile go in the "
        "next one)",
    )
    reconcile_interval: float = Field(
        default=1.0, gt=0, le=600, description="seconds between reconcile passes"
    )
    rebalance: bool = Field(
        default=True,
        description="move replicas of spread jobs back onto a node that returns (one per job "
        "at a time)",
    )
    rebalance_after: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="a returning node must stay READY this long before replicas move to it",
    )
    ack_timeout: float = Field(default=5.0, gt=0, le=600, description="DEPLOY/TERMINATE ack wait")
    dispatch_attempts: int = Field(default=3, ge=1, le=20, description="nodes tried per deploy")
    status_snapshot_interval: float = Field(
        default=5.0, gt=0, le=3600, description="batch period of status writes to the store"
    )
    placement_policy: Literal["spread", "binpack"] = Field(
        default="spread", description="scoring policy for choosing nodes: spread or binpack"
    )
    overload_cpu_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="a node whose last status shows this much CPU use (percent of all cores) "
        "or more takes no new work (placement reason 'overloaded'); unset: only a node that "
        "is shedding work is overloaded",
    )
    terminal_retention: float = Field(
        default=3600.0, ge=0, description="seconds finished instances stay in memory"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("join_tokens", mode="before")
    @classmethod
    def _split_join_tokens(cls, value: Any) -> Any:
        return split_tokens(value)

    @field_validator("join_tokens")
    @classmethod
    def _join_tokens_length(cls, value: list[SecretStr]) -> list[SecretStr]:
        return check_token_lengths(value, "join tokens")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_text(cls, value: Any) -> Any:
        # EDGE_LABELS reaches here undecoded (NoDecode): k=v,k2=v2 or JSON text.
        return parse_labels(value, "labels")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return check_log_level(value)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else check_store_url(value)

    @field_validator("root_url", "url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    # ---------------------------------------------------------------- derived

    def configured_join_tokens(self) -> list[str]:
        """Every join token set (``join_token`` first, then ``join_tokens``), no duplicates.

        Empty when neither is set: the app then generates (or reads) the ``join-token``
        file in the data directory.
        """
        out: list[str] = []
        first = [self.join_token] if self.join_token is not None else []
        for token in [*first, *self.join_tokens]:
            value = token.get_secret_value()
            if value and value not in out:
                out.append(value)
        return out

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
    def serves_tls(self) -> bool:
        """True when the broker this process starts gets a TLS listener."""
        return self.starts_broker and self.broker_tls_certfile is not None

    @property
    def node_broker_tls(self) -> bool:
        """Whether joining nodes are told to connect over TLS."""
        if self.advertised_broker_tls is not None:
            return self.advertised_broker_tls
        return self.broker_tls_certfile is not None

    @property
    def node_broker_port(self) -> int:
        """Broker port handed to joining nodes (the TLS port when we serve TLS)."""
        if self.advertised_broker_port:
            return self.advertised_broker_port
        return self.broker_tls_port if self.serves_tls else self.broker_port

    @property
    def plain_listen_host(self) -> str:
        """Address of the plain listener of a broker we start."""
        if self.broker_listen_host:
            return self.broker_listen_host
        return "127.0.0.1" if self.serves_tls else self.broker_host

    @property
    def effective_broker_data_dir(self) -> Path:
        """mosquitto's directory when this process starts the broker."""
        return self.broker_data_dir or (self.data_dir / "broker")


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field (all default to unset); the
    help of each names its environment variable and its default."""
    parser = OneLineParser(
        prog="cluster-orchestrator",
        description="Edge cluster orchestrator: node join, MQTT ingestion, scheduling. "
        f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
        f"(e.g. {ENV_PREFIX}BROKER_PORT) or in the settings file (keys are the names with "
        "underscores); flags win over the environment, which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=option_help("settings file (JSON, YAML or TOML)", f"{ENV_PREFIX}CONFIG", None),
    )
    for name, info in ClusterSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        description = info.description or name
        if name == "labels":
            description += "; JSON or k=v,k2=v2"
        help_text = option_help(description, env_name(name, ENV_PREFIX), default_text(info))
        if info.annotation is bool or info.annotation == (bool | None):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)
    return parser


def startup_problem(settings: ClusterSettings) -> str | None:
    """A setting the program cannot start without, as one line (None: none missing).

    Checked before anything is written: the broker admin password is needed unless
    this process starts the broker itself (it then generates one).
    """
    if settings.broker_admin_password is None and not settings.starts_broker:
        return (
            "broker_admin_password (--broker-admin-password, EDGE_BROKER_ADMIN_PASSWORD) is "
            "required unless this process starts the broker (--start-broker or "
            "--broker-data-dir)"
        )
    return tls_problem(settings)


def tls_problem(settings: ClusterSettings) -> str | None:
    """A contradiction or an unreadable file in the broker TLS settings, as one line."""
    cert, key = settings.broker_tls_certfile, settings.broker_tls_keyfile
    if (cert is None) != (key is None):
        return (
            "broker_tls_certfile (EDGE_BROKER_TLS_CERTFILE) and broker_tls_keyfile "
            "(EDGE_BROKER_TLS_KEYFILE) go together: set both or neither"
        )
    files = {
        "broker_tls_certfile (EDGE_BROKER_TLS_CERTFILE)": cert,
        "broker_tls_keyfile (EDGE_BROKER_TLS_KEYFILE)": key,
        "broker_tls_cafile (EDGE_BROKER_TLS_CAFILE)": settings.broker_tls_cafile,
    }
    for name, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            return f"{name}: cannot read {path}"
    ca = settings.broker_tls_cafile
    if ca is not None:
        # it goes into every TLS join reply (schemas.node.CaPem): PEM certificates only
        try:
            text = ca.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            return f"broker_tls_cafile (EDGE_BROKER_TLS_CAFILE): cannot read {ca}: {exc}"
        if not text.lstrip().startswith("-----BEGIN CERTIFICATE-----") or len(text) > 64 * 1024:
            return (
                f"broker_tls_cafile (EDGE_BROKER_TLS_CAFILE): {ca} is not a PEM certificate "
                "bundle of at most 64 KiB (it must start with -----BEGIN CERTIFICATE-----)"
            )
    if settings.broker_client_tls and settings.starts_broker:
        return (
            "broker_client_tls (EDGE_BROKER_CLIENT_TLS) is for a broker this process does not "
            "start: our own clients use the loopback plain listener of the broker we start"
        )
    if settings.serves_tls and settings.plain_listen_host in ("0.0.0.0", "::", "*", ""):
        return (
            "broker_listen_host (EDGE_BROKER_LISTEN_HOST): with TLS the plain listener must "
            f"not listen on all interfaces ({settings.plain_listen_host}); leave it unset "
            "(127.0.0.1) or name one address"
        )
    if settings.serves_tls and settings.broker_tls_port == settings.broker_port:
        return (
            f"broker_tls_port (EDGE_BROKER_TLS_PORT) {settings.broker_tls_port} is also the "
            "plain listener's broker_port (EDGE_BROKER_PORT)"
        )
    tls_to_plain = settings.node_broker_port == settings.broker_port
    if settings.serves_tls and settings.node_broker_tls and tls_to_plain:
        return (
            "advertised_broker_port (EDGE_ADVERTISED_BROKER_PORT) is the plain listener's "
            f"port {settings.broker_port}, but nodes are told to use TLS"
        )
    return None


class InvalidSetting(SettingsFileError):
    """A setting's value cannot be used; the message is one line naming the setting.

    A subclass of `SettingsFileError` so that the program reports it like any other
    invalid settings (exit status 2, no traceback).
    """


_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_LABELS_FORMAT = "expected k=v,k2=v2 or a JSON object"


def parse_labels(value: Any, source: str) -> dict[str, str]:
    """Labels from a mapping, JSON object text or ``k=v,k2=v2`` text, checked key by key.

    Raises `InvalidSetting` (a ValueError) with one line naming `source` (the flag, the
    environment variable or the settings key) and what is wrong.
    """
    pairs: list[tuple[str, Any]]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise InvalidSetting(f"{source}: invalid JSON ({exc}); {_LABELS_FORMAT}") from None
            if not isinstance(data, dict):
                raise InvalidSetting(f"{source}: {_LABELS_FORMAT}, got a JSON array")
            pairs = list(data.items())
        else:
            pairs = []
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, val = part.partition("=")
                if not sep:
                    raise InvalidSetting(f"{source}: {part!r} is not key=value; {_LABELS_FORMAT}")
                pairs.append((key.strip(), val.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise InvalidSetting(f"{source}: {_LABELS_FORMAT}, got {type(value).__name__}")
    out: dict[str, str] = {}
    for key, raw in pairs:
        if isinstance(raw, dict | list) or raw is None:
            raise InvalidSetting(f"{source}: the value of label {key!r} must be a string")
        val = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise InvalidSetting(
                f"{source}: invalid label key {key!r} (1-63 letters, digits, '-', '_', "
                "'/', starting and ending with a letter or digit; no '.')"
            )
        if not _LABEL_VALUE.match(val):
            raise InvalidSetting(
                f"{source}: invalid value {val!r} for label {key!r} (at most 63 letters, "
                "digits, '-', '_', '.', ':', '/')"
            )
        if key in out:
            raise InvalidSetting(f"{source}: label {key!r} given twice")
        out[key] = val
    if len(out) > MAX_LABELS:
        raise InvalidSetting(f"{source}: at most {MAX_LABELS} labels, got {len(out)}")
    return out


def _env_value(name: str) -> str | None:
    """An ``EDGE_*`` variable as pydantic-settings finds it (names are case-insensitive)."""
    wanted = (ENV_PREFIX + name).lower()
    for key, value in os.environ.items():
        if key.lower() == wanted:
            return value
    return None


def _merged_labels(args: dict[str, Any]) -> dict[str, str] | None:
    """Labels of the file, the environment and the flags merged key by key (higher
    source wins), each checked with a one-line error; None when no source sets any."""
    layers: list[dict[str, str]] = []
    config = args.get("config") or _env_value("CONFIG")
    if config:
        file_labels = read_settings_file(Path(config)).get("labels")
        if file_labels is not None:
            layers.append(
                parse_labels(file_labels, f"labels in {config} (--labels, {ENV_PREFIX}LABELS)")
            )
    env = _env_value("LABELS")
    if env is not None:
        layers.append(parse_labels(env, f"{ENV_PREFIX}LABELS (--labels)"))
    if "labels" in args:
        layers.append(parse_labels(args["labels"], f"--labels ({ENV_PREFIX}LABELS)"))
    if not layers:
        return None
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    if len(merged) > MAX_LABELS:
        raise InvalidSetting(
            f"--labels ({ENV_PREFIX}LABELS): at most {MAX_LABELS} labels, got {len(merged)} merged"
        )
    return merged


def load_settings(argv: Sequence[str] | None = None) -> ClusterSettings:
    """Build settings from flags, ``EDGE_*`` environment and the optional settings file.

    Labels from several sources are merged key by key (flags > environment > file);
    an invalid labels value raises `InvalidSetting` with one line naming its source.
    """
    args = vars(build_parser().parse_args(argv))
    labels = _merged_labels(args)
    if labels is not None:
        args["labels"] = labels
    return build_settings(ClusterSettings, args, ENV_PREFIX)
