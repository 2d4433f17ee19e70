"""The floor of a deploy: the same path as the system's, with trivial handlers.

HTTP POST -> MQTT publish -> fork/exec -> ack -> event, as real processes on loopback:

* a Mosquitto (anonymous on loopback, ``set_tcp_nodelay true``, no persistence);
* ``floor root``: a FastAPI app under uvicorn (as the root runs): ``POST /api/v1/jobs``
  publishes a command (QoS 1) and answers 201 with an id; a paho client takes the
  node's ack (QoS 1) and puts an ``instance.state`` RUNNING event on the live stream
  ``GET /api/v1/events/stream`` (server-sent events, the root's format);
* ``floor node``: a paho client that, per command, starts ``sleep`` with
  ``subprocess.Popen`` (fork/exec) and publishes the ack.

No store, no scheduling, no validation beyond JSON, no second hop (cluster). The
client measures a deploy exactly as `bench.deploy_latency` does (POST -> RUNNING seen
on the stream), so `ratio_p50_to_floor` there compares like with like.

    .venv/bin/python -m bench.floor [--deploys 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

HERE = Path(__file__).resolve().parents[1]

COMMANDS = "floor/commands"
ACKS = "floor/acks"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _paho(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_socket_open = _nodelay
    return client


# ---------------------------------------------------------------------- floor root


def serve_root(port: int, broker_port: int) -> None:
    """The trivial root: POST publishes a command; an ack becomes a stream event."""
    import uvicorn

    subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
    lock = threading.Lock()
    client = _paho(f"floor-root-{os.getpid()}")

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.subscribe(ACKS, qos=1)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        ack = json.loads(msg.payload)
        event = {
            "kind": "instance.state",
            "state": "RUNNING",
            "job_id": ack["id"],
            "ts": time.time(),
        }
        line = f"data: {json.dumps(event)}\n\n"
        with lock:
            subs = list(subscribers)
        for loop, q in subs:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, line)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    app = FastAPI()

    @app.post("/api/v1/jobs", status_code=201)
    async def submit(request: Request) -> JSONResponse:
        body = await request.json()
        job_id = "f" + uuid.uuid4().hex[:16]
        payload = json.dumps({"id": job_id, "command": body.get("command", ["true"])})
        client.publish(COMMANDS, payload, qos=1)
        return JSONResponse({"id": job_id}, status_code=201)

    @app.get("/api/v1/events/stream")
    async def stream() -> StreamingResponse:
        q: asyncio.Queue[str] = asyncio.Queue()
        entry = (asyncio.get_running_loop(), q)
        with lock:
            subscribers.add(entry)

        async def lines() -> Any:
            try:
                yield ": open\n\n"
                while True:
                    yield await q.get()
            finally:
                with lock:
                    subscribers.discard(entry)

        return StreamingResponse(lines(), media_type="text/event-stream")

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------------- floor node


def serve_node(broker_port: int) -> None:
    """The trivial node: each command is one fork/exec and one ack."""
    children: list[subprocess.Popen[bytes]] = []
    client = _paho(f"floor-node-{os.getpid()}")
    done = threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.subscribe(COMMANDS, qos=1)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        command = json.loads(msg.payload)
        proc = subprocess.Popen(
            command["command"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        children.append(proc)
        c.publish(ACKS, json.dumps({"id": command["id"], "pid": proc.pid}), qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    done.wait()
    client.loop_stop()
    for proc in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------------------- the system


class FloorSystem:
    """Mosquitto + floor root + floor node as processes; what `run_mode` needs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker_port = _free_port()
        self.port = _free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> FloorSystem:
        """Start the three processes and wait until the root answers."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "floor-mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            "set_tcp_nodelay true\npersistence false\n"
        )
        self.procs["broker"] = self._spawn([binary, "-c", str(conf)], "broker")
        self._wait_port(self.broker_port, timeout)
        me = [sys.executable, "-m", "bench.floor"]
        self.procs["node"] = self._spawn(
            [*me, "node", "--broker-port", str(self.broker_port)], "node"
        )
        self.procs["root"] = self._spawn(
            [*me, "root", "--port", str(self.port), "--broker-port", str(self.broker_port)], "root"
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"floor root not up: {self.logs()}")
            time.sleep(0.05)

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"floor-{name}.log").open("wb")
        return subprocess.Popen(argv, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def _wait_port(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not open")
            time.sleep(0.02)

    def pids(self) -> dict[str, list[int]]:
        """Process groups as `bench.deploy_latency.cpu_seconds` names them."""
        return {
            "root": [self.procs["root"].pid],
            "broker": [self.procs["broker"].pid],
            "engines": [self.procs["node"].pid],
        }

    @contextlib.contextmanager
    def root_client(
        self, token: str | None = None, timeout: float = 10.0
    ) -> Iterator[httpx.Client]:
        """An HTTP client of the floor root."""
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            yield client

    def job(self, job_id: str) -> dict[str, Any]:
        """No job view here (failure messages show the logs instead)."""
        raise AssertionError(f"floor job {job_id}: no job view")

    def logs(self, lines: int = 20) -> str:
        """The tail of each process's log."""
        out = []
        for name in self.procs:
            path = self.workdir / f"floor-{name}.log"
            with contextlib.suppress(FileNotFoundError):
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(out)

    def close(self) -> None:
        """Stop everything (the node kills its children)."""
        for name in ("root", "node", "broker"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    """`floor root` / `floor node` run the processes; without them, measure the floor."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["root", "node"], default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--broker-port", type=int, default=0)
    parser.add_argument("--deploys", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--modes", default="sequential,concurrent")
    args = parser.parse_args(argv)
    if args.role == "root":
        serve_root(args.port, args.broker_port)
        return 0
    if args.role == "node":
        serve_node(args.broker_port)
        return 0
    from bench.deploy_latency import measure_floor

    result = measure_floor(args.deploys, args.concurrency, args.modes.split(","), 30.0)
    for mode, r in result.items():
        print(
            f"floor {mode:10s}: p50 {r['p50_ms']:.1f}  p95 {r['p95_ms']:.1f}  "
            f"p99 {r['p99_ms']:.1f} ms; CPU ms/deploy {r['cpu_ms_per_deploy']}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    sys.exit(main())
