"""The inference stats file: written by the worker every second, read by the engine per tick.

Format (JSON, one object, replaced atomically with a rename)::

    {"v": 1, "ts": 1712.3, "window_s": 1.0, "frames_executed": 29, "frames_dropped": 1,
     "latency_p50_ms": 11.2, "latency_p95_ms": 14.0, "latency_p99_ms": 15.1,
     "budget_violations": 0, "budget_ms": 100.0, "target_fps": 30.0, "queue": 4,
     "drop_policy": "drop_oldest", "model": "m.onnx", "pid": 1234,
     "totals": {"frames_executed": ..., "frames_dropped": ..., "budget_violations": ...,
                "started_at": ..., "histogram": {"base_ms": 0.5, "ratio": 1.1,
                "counts": [...]}}}

The top-level figures describe the last window (about one second); `totals` cover the
worker's whole run, with a latency histogram (geometric buckets, 10 % wide) that a
benchmark can subtract between two readings to get percentiles over any interval.

Where: the path in the task's environment variable ``EDGE_INFERENCE_STATS`` (relative
to the task's working directory when not absolute), else ``inference-stats.json`` in
the working directory. The engine reads the file of every active native task on each
status tick, re-parsing only when its mtime changed (one ``stat()`` per task otherwise).

Stdlib only: the engine imports this module, and it must stay cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

from pydantic import ValidationError

from node_engine.runtimes.base import TaskHandle
from schemas.common import Runtime
from schemas.job import TaskSpec
from schemas.node import InferenceStats

STATS_ENV = "EDGE_INFERENCE_STATS"
DEFAULT_STATS_FILE = "inference-stats.json"
FORMAT_VERSION = 1
MAX_STATS_BYTES = 64 * 1024

HIST_BASE_MS = 0.5
HIST_RATIO = 1.1
HIST_BUCKETS = 130  # the last bucket holds everything above ~120 s
_LOG_RATIO = math.log(HIST_RATIO)


# ---------------------------------------------------------------- percentiles


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def bucket_of(ms: float) -> int:
    """Histogram bucket of a latency: 0 holds <= 0.5 ms, bucket i holds (b*r^(i-1), b*r^i]."""
    if ms <= HIST_BASE_MS:
        return 0
    i = math.ceil(math.log(ms / HIST_BASE_MS) / _LOG_RATIO - 1e-9)
    return min(HIST_BUCKETS - 1, max(0, i))


def bucket_upper_ms(i: int) -> float:
    """Upper bound of bucket `i` (what a percentile read from the histogram reports)."""
    return HIST_BASE_MS * HIST_RATIO**i


class LatencyHistogram:
    """Counts of latencies in geometric buckets; percentiles are bucket upper bounds
    (at most 10 % above the exact value)."""

    def __init__(self, counts: Iterable[int] = ()) -> None:
        self.counts = [0] * HIST_BUCKETS
        for i, c in enumerate(counts):
            if i < HIST_BUCKETS:
                self.counts[i] = int(c)

    def add(self, ms: float) -> None:
        """Count one latency."""
        self.counts[bucket_of(ms)] += 1

    @property
    def total(self) -> int:
        """How many latencies were counted."""
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (nearest rank, bucket upper bound); None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * total))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return round(bucket_upper_ms(i), 3)
        return round(bucket_upper_ms(HIST_BUCKETS - 1), 3)  # pragma: no cover

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """What was counted after `earlier` (a reading of the same histogram)."""
        return LatencyHistogram(
            max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (trailing empty buckets left out)."""
        last = max((i for i, c in enumerate(self.counts) if c), default=-1)
        return {"base_ms": HIST_BASE_MS, "ratio": HIST_RATIO, "counts": self.counts[: last + 1]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LatencyHistogram:
        """Read the JSON form (an empty histogram for anything unreadable)."""
        if not data or data.get("base_ms") != HIST_BASE_MS or data.get("ratio") != HIST_RATIO:
            return cls()
        counts = data.get("counts")
        if not isinstance(counts, list):
            return cls()
        return cls(int(c) for c in counts if isinstance(c, int | float))


# ---------------------------------------------------------------- file


def write_stats_file(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace the stats file atomically (temp file in the same directory, rename).

    No fsync: these are figures for the next second, not state worth a disk flush.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def parse_stats(doc: Any) -> InferenceStats | None:
    """The engine-facing figures of a stats document (None if it is not one)."""
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        return None
    fields = {k: doc.get(k) for k in InferenceStats.model_fields if doc.get(k) is not None}
    try:
        return InferenceStats.model_validate(fields)
    except ValidationError:
        return None


def stats_path(spec: TaskSpec, handle: TaskHandle | None) -> Path | None:
    """Where a task's worker writes its stats, as seen from the engine (None: unknown).

    Native tasks only: the working directory is the one the runtime recorded in the
    handle (``extra["workdir"]``), else the spec's `workdir`, else ``work/`` next to the
    task's log file (the layout of engines before the run-as user). A container's files
    are not visible to the engine.
    """
    if spec.runtime is not Runtime.NATIVE:
        return None
    name = spec.env.get(STATS_ENV) or DEFAULT_STATS_FILE
    target = Path(name)
    if target.is_absolute():
        return target
    if handle is not None and handle.extra.get("workdir"):
        return Path(handle.extra["workdir"]) / target
    if spec.workdir:
        return Path(spec.workdir) / target
    if handle is not None and handle.log_path:
        return Path(handle.log_path).parent / "work" / target
    return None


class StatsReader:
    """Reads stats files, parsing a file again only when its mtime or size changed."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, int, InferenceStats | None]] = {}

    def read(self, path: Path) -> InferenceStats | None:
        """The latest figures in `path`, or None when there is no (valid) file."""
        try:
            st = os.lstat(path)
        except OSError:
            self._cache.pop(path, None)
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
            return cached[2]
        stats: InferenceStats | None = None
        # Only a regular file, not a symlink: the task owns its directory, a FIFO there
        # would block the engine's read and a link could point the engine (root) at a
        # file the task may not read.
        if st.st_size <= MAX_STATS_BYTES and S_ISREG(st.st_mode):
            try:
                stats = parse_stats(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                stats = None
        self._cache[path] = (st.st_mtime_ns, st.st_size, stats)
        return stats

    def forget(self, path: Path) -> None:
        """Drop the cache entry of a file (its task is gone)."""
        self._cache.pop(path, None)
