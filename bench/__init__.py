"""Benchmarks: scripts that print figures (docs/benchmarks.md), not tests."""

from __future__ import annotations

from pathlib import Path


def repo_from_argv(argv: list[str], default: Path) -> Path:
    """The checkout named by ``--repo PATH`` (or ``--repo=PATH``) in `argv`, else `default`:
    benches that compare old and new code run the measured checkout's harness and
    processes with this checkout's measuring code."""
    for i, arg in enumerate(argv):
        if arg == "--repo" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if arg.startswith("--repo="):
            return Path(arg.split("=", 1)[1]).resolve()
    return default
