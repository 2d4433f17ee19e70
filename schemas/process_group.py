"""Starting and signalling process groups, shared by every part that starts and stops
processes.

``edgectl local`` (its services and what is left of them), the node engine's native
runtime (a task is a process group) and the test harness (tests/harness/child.py) all
signal whole groups and stop children with "SIGTERM, wait until a deadline, SIGKILL the
group"; ``edgectl local`` and the test harness start their services with
:func:`spawn_logged`. Stdlib only: the node engine imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "group_alive",
    "kill_child",
    "signal_group",
    "signal_leader",
    "spawn_logged",
    "stop_child",
]


def spawn_logged(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    new_session: bool = True,
    header: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in `cwd` (None: this process's) with exactly `env`, stdin from
    /dev/null and stdout and stderr appended to `log_path` (created with the default
    mode, 0o666 less the umask; `header`, when given, is written first). `new_session`:
    in a session and process group of its own, which the functions below then signal
    as a whole.

    The log's file handle is closed here once the child holds it."""
    with open(log_path, "ab") as out:
        if header is not None:
            out.write(header.encode())
            out.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`; False when the group is gone or not ours."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` still has a member this process may signal."""
    return signal_group(pgid, 0)


def signal_leader(pid: int, sig: int) -> None:
    """Signal the group `pid` leads, or `pid` alone when it leads none; when `pid` is
    gone, what is left of a group it led (a child that outlived it)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except ProcessLookupError:
        signal_group(pid, sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_child(
    popen: subprocess.Popen[bytes],
    timeout: float,
    *,
    term_group: bool,
    kill_group: bool,
    kill_wait: float = 10.0,
) -> tuple[int | None, bool]:
    """SIGTERM `popen` (its whole group when `term_group`), wait `timeout` seconds,
    then SIGKILL (the group when `kill_group`) and wait `kill_wait` more.

    Returns the exit status (None if it did not end even after SIGKILL) and whether
    SIGKILL was needed."""
    if popen.poll() is None:
        if term_group:
            signal_group(popen.pid, signal.SIGTERM)
        else:
            popen.send_signal(signal.SIGTERM)
    try:
        return popen.wait(timeout), False
    except subprocess.TimeoutExpired:
        pass
    kill_child(popen, group=kill_group, wait=kill_wait)
    return popen.returncode, True


def kill_child(popen: subprocess.Popen[bytes], *, group: bool, wait: float = 10.0) -> None:
    """SIGKILL `popen` (its whole group when `group`) if it still runs, and reap it."""
    if popen.poll() is not None:
        return
    if group:
        signal_group(popen.pid, signal.SIGKILL)
    else:
        popen.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(wait)
