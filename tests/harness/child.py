"""A service under test run as a child process: start with a log file, stop, kill.

The cluster orchestrator and the node engine harnesses (and the root's in
tests/harness/system.py) share this: output appended to one log file per process,
SIGTERM then SIGKILL (`schemas.process_group`, what edgectl and the native runtime use
too), and the log's text for failure messages.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from schemas.process_group import kill_child, stop_child


class ChildProcess:
    """One child process whose stdout and stderr go to `log_path` (appended per start)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._own_group = False

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, *, new_session: bool = False
    ) -> None:
        """Start `argv` with stdin from /dev/null and output into the log; `new_session`:
        in a process group of its own, which `kill` then kills as a whole."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close()
        self._own_group = new_session
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )

    @property
    def pid(self) -> int:
        """Process id."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (the clean shutdown); `subprocess.TimeoutExpired` if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL (the group if it has its own) after `timeout`. The
        exit status, None if never started."""
        if self.proc is None:
            self._close()
            return None
        code, _ = stop_child(self.proc, timeout, term_group=False, kill_group=self._own_group)
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown code runs); the whole group if it has its own."""
        if self.proc is not None:
            kill_child(self.proc, group=self._own_group)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self, tail: int | None = None) -> str:
        """What the process printed (all starts), or its last `tail` lines."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else "\n".join(text.splitlines()[-tail:])
