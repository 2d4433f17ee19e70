"""The `--wait` verdict of edgectl (pure, clock passed in), table-driven.

Each case is a sequence of polls: (seconds since the wait began, job document) and
the verdict expected after each poll; the memo returned by one poll goes into the
next, as `edgectl jobs submit --wait` does.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgectl.jobs import WaitMemo, failed_ids, wait_verdict
from tests.unit import edgectl_docs as docs

SETTLE = 5.0
TIMEOUT = 60.0


def inst(replica: int, state: str, iid: str | None = None, **over: Any) -> dict[str, Any]:
    return {
        "id": iid or f"j0190a1b2c3d4e5f6a7-{replica}-0",
        "replica": replica,
        "state": state,
        "created_at": 1.0,
        "updated_at": 1.0,
        **over,
    }


def job(state: str, desired: int, *instances: dict[str, Any], **over: Any) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for i in instances:
        counts[i["state"]] = counts.get(i["state"], 0) + 1
    return {
        "name": "web",
        "state": state,
        "desired_replicas": desired,
        "instances": list(instances),
        "instance_counts": counts,
        "spec": {"restart_policy": "never", "max_restarts": 5},
        **over,
    }


Poll = tuple[float, dict[str, Any], str, str]  # (t, job, verdict, message fragment)

RUN1 = job("RUNNING", 1, inst(0, "RUNNING"))
RUN2 = job("RUNNING", 2, inst(0, "RUNNING"), inst(1, "RUNNING"))
PENDING = job("PENDING", 1, inst(0, "PENDING"), reason="no cluster fits: 2 memory")
EXIT3 = job(
    "FAILED",
    1,
    inst(0, "FAILED", reason="exited with code 3", exit_code=3),
)

CASES: dict[str, tuple[dict[str, Any], list[Poll]]] = {
    "healthy job is done only after the settle window": (
        {},
        [
            (0.0, PENDING, "waiting", "1 PENDING; no cluster fits: 2 memory"),
            (1.0, RUN1, "waiting", "settling (0.0s of 5s)"),
            (3.0, RUN1, "waiting", "settling (2.0s of 5s)"),
            (6.0, RUN1, "done", "steady for 5.0s"),
        ],
    ),
    "settle 0 is done at the first RUNNING poll": (
        {"settle": 0.0},
        [(0.0, PENDING, "waiting", "PENDING"), (0.5, RUN1, "done", "every replica is running")],
    ),
    "exit 3 right after RUNNING fails with the reason": (
        {},
        [
            (0.0, RUN1, "waiting", "settling"),
            (0.7, EXIT3, "failed", "replica 0 FAILED: exited with code 3"),
        ],
    ),
    "a FAILED replica fails even while the job is DEGRADED": (
        {},
        [
            (
                0.0,
                job(
                    "DEGRADED", 2, inst(0, "RUNNING"), inst(1, "FAILED", reason="boom", exit_code=1)
                ),
                "failed",
                "replica 1 FAILED: boom (exit code 1)",
            )
        ],
    ),
    "a failure the restart policy retries still fails, and says so": (
        {},
        [
            (
                0.0,
                job(
                    "DEGRADED",
                    1,
                    inst(0, "FAILED", "a", reason="exited with code 3", restarts=0),
                    inst(0, "PENDING", "b", restarts=1, created_at=2.0),
                    spec={"restart_policy": "on-failure", "max_restarts": 3},
                ),
                "failed",
                "replica 0 FAILED: exited with code 3 (restart policy on-failure: restart 1 of 3",
            )
        ],
    ),
    "a restart in place during the window restarts the window": (
        {},
        [
            (0.0, RUN1, "waiting", "settling (0.0s"),
            (4.0, job("RUNNING", 1, inst(0, "RUNNING", restarts=1)), "waiting", "settling (0.0s"),
            (8.0, job("RUNNING", 1, inst(0, "RUNNING", restarts=1)), "waiting", "settling (4.0s"),
            (9.0, job("RUNNING", 1, inst(0, "RUNNING", restarts=1)), "done", "steady for 5.0s"),
        ],
    ),
    "a replica leaving RUNNING restarts the window": (
        {},
        [
            (0.0, RUN2, "waiting", "settling"),
            (
                4.0,
                job("DEGRADED", 2, inst(0, "RUNNING"), inst(1, "STARTING")),
                "waiting",
                "1 RUNNING, 1 STARTING",
            ),
            (5.0, RUN2, "waiting", "settling (0.0s"),
            (10.0, RUN2, "done", ""),
        ],
    ),
    "a replica replaced by another instance restarts the window": (
        {},
        [
            (0.0, RUN1, "waiting", "settling"),
            (
                4.0,
                job("RUNNING", 1, inst(0, "LOST", "old"), inst(0, "RUNNING", "new", created_at=2)),
                "waiting",
                "settling (0.0s",
            ),
        ],
    ),
    "never placed: fails at the timeout with the pending reason": (
        {},
        [
            (0.0, PENDING, "waiting", "no cluster fits"),
            (59.0, PENDING, "waiting", "no cluster fits"),
            (
                60.0,
                PENDING,
                "failed",
                "not running after 60s: 1 PENDING; no cluster fits: 2 memory",
            ),
        ],
    ),
    "the timeout also ends a settle window that cannot complete": (
        {"timeout": 3.0},
        [(0.0, RUN1, "waiting", "settling"), (3.0, RUN1, "failed", "not running after 3s")],
    ),
    "surplus instances being stopped after a scale down": (
        {"settle": 0.0},
        [
            (
                0.0,
                job("RUNNING", 1, inst(0, "RUNNING"), inst(1, "RUNNING", terminating=True)),
                "waiting",
                "1 instance(s) being stopped",
            ),
            (1.0, job("RUNNING", 1, inst(0, "RUNNING"), inst(1, "TERMINATED")), "done", ""),
        ],
    ),
    "scaled to 0: waiting while stopping (TERMINATING, not deleted), then done": (
        {},
        [
            (0.0, job("TERMINATING", 0, inst(0, "RUNNING", terminating=True)), "waiting", ""),
            (1.0, job("STOPPED", 0, inst(0, "TERMINATED")), "done", "scaled to 0"),
        ],
    ),
    "a finished batch job is done at once": (
        {},
        [(0.0, job("SUCCEEDED", 1, inst(0, "SUCCEEDED")), "done", "finished with success")],
    ),
    "deleted while waiting": (
        {},
        [
            (0.0, RUN1, "waiting", ""),
            (1.0, job("TERMINATING", 1, inst(0, "RUNNING", terminating=True)), "failed", "deleted"),
        ],
    ),
    "deleted_at marks a deletion even at 0 replicas": (
        {},
        [(0.0, job("TERMINATING", 0, deleted_at=5.0), "failed", "is TERMINATING (deleted)")],
    ),
    "FAILED job without a failed instance listed": (
        {},
        [(0.0, job("FAILED", 1, reason="replicas failed for good"), "failed", "FAILED: replicas")],
    ),
    "terminated goal": (
        {"goal": "terminated"},
        [
            (
                0.0,
                job("TERMINATING", 1, inst(0, "RUNNING", terminating=True)),
                "waiting",
                "1 RUNNING",
            ),
            (1.0, job("TERMINATED", 1, inst(0, "TERMINATED")), "done", "ended"),
        ],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_wait_verdict_sequences(name: str) -> None:
    options, polls = CASES[name]
    goal = options.get("goal", "running")
    settle = options.get("settle", SETTLE)
    timeout = options.get("timeout", TIMEOUT)
    memo: WaitMemo | None = None
    t0 = 1000.0
    for i, (t, doc, verdict, fragment) in enumerate(polls):
        step = wait_verdict(
            docs.job(doc), goal, now=t0 + t, memo=memo, settle=settle, timeout=timeout
        )
        assert (step.verdict, fragment in step.message) == (verdict, True), (i, step)
        memo = step.memo


def test_failures_from_before_a_scale_do_not_count() -> None:
    before = job(
        "DEGRADED",
        2,
        inst(0, "RUNNING"),
        inst(1, "FAILED", "old-fail", reason="exited with code 1"),
        spec={"restart_policy": "never"},
    )
    memo = WaitMemo(started=0.0, known_failures=failed_ids(docs.job(before)))
    assert memo.known_failures == {"old-fail"}
    scaled = {**before, "desired_replicas": 2}
    scaled["instances"] = [*before["instances"], inst(1, "RUNNING", "fresh", created_at=3.0)]
    step = wait_verdict(docs.job(scaled), "running", now=1.0, memo=memo, settle=1.0)
    assert step.verdict == "waiting", step
    step = wait_verdict(docs.job(scaled), "running", now=2.0, memo=step.memo, settle=1.0)
    assert step.verdict == "done", step
    # ... but a new failure does
    again = {**scaled, "instances": [*scaled["instances"][:2], inst(1, "FAILED", "fresh")]}
    assert wait_verdict(docs.job(again), "running", now=3.0, memo=memo).verdict == "failed"


def test_first_poll_without_memo_starts_the_clock() -> None:
    step = wait_verdict(docs.job(PENDING), "running", now=42.0, timeout=1.0)
    assert step.memo.started == 42.0 and step.verdict == "waiting"
    assert wait_verdict(
        docs.job(PENDING), "running", now=43.0, memo=step.memo, timeout=1.0
    ).verdict == ("failed")
