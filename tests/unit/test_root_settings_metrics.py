"""Root settings sources and the hand-written Prometheus exposition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from root_orchestrator.metrics import Counter, GaugeFamily, Histogram, render
from root_orchestrator.settings import RootSettings, load_settings


def test_defaults() -> None:
    s = RootSettings()
    assert s.store_url.startswith("sqlite:") and s.port == 8000
    assert s.operator_tokens == [] and s.registration_token is None
    assert s.cluster_unreachable_after < s.cluster_lost_after


def test_flags_beat_env_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "root.yaml"
    config.write_text("port: 9001\nreconcile-interval: 7\nstore_url: sqlite:file.db\n")
    monkeypatch.setenv("EDGE_PORT", "9002")
    monkeypatch.setenv("EDGE_OPERATOR_TOKENS", "token-one-1, token-two-2")
    s = load_settings(["--config", str(config)])
    assert s.port == 9002 and s.reconcile_interval == 7 and s.store_url == "sqlite:file.db"
    assert [t.get_secret_value() for t in s.operator_tokens] == ["token-one-1", "token-two-2"]
    s = load_settings(["--config", str(config), "--port", "9003"])
    assert s.port == 9003
    monkeypatch.setenv("EDGE_OPERATOR_TOKENS", json.dumps(["json-token-1"]))
    assert [t.get_secret_value() for t in load_settings([]).operator_tokens] == ["json-token-1"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"operator_tokens": ["short"]}, "operator_tokens"),
        ({"registration_token": "short"}, "registration_token"),
        ({"cluster_unreachable_after": 60, "cluster_lost_after": 10}, "cluster_lost_after"),
        ({"placement_policy": "random"}, "placement_policy"),
        ({"reconcile_interval": 0}, "reconcile_interval"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_settings_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RootSettings(**values)  # type: ignore[arg-type]
    assert field in str(info.value)


def test_secrets_do_not_leak_in_repr() -> None:
    s = RootSettings(operator_tokens=["op-secret-1"], registration_token="reg-secret-1")
    assert "op-secret-1" not in repr(s) and "reg-secret-1" not in repr(s)


def test_exposition_format() -> None:
    counter = Counter("x_total", "Things.", ("path",))
    counter.inc('/a"b\\c\n')
    counter.inc("/b", amount=2)
    hist = Histogram("lat_seconds", "Latency.", buckets=(0.1, 1.0))
    hist.observe(0.05)
    hist.observe(0.5)
    hist.observe(5)
    gauge = GaugeFamily("g", "A gauge.", (), {(): 1.5})
    text = render([counter, hist, gauge])
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# TYPE x_total counter" in lines
    assert 'x_total{path="/a\\"b\\\\c\\n"} 1' in lines
    assert 'x_total{path="/b"} 2' in lines
    assert 'lat_seconds_bucket{le="0.1"} 1' in lines
    assert 'lat_seconds_bucket{le="1"} 2' in lines
    assert 'lat_seconds_bucket{le="+Inf"} 3' in lines
    assert "lat_seconds_sum 5.55" in lines and "lat_seconds_count 3" in lines
    assert "g 1.5" in lines
    with pytest.raises(ValueError):
        counter.inc()
