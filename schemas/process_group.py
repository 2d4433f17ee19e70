"""Signalling process groups, shared by every part that starts and stops processes.

``edgectl local`` (its services and what is left of them), the node engine's native
runtime (a task is a process group) and the test harness (tests/harness/child.py) all
signal whole groups and stop children with "SIGTERM, wait until a deadline, SIGKILL the
group". Stdlib only: the node engine imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

__all__ = ["group_alive", "kill_child", "signal_group", "signal_leader", "stop_child"]


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
