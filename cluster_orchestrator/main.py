"""`cluster-orchestrator` console script: parse settings, run uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from cluster_orchestrator.app import create_app
from cluster_orchestrator.settings import SettingsFileError, load_settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cluster orchestrator until SIGINT/SIGTERM; returns the exit code."""
    try:
        settings = load_settings(argv)
    except (ValidationError, SettingsFileError) as exc:
        print(f"cluster-orchestrator: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.upper() == "DEBUG",
        lifespan="on",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
