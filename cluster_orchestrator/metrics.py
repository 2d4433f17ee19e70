"""Process metrics in Prometheus text format, without a client library.

Counters and gauges are keyed by (name, sorted labels); updates take a lock, so they
can be called from the MQTT thread, the core loop and HTTP handlers alike. Lag
samples (status publish -> ingestion) go into a histogram and a ring buffer from
which exact recent percentiles are computed for `/api/v1/stats`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping

__all__ = ["LAG_BUCKETS", "Metrics", "percentile"]

LAG_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

LabelKey = tuple[tuple[str, str], ...]

_HELP: dict[str, tuple[str, str]] = {
    "edge_cluster_mqtt_messages_total": ("counter", "MQTT messages received, by kind"),
    "edge_cluster_mqtt_rejected_total": (
        "counter",
        "MQTT messages rejected, by reason (error: an unexpected failure handling one)",
    ),
    "edge_cluster_commands_total": ("counter", "commands published, by kind"),
    "edge_cluster_acks_total": ("counter", "command acks received, by result"),
    "edge_cluster_ack_timeouts_total": ("counter", "commands without ack in time, by kind"),
    "edge_cluster_acks_by_status_total": (
        "counter",
        "DEPLOYs whose ack never came, taken as acknowledged by a status listing the task",
    ),
    "edge_cluster_placements_total": ("counter", "placement decisions, by result"),
    "edge_cluster_instance_transitions_total": ("counter", "instance state changes, by state"),
    "edge_cluster_node_transitions_total": ("counter", "node liveness changes, by state"),
    "edge_cluster_node_session_takeovers_total": (
        "counter",
        "a node's MQTT connection closed by the broker for another client with its client id "
        "(reported by the node on reconnecting)",
    ),
    "edge_cluster_rebalance_moves_total": (
        "counter",
        "replicas of spread jobs moved onto a returning node",
    ),
    "edge_cluster_joins_total": ("counter", "node joins, by result"),
    "edge_cluster_reports_total": ("counter", "reports sent to the root, by result"),
    "edge_cluster_store_errors_total": ("counter", "failed store writes"),
    "edge_cluster_store_writes_coalesced_total": (
        "counter",
        "queued document writes dropped because a later queued write replaced them",
    ),
    "edge_cluster_status_snapshots_total": ("counter", "node status documents written"),
    "edge_cluster_logs_requests_total": ("counter", "log reads from nodes, by outcome"),
    "edge_cluster_logs_late_replies_total": (
        "counter",
        "logs_chunk replies that came after their request gave up",
    ),
    "edge_cluster_nodes": ("gauge", "nodes, by liveness"),
    "edge_cluster_instances": ("gauge", "instances in memory, by state"),
    "edge_cluster_core_queue_depth": ("gauge", "items waiting for the core loop"),
    "edge_cluster_pending_commands": ("gauge", "commands waiting for an ack"),
    "edge_cluster_status_lag_seconds": (
        "histogram",
        "status publish (envelope ts) to ingestion by the core loop",
    ),
}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Metrics:
    """Thread-safe counters, gauges and the status-lag histogram."""

    def __init__(self, lag_window: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, dict[LabelKey, float]] = {}
        self._lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self._lag_sum = 0.0
        self._lag_n = 0
        self._lag_recent: deque[float] = deque(maxlen=lag_window)
        self._collectors: list[Callable[[Metrics], None]] = []

    @staticmethod
    def _key(labels: Mapping[str, str] | None) -> LabelKey:
        return tuple(sorted(labels.items())) if labels else ()

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        """Add to a counter."""
        key = self._key(labels)
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Set a gauge."""
        with self._lock:
            self._gauges.setdefault(name, {})[self._key(labels)] = value

    def replace_gauge(self, name: str, values: Mapping[str, float], label: str) -> None:
        """Replace every series of a labelled gauge at once (e.g. nodes by liveness)."""
        with self._lock:
            self._gauges[name] = {((label, k),): v for k, v in values.items()}

    def counter(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Current value of a counter (0 when never incremented)."""
        with self._lock:
            return self._counters.get(name, {}).get(self._key(labels), 0.0)

    def counter_total(self, name: str) -> float:
        """Sum of a counter over all label sets."""
        with self._lock:
            return sum(self._counters.get(name, {}).values())

    def counter_by(self, name: str, label: str) -> dict[str, float]:
        """A counter's values keyed by one label (e.g. rejected messages by reason)."""
        out: dict[str, float] = {}
        with self._lock:
            for key, value in self._counters.get(name, {}).items():
                labels = dict(key)
                if label in labels:
                    out[labels[label]] = out.get(labels[label], 0.0) + value
        return out

    def observe_lag(self, seconds: float) -> None:
        """Record one status lag sample."""
        seconds = max(0.0, seconds)
        index = bisect.bisect_left(LAG_BUCKETS, seconds)
        with self._lock:
            self._lag_counts[index] += 1
            self._lag_sum += seconds
            self._lag_n += 1
            self._lag_recent.append(seconds)

    def observe_lags(self, samples: list[float]) -> None:
        """Record many lag samples under one lock acquisition."""
        with self._lock:
            for seconds in samples:
                seconds = max(0.0, seconds)
                self._lag_counts[bisect.bisect_left(LAG_BUCKETS, seconds)] += 1
                self._lag_sum += seconds
                self._lag_n += 1
                self._lag_recent.append(seconds)

    def lag_summary(self, reset: bool = False) -> dict[str, float | None]:
        """Exact percentiles (ms) of the recent lag samples (None when there are none);
        `reset` clears the window."""
        with self._lock:
            values = list(self._lag_recent)
            if reset:
                self._lag_recent.clear()
        values.sort()
        if not values:
            return {"samples": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "samples": float(len(values)),
            "p50_ms": round(percentile(values, 50) * 1000.0, 3),
            "p90_ms": round(percentile(values, 90) * 1000.0, 3),
            "p99_ms": round(percentile(values, 99) * 1000.0, 3),
            "max_ms": round(values[-1] * 1000.0, 3),
        }

    def add_collector(self, fn: Callable[[Metrics], None]) -> None:
        """Register a function called before rendering (to refresh gauges)."""
        self._collectors.append(fn)

    def render(self) -> str:
        """The Prometheus text exposition (version 0.0.4)."""
        for fn in self._collectors:
            fn(self)
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self._counters) | set(self._gauges) | set(_HELP))
            for name in names:
                kind, text = _HELP.get(name, ("untyped", name))
                if kind == "histogram":
                    lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
                    cumulative = 0
                    for bound, count in zip(LAG_BUCKETS, self._lag_counts, strict=False):
                        cumulative += count
                        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
                    lines.append(f'{name}_bucket{{le="+Inf"}} {self._lag_n}')
                    lines.append(f"{name}_sum {self._lag_sum:.6f}")
                    lines.append(f"{name}_count {self._lag_n}")
                    continue
                series = self._counters.get(name) or self._gauges.get(name) or {}
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if not series and kind in ("counter", "gauge") and name not in self._gauges:
                    lines.append(f"{name} 0")
                for key, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(key)} {_num(value)}")
        return "\n".join(lines) + "\n"


def _labels(key: LabelKey) -> str:
    if not key:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
