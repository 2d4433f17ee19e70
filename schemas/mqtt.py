"""The MQTT protocol between a cluster orchestrator and its node engines (DESIGN.md section 6).

Every message is an envelope `{v, kind, id, ts, node_id, payload}`. The payload model is
chosen by `kind` through a discriminated union, so a decoded message is a typed object
(`StatusMessage`, `DeployMessage`, ...) and a bad one fails with the field at fault named.
Which kinds may appear on which channel is part of the contract (`CHANNEL_KINDS`).

Besides commands and reports there is one request/response exchange: a `logs_request`
(cluster -> node, on the node's commands topic, QoS 0, with an expiry) answered by
`logs_chunk` messages on the node's `logs` topic (QoS 0, bounded chunks). Neither is
persisted or deduplicated: a lost one costs a retry by the asker, never a wrong state.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import from_json

from schemas.common import (
    ID_PATTERN,
    MAX_INT64,
    Id,
    Int64,
    OpenData,
    ShortText,
    StrictModel,
    Text,
    Timestamp,
    new_id,
    now,
)
from schemas.job import TaskSpec, TaskState
from schemas.node import NodeStatus

PROTOCOL_VERSION: Literal[1] = 1
PROTOCOL_REVISION = 2
"""Compatible additions within envelope version 1 (docs/protocol.md, "Revisions"):
1: the first; 2: a command's ack carries the state change it caused (`CommandAck.event`)
instead of a separate `task_event`. A cluster understands engines of every revision; a
revision 2 engine needs a revision 2 cluster (a revision 1 cluster refuses the unknown
field as `invalid`): upgrade clusters before their nodes."""
TOPIC_PREFIX = "edge/v1/nodes"
MAX_MESSAGE_BYTES = 256 * 1024
MAX_JSON_DEPTH = 200
"""Deepest nesting of arrays and objects a message may have. The parser (pydantic's
jiter, in both decode passes) refuses deeper input without recursing in Python, so a
small, deeply nested message is a counted `bad_json` rejection, never a RecursionError
on the MQTT network thread (issue 15)."""


class Channel(StrEnum):
    """The last topic level: what a message is about."""

    STATUS = "status"
    EVENTS = "events"
    COMMANDS = "commands"
    PRESENCE = "presence"
    LOGS = "logs"


CHANNEL_QOS: dict[Channel, int] = {
    Channel.STATUS: 0,
    Channel.EVENTS: 1,
    Channel.COMMANDS: 1,
    Channel.PRESENCE: 1,
    Channel.LOGS: 0,
}
"""QoS per channel. Exception: a `logs_request` goes on `commands` at `LOGS_REQUEST_QOS`."""

LOGS_REQUEST_QOS = 0
"""A logs request is QoS 0: Mosquitto does not queue QoS 0 messages for a node that is
away, so a node coming back never finds a stale request waiting for it."""
LOGS_CHUNK_BYTES = 64 * 1024
"""At most this many bytes of JSON-encoded text in one `logs_chunk` (well under
`MAX_MESSAGE_BYTES`, whatever the escaping)."""
MAX_LOGS_BYTES = 1024 * 1024
"""Upper bound of a logs request's `max_bytes` (the whole answer, over all chunks)."""
MAX_LOGS_TAIL = 10_000
"""Upper bound of a logs request's `tail` (lines)."""
MAX_LOGS_TTL_S = 60.0
"""A logs request may be valid for at most this long (`expires_at - ts`)."""
MAX_LOGS_CHUNKS = 4096
CURSOR_PATTERN = r"^[A-Za-z0-9:._-]{0,128}$"
"""Log cursors are opaque to everyone but the node that made them."""


# ---------------------------------------------------------------- payloads


SESSION_TAKEN_OVER = "session_taken_over"
"""`Presence.reason` of an online presence sent after the broker had closed the engine's
previous connection for another client with the same client id (MQTT v5 reason code
0x8E): two clients use one node's credentials and displace each other in turn."""


class Presence(StrictModel):
    """Online/offline; the offline form is also the node's retained last will.

    An online presence may carry `reason` `SESSION_TAKEN_OVER` (see there)."""

    online: bool
    engine_version: ShortText = ""
    reason: ShortText = ""


class DeployCommand(StrictModel):
    """Run one instance. Idempotent: the envelope id is the command id."""

    instance_id: Id
    job_id: Id
    spec: TaskSpec


