"""The node engine's Docker Engine API client against a scripted HTTP server on a unix
socket (framing edge cases, errors, keep-alive) and its pure helpers.

The same client against the real Docker engine: tests/integration/test_docker_api.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node_engine.runtimes.docker import since_param
from node_engine.runtimes.docker_api import (
    MAX_API_VERSION,
    DockerClient,
    DockerError,
    DockerUnreachable,
    Endpoint,
    NotFound,
    connect_error,
    error_message,
    iter_json_lines,
    iter_multiplexed,
    iter_raw_lines,
    negotiate,
    parse_docker_host,
    parse_repository_tag,
    registry_auth,
    registry_of,
    tls_from_env,
    tls_wanted,
)

# ---------------------------------------------------------------- a scripted server


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Reply = bytes | Callable[[socket.socket], None]


@dataclass
class Server:
    """Answers each request on a unix socket with `handler(request)` (raw HTTP bytes, or
    a function writing to the socket itself); counts connections."""

    path: Path
    handler: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    close_after_each: bool = False

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _version = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = f.readline().decode()
                    if h in ("\r\n", "\n", ""):
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", "0") or 0))
                req = Request(method, target, headers, body)
                self.requests.append(req)
                reply = self.handler(req)
                if callable(reply):
                    reply(conn)
                    return
                conn.sendall(reply)
                if self.close_after_each:
                    return
        except OSError:
            return
        finally:
            f.close()
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def response(
    status: int = 200,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    chunks: list[bytes] | None = None,
) -> bytes:
    """A raw HTTP/1.1 response: with Content-Length, or chunked (`chunks`)."""
    head = [f"HTTP/1.1 {status} X"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    if chunks is not None:
        head.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def ping_reply(version: str = "1.41") -> bytes:
    return response(200, b"OK", {"Api-Version": version, "Content-Type": "text/plain"})


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, DockerClient]]]:
    made: list[tuple[Server, DockerClient]] = []

    def make(handler: Callable[[Request], Reply], **kw: object) -> tuple[Server, DockerClient]:
        path = tmp_path / f"d{len(made)}.sock"
        server = Server(path, handler)
        for k, v in kw.items():
            setattr(server, k, v)
        client = DockerClient(f"unix://{path}", timeout=2.0)
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        client.close()
        server.close()


def routes(table: dict[str, Reply]) -> Callable[[Request], Reply]:
    """Answer by the first key that the request's `METHOD path` starts with."""

    def handler(req: Request) -> Reply:
        if req.target == "/_ping":
            return ping_reply()
        key = f"{req.method} {req.target}"
        for prefix, reply in table.items():
            if key.startswith(prefix):
                return reply
        return response(404, b'{"message": "no route for ' + key.encode() + b'"}')

    return handler


# ---------------------------------------------------------------- framing over HTTP


def test_chunked_log_stream_with_frames_split_across_chunks(serve) -> None:
    frames = frame(1, b"2024-01-01T00:00:00.000000001Z out 1\n") + frame(
        2, b"2024-01-01T00:00:00.000000002Z err 1\n"
    )
    frames += frame(1, b"x" * 70000)  # bigger than one read
    # cut everywhere: inside a header, right after one, inside a payload
    cuts = [0, 3, 8, 20, 45, 46, 51, 80, 200, 40000, len(frames)]
    chunks = [frames[a:b] for a, b in itertools.pairwise(cuts)]
    ctype = {"Content-Type": "application/vnd.docker.multiplexed-stream"}
    server, client = serve(
        routes({"GET /v1.41/containers/c1/logs": response(200, headers=ctype, chunks=chunks)})
    )
    got = list(client.logs("c1", timestamps=True, tail=10, since="12.000001"))
    assert got == [
        b"2024-01-01T00:00:00.000000001Z out 1\n",
        b"2024-01-01T00:00:00.000000002Z err 1\n",
        b"x" * 70000,
    ]
    target = server.requests[-1].target
    assert target.startswith("/v1.41/containers/c1/logs?")
    assert "stdout=1" in target and "stderr=1" in target and "timestamps=1" in target
    assert "follow=0" in target and "tail=10" in target and "since=12.000001" in target


def test_raw_stream_of_a_tty_container_is_split_in_lines(serve) -> None:
    body = b"line 1\nline 2\npartial"
    _server, client = serve(
        routes(
            {
                "GET /v1.41/containers/t/logs": response(
                    200,
                    headers={"Content-Type": "application/vnd.docker.raw-stream"},
                    chunks=[body[:4], body[4:]],
                )
            }
        )
    )
    assert list(client.logs("t", tty=True)) == [b"line 1\n", b"line 2\n", b"partial"]


