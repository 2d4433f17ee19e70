"""A small client for the Docker Engine API: the part the docker runtime uses, stdlib only.

Why: the Docker SDK (docker-py) brings requests, urllib3, idna, charset-normalizer and
``ssl`` into the engine, about 8 MB of RSS on a device whose whole budget is 40 MB
(docs/benchmarks.md, "Node engine footprint"). This module speaks HTTP/1.1 with
``http.client`` over the daemon's unix socket (or TCP), which the engine already loads
for its join request, and imports ``ssl`` only for a TLS endpoint.

Endpoints (`DockerClient.from_env`, the SDK's rules): ``DOCKER_HOST`` = ``unix:///path``
(default ``unix:///var/run/docker.sock``), ``tcp://host:port`` (``http://``/``https://``
are accepted as aliases); TLS when ``DOCKER_TLS_VERIFY`` is set to a non-empty value (the
server certificate is verified against ``ca.pem``) or ``DOCKER_CERT_PATH`` is set (client
certificate only, no verification, as the SDK did), with ``ca.pem``, ``cert.pem`` and
``key.pem`` from ``DOCKER_CERT_PATH`` (default ``~/.docker``). Not supported (the SDK
had them): ``ssh://`` hosts and Windows named pipes; forward an ssh host's socket with
``ssh -L`` instead.

API version: negotiated once, from the ``Api-Version`` header of ``GET /_ping``: the
lower of the daemon's version and `MAX_API_VERSION` (1.47); a daemon older than
`MIN_API_VERSION` (1.25, the first with ``NanoCpus``) is refused with a readable error.
``DOCKER_API_VERSION`` pins a version instead (as for the docker CLI).

Registry credentials for pulls: ``auths`` entries of ``$DOCKER_CONFIG/config.json`` (or
``~/.docker/config.json``) and its ``credHelpers``/``credsStore`` programs
(``docker-credential-<name> get``), as the SDK used them.

Errors are `DockerError`s with one readable line (`str(exc)`): the daemon's own
message for HTTP errors (`NotFound` for 404), and for connection failures what failed
and the likely cause (no socket, permission denied, daemon down, timeout).

Thread safety: any number of threads may use one client; each request takes an idle
keep-alive connection (or opens one) and gives it back when its response is read.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_UNIX_SOCKET = "unix:///var/run/docker.sock"
MIN_API_VERSION = "1.25"
MAX_API_VERSION = "1.47"
DEFAULT_TIMEOUT_S = 30.0
MAX_IDLE_CONNECTIONS = 4
_INDEX_SERVER = "https://index.docker.io/v1/"
_HEADER = struct.Struct(">BxxxL")
DEFAULT = -1.0
"""`timeout` argument meaning the client's own timeout (None: wait forever)."""


