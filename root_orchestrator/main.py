"""`root-orchestrator`: load settings, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from root_orchestrator.settings import ENV_PREFIX, RootSettings, SettingsFileError, load_settings
from schemas.gc_tuning import tune_for_server
from schemas.settings_cli import EXIT_USAGE, settings_error

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the root orchestrator until interrupted; returns the exit status.

    Unusable settings print one line naming the setting (flag and environment
    variable) and exit with status 2 before anything is written.
    """
    try:
        settings = load_settings(argv)
    except SettingsFileError as exc:
        print(f"root-orchestrator: --config ({ENV_PREFIX}CONFIG): {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        line = settings_error(exc, model=RootSettings, env_prefix=ENV_PREFIX)
        print(f"root-orchestrator: {line}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.operator_tokens:
        print(
            "root-orchestrator: no operator token configured; set --operator-tokens or "
            "EDGE_OPERATOR_TOKENS (comma-separated, 8+ characters each)",
            file=sys.stderr,
        )
        return EXIT_USAGE
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
    from root_orchestrator.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=3,
        proxy_headers=False,
    )
    tune_for_server()
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