def test_stream_cut_short_mid_frame(serve) -> None:
    data = frame(1, b"complete\n") + struct.pack(">BxxxL", 1, 100) + b"only part"

    def cut(conn: socket.socket) -> None:  # no length, no chunking: ends with the connection
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + data)

    _server, client = serve(routes({"GET /v1.41/containers/c/logs": cut}))
    assert list(client.logs("c")) == [b"complete\n", b"only part"]


def test_keep_alive_connection_is_reused_and_a_stale_one_replaced(serve) -> None:
    info = json.dumps({"Id": "abc", "State": {"Status": "running"}}).encode()
    server, client = serve(routes({"GET /v1.41/containers/abc/json": response(200, info)}))
    for _ in range(5):
        assert client.inspect("abc")["Id"] == "abc"
    assert server.connections == 1  # ping + 5 inspects over one connection
    server.close_after_each = True  # the daemon drops idle connections
    client.inspect("abc")  # the pooled one is now stale: retried on a fresh one
    assert client.inspect("abc")["Id"] == "abc"
    assert len(server.requests) == 8 and server.connections == 2


def test_request_lost_on_a_kept_connection_is_retried_once_on_a_new_one(serve) -> None:
    info = json.dumps({"Id": "abc"}).encode()
    seen = []

    def handler(req: Request) -> Reply:
        seen.append(req.target)
        if req.target == "/_ping":
            return ping_reply()
        if len(seen) == 3:  # the daemon goes away with this request unanswered
            return lambda conn: None  # (the connection is closed without an answer)
        return response(200, info)

    server, client = serve(handler)
    client.inspect("abc")
    assert client.inspect("abc")["Id"] == "abc"  # lost once, retried on a fresh connection
    assert len(seen) == 4 and server.connections == 2
    # a fresh connection that loses its request is not retried: a readable error
    _, other = serve(lambda req: lambda conn: None)
    with pytest.raises(DockerUnreachable, match="closed the connection"):
        other.ping()


def test_api_version_negotiated_once_from_ping(serve) -> None:
    def handler(req: Request) -> Reply:
        if req.target == "/_ping":
            return ping_reply("1.99")
        return response(200, b"[]")

    server, client = serve(handler)
    assert client.containers(labels=["edge.engine=e1", "edge.managed=true"]) == []
    assert client.api_version == MAX_API_VERSION  # the daemon is newer than what we speak
    list_call = server.requests[-1].target
    assert list_call.startswith(f"/v{MAX_API_VERSION}/containers/json?all=1&filters=")
    assert [r.target for r in server.requests].count("/_ping") == 1


def test_too_old_daemon_is_refused(serve) -> None:
    _server, client = serve(lambda req: ping_reply("1.12"))
    with pytest.raises(DockerError, match=r"API 1.12 is too old: the node engine needs 1.25"):
        client.ping()


# ---------------------------------------------------------------- errors


def test_http_errors_carry_the_daemons_message(serve) -> None:
    _server, client = serve(
        routes(
            {
                "GET /v1.41/containers/gone/json": response(
                    404, b'{"message": "No such container: gone"}'
                ),
                "POST /v1.41/containers/c/pause": response(
                    409, b'{"message": "Container c is not running"}'
                ),
                "GET /v1.41/images/x/json": response(500, b"plain text failure\n"),
            }
        )
    )
    with pytest.raises(NotFound, match="No such container: gone") as nf:
        client.inspect("gone")
    assert nf.value.status == 404
    with pytest.raises(DockerError, match="Container c is not running") as conflict:
        client.pause("c")
    assert conflict.value.status == 409 and not isinstance(conflict.value, NotFound)
    with pytest.raises(DockerError, match="plain text failure"):
        client.image_inspect("x")


def test_pull_error_in_the_progress_stream(serve) -> None:
    progress = [
        b'{"status": "Pulling from library/x"}\n{"status": "Wai',
        b'ting"}\n',
        b'{"errorDetail": {"message": "manifest unknown"}, "error": "manifest unknown"}\n',
    ]
    server, client = serve(routes({"POST /v1.41/images/create": response(200, chunks=progress)}))
    with pytest.raises(DockerError, match="manifest unknown"):
        client.pull("registry.example:5000/x", "1")
    assert "fromImage=registry.example%3A5000%2Fx&tag=1" in server.requests[-1].target


