"""Apply a `PATCH /jobs/{id}` body to a job spec and tell what changed. Pure.

Fields that change what runs (everything but `replicas`, `priority` and `update`)
make a new job version and a rolling replacement; `replicas`, `priority` and the
update strategy alone do not. `name` identifies the job and cannot change; `runtime`
can (together with the `image` / `command` the new runtime needs: each instance
carries its own task spec, so old and new instances can differ in runtime).

Null values: `replicas` and `priority` null mean "no change" (as they always did);
any other field null goes back to its default (JSON merge patch, RFC 7396), e.g.
``"latency_budget_ms": null`` clears the budget, ``"env": null`` empties the
environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.job import JobSpec

__all__ = [
    "NOT_VERSIONED",
    "PatchInvalid",
    "SpecChange",
    "apply_patch",
    "versioned_fields",
]

#: Fields whose change does not make a new version.
NOT_VERSIONED = frozenset({"name", "replicas", "priority", "update"})
#: Null means "no change" for these (compatibility with the scale/priority PATCH).
_NULL_KEEPS = frozenset({"name", "runtime", "replicas", "priority"})


class PatchInvalid(ValueError):
    """The patched spec does not validate; `errors` are FastAPI-style error dicts."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        )


@dataclass(frozen=True, slots=True)
class SpecChange:
    """The spec after a patch: which fields changed and which of them make a version."""

    spec: JobSpec
    changed: tuple[str, ...]
    versioned: tuple[str, ...]


def versioned_fields() -> tuple[str, ...]:
    """Every JobSpec field whose change makes a new version, in declaration order."""
    return tuple(f for f in JobSpec.model_fields if f not in NOT_VERSIONED)


def _named_field(message: str, given: Mapping[str, Any]) -> str | None:
    """The patched field a model-level error message is about (the first one it names)."""
    found = [(message.find(key), key) for key in given if key in message]
    return min(found)[1] if found else None


def apply_patch(spec: JobSpec, given: Mapping[str, Any]) -> SpecChange:
    """`spec` with the `given` fields replaced (a sub-object replaces the whole field).

    Raises PatchInvalid naming each field at fault (location ``body.<field>``).
    """
    values: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            if key in _NULL_KEEPS:
                continue
            values[key] = JobSpec.model_fields[key].get_default(call_default_factory=True)
        else:
            values[key] = value
    if "name" in values and values["name"] != spec.name:
        raise PatchInvalid(
            [
                {
                    "loc": ["body", "name"],
                    "msg": f"the name identifies the job and cannot be changed "
                    f"({spec.name!r} -> {values['name']!r}); submit a new job with the new name",
                    "type": "immutable",
                }
            ]
        )
    merged = {**spec.model_dump(), **values}
    try:
        new = JobSpec.model_validate(merged)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = [str(p) for p in err.get("loc", ())]
            if not loc:
                named = _named_field(str(err.get("msg", "")), values)
                loc = [named] if named else []
            errors.append({"loc": ["body", *loc], "msg": str(err["msg"]), "type": err["type"]})
        raise PatchInvalid(errors) from None
    before = spec.model_dump(mode="json")
    after = new.model_dump(mode="json")
    changed = tuple(f for f in JobSpec.model_fields if before.get(f) != after.get(f))
    versioned = tuple(f for f in changed if f not in NOT_VERSIONED)
    return SpecChange(spec=new, changed=changed, versioned=versioned)
