"""Run Mosquitto as a child process and wait until it serves authenticated clients."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from cluster_orchestrator.broker_config import BrokerFiles, find_mosquitto_binary
from cluster_orchestrator.broker_dynsec import DynsecAdmin, DynsecConnectError

__all__ = ["BrokerStartError", "MosquittoProcess", "find_free_port"]

STDERR_FILE_NAME = "mosquitto.stderr"


class BrokerStartError(RuntimeError):
    """Mosquitto did not come up; the message carries the tail of its log."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- mosquitto log (tail) ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail

    @property
    def address_in_use(self) -> bool:
        """True if the listener port was taken (worth retrying on another port)."""
        return "address already in use" in self.log_tail.lower()


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (racy by nature)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, offset: int = 0, max_lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


class MosquittoProcess:
    """A ``mosquitto -c <config>`` child process.

    ``start()`` returns once the broker has logged that it is running *and* accepted
    an authenticated connection of the dynsec admin, or raises
    :class:`BrokerStartError` (with the log tail) when the deadline passes or the
    process exits (for example because the port is in use). ``stop()`` sends SIGTERM
    (mosquitto saves its persistence file then) and SIGKILL after a deadline.
    """

    def __init__(
        self,
        files: BrokerFiles,
        *,
        admin_username: str,
        admin_password: str,
        binary: str | os.PathLike[str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        connect_host: str | None = None,
    ) -> None:
        self.files = files
        self.admin_username = admin_username
        self._admin_password = admin_password
        self._binary = find_mosquitto_binary(binary)
        self._tls_context = tls_context
        # A listener on 0.0.0.0/:: is reached through loopback.
        if connect_host is None:
            connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
                files.host, files.host
            )
        self._connect_host = connect_host
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._log_offset = 0

    # ----- properties -----

    @property
    def host(self) -> str:
        """Address clients should connect to."""
        return self._connect_host

    @property
    def port(self) -> int:
        """Listener port."""
        return self.files.port

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_lines: int = 40) -> str:
        """Last lines of this run's broker log and stderr."""
        parts = [
            _tail(self.files.log_file, self._log_offset, max_lines),
            _tail(self.files.directory / STDERR_FILE_NAME, 0, max_lines),
        ]
        return "\n".join(p for p in parts if p)

    # ----- lifecycle -----

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        """Start the broker and wait until it accepts the admin, within ``timeout``."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        deadline = time.monotonic() + timeout
        log_file = self.files.log_file
        self._log_offset = log_file.stat().st_size if log_file.exists() else 0
        stderr_path = self.files.directory / STDERR_FILE_NAME
        # Private: the log and the persistence file name clients, topics and queued
        # commands. umask 0077 below makes everything mosquitto creates 0600 too.
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        self._stderr = os.fdopen(fd, "wb")
        self._proc = subprocess.Popen(
            [str(self._binary), "-c", str(self.files.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.files.directory,
            # Its own process group: a Ctrl-C in the terminal goes to the parent,
            # which stops the broker last, in order.
            start_new_session=True,
            umask=0o077,
        )
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        delay = 0.005
        logged_running = False
        last_error: Exception | None = None
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerStartError(
                    f"mosquitto exited with code {code} during startup "
                    f"(config {self.files.config_file})",
                    log_tail=self.log_tail(),
                )
            if not logged_running:
                logged_running = any(
                    "mosquitto version" in line and line.rstrip().endswith(" running")
                    for line in _tail(self.files.log_file, self._log_offset, 200).splitlines()
                )
            if logged_running:
                remaining = deadline - time.monotonic()
                try:
                    self.admin(timeout=max(0.5, min(remaining, 5.0))).close()
                except DynsecConnectError as exc:
                    last_error = exc
                else:
                    if self._proc.poll() is None:
                        return
            if time.monotonic() >= deadline:
                detail = f": {last_error}" if last_error else ""
                raise BrokerStartError(
                    f"mosquitto on {self.host}:{self.port} not ready before the deadline{detail}",
                    log_tail=self.log_tail(),
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def admin(self, timeout: float = 10.0) -> DynsecAdmin:
        """Return a connected :class:`DynsecAdmin` for this broker (caller closes it)."""
        return DynsecAdmin(
            self.host,
            self.port,
            self.admin_username,
            self._admin_password,
            timeout=timeout,
            tls_context=self._tls_context,
        ).connect()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout)
            code = proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def kill(self) -> None:
        """SIGKILL the broker (simulates a crash: no final persistence save)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self, timeout: float = 10.0) -> MosquittoProcess:
        """Stop and start again with the same files."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> MosquittoProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MosquittoProcess(host={self.host!r}, port={self.port}, pid={self.pid})"