class DockerError(Exception):
    """A Docker API call failed; `str()` is one readable line, `status` the HTTP status
    (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.explanation = message


class NotFound(DockerError):
    """HTTP 404: no such container or image."""


class DockerUnreachable(DockerError):
    """No connection to the daemon (no socket, permission denied, refused, timeout)."""


@dataclass(frozen=True)
class TLSFiles:
    """Client TLS material: `verify` checks the daemon's certificate against `ca`."""

    ca: Path
    cert: Path
    key: Path
    verify: bool


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: a unix socket path, or a TCP host and port."""

    scheme: str  # "unix" or "tcp"
    address: str  # socket path, or host
    port: int = 0

    def __str__(self) -> str:
        return (
            f"unix://{self.address}"
            if self.scheme == "unix"
            else f"tcp://{self.address}:{self.port}"
        )


def parse_docker_host(value: str | None) -> tuple[Endpoint, bool]:
    """``DOCKER_HOST`` -> (endpoint, https alias given); DockerError when unusable."""
    text = (value or "").strip()
    if not text or text == "unix://":
        return Endpoint("unix", DEFAULT_UNIX_SOCKET[len("unix://") :]), False
    if "://" not in text:
        text = "tcp://" + text
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("unix", "http+unix"):
        path = rest if rest.startswith("/") else "/" + rest
        return Endpoint("unix", path.rstrip("/") or "/"), False
    if scheme in ("tcp", "http", "https"):
        parsed = urllib.parse.urlsplit("//" + rest)
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise DockerError(f"invalid DOCKER_HOST {value!r}: no path or query allowed")
        try:
            port = parsed.port
        except ValueError as exc:
            raise DockerError(f"invalid DOCKER_HOST {value!r}: {exc}") from None
        if not port:
            raise DockerError(f"invalid DOCKER_HOST {value!r}: a port is required")
        return Endpoint("tcp", parsed.hostname or "127.0.0.1", port), scheme == "https"
    raise DockerError(
        f"unsupported DOCKER_HOST {value!r}: use unix:///path or tcp://host:port "
        "(ssh:// and npipe:// are not supported by the node engine)"
    )


def tls_from_env(environ: Mapping[str, str]) -> TLSFiles | None:
    """The SDK's rule: TLS if DOCKER_TLS_VERIFY is non-empty or DOCKER_CERT_PATH is set."""
    cert_path = environ.get("DOCKER_CERT_PATH") or None
    verify_raw = environ.get("DOCKER_TLS_VERIFY")
    verify = verify_raw is not None and verify_raw != ""
    if not cert_path and not verify:
        return None
    base = Path(cert_path) if cert_path else Path.home() / ".docker"
    return TLSFiles(base / "ca.pem", base / "cert.pem", base / "key.pem", verify)


def tls_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `DockerClient.from_env` would use TLS (OpenSSL must then stay loadable)."""
    env = os.environ if environ is None else environ
    host = (env.get("DOCKER_HOST") or "").strip().lower()
    return tls_from_env(env) is not None or host.startswith("https://")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.41"`` -> (1, 41); garbage -> (0,)."""
    try:
        return tuple(int(p) for p in version.strip().split("."))
    except ValueError:
        return (0,)


def negotiate(server: str | None, pinned: str | None = None) -> str:
    """The API version to speak: the pinned one, else min(server, MAX_API_VERSION);
    DockerError for a daemon below MIN_API_VERSION."""
    if pinned:
        return pinned
    if not server:
        return MIN_API_VERSION  # very old daemons send no header: try the oldest we speak
    if version_tuple(server) < version_tuple(MIN_API_VERSION):
        raise DockerError(
            f"docker engine API {server} is too old: the node engine needs {MIN_API_VERSION}+"
        )
    return server if version_tuple(server) < version_tuple(MAX_API_VERSION) else MAX_API_VERSION


# ---------------------------------------------------------------- stream decoding


