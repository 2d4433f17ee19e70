"""Built-in inference worker: an ONNX model fed at a target frame rate, with a bounded queue.

    python -m node_engine.inference.worker --model M.onnx [--target-fps 30] [--queue 4]
        [--drop-policy drop_oldest|drop_newest] [--budget-ms 100] [--report FILE|-|unix:PATH]
        [--input DIR] [--threads 1] [--duration S]

Three threads: a *source* produces frames on the schedule of a camera at `target_fps`
(synthetic random frames of the model's input shape, or ``.npy`` files from `--input`,
cycled), stamped with the time they were due; the *main* thread takes them from a
bounded queue and runs the model (ONNX Runtime, CPU, `--threads` intra-op threads, 1 by
default so that several workers on a small device do not fight over cores); a
*reporter* writes the figures of the last second to the stats file (see
`node_engine.inference.stats` for the format): frames executed and dropped, end-to-end
latency p50/p95/p99 (from when the frame was due to when its inference finished, so
time spent waiting in the queue counts), budget violations (latency > `--budget-ms`).

Queue full: ``drop_oldest`` throws away the oldest waiting frame (freshness first, what
a live camera pipeline wants); ``drop_newest`` refuses the incoming frame. A source that
falls behind its schedule (CPU starvation) catches up by producing the late frames with
their due times, so an overloaded worker shows high latency and drops; a gap of more than
a second (the task was paused, SIGSTOP) restarts the schedule instead: the frames still
waiting are dropped as stale, and the frames a paused pipeline never saw are not counted.

Report target: a file path (default: ``$EDGE_INFERENCE_STATS`` or
``inference-stats.json`` in the working directory; replaced atomically), ``-`` (one JSON
line per second on stdout), or ``unix:/path`` (one datagram per second to a Unix
datagram socket). SIGTERM/SIGINT stop the worker after a final report.

As a native task of the node engine (the engine reads the stats file on each status
tick into ``TaskStatus.inference``)::

    {"runtime": "native", "priority": 900, "latency_budget_ms": 100,
     "command": ["/opt/edge/venv/bin/python", "-m", "node_engine.inference.worker",
                 "--model", "/opt/models/detector.onnx", "--target-fps", "15",
                 "--budget-ms", "100"]}
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from node_engine.inference.stats import (
    DEFAULT_STATS_FILE,
    FORMAT_VERSION,
    STATS_ENV,
    LatencyHistogram,
    percentile,
    write_stats_file,
)

log = logging.getLogger("node_engine.inference.worker")

DropPolicy = Literal["drop_oldest", "drop_newest"]
RESYNC_GAP_S = 1.0
"""A source further behind its schedule than this restarts the schedule (pause, suspend)."""


# ---------------------------------------------------------------- the queue


@dataclass
class Frame:
    """One frame: its data and when it was due (monotonic seconds)."""

    data: Any
    due: float


class FrameQueue:
    """Bounded FIFO with a drop policy; `put` never blocks, `get` waits."""

    def __init__(self, capacity: int, policy: DropPolicy) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.policy = policy
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Enqueue; when full apply the drop policy. False when `frame` itself was dropped."""
        with self._cond:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                if self.policy == "drop_newest":
                    return False
                self._items.popleft()
            self._items.append(frame)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Frame | None:
        """The oldest frame, waiting up to `timeout`; None on timeout or once closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return None

    def discard_all(self) -> int:
        """Drop every waiting frame (counted as dropped); how many there were."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.dropped += n
            return n

    def close(self) -> None:
        """Wake every waiter; later `get`s return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


# ---------------------------------------------------------------- the figures


@dataclass
class Recorder:
    """Per-window and whole-run figures; `snapshot()` closes a window. Thread safe."""

    budget_ms: float | None
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _latencies: list[float] = field(default_factory=list)
    _executed: int = 0
    _violations: int = 0
    _dropped_seen: int = 0
    total_executed: int = 0
    total_violations: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    _window_start: float | None = None

    def record(self, latency_ms: float) -> None:
        """One frame done, `latency_ms` after it was due."""
        with self._lock:
            self._latencies.append(latency_ms)
            self._executed += 1
            self.total_executed += 1
            self.histogram.add(latency_ms)
            if self.budget_ms is not None and latency_ms > self.budget_ms:
                self._violations += 1
                self.total_violations += 1

    def snapshot(self, dropped_total: int) -> dict[str, Any]:
        """The figures of the window since the previous snapshot, plus the totals."""
        now = self.clock()
        with self._lock:
            lat = sorted(self._latencies)
            executed, violations = self._executed, self._violations
            dropped = max(0, dropped_total - self._dropped_seen)
            self._dropped_seen = dropped_total
            self._latencies = []
            self._executed = self._violations = 0
            start, self._window_start = self._window_start, now
            totals = {
                "frames_executed": self.total_executed,
                "frames_dropped": dropped_total,
                "budget_violations": self.total_violations,
                "histogram": self.histogram.to_dict(),
            }

        def ms(q: float) -> float | None:
            value = percentile(lat, q)
            return round(value, 3) if value is not None else None

        return {
            "window_s": round(now - start, 3) if start is not None else None,
            "frames_executed": executed,
            "frames_dropped": dropped,
            "latency_p50_ms": ms(50),
            "latency_p95_ms": ms(95),
            "latency_p99_ms": ms(99),
            "budget_violations": violations,
            "totals": totals,
        }


# ---------------------------------------------------------------- frames


def synthetic_frames(shape: Sequence[int], seed: int = 0, pool: int = 8) -> Iterator[Any]:
    """Random float32 frames of `shape`, cycling through a small pre-made pool."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = [rng.random(tuple(shape), dtype=np.float32) for _ in range(pool)]
    while True:
        yield from frames


