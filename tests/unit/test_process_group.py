"""schemas/process_group.py with real processes: SIGTERM, deadline, SIGKILL the group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from schemas.process_group import (
    group_alive,
    kill_child,
    signal_leader,
    spawn_logged,
    stop_child,
)
from tests.harness.wait import wait_for

IGNORES_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
# a leader that ignores SIGTERM and a member of its group that ignores it too
FAMILY = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    f"child = subprocess.Popen([sys.executable, '-c', {IGNORES_TERM!r}], stdout=sys.stdout)\n"
    "time.sleep(60)\n"
)


def _start(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def test_a_child_that_ends_on_sigterm_needs_no_sigkill() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code, killed = stop_child(proc, 10.0, term_group=False, kill_group=False)
    assert (code, killed) == (-signal.SIGTERM, False)


def test_a_group_that_ignores_sigterm_is_killed_whole_after_the_deadline() -> None:
    proc = _start(FAMILY)
    assert group_alive(proc.pid)
    code, killed = stop_child(proc, 0.3, term_group=True, kill_group=True)
    assert (code, killed) == (-signal.SIGKILL, True)
    wait_for(lambda: not group_alive(proc.pid), 10, "the group member is killed too")


def test_kill_child_of_a_group_and_signal_leader_of_a_gone_leader() -> None:
    proc = _start(FAMILY)
    pgid = proc.pid
    os.kill(proc.pid, signal.SIGKILL)  # the leader dies; its child lives on in the group
    proc.wait(10)
    assert group_alive(pgid)
    signal_leader(pgid, signal.SIGKILL)  # reaches what is left of the group
    wait_for(lambda: not group_alive(pgid), 10, "the orphaned member is killed")
    kill_child(proc, group=True)  # already reaped: nothing to do, no error
    assert proc.returncode == -signal.SIGKILL


REPORTS = (
    "import os, sys\n"
    "print(os.getcwd(), os.environ.get('ONLY'), os.environ.get('HOME'), flush=True)\n"
    "print('pgid', os.getpgid(0) == os.getpid(), 'stdin', sys.stdin.read() == '', flush=True)\n"
    "print('err', file=sys.stderr)\n"
)


def test_spawn_logged_appends_header_and_output_in_its_own_group(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("earlier\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = spawn_logged(
        [sys.executable, "-c", REPORTS],
        log_path=log,
        env={"ONLY": "yes", "PATH": os.environ["PATH"]},
        cwd=work,
        header="--- starts svc\n",
    )
    assert proc.wait(30) == 0
    assert log.read_text().splitlines() == [
        "earlier",
        "--- starts svc",
        f"{work} yes None",
        "pgid True stdin True",
        "err",
    ]


def test_spawn_logged_without_a_session_stays_in_our_group(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    proc = spawn_logged(
        [sys.executable, "-c", "import os; print(os.getpgid(0))"],
        log_path=log,
        env=dict(os.environ),
        cwd=tmp_path,
        new_session=False,
    )
    assert proc.wait(30) == 0
    assert log.read_text().strip() == str(os.getpgid(0))
    assert oct(log.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