def _read_exact(fp: IO[bytes], n: int) -> bytes:
    """Up to `n` bytes (fewer only at the end of the stream)."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = fp.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def iter_multiplexed(fp: IO[bytes]) -> Iterator[bytes]:
    """Payloads of a multiplexed stream (8-byte header: stream type, 3 zero bytes, big
    endian length), one per frame; a frame cut short by the end of the stream yields what
    arrived. Stream types (stdin 0, stdout 1, stderr 2, system error 3) are not kept:
    the runtime reads stdout and stderr together."""
    while True:
        header = _read_exact(fp, _HEADER.size)
        if len(header) < _HEADER.size:
            return  # end of stream (a torn header carries no data)
        _stream, size = _HEADER.unpack(header)
        if size == 0:
            continue
        data = _read_exact(fp, size)
        if data:
            yield data
        if len(data) < size:
            return


def iter_raw_lines(fp: IO[bytes], chunk: int = 65536) -> Iterator[bytes]:
    """Lines (with their newline) of a raw stream (a TTY container's logs)."""
    pending = b""
    while True:
        data = fp.read(chunk)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def iter_json_lines(fp: IO[bytes], chunk: int = 65536) -> Iterator[dict[str, Any]]:
    """Objects of a JSON-lines progress stream (image pull); bad lines are skipped."""
    for line in iter_raw_lines(fp, chunk):
        text = line.strip()
        if not text:
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc


def error_message(status: int, body: bytes) -> str:
    """The daemon's message of an error answer (JSON ``message``, else the text)."""
    text = body.decode(errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"]).strip()
    return text[:500] or f"HTTP {status} {http.client.responses.get(status, '')}".strip()


def connect_error(endpoint: Endpoint, exc: OSError) -> str:
    """A readable line for a failed connection (what, where, the likely cause)."""
    where = str(endpoint)
    if isinstance(exc, FileNotFoundError):
        return (
            f"no Docker engine socket at {endpoint.address} ({exc}): "
            "is dockerd installed and running?"
        )
    if isinstance(exc, PermissionError):
        return (
            f"permission denied on {where} ({exc}): run the node engine as root or as a "
            "user in the docker group"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} ({exc}): is dockerd running?"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} in time ({exc or 'timed out'})"
    return f"cannot reach the Docker engine at {where}: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- connections


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix stream socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Stream:
    """A streamed response: iterate it, then `close()` (or let the iterator finish)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: Any) -> None:
        self._conn = conn
        self.response: http.client.HTTPResponse = resp
        self._closed = False

    @property
    def content_type(self) -> str:
        """The response's Content-Type."""
        return str(self.response.getheader("Content-Type") or "")

    def close(self) -> None:
        """Drop the connection (a half-read stream cannot be reused)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self.response.close()
            with contextlib.suppress(Exception):
                self._conn.close()


class DockerClient:
    """The Docker Engine API calls the docker runtime makes (see the module docstring)."""

    def __init__(
        self,
        base_url: str = DEFAULT_UNIX_SOCKET,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: TLSFiles | None = None,
        version: str | None = None,
        config_dir: Path | None = None,
    ) -> None:
        """`base_url` as DOCKER_HOST; `timeout` per socket operation; `version` pins the
        API version (else negotiated); `config_dir` holds config.json (registry auth)."""
        self.endpoint, https = parse_docker_host(base_url)
        if https and tls is None:
            tls = TLSFiles(Path(), Path(), Path(), verify=True)  # system trust store
        self.base_url = str(self.endpoint)
        self.timeout = timeout
        self.tls = tls if self.endpoint.scheme == "tcp" else None
        self._pinned = version
        self._version: str | None = None
        self.config_dir = config_dir
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ssl_context: Any = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> DockerClient:
        """A client for DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH /
        DOCKER_API_VERSION / DOCKER_CONFIG, the rules of the docker CLI and SDK."""
        env = os.environ if environ is None else environ
        config = env.get("DOCKER_CONFIG")
        return cls(
            env.get("DOCKER_HOST") or DEFAULT_UNIX_SOCKET,
            timeout=timeout,
            tls=tls_from_env(env),
            version=env.get("DOCKER_API_VERSION") or None,
            config_dir=Path(config) if config else None,
        )

    # ----- connections

    def _ssl(self) -> Any:
        if self._ssl_context is None:
            from node_engine import lean

            lean.allow_tls()  # OpenSSL may have been kept out of the process until now
            import ssl

            tls = self.tls
            assert tls is not None
            if tls.verify:
                ctx = ssl.create_default_context(
                    cafile=str(tls.ca) if tls.ca != Path() and tls.ca.is_file() else None
                )
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.cert != Path():
                if not tls.cert.is_file() or not tls.key.is_file():
                    raise DockerError(
                        f"TLS client certificate {tls.cert} or key {tls.key} not found "
                        "(DOCKER_CERT_PATH)"
                    )
                ctx.load_cert_chain(str(tls.cert), str(tls.key))
            self._ssl_context = ctx
        return self._ssl_context

    def _new_connection(self, timeout: float | None) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.scheme == "unix":
            return _UnixConnection(ep.address, timeout)
        if self.tls is not None:
            return http.client.HTTPSConnection(
                ep.address, ep.port, timeout=timeout, context=self._ssl()
            )
        return http.client.HTTPConnection(ep.address, ep.port, timeout=timeout)

    def _take(self, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection (one the daemon closed meanwhile is dropped: it
        would read as end of stream), else a new one; and whether it was kept."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new_connection(timeout), False
            sock = conn.sock
            try:
                closed = sock is None or bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                closed = True
            if closed:  # readable while idle: end of stream (or stray bytes): not reusable
                conn.close()
                continue
            conn.timeout = timeout
            sock.settimeout(timeout)
            return conn, True

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (new ones are opened on the next call)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ----- requests

    @property
    def api_version(self) -> str:
        """The API version in use (negotiated on first use)."""
        if self._version is None:
            if self._pinned:
                self._version = self._pinned
            else:
                self.ping()
        assert self._version is not None
        return self._version

    def _path(self, path: str, params: Mapping[str, Any] | None, versioned: bool) -> str:
        prefix = f"/v{self.api_version}" if versioned else ""
        query = ""
        if params:
            query = "?" + urllib.parse.urlencode(
                {k: _param(v) for k, v in params.items() if v is not None}
            )
        return prefix + path + query

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT,
        versioned: bool = True,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and read the answer's head; retried once on a kept-alive
        connection the daemon had closed meanwhile."""
        target = self._path(path, params, versioned)
        wait = self.timeout if timeout == DEFAULT else timeout
        payload: bytes | None = None
        head = dict(headers or {})
        if body is not None:
            payload = json.dumps(body).encode()
            head["Content-Type"] = "application/json"
        elif method in ("POST", "PUT"):
            payload = b""
        for attempt in (0, 1):
            conn, reused = self._take(wait)
            try:
                conn.request(method, target, body=payload, headers=head)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise DockerUnreachable(
                    f"the Docker engine at {self.base_url} closed the connection "
                    f"({method} {path}): {exc}"
                ) from exc
            except DockerError:
                conn.close()
                raise
            except TimeoutError as exc:
                connected = conn.sock is not None
                conn.close()
                if not connected:
                    raise DockerUnreachable(connect_error(self.endpoint, exc)) from exc
                raise DockerError(
                    f"the Docker engine at {self.base_url} did not answer {method} {path} "
                    f"within {wait:g} s"
                    if wait
                    else f"timeout on {method} {path}"
                ) from exc
            except OSError as exc:
                conn.close()
                raise DockerUnreachable(connect_error(self.endpoint, exc)) from exc
            except http.client.HTTPException as exc:
                conn.close()
                raise DockerError(
                    f"bad answer from the Docker engine ({method} {path}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT,
        versioned: bool = True,
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        """One call with the whole answer read: (status, response head, body). HTTP
        errors (>= 400) raise `DockerError` (`NotFound` for 404) with the daemon's message."""
        conn, resp = self._send(
            method,
            path,
            params=params,
            body=body,
            headers=headers,
            timeout=timeout,
            versioned=versioned,
        )
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DockerError(
                f"reading the answer to {method} {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        _raise_for_status(resp.status, data)
        return resp.status, resp, data

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """`request` whose answer is JSON (None for an empty body)."""
        _status, _resp, data = self.request(method, path, **kwargs)
        return json.loads(data) if data.strip() else None

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT,
    ) -> Stream:
        """A call whose answer is read as it comes (logs, pull progress); HTTP errors raise
        before anything is returned. Close the stream when done."""
        conn, resp = self._send(method, path, params=params, headers=headers, timeout=timeout)
        if resp.status >= 400:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            conn.close()
            _raise_for_status(resp.status, data)
        return Stream(conn, resp)

    # ----- the daemon

    def ping(self, timeout: float | None = None) -> str:
        """``GET /_ping``; negotiates the API version; returns it."""
        status, resp, _data = self.request(
            "GET", "/_ping", timeout=self.timeout if timeout is None else timeout, versioned=False
        )
        if status != 200:
            raise DockerError(f"docker ping answered HTTP {status}", status)
        if self._version is None:
            self._version = negotiate(resp.getheader("Api-Version"), self._pinned)
        return self._version

    def version(self) -> dict[str, Any]:
        """``GET /version``: the daemon's versions (Version, ApiVersion, MinAPIVersion...)."""
        doc: dict[str, Any] = self.json("GET", "/version", versioned=False)
        return doc

    # ----- containers

    def containers(
        self, *, all: bool = True, labels: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /containers/json`` with label filters (``key=value`` or ``key``)."""
        params: dict[str, Any] = {"all": all}
        if labels:
            params["filters"] = json.dumps({"label": labels})
        doc: list[dict[str, Any]] = self.json("GET", "/containers/json", params=params)
        return doc

    def create(self, name: str, config: dict[str, Any]) -> str:
        """``POST /containers/create``; the new container's id."""
        doc = self.json("POST", "/containers/create", params={"name": name}, body=config)
        return str(doc["Id"])

    def start(self, container: str) -> None:
        """``POST /containers/{id}/start`` (already started: fine)."""
        self.request("POST", f"/containers/{_q(container)}/start")

    def inspect(self, container: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``: the full state."""
        doc: dict[str, Any] = self.json("GET", f"/containers/{_q(container)}/json")
        return doc

    def stop(self, container: str, timeout_s: int = 10) -> None:
        """``POST /containers/{id}/stop?t=`` (SIGTERM, SIGKILL after t s); the HTTP wait is
        t plus the client timeout, as the SDK's."""
        self.request(
            "POST",
            f"/containers/{_q(container)}/stop",
            params={"t": int(timeout_s)},
            timeout=self.timeout + timeout_s,
        )

    def kill(self, container: str, signal: str = "SIGKILL") -> None:
        """``POST /containers/{id}/kill?signal=``."""
        self.request("POST", f"/containers/{_q(container)}/kill", params={"signal": signal})

    def pause(self, container: str) -> None:
        """``POST /containers/{id}/pause`` (cgroup freezer)."""
        self.request("POST", f"/containers/{_q(container)}/pause")

    def unpause(self, container: str) -> None:
        """``POST /containers/{id}/unpause``."""
        self.request("POST", f"/containers/{_q(container)}/unpause")

    def remove(self, container: str, *, force: bool = False) -> None:
        """``DELETE /containers/{id}?force=`` (volumes kept, as the SDK's default)."""
        self.request("DELETE", f"/containers/{_q(container)}", params={"force": force, "v": False})

    def wait(self, container: str, timeout: float | None = None) -> dict[str, Any]:
        """``POST /containers/{id}/wait``: blocks until the container stops; its
        ``StatusCode`` (and ``Error``)."""
        doc: dict[str, Any] = self.json(
            "POST", f"/containers/{_q(container)}/wait", timeout=timeout
        )
        return doc

    def stats(self, container: str) -> dict[str, Any]:
        """``GET /containers/{id}/stats?stream=0``: one sample (the daemon takes ~1-2 s)."""
        doc: dict[str, Any] = self.json(
            "GET", f"/containers/{_q(container)}/stats", params={"stream": False}
        )
        return doc

    def logs(
        self,
        container: str,
        *,
        timestamps: bool = False,
        tail: int | str = "all",
        since: str | None = None,
        tty: bool = False,
    ) -> Iterator[bytes]:
        """``GET /containers/{id}/logs`` (stdout and stderr, not followed): one item per
        log message (multiplexed frames), or per line for a TTY container. `since` is
        ``<seconds>.<fraction>`` (inclusive). The connection closes when the iterator
        ends or is closed."""
        params = {
            "stdout": True,
            "stderr": True,
            "timestamps": timestamps,
            "follow": False,
            "tail": tail,
            "since": since,
        }
        stream = self.stream("GET", f"/containers/{_q(container)}/logs", params=params)
        return _frames(stream, tty)

    # ----- images

    def image_inspect(self, name: str) -> dict[str, Any]:
        """``GET /images/{name}/json``; `NotFound` when the image is not here."""
        doc: dict[str, Any] = self.json("GET", f"/images/{_q(name)}/json")
        return doc

    def pull(self, repository: str, tag: str) -> None:
        """``POST /images/create?fromImage=&tag=``, progress read to its end; an error the
        daemon reports in the progress stream raises `DockerError` with its text."""
        headers = {}
        auth = registry_auth(repository, self.config_dir)
        if auth is not None:
            headers["X-Registry-Auth"] = auth
        stream = self.stream(
            "POST",
            "/images/create",
            params={"fromImage": repository, "tag": tag},
            headers=headers,
        )
        try:
            for doc in iter_json_lines(stream.response):
                if doc.get("error"):
                    detail = doc.get("errorDetail") or {}
                    raise DockerError(str(detail.get("message") or doc["error"]).strip())
        except (OSError, http.client.HTTPException) as exc:
            raise DockerError(f"pull of {repository}:{tag} interrupted: {exc}") from exc
        finally:
            stream.close()


def _frames(stream: Stream, tty: bool) -> Iterator[bytes]:
    try:
        multiplexed = "multiplexed" in stream.content_type or not tty
        fp: Any = stream.response
        items = iter_raw_lines(fp) if not multiplexed else iter_multiplexed(fp)
        try:
            yield from items
        except (OSError, http.client.HTTPException) as exc:
            raise DockerError(f"reading logs failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stream.close()


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _raise_for_status(status: int, data: bytes) -> None:
    if status < 400:
        return
    message = error_message(status, data)
    if status == 404:
        raise NotFound(message, status)
    raise DockerError(message, status)


# ---------------------------------------------------------------- images and registries


def parse_repository_tag(image: str) -> tuple[str, str | None]:
    """``repo[:tag|@digest]`` -> (repo, tag or digest); a ``host:port/`` prefix is no tag."""
    repo, at, digest = image.rpartition("@")
    if at:
        return repo, digest
    repo, colon, tag = image.rpartition(":")
    if colon and "/" not in tag:
        return repo, tag
    return image, None


def registry_of(repository: str) -> str:
    """The registry host of a repository (``docker.io`` when none is named)."""
    first, slash, _rest = repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _config_path(config_dir: Path | None) -> Path:
    return (config_dir or Path.home() / ".docker") / "config.json"


def _helper_credentials(helper: str, server: str) -> tuple[str, str] | None:
    try:
        done = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=server.encode(),
            capture_output=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            return None
        doc = json.loads(done.stdout)
        return str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def registry_auth(repository: str, config_dir: Path | None = None) -> str | None:
    """The ``X-Registry-Auth`` header for pulling `repository`: from config.json's
    ``auths`` (base64 ``user:password``), ``credHelpers`` or ``credsStore``; None when
    there are no credentials for its registry."""
    try:
        config = json.loads(_config_path(config_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    registry = registry_of(repository)
    server = _INDEX_SERVER if registry == "docker.io" else registry
    names = {registry, server, f"https://{registry}", f"http://{registry}"}
    if registry == "docker.io":
        names |= {"index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"}
    creds: tuple[str, str] | None = None
    helpers = config.get("credHelpers") or {}
    helper = next((helpers[n] for n in names if isinstance(helpers, dict) and n in helpers), None)
    if helper:
        creds = _helper_credentials(str(helper), server)
    if creds is None:
        auths = config.get("auths") or {}
        for key, entry in auths.items() if isinstance(auths, dict) else []:
            host = key.split("://", 1)[-1].split("/", 1)[0]
            if (key in names or host in names or host == registry) and isinstance(entry, dict):
                raw = entry.get("auth")
                if raw:
                    try:
                        user, _, password = base64.b64decode(raw).decode().partition(":")
                    except (ValueError, UnicodeDecodeError):
                        continue
                    creds = (user, password)
                elif entry.get("username"):
                    creds = (str(entry["username"]), str(entry.get("password") or ""))
                if creds:
                    break
    if creds is None and config.get("credsStore"):
        creds = _helper_credentials(str(config["credsStore"]), server)
    if creds is None:
        return None
    doc = {"username": creds[0], "password": creds[1], "serveraddress": server}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
