"""`store.base.split_document`: its fast path (no path tracking) accepts and cleans
exactly what the full checks do, and leaves every refusal to them (same message)."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from store import InvalidInput
from store.base import _clean_value, split_document


class Colour(enum.StrEnum):
    RED = "red"


def _slow(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: _clean_value(v, (k,)) for k, v in doc.items() if k not in ("_id", "_version")}


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "a", "_version": 3, "n": 1, "f": 1.5, "s": "x", "b": True, "z": None},
        {"_id": "a", "nested": {"list": [1, (2, 3), {"k": [None]}]}, "t": (1, "2")},
        {"_id": "a", "enum": Colour.RED, "deep": {"x": {"y": {"z": [Colour.RED]}}}},
        {"_id": "a", "big": 2**63 - 1, "small": -(2**63)},
    ],
)
def test_the_fast_path_cleans_as_the_full_checks_do(doc: dict[str, Any]) -> None:
    doc_id, body = split_document(doc)
    assert doc_id == "a"
    assert body == _slow(doc)
    if "nested" in doc:
        assert type(body["nested"]["list"][1]) is list  # tuples become lists


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"_id": "a", "f": float("nan")}, "non-finite float at f"),
        ({"_id": "a", "x": {"b.c": 1}}, "invalid field name 'b.c' at x"),
        ({"_id": "a", "x": [{"$set": 1}]}, "invalid field name '\\$set' at x.0"),
        ({"_id": "a", "n": 2**64}, "integer at n does not fit"),
        ({"_id": "a", "_secret": 1}, "reserved"),
        ({"_id": "a", "x": {1: 2}}, "field names must be strings, got 1 at x"),
        ({"_id": "a", "x": {"y": object()}}, "value at x.y has type object"),
    ],
)
def test_refusals_name_the_field_at_fault(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        split_document(doc)


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    value: Any = 1
    for _ in range(70):
        value = {"k": value}
    with pytest.raises(InvalidInput, match="nested deeper"):
        split_document({"_id": "a", "v": value})
