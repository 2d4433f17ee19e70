"""`cluster-orchestrator` console script: parse settings, run uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from cluster_orchestrator.settings import (
    ENV_PREFIX,
    ClusterSettings,
    InvalidSetting,
    SettingsFileError,
    load_settings,
    startup_problem,
)
from schemas.gc_tuning import tune_for_server
from schemas.settings_cli import EXIT_USAGE, settings_error

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cluster orchestrator until SIGINT/SIGTERM; returns the exit code.

    Unusable settings print one line naming the setting (flag and environment
    variable) and exit with status 2 before anything is written.
    """
    try:
        settings = load_settings(argv)
    except InvalidSetting as exc:
        print(f"cluster-orchestrator: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SettingsFileError as exc:
        print(f"cluster-orchestrator: --config ({ENV_PREFIX}CONFIG): {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        line = settings_error(exc, model=ClusterSettings, env_prefix=ENV_PREFIX)
        print(f"cluster-orchestrator: {line}", file=sys.stderr)
        return EXIT_USAGE
    problem = startup_problem(settings)
    if problem:
        print(f"cluster-orchestrator: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from cluster_orchestrator.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    tune_for_server()
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
