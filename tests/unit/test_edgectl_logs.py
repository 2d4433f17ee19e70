"""`edgectl logs`: which instances are shown and how their lines are labelled."""

from __future__ import annotations

from typing import Any

import pytest

from edgectl.client import EdgectlError
from edgectl.logs import choose_instances, label_width, prefixed
from tests.unit import edgectl_docs as docs


def inst(iid: str, replica: int, state: str, updated: float = 0.0) -> dict[str, Any]:
    return {"id": iid, "replica": replica, "state": state, "updated_at": updated, "created_at": 0}


def test_active_instances_are_chosen_in_replica_order() -> None:
    job = {"name": "web", "instances": [inst("b", 1, "RUNNING"), inst("a", 0, "STARTING"),
                                        inst("old", 0, "FAILED")]}  # fmt: skip
    sources, note = choose_instances(docs.job(job), None)
    assert [(s.instance_id, s.label) for s in sources] == [("a", "web-0"), ("b", "web-1")]
    assert note is None


def test_without_an_active_instance_the_last_one_is_shown_with_a_note() -> None:
    job = {
        "name": "batch",
        "instances": [inst("x", 0, "SUCCEEDED", 5.0), inst("y", 0, "FAILED", 9.0)],
    }
    sources, note = choose_instances(docs.job(job), None)
    assert [s.instance_id for s in sources] == ["y"]
    assert note is not None and "y (FAILED)" in note


def test_two_instances_of_one_replica_are_labelled_by_id() -> None:
    job = {
        "name": "web",
        "instances": [inst("web-0-0", 0, "RUNNING"), inst("web-0-1", 0, "ASSIGNED")],
    }
    sources, _ = choose_instances(docs.job(job), None)
    assert [s.label for s in sources] == ["web-0-0", "web-0-1"]


def test_an_explicit_instance_and_a_job_without_instances() -> None:
    sources, _ = choose_instances(docs.job(name="web"), "i-9")
    assert [s.instance_id for s in sources] == ["i-9"]
    with pytest.raises(EdgectlError, match="has no instances yet"):
        choose_instances(docs.job(name="web"), None)


def test_prefixed_lines() -> None:
    sources, _ = choose_instances(
        docs.job(name="w", instances=[inst("a", 0, "RUNNING"), inst("b", 10, "RUNNING")]), None
    )
    width = label_width(sources)
    assert prefixed("w-0", width, "one\ntwo") == ["w-0  | one", "w-0  | two"]
    assert prefixed("w-10", width, "") == []
