"""Process helpers for tests: unique commands and counting what runs."""

from __future__ import annotations

import os
import random

import psutil


def unique_sleep_args(seconds: int = 600) -> list[str]:
    """`sleep N.xxxxxx` with a random fraction, so its processes can be found and counted."""
    return ["sleep", f"{seconds}.{random.randrange(10**5, 10**6)}"]


def find_processes(argv: list[str]) -> list[psutil.Process]:
    """Live processes whose command line is exactly `argv` (wrappers with more args excluded)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, KeyError):
            continue
        if (
            len(cmdline) == len(argv)
            and os.path.basename(cmdline[0]) == os.path.basename(argv[0])
            and cmdline[1:] == argv[1:]
        ):
            found.append(proc)
    return found


def count_processes(argv: list[str]) -> int:
    """How many live processes run exactly `argv`."""
    return len(find_processes(argv))
