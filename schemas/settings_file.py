"""Settings sources shared by the orchestrator programs: flags > environment > file.

Both orchestrators take their settings from command-line flags, `EDGE_*` environment
variables and an optional JSON, YAML or TOML file, in that order of precedence. This
module holds that mechanism once; each program keeps only its own settings class.
"""

from __future__ import annotations

import hmac
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

S = TypeVar("S", bound="FlagsEnvSettings")


#: Shortest token (operator, registration, join) the programs accept.
MIN_TOKEN_LENGTH = 8


def split_tokens(value: Any) -> Any:
    """Accept a list, a JSON list or a comma-separated string of tokens."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def check_token_lengths(value: list[SecretStr], what: str) -> list[SecretStr]:
    """Refuse tokens shorter than `MIN_TOKEN_LENGTH`; `what` names them in the error."""
    for token in value:
        if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{what} must be at least {MIN_TOKEN_LENGTH} characters long")
    return value


def token_accepted(given: str, accepted: Sequence[str]) -> bool:
    """Whether `given` is one of `accepted`, comparing with every token in constant time."""
    found = False
    for token in accepted:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_log_level(value: str) -> str:
    """A log level name (any case), upper-cased; ValueError naming the choices."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {value!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def check_store_url(value: str) -> str:
    """A store URL `store.open_store` accepts (checked without opening it)."""
    from store import StoreError
    from store import check_store_url as check

    try:
        check(value)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    return value


class SettingsFileError(ValueError):
    """The settings file cannot be read or does not hold a mapping."""


class FlagsEnvSettings(BaseSettings):
    """Base settings: flags (init values) beat the environment; no .env or secrets dir."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags first, then the environment."""
        return (init_settings, env_settings)


class _DictSource(PydanticBaseSettingsSource):
    """Values read from the settings file (lowest priority above the defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = dict(values)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Return the file's value for one field (None when absent)."""
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Every key the file sets; unknown keys fail validation (extra=forbid)."""
        return dict(self._values)


def with_file(base: type[S], values: Mapping[str, Any]) -> type[S]:
    """A subclass of `base` whose lowest source (below flags and env) is `values`."""

    class FileBackedSettings(base):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, values))

    return FileBackedSettings


def read_settings_file(path: Path) -> dict[str, Any]:
    """Read a JSON, YAML or TOML settings file into a dict keyed by field name."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsFileError(f"cannot read settings file {path}: {why}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data: Any = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())
        raise SettingsFileError(f"cannot parse settings file {path}: {why}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsFileError(f"settings file {path} must hold a mapping")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_settings(cls: type[S], args: dict[str, Any], env_prefix: str) -> S:
    """Settings from parsed flags `args` (may hold `config`), the env and the file."""
    config = args.pop("config", None) or os.environ.get(f"{env_prefix}CONFIG")
    if not config:
        return cls(**args)
    return with_file(cls, read_settings_file(Path(config)))(**args)