def file_frames(directory: Path, shape: Sequence[int]) -> Iterator[Any]:
    """Frames from ``*.npy`` files in `directory` (sorted, cycled), cast to float32."""
    import numpy as np

    paths = sorted(directory.glob("*.npy"))
    if not paths:
        raise ValueError(f"no .npy files in {directory}")
    frames = []
    for path in paths:
        arr = np.load(path).astype(np.float32)
        if tuple(arr.shape) != tuple(shape):
            try:
                arr = arr.reshape(tuple(shape))
            except ValueError:
                raise ValueError(
                    f"{path.name}: shape {arr.shape} does not fit the model input {tuple(shape)}"
                ) from None
        frames.append(arr)
    while True:
        yield from frames


def model_input(session: Any) -> tuple[str, list[int]]:
    """Name and concrete shape of the model's first input (symbolic dims become 1)."""
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return str(inp.name), shape


def load_session(model: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session limited to `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- reporting


class Reporter:
    """Sends a stats document to a file, stdout or a Unix datagram socket."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._sock: socket.socket | None = None
        if target.startswith("unix:"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, doc: dict[str, Any]) -> None:
        """Deliver one document (errors are logged, never fatal)."""
        try:
            if self._sock is not None:
                self._sock.sendto(json.dumps(doc).encode(), self.target[len("unix:") :])
            elif self.target == "-":
                sys.stdout.write(json.dumps(doc) + "\n")
                sys.stdout.flush()
            else:
                write_stats_file(Path(self.target), doc)
        except OSError as exc:
            log.warning("cannot report to %s: %s", self.target, exc)

    def close(self) -> None:
        """Release the socket, if any."""
        if self._sock is not None:
            self._sock.close()


def default_report_target(environ: dict[str, str] | None = None) -> str:
    """``$EDGE_INFERENCE_STATS`` or ``inference-stats.json`` in the working directory."""
    env = os.environ if environ is None else environ
    return env.get(STATS_ENV) or DEFAULT_STATS_FILE


# ---------------------------------------------------------------- the worker


class Worker:
    """Source, inference loop and reporter; `run()` until `stop()` or the duration ends."""

    def __init__(
        self,
        infer: Callable[[Any], Any],
        frames: Iterator[Any],
        *,
        target_fps: float,
        queue: int,
        drop_policy: DropPolicy,
        budget_ms: float | None,
        report: Callable[[dict[str, Any]], None],
        info: dict[str, Any] | None = None,
        report_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if target_fps <= 0:
            raise ValueError("target fps must be > 0")
        self.infer = infer
        self.frames = frames
        self.period = 1.0 / target_fps
        self.target_fps = target_fps
        self.queue = FrameQueue(queue, drop_policy)
        self.budget_ms = budget_ms
        self.report = report
        self.info = dict(info or {})
        self.report_interval = report_interval
        self.clock = clock
        self.wall = wall
        self.recorder = Recorder(budget_ms, clock)
        self._stop = threading.Event()
        self.started_at = wall()

    def stop(self) -> None:
        """Ask every thread to finish (safe from a signal handler)."""
        self._stop.set()
        self.queue.close()

    def _source(self) -> None:
        due = self.clock()
        while not self._stop.is_set():
            now = self.clock()
            if now - due > RESYNC_GAP_S:
                # paused or suspended: the waiting frames are stale; restart the schedule
                self.queue.discard_all()
                due = now
            while due <= now and not self._stop.is_set():
                self.queue.put(Frame(next(self.frames), due))
                due += self.period
            self._stop.wait(max(0.0, due - self.clock()))

    def _reporter(self) -> None:
        self.recorder.snapshot(0)  # open the first window
        next_at = self.clock() + self.report_interval
        while not self._stop.wait(max(0.0, next_at - self.clock())):
            now = self.clock()
            if now - next_at > RESYNC_GAP_S:
                next_at = now  # paused: do not report a burst of empty windows
            next_at += self.report_interval
            self.report_now()

    def report_now(self) -> dict[str, Any]:
        """Close the current window and send its figures."""
        doc = self.recorder.snapshot(self.queue.dropped)
        doc["totals"]["started_at"] = self.started_at
        doc = {
            "v": FORMAT_VERSION,
            "ts": round(self.wall(), 3),
            "budget_ms": self.budget_ms,
            "target_fps": self.target_fps,
            "queue": self.queue.capacity,
            "drop_policy": self.queue.policy,
            "queued": len(self.queue),
            "pid": os.getpid(),
            **self.info,
            **doc,
        }
        self.report(doc)
        return doc

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Run until stopped (or for `duration` seconds); returns the final report."""
        threads = [
            threading.Thread(target=self._source, name="source", daemon=True),
            threading.Thread(target=self._reporter, name="reporter", daemon=True),
        ]
        for t in threads:
            t.start()
        end = None if duration is None else self.clock() + duration
        try:
            while not self._stop.is_set():
                if end is not None and self.clock() >= end:
                    break
                frame = self.queue.get(timeout=0.2)
                if frame is None:
                    continue
                self.infer(frame.data)
                self.recorder.record((self.clock() - frame.due) * 1000.0)
        finally:
            self.stop()
            for t in threads:
                t.join(timeout=5.0)
        return self.report_now()


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m node_engine.inference.worker",
        description="Run an ONNX model on frames at a target rate and report latency figures.",
    )
    parser.add_argument("--model", required=True, type=Path, help="the .onnx model file")
    parser.add_argument("--target-fps", type=float, default=30.0, help="frames per second")
    parser.add_argument("--queue", type=int, default=4, help="frames waiting at most")
    parser.add_argument(
        "--drop-policy", choices=("drop_oldest", "drop_newest"), default="drop_oldest"
    )
    parser.add_argument("--budget-ms", type=float, default=None, help="latency budget (ms)")
    parser.add_argument(
        "--report",
        default=None,
        help=f"stats file, '-' (stdout) or unix:/path (default: ${STATS_ENV} or "
        f"{DEFAULT_STATS_FILE})",
    )
    parser.add_argument("--input", type=Path, default=None, help="directory of .npy frames")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 for bad arguments or a model that cannot be loaded."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if (
        args.target_fps <= 0
        or args.queue < 1
        or (args.budget_ms is not None and args.budget_ms <= 0)
    ):
        print("worker: --target-fps and --budget-ms must be > 0, --queue >= 1", file=sys.stderr)
        return 2
    try:
        session = load_session(args.model, args.threads)
    except Exception as exc:
        print(f"worker: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    name, shape = model_input(session)
    try:
        frames = (
            file_frames(args.input, shape) if args.input else synthetic_frames(shape, args.seed)
        )
        next(frames)  # fail early on unreadable input
    except (OSError, ValueError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2

    def infer(data: Any) -> Any:
        return session.run(None, {name: data})

    reporter = Reporter(args.report or default_report_target())
    worker = Worker(
        infer,
        frames,
        target_fps=args.target_fps,
        queue=args.queue,
        drop_policy=args.drop_policy,
        budget_ms=args.budget_ms,
        report=reporter.send,
        info={"model": args.model.name[:128]},
    )

    def on_signal(signum: int, frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "inference worker: model %s input %s %s, %.1f fps, queue %d (%s), budget %s ms, "
        "report to %s",
        args.model,
        name,
        shape,
        args.target_fps,
        args.queue,
        args.drop_policy,
        args.budget_ms,
        reporter.target,
    )
    try:
        final = worker.run(args.duration)
    finally:
        reporter.close()
    totals = final["totals"]
    log.info(
        "stopped: %d frames executed, %d dropped, %d over budget",
        totals["frames_executed"],
        totals["frames_dropped"],
        totals["budget_violations"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
