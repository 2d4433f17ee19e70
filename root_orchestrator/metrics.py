"""Prometheus text exposition (format 0.0.4), written by hand: counters, histograms, gauges.

Thread-safe: HTTP handlers (threads), the middleware and the reconciler (event loop)
all record here. Gauges are computed at scrape time from the store.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "GaugeFamily",
    "Histogram",
    "RootMetrics",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCHEDULING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing value per label set."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` (default 1) to the series with these label values."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(labels, 0.0)

    def lines(self) -> list[str]:
        """Exposition lines, HELP and TYPE first."""
        with self._lock:
            items = sorted(self._values.items())
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]
        return out


class Histogram:
    """Observations in cumulative buckets per label set, with sum and count."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelValues, list[float]] = {}  # bucket counts..., sum, count
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        """Record one observation (seconds, usually)."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}")
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, *labels: str) -> int:
        """How many observations one series holds."""
        with self._lock:
            series = self._series.get(labels)
            return int(series[-1]) if series else 0

    def lines(self) -> list[str]:
        """Exposition lines: cumulative buckets, +Inf, _sum and _count per series."""
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{_number(bound)}"'
                out.append(
                    f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(count)}"
                )
            inf = _labels(self.label_names, key, 'le="+Inf"')
            out.append(f"{self.name}_bucket{inf} {_number(series[-1])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return out


@dataclass(frozen=True, slots=True)
class GaugeFamily:
    """A gauge computed at scrape time: one value per label set."""

    name: str
    help: str
    label_names: tuple[str, ...]
    values: Mapping[LabelValues, float]

    def lines(self) -> list[str]:
        """Exposition lines, HELP and TYPE first."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        out += [
            f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
            for k, v in sorted(self.values.items())
        ]
        return out


def render(families: Iterable[Counter | Histogram | GaugeFamily]) -> str:
    """The full exposition text (ends with a newline)."""
    lines: list[str] = []
    for family in families:
        lines.extend(family.lines())
    return "\n".join(lines) + "\n"


class RootMetrics:
    """Every metric the root records itself (gauges come from the service at scrape)."""

    def __init__(self) -> None:
        self.http_requests = Counter(
            "edge_root_http_requests_total",
            "HTTP requests served, by method, route template and status code.",
            ("method", "route", "status"),
        )
        self.http_seconds = Histogram(
            "edge_root_http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ("method", "route"),
        )
        self.scheduling_seconds = Histogram(
            "edge_root_scheduling_latency_seconds",
            "Time from an instance becoming PENDING to its acceptance by a cluster.",
            buckets=SCHEDULING_BUCKETS,
        )
        self.decision_seconds = Histogram(
            "edge_root_placement_decision_seconds",
            "Time the root scheduler takes to choose a cluster for one instance.",
        )
        self.placements = Counter(
            "edge_root_placements_total",
            "Placement attempts by outcome (accepted, rejected, error, pending, forwarded).",
            ("outcome",),
        )
        self.cluster_calls = Counter(
            "edge_root_cluster_requests_total",
            "Calls to cluster APIs by operation and outcome.",
            ("operation", "outcome"),
        )
        self.cluster_call_seconds = Histogram(
            "edge_root_cluster_request_duration_seconds",
            "Duration of calls to cluster APIs (a placement runs until the cluster accepts "
            "or refuses), by operation.",
            ("operation",),
        )
        self.reconcile_seconds = Histogram(
            "edge_root_reconcile_duration_seconds", "Duration of one reconcile pass."
        )
        self.reports = Counter(
            "edge_root_cluster_reports_total", "Cluster reports received.", ("full",)
        )
        self.registrations = Counter(
            "edge_root_cluster_registrations_total",
            "Cluster registrations by result (new, reregistered, new_identity, "
            "refused_takeover, refused_identity, refused_token).",
            ("result",),
        )
        self.store_documents = Counter(
            "edge_root_store_documents_written_total",
            "Documents the store writer wrote (after dropping those a later write replaced).",
        )
        self.store_commits = Counter(
            "edge_root_store_commits_total",
            "Store calls of the store writer (a run of puts is one put_many: one "
            "transaction on SQLite).",
        )

    def families(self) -> list[Counter | Histogram]:
        """Every recorded family, in exposition order."""
        return [
            self.http_requests,
            self.http_seconds,
            self.scheduling_seconds,
            self.decision_seconds,
            self.placements,
            self.cluster_calls,
            self.cluster_call_seconds,
            self.reconcile_seconds,
            self.reports,
            self.registrations,
            self.store_documents,
            self.store_commits,
        ]