def test_no_socket_and_refused(tmp_path: Path) -> None:
    client = DockerClient(f"unix://{tmp_path}/none.sock", timeout=1.0)
    with pytest.raises(DockerUnreachable, match="No such file or directory") as exc:
        client.ping()
    assert f"no Docker engine socket at {tmp_path}/none.sock" in str(exc.value)
    dead = tmp_path / "dead.sock"  # a socket file nobody listens on
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(DockerUnreachable, match=r"connection refused by unix://.*is dockerd"):
        DockerClient(f"unix://{dead}", timeout=1.0).ping()


def test_daemon_that_does_not_answer_times_out(serve) -> None:
    stop = threading.Event()

    def hang(conn: socket.socket) -> None:
        stop.wait(5)

    _server, client = serve(routes({"GET /v1.41/containers/slow/json": hang}))
    client.timeout = 0.3
    t0 = time.monotonic()
    with pytest.raises(DockerError, match=r"did not answer GET /containers/slow/json within 0.3 s"):
        client.inspect("slow")
    assert time.monotonic() - t0 < 3
    stop.set()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_names_the_cause(tmp_path: Path) -> None:
    # A real permission error: a forked child drops to `nobody` and asks a root-only socket.
    sock_path = tmp_path / "root-only.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))
    s.listen(1)
    os.chmod(sock_path, 0o600)
    os.chmod(tmp_path, 0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        text = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            DockerClient(f"unix://{sock_path}", timeout=1.0).ping()
        except DockerError as exc:
            text = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            text = f"unexpected {exc!r}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    s.close()
    assert got.startswith("DockerUnreachable: permission denied on unix://"), got
    assert "Permission denied" in got and "docker group" in got


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("value", "endpoint", "https"),
    [
        (None, Endpoint("unix", "/var/run/docker.sock"), False),
        ("", Endpoint("unix", "/var/run/docker.sock"), False),
        (
            "unix:///run/user/1000/docker.sock",
            Endpoint("unix", "/run/user/1000/docker.sock"),
            False,
        ),
        ("unix://run/docker.sock", Endpoint("unix", "/run/docker.sock"), False),
        ("tcp://10.0.0.2:2375", Endpoint("tcp", "10.0.0.2", 2375), False),
        ("10.0.0.2:2376", Endpoint("tcp", "10.0.0.2", 2376), False),
        ("https://dock.example:2376", Endpoint("tcp", "dock.example", 2376), True),
        ("tcp://[::1]:2375", Endpoint("tcp", "::1", 2375), False),
    ],
)
def test_parse_docker_host(value: str | None, endpoint: Endpoint, https: bool) -> None:
    assert parse_docker_host(value) == (endpoint, https)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ssh://me@host", "ssh:// and npipe:// are not supported"),
        ("npipe:////./pipe/docker_engine", "not supported"),
        ("tcp://host", "a port is required"),
        ("tcp://host:2375/path", "no path or query allowed"),
        ("tcp://host:port", "invalid DOCKER_HOST"),
    ],
)
def test_bad_docker_host(value: str, message: str) -> None:
    with pytest.raises(DockerError, match=message):
        parse_docker_host(value)


