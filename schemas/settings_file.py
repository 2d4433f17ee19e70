"""Settings sources shared by the three programs: flags > environment > file.

The root orchestrator, the cluster orchestrator and the node engine take their settings
from command-line flags, `EDGE_*` environment variables and an optional settings file,
in that order of precedence. This module holds that mechanism once (`build_settings`);
each program keeps only its own settings class and parser.

The node engine imports this module too, so it stays light at import: only pydantic,
pydantic-settings and the stdlib are loaded up front; ``yaml``, ``tomllib`` and
``hmac`` are imported when a YAML/TOML file is read or a token compared (the node's
RSS budget, docs/node-engine.md "Footprint").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
    import hmac

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
    """The settings file cannot be read or does not hold a mapping.

    The message names the file (``cannot read settings file X: why``); `path` and
    `reason` (``does not exist``, ``cannot be read: why``, ``cannot be parsed: why``,
    ``must hold a mapping of settings``) let a program word the line its own way (both
    unset for other invalid settings, e.g. the cluster's `InvalidSetting`)."""

    def __init__(self, message: str, *, path: Path | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


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


def read_settings_file(path: Path, *, yaml_files: bool = True) -> dict[str, Any]:
    """Read a JSON, YAML or TOML settings file into a dict keyed by field name.

    ``.json`` is JSON and ``.toml`` TOML; any other name is YAML, or JSON when
    `yaml_files` is False (the node engine, whose files are JSON or TOML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = (
            "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read: {why}"
        )
        raise SettingsFileError(
            f"cannot read settings file {path}: {why}", path=path, reason=reason
        ) from exc
    suffix = path.suffix.lower()
    try:
        data = _parse(text, suffix, yaml_files)
    except ValueError as exc:
        why = " ".join(str(exc).split())
        raise SettingsFileError(
            f"cannot parse settings file {path}: {why}",
            path=path,
            reason=f"cannot be parsed: {why}",
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsFileError(
            f"settings file {path} must hold a mapping",
            path=path,
            reason="must hold a mapping of settings",
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parse(text: str, suffix: str, yaml_files: bool) -> Any:
    """The file's data; ValueError (also for YAML errors) when it does not parse."""
    if suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    if suffix == ".json" or not yaml_files:
        return json.loads(text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def build_settings(
    cls: type[S],
    args: dict[str, Any],
    env_prefix: str,
    *,
    environ: Mapping[str, str] | None = None,
    yaml_files: bool = True,
) -> S:
    """Settings from parsed flags `args` (may hold `config`), the env and the file.

    The file is ``config`` in `args`, else ``<env_prefix>CONFIG`` of `environ` (default:
    the process environment; the other variables are always read from the process
    environment by pydantic-settings). `SettingsFileError` when it cannot be used."""
    env = os.environ if environ is None else environ
    config = args.pop("config", None) or env.get(f"{env_prefix}CONFIG")
    if not config:
        return cls(**args)
    values = read_settings_file(Path(config), yaml_files=yaml_files)
    return with_file(cls, values)(**args)
