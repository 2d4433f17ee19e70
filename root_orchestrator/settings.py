"""Settings of the root orchestrator: flags > ``EDGE_*`` environment > file > defaults.

Nothing here runs at import time. :func:`load_settings` parses the command line (one
flag per field: ``store_url`` -> ``--store-url``), reads the optional settings file
(``--config`` or ``EDGE_CONFIG``; JSON, YAML or TOML, keys are field names) and builds
one :class:`RootSettings`. See docs/root-orchestrator.md for the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    NoDecode,
    SettingsConfigDict,
)

from schemas.settings_cli import OneLineParser, default_text, env_name, option_help
from schemas.settings_file import (
    FlagsEnvSettings,
    SettingsFileError,
    build_settings,
    check_log_level,
    check_store_url,
    check_token_lengths,
    split_tokens,
    token_accepted,
)

__all__ = ["ENV_PREFIX", "RootSettings", "SettingsFileError", "build_parser", "load_settings"]

ENV_PREFIX = "EDGE_"
MIB = 1024 * 1024


class RootSettings(FlagsEnvSettings):
    """Everything a root orchestrator can be told (see docs/root-orchestrator.md)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    host: str = Field(default="127.0.0.1", description="listen address of the API")
    port: int = Field(default=8000, ge=0, le=65535, description="listen port of the API")
    store_url: str = Field(
        default="sqlite:data/root.db",
        description="sqlite:///abs/path.db, sqlite:relative.db or mongodb://host:port/db",
    )
    operator_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens accepted on the operator API (comma-separated or JSON list)",
    )
    registration_token: SecretStr | None = Field(
        default=None,
        description="bearer token clusters present to register (8+ characters); "
        "registration_tokens adds more",
    )
    registration_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="more accepted cluster registration tokens (comma-separated or a JSON "
        "list, 8+ characters each), accepted besides registration_token: for a rolling "
        "rotation add the new token, move the clusters' EDGE_REGISTRATION_TOKEN to it, then "
        "drop the old one",
    )
    reconcile_interval: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="seconds between reconcile passes (new work also starts one at once); "
        "the full replica sweep and event pruning run at most this often",
    )
    cluster_unreachable_after: float = Field(
        default=15.0, gt=0, le=86400, description="silence (s) before a cluster is UNREACHABLE"
    )
    cluster_lost_after: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="silence (s) before a cluster is LOST and its instances move",
    )
    report_interval: float = Field(
        default=5.0, gt=0, le=3600, description="full-report period asked of clusters"
    )
    cluster_timeout: float = Field(
        default=5.0, gt=0, le=300, description="timeout (s) of each call to a cluster API"
    )
    placement_policy: Literal["spread", "binpack", "thermal"] = Field(
        default="spread", description="scoring policy for choosing clusters"
    )
    max_body_bytes: int = Field(
        default=MIB, ge=1024, le=64 * MIB, description="largest accepted request body"
    )
    max_parallel_placements: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="placement calls to clusters in flight at once (and as many DELETEs); "
        "passes do not wait for them, more work waits for a free slot",
    )
    event_retention: int = Field(
        default=100_000, ge=1000, description="events kept in the store (oldest pruned)"
    )
    public_metrics: bool = Field(
        default=False, description="serve /metrics without the operator token"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("operator_tokens", "registration_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        return split_tokens(value)

    @field_validator("operator_tokens")
    @classmethod
    def _non_empty_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        return check_token_lengths(value, "operator tokens")

    @field_validator("registration_token")
    @classmethod
    def _registration_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("the registration token must be at least 8 characters long")
        return value

    @field_validator("registration_tokens")
    @classmethod
    def _registration_tokens_length(cls, value: list[SecretStr]) -> list[SecretStr]:
        return check_token_lengths(value, "registration tokens")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return check_log_level(value)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        return check_store_url(value)

    @model_validator(mode="after")
    def _ordered_intervals(self) -> RootSettings:
        if self.cluster_lost_after < self.cluster_unreachable_after:
            raise ValueError("cluster_lost_after must be >= cluster_unreachable_after")
        return self

    def accepted_registration_tokens(self) -> list[str]:
        """``registration_token`` then ``registration_tokens``, without duplicates."""
        out: list[str] = []
        first = [self.registration_token] if self.registration_token is not None else []
        for token in [*first, *self.registration_tokens]:
            value = token.get_secret_value()
            if value and value not in out:
                out.append(value)
        return out

    def registration_token_ok(self, token: str) -> bool:
        """Whether `token` is an accepted registration token (constant time over all)."""
        return token_accepted(token, self.accepted_registration_tokens())


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field (all default to unset); the
    help of each names its environment variable and its default."""
    parser = OneLineParser(
        prog="root-orchestrator",
        description="Edge root orchestrator: operator API, cluster API, root scheduler. "
        f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
        f"(e.g. {ENV_PREFIX}STORE_URL) or in the settings file (keys are the names with "
        "underscores); flags win over the environment, which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=option_help("settings file (JSON, YAML or TOML)", f"{ENV_PREFIX}CONFIG", None),
    )
    for name, info in RootSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=name,
            metavar=name.upper(),
            help=option_help(
                info.description or name, env_name(name, ENV_PREFIX), default_text(info)
            ),
        )
    return parser


def load_settings(argv: Sequence[str] | None = None) -> RootSettings:
    """Build settings from flags, ``EDGE_*`` environment and the optional settings file."""
    args = vars(build_parser().parse_args(argv))
    return build_settings(RootSettings, args, ENV_PREFIX)
