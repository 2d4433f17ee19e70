"""Shared field types and limits for every wire format.

Names follow DNS-label rules so they are safe in URLs, topics, container names and
file names; identifiers are opaque URL-safe strings. Every string and collection has a
bound so a hostile or buggy peer cannot make a program allocate without limit.
"""

from __future__ import annotations

import re
import time
import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Job, cluster and node names: lowercase DNS label, 1-63 chars."""

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Identifiers (jobs, instances, nodes, clusters, commands): URL- and topic-safe."""

LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9_.:/-]{0,63}$"

MAX_LABELS = 32
MAX_ENV = 128
MAX_ARGS = 256
MAX_TASKS_PER_NODE = 256
MAX_TEXT = 1024

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
ShortText = Annotated[str, StringConstraints(max_length=128)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN)]


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
    """Base for wire models: unknown fields are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


Timestamp = Annotated[float, Field(ge=0)]
