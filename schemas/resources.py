"""Resource quantities: CPU in cores, memory and disk in MiB, accelerators by kind."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from schemas.common import MAX_INT64, ShortText, StrictModel

ACCELERATOR_KIND_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
"""Accelerator kinds (nvidia-gpu, coral-tpu): no dots, as they are keys of stored objects."""


def _check_accelerators(value: dict[str, int]) -> dict[str, int]:
    if len(value) > 8:
        raise ValueError("at most 8 accelerator kinds allowed")
    return value


AcceleratorKind = Annotated[str, Field(pattern=ACCELERATOR_KIND_PATTERN)]
AcceleratorCounts = Annotated[
    dict[AcceleratorKind, Annotated[int, Field(ge=0, le=64)]],
    AfterValidator(_check_accelerators),
]


class Resources(StrictModel):
    """An amount of compute: what a task needs, or what a node or cluster has."""

    cpu: float = Field(default=0.0, ge=0, le=4096, description="CPU cores (0.5 = half a core)")
    memory_mib: int = Field(default=0, ge=0, le=64 * 1024 * 1024, description="memory in MiB")
    disk_mib: int = Field(default=0, ge=0, le=1024 * 1024 * 1024, description="disk in MiB")
    accelerators: AcceleratorCounts = Field(
        default_factory=dict, description="accelerator kind -> count, e.g. {'nvidia-gpu': 1}"
    )


class Accelerator(StrictModel):
    """One accelerator found on a node (GPU, NPU, Jetson iGPU, TPU stick...)."""

    kind: AcceleratorKind
    model: ShortText = ""
    memory_mib: int = Field(default=0, ge=0, le=MAX_INT64)
    count: int = Field(default=1, ge=1, le=64)
