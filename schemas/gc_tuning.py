"""Garbage-collector settings for the long-running servers (root and cluster).

A server process holds ~100,000 objects that live as long as it does (modules,
classes, pydantic schemas, the app). CPython's full collections walk all of them:
~38 ms each on the machines of docs/benchmarks.md, and with the default young-
generation threshold (700 allocations) the collector ran a few hundred times per
hundred deploys. `tune_for_server` moves what exists at startup out of the
collector's reach (`gc.freeze`) and collects young objects less often; reference
counting still frees almost everything at once, the collector only finds cycles.
"""

from __future__ import annotations

import gc

__all__ = ["SERVER_THRESHOLDS", "tune_for_server"]

#: (young, middle, old): a young collection per 10,000 net allocations instead of 700.
SERVER_THRESHOLDS = (10_000, 20, 20)


def tune_for_server(thresholds: tuple[int, int, int] = SERVER_THRESHOLDS) -> None:
    """Collect once, freeze every object alive now, and set `thresholds`.

    Called by a server's `main` just before it serves (not by `create_app`, so tests
    that build apps in one process keep the defaults)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