def test_tls_from_env_follows_the_sdk(tmp_path: Path) -> None:
    assert tls_from_env({}) is None
    assert tls_from_env({"DOCKER_TLS_VERIFY": ""}) is None
    tls = tls_from_env({"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    assert tls is not None and tls.verify and tls.ca == tmp_path / "ca.pem"
    assert tls.cert == tmp_path / "cert.pem" and tls.key == tmp_path / "key.pem"
    only_certs = tls_from_env({"DOCKER_CERT_PATH": str(tmp_path)})
    assert only_certs is not None and not only_certs.verify
    assert tls_wanted({"DOCKER_HOST": "https://h:2376"})
    assert not tls_wanted({"DOCKER_HOST": "unix:///var/run/docker.sock"})


def test_from_env() -> None:
    env = {"DOCKER_HOST": "tcp://127.0.0.1:1", "DOCKER_API_VERSION": "1.40"}
    client = DockerClient.from_env(env, timeout=3)
    assert client.base_url == "tcp://127.0.0.1:1" and client.timeout == 3
    assert client.api_version == "1.40"  # pinned: no negotiation
    assert client.tls is None


def test_tls_client_reports_missing_certificates(tmp_path: Path) -> None:
    env = {
        "DOCKER_HOST": "tcp://127.0.0.1:1",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    client = DockerClient.from_env(env, timeout=1)
    with pytest.raises(DockerError, match=r"TLS client certificate .*cert.pem.* not found"):
        client.ping()


@pytest.mark.parametrize(
    ("server", "pinned", "chosen"),
    [
        ("1.41", None, "1.41"),
        ("1.47", None, "1.47"),
        ("1.51", None, MAX_API_VERSION),
        ("1.9", "1.30", "1.30"),
        (None, None, "1.25"),
    ],
)
def test_negotiate(server: str | None, pinned: str | None, chosen: str) -> None:
    assert negotiate(server, pinned) == chosen


def test_multiplexed_edge_cases() -> None:
    data = frame(1, b"a") + frame(2, b"") + frame(3, b"system error") + b"\x01\x00"
    assert list(iter_multiplexed(io.BytesIO(data))) == [b"a", b"system error"]
    assert list(iter_multiplexed(io.BytesIO(b""))) == []


def test_raw_and_json_lines() -> None:
    assert list(iter_raw_lines(io.BytesIO(b"a\nb\n"), chunk=1)) == [b"a\n", b"b\n"]
    docs = list(iter_json_lines(io.BytesIO(b'{"a": 1}\nnot json\n\n[1]\n{"b": 2}'), chunk=3))
    assert docs == [{"a": 1}, {"b": 2}]


def test_error_message() -> None:
    assert error_message(404, b'{"message": "No such image: x"}') == "No such image: x"
    assert error_message(500, b"boom\n") == "boom"
    assert error_message(502, b"") == "HTTP 502 Bad Gateway"


def test_connect_error_texts() -> None:
    ep = Endpoint("unix", "/var/run/docker.sock")
    assert "is dockerd installed" in connect_error(ep, FileNotFoundError(2, "No such file"))
    assert "docker group" in connect_error(ep, PermissionError(13, "Permission denied"))
    assert "is dockerd running" in connect_error(ep, ConnectionRefusedError(111, "refused"))
    assert "in time" in connect_error(Endpoint("tcp", "h", 1), TimeoutError())


@pytest.mark.parametrize(
    ("image", "repo", "tag"),
    [
        ("busybox", "busybox", None),
        ("busybox:1.36", "busybox", "1.36"),
        ("localhost:5000/app", "localhost:5000/app", None),
        ("localhost:5000/app:2", "localhost:5000/app", "2"),
        ("ghcr.io/o/app@sha256:abc", "ghcr.io/o/app", "sha256:abc"),
    ],
)
def test_parse_repository_tag(image: str, repo: str, tag: str | None) -> None:
    assert parse_repository_tag(image) == (repo, tag)


def test_registry_auth_from_config(tmp_path: Path) -> None:
    assert registry_of("busybox") == "docker.io" and registry_of("a/b") == "docker.io"
    assert registry_of("ghcr.io/o/x") == "ghcr.io" and registry_of("localhost/x") == "localhost"
    token = base64.b64encode(b"me:s3cret").decode()
    config = {
        "auths": {
            "https://ghcr.io": {"auth": token},
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    header = registry_auth("ghcr.io/o/x", tmp_path)
    assert header is not None
    doc = json.loads(base64.urlsafe_b64decode(header))
    assert doc == {"username": "me", "password": "s3cret", "serveraddress": "ghcr.io"}
    hub = json.loads(base64.urlsafe_b64decode(registry_auth("library/busybox", tmp_path) or ""))
    assert hub["username"] == "hub" and hub["serveraddress"] == "https://index.docker.io/v1/"
    assert registry_auth("quay.io/x", tmp_path) is None
    assert registry_auth("x", tmp_path / "missing") is None


def test_pull_sends_registry_auth(serve, tmp_path: Path) -> None:
    token = base64.b64encode(b"me:pw").decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"reg.local:5000": {"auth": token}}})
    )
    server, client = serve(
        routes({"POST /v1.41/images/create": response(200, chunks=[b'{"status": "done"}\n'])})
    )
    client.config_dir = tmp_path
    client.pull("reg.local:5000/app", "1")
    sent = server.requests[-1].headers["x-registry-auth"]
    assert json.loads(base64.urlsafe_b64decode(sent))["username"] == "me"


def test_since_param_is_exact() -> None:
    # the cursor's nanoseconds -> one microsecond earlier, as seconds.fraction
    assert since_param(1_700_000_000_123_456_789) == "1700000000.123455"
    assert since_param(5_000) == "0.000004"
