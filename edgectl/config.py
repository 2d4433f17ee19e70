"""Where edgectl finds the root orchestrator and its operator token.

Lookup order, per setting (the first that gives a value wins):

1. the flags ``--root-url`` and ``--token``;
2. the environment variables ``EDGE_ROOT_URL`` and ``EDGE_TOKEN``;
3. ``local.json`` in the data directory of ``edgectl local up``: ``--data-dir``, else
   ``EDGE_DATA_DIR``, else ``$XDG_DATA_HOME/edge`` (``~/.local/share/edge``).

The token of ``local.json`` is only used together with its URL: a URL given by flag or
environment that differs from it gets no token from there (a local secret is never sent
to another server).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgectl.client import EdgectlError

__all__ = [
    "LOCAL_FILE",
    "Target",
    "default_data_dir",
    "read_local_file",
    "resolve_data_dir",
    "resolve_target",
]

LOCAL_FILE = "local.json"
ENV_ROOT_URL = "EDGE_ROOT_URL"
ENV_TOKEN = "EDGE_TOKEN"
ENV_DATA_DIR = "EDGE_DATA_DIR"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/edge``, or ``~/.local/share/edge``."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/share")
    return Path(base) / "edge"


def resolve_data_dir(flag: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """``--data-dir``, else ``EDGE_DATA_DIR``, else the default; made absolute."""
    env = os.environ if env is None else env
    if flag is not None:
        return flag.expanduser().absolute()
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR]).expanduser().absolute()
    return default_data_dir(env).absolute()


def read_local_file(data_dir: Path) -> dict[str, Any] | None:
    """The ``local.json`` of a data directory, or None when there is none."""
    path = data_dir / LOCAL_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgectlError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise EdgectlError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EdgectlError(f"{path} does not hold a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class Target:
    """The root to talk to, and where each value came from (for messages)."""

    root_url: str
    token: str | None
    url_source: str
    token_source: str


def resolve_target(
    root_url: str | None,
    token: str | None,
    data_dir: Path | None,
    env: Mapping[str, str] | None = None,
) -> Target:
    """Apply the lookup order of this module; EdgectlError when no root URL is found."""
    env = os.environ if env is None else env
    url, url_source = root_url, "--root-url"
    if not url and env.get(ENV_ROOT_URL):
        url, url_source = env[ENV_ROOT_URL], ENV_ROOT_URL
    tok, tok_source = token, "--token"
    if not tok and env.get(ENV_TOKEN):
        tok, tok_source = env[ENV_TOKEN], ENV_TOKEN
    if not url or not tok:
        directory = resolve_data_dir(data_dir, env)
        local = read_local_file(directory)
        local_url = str(local.get("root_url") or "") if local else ""
        local_token = str(local.get("token") or "") if local else ""
        source = str(directory / LOCAL_FILE)
        if not url and local_url:
            url, url_source = local_url, source
        if not tok and local_token and url and url.rstrip("/") == local_url.rstrip("/"):
            tok, tok_source = local_token, source
        if not url:
            raise EdgectlError(
                f"no root orchestrator to talk to: no --root-url, no EDGE_ROOT_URL and no {source}",
                hint="start a local system with `edgectl local up` (or pass --data-dir), "
                "or set --root-url / EDGE_ROOT_URL and --token / EDGE_TOKEN",
            )
    if not url.startswith(("http://", "https://")):
        raise EdgectlError(f"the root URL must start with http:// or https:// (got {url!r})")
    return Target(url.rstrip("/"), tok or None, url_source, tok_source if tok else "none")