class TerminateCommand(StrictModel):
    """Stop one instance and forget it."""

    instance_id: Id
    reason: Text = ""


class ShedThreshold(OpenData):
    """One shedding signal's thresholds, as a shedding decision quotes them."""

    enter: float | None = None
    exit: float | None = None
    enter_for_s: float | None = None
    exit_for_s: float | None = None


class LatencyCulprit(OpenData):
    """The task whose p95 latency broke its budget (a latency-caused shedding)."""

    instance_id: ShortText | None = None
    priority: Int64 | None = None
    p95_ms: float | None = None
    budget_ms: float | None = None


class CpuShare(OpenData):
    """The node's split of host CPU when a shedding decision was taken."""

    cores: Int64 | None = None
    owned_percent: float | None = None
    foreign_percent: float | None = None
    owned_cores: float | None = None
    foreign_cores: float | None = None


class TaskEventData(OpenData):
    """What a task event says beyond its state (node_engine/supervisor.py, shedding.py).

    Exits and restarts: `restarts` (times the node restarted it), `restart_in_s` (the
    node restarts it after this delay), `oom_killed`, `max_restarts_reached`.
    Shedding (PAUSED, SHED, resumed): the `shedder` action, the `signals` that caused
    it, their `values` and `thresholds`, the node's `cpu_share`, the victim's
    `priority` and `on_shed`, and the `latency` culprit. Only the keys given travel;
    unknown keys are kept (any JSON, as the old free-form `data` allowed).
    """

    storable_extras: ClassVar[bool] = False

    restarts: Int64 | None = None
    restart_in_s: float | None = None
    oom_killed: bool | None = None
    max_restarts_reached: bool | None = None
    shedder: ShortText | None = None
    signals: list[ShortText] | None = Field(default=None, max_length=64)
    values: dict[str, float | None] | None = Field(default=None, max_length=64)
    thresholds: dict[str, ShedThreshold] | None = Field(default=None, max_length=64)
    cpu_share: CpuShare | None = None
    priority: Int64 | None = None
    on_shed: ShortText | None = None
    latency: LatencyCulprit | None = None


class TaskEvent(StrictModel):
    """A task state change on a node, or a decision about a task (e.g. shedding)."""

    instance_id: Id
    state: TaskState
    previous: TaskState | None = None
    reason: Text = ""
    exit_code: Int64 | None = None
    seq: int = Field(default=0, ge=0, description="per-node event counter", le=MAX_INT64)
    data: TaskEventData = Field(default_factory=TaskEventData)


class CommandAck(StrictModel):
    """A node's answer to a command: accepted, or refused with the reason.

    `event` (protocol revision 2) is the state change the command caused, e.g. a
    deploy's RUNNING or FAILED or a terminate's TERMINATED: it travels in the ack instead
    of a `task_event` of its own (one message per fact). Only the first answer to a
    command carries it, never a duplicate. An engine of revision 1 leaves it out and
    sends task events; the cluster understands both.
    """

    command_id: ShortText
    command_kind: ShortText
    instance_id: Id | None = None
    accepted: bool
    duplicate: bool = Field(default=False, description="the command was seen before")
    reason: Text = ""
    event: TaskEvent | None = Field(
        default=None, description="the state change the command caused (revision 2)"
    )


class LogsRequest(StrictModel):
    """Read a task's output. Without `cursor`: the last `tail` lines; with one: what
    follows it. The whole answer is at most `max_bytes` of output.

    Not a command: no ack, no idempotency, no persistence. The node drops it once it is
    older than `expires_at - ts` (counted from its arrival, so clock skew does not
    matter) and answers it with `logs_chunk` messages on its `logs` topic.
    """

    instance_id: Id
    tail: int = Field(default=100, ge=0, le=MAX_LOGS_TAIL)
    cursor: Annotated[str, Field(pattern=CURSOR_PATTERN)] | None = None
    max_bytes: int = Field(default=256 * 1024, ge=1024, le=MAX_LOGS_BYTES)
    expires_at: Timestamp = Field(description="sender's wall clock; validity = expires_at - ts")


