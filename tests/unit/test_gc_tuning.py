"""`schemas.gc_tuning`: what a server's main does to the collector (in a child process,
so the test process keeps its own settings)."""

from __future__ import annotations

import json
import subprocess
import sys

from schemas.gc_tuning import SERVER_THRESHOLDS

PROBE = """
import gc, json
before = gc.get_threshold()
from schemas.gc_tuning import tune_for_server
tune_for_server()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_tune_for_server_freezes_the_startup_objects_and_sets_the_thresholds() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert tuple(seen["after"]) == SERVER_THRESHOLDS != tuple(seen["before"])
    assert seen["frozen"] > 1000  # modules, classes, functions alive at startup
