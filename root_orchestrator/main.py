"""`root-orchestrator`: load settings, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from root_orchestrator.app import create_app
from root_orchestrator.settings import SettingsFileError, load_settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the root orchestrator until interrupted; returns the exit status."""
    try:
        settings = load_settings(argv)
    except (ValidationError, SettingsFileError) as exc:
        print(f"root-orchestrator: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if not settings.operator_tokens:
        print(
            "root-orchestrator: no operator token configured; set --operator-tokens or "
            "EDGE_OPERATOR_TOKENS (comma-separated, 8+ characters each)",
            file=sys.stderr,
        )
        return 2
    if not settings.accepted_registration_tokens():
        print(
            "root-orchestrator: warning: no registration token "
            "(EDGE_REGISTRATION_TOKEN or EDGE_REGISTRATION_TOKENS): "
            "clusters cannot register",
            file=sys.stderr,
        )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=3,
        proxy_headers=False,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
