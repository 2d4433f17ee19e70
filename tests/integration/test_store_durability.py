"""Acknowledged SQLite writes survive the writer being killed with SIGKILL.

A real child process writes through the store and acknowledges each write on
stdout after ``put`` returned. The parent collects acknowledgements until it has
enough, kills the child with SIGKILL (no cleanup, no atexit, no close), reopens
the store and checks every acknowledged write, with its content.

What this proves: ``put`` returns only after its transaction is committed to the
database file (WAL), not buffered in the process. It cannot prove power-loss
durability (the OS page cache survives a process kill); that is what
``synchronous=FULL`` is for, and it is checked by the pragma test in the contract
suite.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from store import open_store
from tests.integration._store_writer import document

WRITER = Path(__file__).with_name("_store_writer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
ACKS_WANTED = 200
DEADLINE_S = 60.0


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Forward lines from the child's stdout to a queue; None marks EOF."""
    while True:
        line = stream.readline()
        if not line:
            lines.put(None)
            return
        lines.put(line)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
@pytest.mark.parametrize("query", ["", "?synchronous=normal"], ids=["full", "normal"])
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, query: str) -> None:
    url = f"sqlite://{tmp_path / 'durable.db'}{query}"
    pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    child = subprocess.Popen(
        [sys.executable, str(WRITER), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=REPO_ROOT,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
    reader.start()
    acked: list[int] = []
    eof = False
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(acked) < ACKS_WANTED:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"only {len(acked)} acknowledgements within {DEADLINE_S} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                eof = True
                assert child.stderr is not None
                pytest.fail(f"writer exited early ({child.wait()}): {child.stderr.read()}")
            acked.append(_ack_number(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # Acknowledgements written before the kill may still be in the pipe: they count too.
    reader.join(timeout=30)
    assert not reader.is_alive()
    while not eof:
        line = lines.get_nowait()
        if line is None:
            eof = True
        elif line.endswith("\n"):  # a line cut by the kill is not an acknowledgement
            acked.append(_ack_number(line))
    assert acked == list(range(len(acked)))
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()

    with open_store(url) as store:
        for i in acked:
            assert store.get("docs", f"doc-{i:06d}") == {**document(i), "_version": 1}
        counter = store.get("state", "counter")
        assert counter is not None
        last = acked[-1]
        # The counter may be one step ahead (written, not yet acknowledged), never behind.
        assert counter["last"] >= last
        assert counter["_version"] == counter["last"] + 2
        stored = store.count("docs")
        assert last + 1 <= stored <= last + 2
        # The store is still writable after the crash.
        assert store.put("docs", {"_id": "after-crash"}, expected_version=0) == 1


def _ack_number(line: str) -> int:
    word, number = line.split()
    assert word == "ack", line
    return int(number)
