"""Inference worker and its stats file: queue drop policies, figures, histogram, file
location and reading, the engine-side plumbing into `TaskStatus.inference`, and the
worker running a generated ONNX model for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from node_engine.inference.stats import (
    DEFAULT_STATS_FILE,
    STATS_ENV,
    LatencyHistogram,
    StatsReader,
    bucket_of,
    bucket_upper_ms,
    parse_stats,
    percentile,
    stats_path,
    write_stats_file,
)
from node_engine.inference.worker import Frame, FrameQueue, Recorder, Worker
from node_engine.runtimes.base import TaskHandle
from node_engine.state import TaskStore
from node_engine.supervisor import ShedDecision, Supervisor, TaskChange
from schemas.common import Runtime
from schemas.job import ShedAction, TaskSpec, TaskState
from tests.unit.test_node_engine_supervisor import FakeRuntime

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- queue and figures


@pytest.mark.parametrize(
    ("policy", "kept", "dropped_newest_refused"),
    [
        pytest.param("drop_oldest", [2.0, 3.0, 4.0], False, id="drop_oldest_keeps_the_freshest"),
        pytest.param("drop_newest", [0.0, 1.0, 2.0], True, id="drop_newest_keeps_the_first"),
    ],
)
def test_queue_drop_policies(policy: Any, kept: list[float], dropped_newest_refused: bool) -> None:
    q = FrameQueue(3, policy)
    results = [q.put(Frame(None, float(i))) for i in range(5)]
    assert q.dropped == 2
    assert results[-1] is (not dropped_newest_refused)
    assert [f.due for f in iter(lambda: q.get(0.0), None)] == kept
    q.put(Frame(None, 9.0))
    assert q.discard_all() == 1 and q.dropped == 3 and len(q) == 0


def test_queue_get_waits_and_close_wakes() -> None:
    q = FrameQueue(2, "drop_oldest")
    threading.Timer(0.05, lambda: q.put(Frame("x", 1.0))).start()
    frame = q.get(5.0)
    assert frame is not None and frame.data == "x"
    threading.Timer(0.05, q.close).start()
    started = time.monotonic()
    assert q.get(5.0) is None and time.monotonic() - started < 4.0
    with pytest.raises(ValueError):
        FrameQueue(0, "drop_oldest")


def test_recorder_windows_and_totals() -> None:
    now = [0.0]
    rec = Recorder(budget_ms=20.0, clock=lambda: now[0])
    rec.snapshot(0)
    for ms in [5.0, 10.0, 15.0, 30.0]:
        rec.record(ms)
    now[0] = 1.0
    first = rec.snapshot(dropped_total=3)
    assert first["window_s"] == 1.0
    assert first["frames_executed"] == 4 and first["frames_dropped"] == 3
    assert first["latency_p50_ms"] == 10.0 and first["latency_p99_ms"] == 30.0
    assert first["budget_violations"] == 1
    now[0] = 2.0
    second = rec.snapshot(dropped_total=5)
    assert second["frames_executed"] == 0 and second["frames_dropped"] == 2
    assert second["latency_p95_ms"] is None
    assert second["totals"]["frames_executed"] == 4 and second["totals"]["frames_dropped"] == 5
    assert second["totals"]["budget_violations"] == 1


def test_percentiles_and_histogram() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0
    assert percentile([], 50) is None
    assert bucket_of(0.1) == 0 and bucket_of(0.5) == 0 and bucket_of(0.55) == 1
    for ms in (0.7, 3.3, 10.0, 99.9, 1234.5):
        i = bucket_of(ms)
        assert bucket_upper_ms(i - 1) < ms <= bucket_upper_ms(i) * 1.0000001
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    p95 = hist.percentile(95)
    assert p95 is not None and 95.0 <= p95 <= 95.0 * 1.1
    earlier = LatencyHistogram(hist.counts)
    for _ in range(100):
        hist.add(500.0)
    later = hist.minus(earlier)
    assert later.total == 100 and (later.percentile(50) or 0) >= 500.0
    again = LatencyHistogram.from_dict(json.loads(json.dumps(hist.to_dict())))
    assert again.counts == hist.counts
    assert LatencyHistogram.from_dict({"base_ms": 1.0, "ratio": 2.0, "counts": [1]}).total == 0


# ---------------------------------------------------------------- the stats file


def test_stats_file_round_trip_and_reader_cache(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    reader = StatsReader()
    assert reader.read(path) is None
    doc = {
        "v": 1,
        "ts": 123.0,
        "frames_executed": 30,
        "frames_dropped": 2,
        "latency_p50_ms": 10.0,
        "latency_p95_ms": 12.5,
        "latency_p99_ms": 20.0,
        "budget_violations": 1,
        "budget_ms": 100.0,
        "extra": "ignored",
        "totals": {"frames_executed": 300},
    }
    write_stats_file(path, doc)
    stats = reader.read(path)
    assert stats is not None and stats.latency_p95_ms == 12.5 and stats.ts == 123.0
    assert stats.budget_ms == 100.0 and stats.frames_dropped == 2
    assert reader.read(path) is stats  # unchanged file: cached
    path.write_text("{not json")
    assert reader.read(path) is None
    assert parse_stats({"v": 2}) is None and parse_stats([]) is None
    assert parse_stats({"v": 1, "frames_executed": -1}) is None
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_stats_path_rules(tmp_path: Path) -> None:
    native = TaskSpec(runtime=Runtime.NATIVE, command=["w"])
    handle = TaskHandle(
        instance_id="i1", runtime=Runtime.NATIVE, log_path=str(tmp_path / "i1" / "output.log")
    )
    assert stats_path(native, handle) == tmp_path / "i1" / "work" / DEFAULT_STATS_FILE
    assert stats_path(native, None) is None
    in_workdir = native.model_copy(update={"workdir": "/srv/cam", "env": {STATS_ENV: "s.json"}})
    assert stats_path(in_workdir, handle) == Path("/srv/cam/s.json")
    absolute = native.model_copy(update={"env": {STATS_ENV: "/run/cam.json"}})
    assert stats_path(absolute, handle) == Path("/run/cam.json")
    docker = TaskSpec(runtime=Runtime.DOCKER, image="busybox")
    assert stats_path(docker, handle) is None
    # the runtime records the working directory it used (native/work/<instance>)
    recorded = handle.model_copy(update={"extra": {"workdir": str(tmp_path / "w" / "i1")}})
    assert stats_path(native, recorded) == tmp_path / "w" / "i1" / DEFAULT_STATS_FILE


def test_stats_reader_ignores_a_fifo(tmp_path: Path) -> None:
    """The task owns its directory: a FIFO in place of the stats file must not block."""
    fifo = tmp_path / DEFAULT_STATS_FILE
    os.mkfifo(fifo)
    assert StatsReader().read(fifo) is None
    real = tmp_path / "elsewhere.json"
    write_stats_file(real, {"v": 1, "frames_executed": 3})
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert StatsReader().read(link) is None and StatsReader().read(real) is not None


def test_supervisor_reports_inference_figures_and_restarts_stopped_tasks(tmp_path: Path) -> None:
    rt = FakeRuntime()
    events: list[TaskChange] = []
    sup = Supervisor({Runtime.NATIVE: rt}, {}, TaskStore(tmp_path), events.append)
    stats_file = tmp_path / "cam.json"
    spec = TaskSpec(
        runtime=Runtime.NATIVE,
        command=["w"],
        env={STATS_ENV: str(stats_file)},
        on_shed=ShedAction.STOP,
    )
    sup.deploy("cam", "j", spec)
    sup.poll()
    assert sup.statuses()[0].inference is None
    write_stats_file(stats_file, {"v": 1, "frames_executed": 7, "latency_p95_ms": 9.0})
    sup.poll()
    (status,) = sup.statuses()
    assert status.inference is not None and status.inference.frames_executed == 7

    data = {"values": {"cpu": 97.0}}
    sup.apply_shed(ShedDecision("cam", "stop", "shed (stop): cpu 97%", data))
    (status,) = sup.statuses()
    assert status.state is TaskState.SHED and status.inference is None
    assert events[-1].state is TaskState.SHED and events[-1].data == data
    sup.apply_shed(ShedDecision("cam", "resume", "resumed: pressure clear", {}))
    assert [e.state for e in events[-2:]] == [TaskState.STARTING, TaskState.RUNNING]
    assert events[-2].reason == "resumed: pressure clear"
    assert rt.deploys == ["cam", "cam"] and sup.tasks["cam"].desired

    moved = spec.model_copy(update={"on_shed": ShedAction.RESCHEDULE})
    sup.deploy("mv", "j", moved)
    sup.apply_shed(ShedDecision("mv", "stop", "shed (stop): memory", {}))
    sup.apply_shed(ShedDecision("mv", "resume", "resumed", {}))  # not ours to bring back
    assert sup.tasks["mv"].state is TaskState.SHED and rt.deploys.count("mv") == 1


# ---------------------------------------------------------------- the worker


def test_worker_loop_with_a_fake_model() -> None:
    reports: list[dict[str, Any]] = []

    def infer(data: Any) -> None:
        time.sleep(0.002)

    worker = Worker(
        infer,
        iter(lambda: 0, 1),
        target_fps=100.0,
        queue=2,
        drop_policy="drop_oldest",
        budget_ms=50.0,
        report=reports.append,
        report_interval=0.2,
    )
    final = worker.run(duration=1.0)
    assert final["v"] == 1 and final["totals"]["frames_executed"] >= 20
    assert final["budget_ms"] == 50.0 and final["target_fps"] == 100.0
    assert len(reports) >= 3  # periodic reports plus the final one
    assert all(r["totals"]["histogram"]["ratio"] == 1.1 for r in reports)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from scripts.make_test_model import write_model

    path: Path = write_model(tmp_path_factory.mktemp("model") / "tiny.onnx", 32, 8)
    return path


def test_generated_model_is_deterministic(tiny_model: Path) -> None:
    from scripts.make_test_model import build_model

    assert build_model(32, 8) == tiny_model.read_bytes()


def test_worker_runs_an_onnx_model_and_writes_its_stats(tiny_model: Path, tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "node_engine.inference.worker",
            "--model",
            str(tiny_model),
            "--target-fps",
            "50",
            "--queue",
            "2",
            "--drop-policy",
            "drop_newest",
            "--budget-ms",
            "200",
            "--duration",
            "2.5",
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", STATS_ENV: str(stats_file), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(stats_file.read_text())
    assert doc["v"] == 1 and doc["model"] == "tiny.onnx" and doc["drop_policy"] == "drop_newest"
    assert doc["totals"]["frames_executed"] >= 60  # 50 fps for 2.5 s, generous
    assert doc["totals"]["budget_violations"] <= doc["totals"]["frames_executed"]
    stats = parse_stats(doc)
    assert stats is not None and stats.budget_ms == 200.0
    assert "stopped:" in done.stderr and "frames executed" in done.stderr


def test_worker_reports_to_stdout_and_refuses_bad_arguments(tiny_model: Path) -> None:
    base = [sys.executable, "-m", "node_engine.inference.worker", "--model", str(tiny_model)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*base, "--report", "-", "--duration", "1.5", "--target-fps", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(line["v"] == 1 for line in lines)
    bad = subprocess.run(
        [*base, "--target-fps", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    missing = subprocess.run(
        [sys.executable, "-m", "node_engine.inference.worker", "--model", "/nonexistent.onnx"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot load model" in missing.stderr
