"""A tiny cluster join endpoint: ``POST /api/v1/nodes`` on a free loopback port.

It validates the bearer token and the `JoinRequest`, keeps node ids stable for nodes
that present their stored id and secret, creates (or re-keys) the node's MQTT client
through `DynsecAdmin.ensure_node_client`, and answers with a `JoinResponse`.
Knobs for tests: `fail_status` (answer every join with this status, e.g. 503) and
`joins` (every accepted request, in order).
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import SecretStr, ValidationError

from schemas.common import new_id
from schemas.node import JoinRequest, JoinResponse, MqttConnectInfo


class JoinServer:
    """The join endpoint of a fake cluster (stdlib only, one thread)."""

    def __init__(
        self,
        admin: Any,
        broker_host: str,
        broker_port: int,
        *,
        token: str = "join-token",
        cluster_name: str = "test-cluster",
        status_interval_s: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.admin = admin
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.token = token
        self.cluster_name = cluster_name
        self.status_interval_s = status_interval_s
        self.fail_status: int | None = None
        self.nodes: dict[str, str] = {}  # node id -> node secret
        self.joins: list[JoinRequest] = []
        self.responses: list[JoinResponse] = []
        self._lock = threading.Lock()
        server = ThreadingHTTPServer((host, 0), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL to give the node engine as its cluster URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> JoinServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="join-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> JoinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- the endpoint -----

    def handle_join(self, auth: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """Decide one join: (status, JSON body). Public so tests can call it directly."""
        if self.fail_status is not None:
            return self.fail_status, {"detail": "cluster unavailable (test)"}
        if auth != f"Bearer {self.token}":
            return 401, {"detail": "invalid or missing join token"}
        try:
            request = JoinRequest.model_validate_json(body)
        except ValidationError as exc:
            return 422, {"detail": json.loads(exc.json(include_url=False))}
        with self._lock:
            node_id = request.node_id
            if node_id is not None:
                secret = request.node_secret.get_secret_value() if request.node_secret else ""
                known = self.nodes.get(node_id)
                if known is None or not secrets.compare_digest(known, secret):
                    return 403, {"detail": f"unknown node {node_id} or wrong node secret"}
            else:
                node_id = new_id("n")
                self.nodes[node_id] = secrets.token_urlsafe(24)
            password = secrets.token_urlsafe(24)
            creds = self.admin.ensure_node_client(node_id, password)
            response = JoinResponse(
                node_id=node_id,
                node_secret=SecretStr(self.nodes[node_id]),
                cluster_name=self.cluster_name,
                mqtt=MqttConnectInfo(
                    host=self.broker_host,
                    port=self.broker_port,
                    username=creds.username,
                    password=SecretStr(password),
                    client_id=creds.client_id,
                ),
                status_interval_s=self.status_interval_s,
            )
            self.joins.append(request)
            self.responses.append(response)
        return 201, json.loads(response.model_dump_json())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/api/v1/nodes":
                    self._send(404, {"detail": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > 64 * 1024:
                    self._send(413, {"detail": "request too large"})
                    return
                body = self.rfile.read(length)
                try:
                    status, data = outer.handle_join(self.headers.get("Authorization"), body)
                except Exception as exc:  # surface harness bugs as 500s, not hangs
                    status, data = 500, {"detail": f"{type(exc).__name__}: {exc}"}
                self._send(status, data)

            def _send(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
