"""A service under test run as a child process: start with a log file, stop, kill.

The cluster orchestrator and the node engine harnesses (and the root's in
tests/harness/system.py) share this: output appended to one log file per process,
started by `schemas.process_group.spawn_logged` as edgectl local starts its services,
SIGTERM then SIGKILL (`schemas.process_group`, what edgectl and the native runtime use
too), and the log's text for failure messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from schemas.process_group import kill_child, spawn_logged, stop_child


def python_path(repo: Path, inherited: str | None) -> str:
    """A child's PYTHONPATH: `repo` first, then what this process was given (without an
    empty entry, which would put the child's working directory on its path)."""
    return os.pathsep.join(p for p in (str(repo), inherited) if p)


class ChildProcess:
    """One child process whose stdout and stderr go to `log_path` (appended per start)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._own_group = False

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, *, new_session: bool = False
    ) -> None:
        """Start `argv` with stdin from /dev/null and output into the log; `new_session`:
        in a process group of its own, which `kill` then kills as a whole."""
        self._own_group = new_session
        self.proc = spawn_logged(
            argv, log_path=self.log_path, env=env, cwd=cwd, new_session=new_session
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
        """Nothing left to release: `spawn_logged` closes the log's handle at start (kept
        for the callers' sake)."""

    def output(self, tail: int | None = None) -> str:
        """What the process printed (all starts), or its last `tail` lines."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else "\n".join(text.splitlines()[-tail:])