class LogsChunk(StrictModel):
    """One part of the answer to a `logs_request` (the envelope id of which is
    `request_id`). Chunks are numbered from 0; the one with `last` ends the answer.

    `cursor` continues after this chunk's text. `more`: output past the answer's end was
    left out (`max_bytes`); `skipped`: output between the request's cursor and the text
    is gone (rotated away). `ended`: the task finished and will not run again. `error`
    says why the node cannot serve the request, `error_code` what kind of failure it is
    (`LOGS_ERROR_CODES`).
    """

    request_id: Annotated[str, Field(pattern=ID_PATTERN)]
    instance_id: Id
    seq: int = Field(default=0, ge=0, lt=MAX_LOGS_CHUNKS)
    last: bool = True
    text: str = Field(default="", max_length=LOGS_CHUNK_BYTES)
    cursor: Annotated[str, Field(pattern=CURSOR_PATTERN)] = ""
    more: bool = False
    skipped: bool = False
    state: TaskState | None = None
    exit_code: Int64 | None = None
    ended: bool = False
    error: Text = ""
    error_code: ShortText = ""


LOGS_ERROR_CODES = {
    "unknown_instance": "the node does not have the task (never had it, or forgot it)",
    "bad_cursor": "the cursor was not made by this task's runtime",
    "busy": "too many log reads in progress on the node",
    "invalid": "the request did not validate",
    "runtime": "the runtime could not read the output",
}
"""`LogsChunk.error_code` values (a newer node may send others: treat them as `runtime`)."""


# ---------------------------------------------------------------- envelopes


class _Envelope(StrictModel):
    v: Literal[1] = PROTOCOL_VERSION
    id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(default_factory=new_id)
    ts: Timestamp = Field(default_factory=now)
    node_id: Id


class StatusMessage(_Envelope):
    """`status` on `.../status`: periodic metrics and the full task list."""

    kind: Literal["status"] = "status"
    payload: NodeStatus


class PresenceMessage(_Envelope):
    """`presence` on `.../presence` (retained)."""

    kind: Literal["presence"] = "presence"
    payload: Presence


class AckMessage(_Envelope):
    """`ack` on `.../events`."""

    kind: Literal["ack"] = "ack"
    payload: CommandAck


class TaskEventMessage(_Envelope):
    """`task_event` on `.../events`."""

    kind: Literal["task_event"] = "task_event"
    payload: TaskEvent


class DeployMessage(_Envelope):
    """`deploy` on `.../commands`."""

    kind: Literal["deploy"] = "deploy"
    payload: DeployCommand


class TerminateMessage(_Envelope):
    """`terminate` on `.../commands`."""

    kind: Literal["terminate"] = "terminate"
    payload: TerminateCommand


class LogsRequestMessage(_Envelope):
    """`logs_request` on `.../commands` (QoS 0); the envelope id is the request id."""

    kind: Literal["logs_request"] = "logs_request"
    payload: LogsRequest

    @model_validator(mode="after")
    def _bounded_validity(self) -> LogsRequestMessage:
        ttl = self.payload.expires_at - self.ts
        if not 0 < ttl <= MAX_LOGS_TTL_S:
            raise ValueError(
                f"payload.expires_at must be after ts and at most {MAX_LOGS_TTL_S:.0f} s "
                f"after it (got {ttl:.3f} s)"
            )
        return self

    @property
    def ttl_s(self) -> float:
        """How long the request stays valid after it was sent."""
        return self.payload.expires_at - self.ts


class LogsChunkMessage(_Envelope):
    """`logs_chunk` on `.../logs` (QoS 0)."""

    kind: Literal["logs_chunk"] = "logs_chunk"
    payload: LogsChunk


Message = Annotated[
    StatusMessage
    | PresenceMessage
    | AckMessage
    | TaskEventMessage
    | DeployMessage
    | TerminateMessage
    | LogsRequestMessage
    | LogsChunkMessage,
    Field(discriminator="kind"),
]
CommandMessage = DeployMessage | TerminateMessage
AnyMessage = (
    StatusMessage
    | PresenceMessage
    | AckMessage
    | TaskEventMessage
    | DeployMessage
    | TerminateMessage
    | LogsRequestMessage
    | LogsChunkMessage
)

CHANNEL_KINDS: dict[Channel, frozenset[str]] = {
    Channel.STATUS: frozenset({"status"}),
    Channel.PRESENCE: frozenset({"presence"}),
    Channel.EVENTS: frozenset({"ack", "task_event"}),
    Channel.COMMANDS: frozenset({"deploy", "terminate", "logs_request"}),
    Channel.LOGS: frozenset({"logs_chunk"}),
}
KINDS: frozenset[str] = frozenset().union(*CHANNEL_KINDS.values())

