"""Shared field types and limits for every wire format.

Names follow DNS-label rules so they are safe in URLs, topics, container names and
file names; identifiers are opaque URL-safe strings. Every string and collection has a
bound so a hostile or buggy peer cannot make a program allocate without limit.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Job, cluster and node names: lowercase DNS label, 1-63 chars."""

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Identifiers (jobs, instances, nodes, clusters, commands): URL- and topic-safe."""

LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_/-]{0,61}[A-Za-z0-9])?$"
"""Label keys (``zone``, ``edge-io/site``): no dots, as they are keys of stored objects
(the stores refuse dotted keys; a dotted key is a 422 at the edge, not a 500)."""
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9_.:/-]{0,63}$"

MAX_LABELS = 32
MAX_ENV = 128
MAX_ARGS = 256
MAX_TASKS_PER_NODE = 256
MAX_TEXT = 1024
MAX_INT64 = 2**63 - 1
"""Largest integer any field takes: what SQLite and MongoDB store (signed 64 bits)."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
ShortText = Annotated[str, StringConstraints(max_length=128)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN)]
Int64 = Annotated[int, Field(ge=-MAX_INT64 - 1, le=MAX_INT64)]
"""Any integer a store can hold; larger ones are a 422 naming the field, not a 500."""

_MAX_DEPTH = 16


def _check_storable(value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or key.startswith("$"):
                raise ValueError(f"invalid key {key!r}: must be non-empty, not starting with '$'")
            if "." in key or "\x00" in key:
                raise ValueError(f"invalid key {key!r}: must not contain '.' or NUL")
            _check_storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if not -MAX_INT64 - 1 <= value <= MAX_INT64:
            raise ValueError("integer does not fit in 64 bits")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("number must be finite")


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    _check_storable(value)
    return value


StorableDict = Annotated[dict[str, Any], AfterValidator(_storable)]
"""Free-form JSON object a store can hold: keys without '.', NUL or a leading '$',
64-bit integers, finite numbers, at most 16 levels deep (else a 422, not a 500)."""


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels allowed, got {len(value)}")
    return value


Labels = Annotated[dict[LabelKey, LabelValue], AfterValidator(_check_labels)]

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _check_env(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_ENV:
        raise ValueError(f"at most {MAX_ENV} environment variables allowed, got {len(value)}")
    for key, val in value.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if len(val) > 4096:
            raise ValueError(f"environment variable {key} is longer than 4096 characters")
    return value


Env = Annotated[dict[str, str], AfterValidator(_check_env)]


class Arch(StrEnum):
    """CPU architectures, normalised to Docker/Go names."""

    AMD64 = "amd64"
    ARM64 = "arm64"
    ARM = "arm"
    RISCV64 = "riscv64"
    OTHER = "other"


_ARCH_ALIASES = {
    "x86_64": Arch.AMD64,
    "amd64": Arch.AMD64,
    "aarch64": Arch.ARM64,
    "arm64": Arch.ARM64,
    "armv7l": Arch.ARM,
    "armv6l": Arch.ARM,
    "armhf": Arch.ARM,
    "arm": Arch.ARM,
    "riscv64": Arch.RISCV64,
}


def normalize_arch(machine: str) -> Arch:
    """Map `platform.machine()` output (x86_64, aarch64, armv7l...) to an `Arch`."""
    return _ARCH_ALIASES.get(machine.lower(), Arch.OTHER)


class Runtime(StrEnum):
    """How a task is run on a node."""

    DOCKER = "docker"
    NATIVE = "native"


def new_id(prefix: str = "") -> str:
    """Return a new random identifier (uuid4 hex, optionally prefixed) matching ID_PATTERN."""
    return f"{prefix}{uuid.uuid4().hex}"


def now() -> float:
    """Wall-clock time in seconds since the epoch; the timestamp of every message."""
    return time.time()


class StrictModel(BaseModel):
    """Base for wire models: unknown fields are errors, models are immutable, numbers
    are finite (a store cannot hold infinity or NaN)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=False, allow_inf_nan=False
    )


Timestamp = Annotated[float, Field(ge=0)]


#: Most keys a typed `data` object (TaskEvent, InstanceChange) may carry, known or not.
MAX_DATA_KEYS = 64


class OpenData(BaseModel):
    """Base of the typed `data` objects of wire messages: known keys are typed fields,
    unknown keys (from newer or older peers) are kept as long as a store can hold them.

    At most MAX_DATA_KEYS keys in all. Serialises only the keys that were given, so an
    object travels with the same JSON it arrived with. `get` reads a key the way the
    old `dict` did (sub-models as JSON objects), for code not yet moved to attributes.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    #: whether unknown keys must be storable (see StorableDict); task events never were
    storable_extras: ClassVar[bool] = True

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        extra = self.__pydantic_extra__ or {}
        if len(self.model_fields_set | extra.keys()) > MAX_DATA_KEYS:
            raise ValueError(f"at most {MAX_DATA_KEYS} data keys allowed")
        if extra and self.storable_extras:
            _check_storable(extra)
        return self

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        given = self.model_fields_set | (self.__pydantic_extra__ or {}).keys()
        if len(out) == len(given):
            return out
        return {key: value for key, value in out.items() if key in given}

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` as the old free-form dict held it (`default` if not given)."""
        if key in type(self).model_fields:
            if key not in self.model_fields_set:
                return default
            value = getattr(self, key)
        else:
            value = (self.__pydantic_extra__ or {}).get(key, default)
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return value

    def as_dict(self) -> dict[str, Any]:
        """The given keys as a JSON-able dict (what the wire carries)."""
        return self.model_dump(mode="json")
