"""Command-line side of the settings, shared by the three programs.

`root-orchestrator`, `cluster-orchestrator` and `node-engine` each take a setting
from a flag (``--store-url``), an environment variable (``EDGE_STORE_URL``,
``EDGE_NODE_*`` for the node engine) or a settings file. This module holds, once:

* `option_help`: the help line of one option, with its environment variable and its
  default, the same in every program's ``--help``;
* `OneLineParser`: an argparse parser whose usage errors are one line (exit 2);
* `settings_error`: one line for an invalid setting (a pydantic `ValidationError` or
  a file error) naming the flag and the environment variable and what is wrong,
  never echoing a secret.

Only the standard library and pydantic (the node engine imports it anyway): the node
engine's footprint stays as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "EXIT_USAGE",
    "OneLineParser",
    "default_text",
    "env_name",
    "flag_name",
    "option_help",
    "settings_error",
]

#: Exit status of every program for unusable settings (argparse's own for usage errors).
EXIT_USAGE = 2

_MAX_SHOWN = 40
_MAX_ERRORS = 3


def flag_name(field: str) -> str:
    """The flag of a settings field: ``store_url`` -> ``--store-url``."""
    return "--" + field.replace("_", "-")


def env_name(field: str, env_prefix: str) -> str:
    """The environment variable of a settings field: ``EDGE_STORE_URL``."""
    return env_prefix + field.upper()


def _shown(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_shown(v)}" for k, v in value.items())
    return str(value)


def default_text(info: FieldInfo) -> str | None:
    """The default of a field as help shows it; None when there is none to show
    (required, unset by default, or a secret)."""
    if info.is_required() or _is_secret(info):
        return None
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return None
    else:
        value = info.default
    if value is None or value is PydanticUndefined:
        return None
    text = _shown(value)
    return text if text != "" else None


def option_help(
    description: str | None,
    env: str,
    default: str | None,
    *,
    required: bool = False,
) -> str:
    """``description [env EDGE_X] (default: d)``; ``(required)`` instead of a default."""
    text = (description or "").strip()
    text = f"{text} [env {env}]" if text else f"[env {env}]"
    if required:
        return f"{text} (required)"
    if default is not None:
        return f"{text} (default: {default})".replace("%", "%%")
    return text.replace("%", "%%")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: message (see --help)`` and exit 2 (no usage block)."""
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _is_secret(info: FieldInfo) -> bool:
    return "SecretStr" in str(info.annotation) or info.annotation is SecretStr


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _input(error: Mapping[str, Any], secret: bool) -> str:
    if secret or error.get("type") == "missing" or "input" not in error:
        return ""
    value = error["input"]
    if isinstance(value, dict | list):
        return ""
    text = str(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return f" (got {text!r})"


def _describe(
    error: Mapping[str, Any],
    model: type[BaseModel],
    names: Callable[[str], str],
    file: str | None,
) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    fields = model.model_fields
    if not loc:
        text = _message(error)
        for field in sorted(fields, key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){re.escape(field)}(?![\w-])", names(field), text)
        return text
    field = loc[0]
    info = fields.get(field)
    if info is None:
        # only a settings file can hold a key that is no field (flags and env are fields)
        where = f" in {file}" if file else " in the settings file"
        if error.get("type") == "extra_forbidden":
            return f"unknown setting {field!r}{where}"
        return f"{field}{where}: {_message(error)}"
    sub = "".join(f"[{part}]" for part in loc[1:])
    if error.get("type") == "missing":
        return f"{names(field)} is required"
    message = _message(error)
    shown = _input(error, _is_secret(info))
    if shown and repr(str(error.get("input")))[1:-1] in message:
        shown = ""  # the message quotes the value already
    return f"{names(field)}{sub}: {message}{shown}"


def settings_error(
    exc: Exception,
    *,
    model: type[BaseModel],
    env_prefix: str,
    flags: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> str:
    """One line for unusable settings: every setting at fault with its flag and its
    environment variable, and what is wrong (secret values never shown).

    `flags` overrides the flag of a field (``labels`` -> ``--label``); `config_file`
    names the settings file in use, for keys it alone can hold.
    """
    overrides = dict(flags or {})

    def names(field: str) -> str:
        # the settings-file key, the flag and the environment variable: whichever the
        # operator used, the line names it
        flag = overrides.get(field, flag_name(field))
        return f"{field} ({flag}, {env_name(field, env_prefix)})"

    file = str(config_file) if config_file else None
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        parts = [_describe(e, model, names, file) for e in errors[:_MAX_ERRORS]]
        if len(errors) > _MAX_ERRORS:
            parts.append(f"and {len(errors) - _MAX_ERRORS} more")
        text = "invalid settings: " + "; ".join(parts)
    else:
        text = str(exc)
    return " ".join(text.split())