_ID_RE = re.compile(ID_PATTERN)
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


# ---------------------------------------------------------------- topics


def topic(node_id: str, channel: Channel) -> str:
    """Build `edge/v1/nodes/{node_id}/{channel}`; rejects ids that are not topic-safe."""
    if not _valid_id(node_id):
        raise ValueError(f"node id {node_id!r} does not match {ID_PATTERN}")
    return f"{TOPIC_PREFIX}/{node_id}/{channel.value}"


def subscription(channel: Channel) -> str:
    """The wildcard a cluster subscribes to for one channel of every node."""
    return f"{TOPIC_PREFIX}/+/{channel.value}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """Split a topic into (node_id, channel); ValueError if it is not one of ours."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != TOPIC_PREFIX:
        raise ValueError(f"topic {name!r} is not under {TOPIC_PREFIX}/<node_id>/<channel>")
    node_id, chan = parts[3], parts[4]
    if not _valid_id(node_id):
        raise ValueError(f"topic {name!r} has an invalid node id")
    try:
        return node_id, Channel(chan)
    except ValueError:
        raise ValueError(
            f"topic {name!r} has unknown channel {chan!r}; expected one of "
            + ", ".join(c.value for c in Channel)
        ) from None


def _valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


# ---------------------------------------------------------------- coding


class MessageError(ValueError):
    """A message that cannot be accepted; `reason` is a short label for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: AnyMessage) -> bytes:
    """Serialise a message to compact JSON bytes."""
    return message.model_dump_json().encode()


def decode(raw: bytes | str, *, topic_name: str | None = None) -> Message:
    """Parse and validate one message; raise `MessageError` with a countable reason.

    When `topic_name` is given, the envelope's node id must match the topic's and the
    kind must be allowed on that channel, so a node cannot speak for another. Nothing
    but `MessageError` leaves this function for any input: too deep nesting, numbers
    beyond range and invalid UTF-8 are `bad_json`.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:  # a valid message: parsed and validated in one pass (half the cost)
        message = _MESSAGE.validate_json(raw)
    except ValidationError:
        message = _decode_checked(raw)  # says exactly what is wrong
    except RecursionError:  # jiter bounds the depth; a belt should that ever change
        raise MessageError("bad_json", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if topic_name is not None:
        _check_topic(message, topic_name)
    return message


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON with the same bounds as `decode` (depth, number range); raise
    `MessageError("bad_json", ...)` for anything that is not acceptable JSON."""
    try:
        return from_json(raw)
    except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
        detail = "not valid UTF-8 text" if isinstance(exc, TypeError) else str(exc)
        if "recursion limit" in detail or isinstance(exc, RecursionError):
            detail = f"nested deeper than {MAX_JSON_DEPTH} levels ({detail})"
        raise MessageError("bad_json", detail) from None


def _decode_checked(raw: bytes | str) -> Message:
    """Parse step by step, raising the `MessageError` that names the problem."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise MessageError("bad_envelope", "message is not a JSON object")
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise MessageError(
            "bad_version",
            f"unsupported envelope version {version!r}; this program speaks v{PROTOCOL_VERSION}",
        )
    kind = data.get("kind")
    if kind not in KINDS:
        raise MessageError(
            "unknown_kind", f"unknown message kind {kind!r}; expected one of {sorted(KINDS)}"
        )
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as exc:
        raise MessageError("invalid", describe_validation_error(exc)) from None
    except RecursionError:
        raise MessageError("bad_json", f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def _check_topic(message: Message, topic_name: str) -> None:
    """The message must be about the topic's node and allowed on its channel."""
    try:
        node_id, channel = parse_topic(topic_name)
    except ValueError as exc:
        raise MessageError("bad_topic", str(exc)) from None
    if message.node_id != node_id:
        raise MessageError(
            "node_mismatch", f"envelope node_id {message.node_id!r} != topic node {node_id!r}"
        )
    if message.kind not in CHANNEL_KINDS[channel]:
        raise MessageError(
            "wrong_channel", f"kind {message.kind!r} is not allowed on {channel.value!r}"
        )


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One readable line naming each field at fault, e.g. `payload.spec.image: ...`."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        parts.append(f"{loc or '(root)'}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in KINDS
