"""Wire-format tests: every model round-trips through JSON; bad input names its field."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import schemas.cluster
import schemas.common
import schemas.job
import schemas.mqtt
import schemas.node
import schemas.resources
from schemas.cluster import (
    ClusterRegistration,
    ClusterRegistrationResponse,
    ClusterReport,
    InstanceChange,
    InstanceChangeData,
    InstanceLogs,
    NodeCapacity,
    PlaceInstanceBatch,
    PlaceInstanceBatchResponse,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
    ThermalSummary,
)
from schemas.common import Arch, OpenData, Runtime, StrictModel, normalize_arch
from schemas.job import (
    Constraints,
    Event,
    Instance,
    InstanceState,
    JobSpec,
    TaskSpec,
    TaskState,
    UpdateStrategy,
)
from schemas.mqtt import (
    AckMessage,
    Channel,
    CommandAck,
    CpuShare,
    DeployCommand,
    DeployMessage,
    LatencyCulprit,
    LogsChunk,
    LogsChunkMessage,
    LogsRequest,
    LogsRequestMessage,
    MessageError,
    Presence,
    PresenceMessage,
    ShedThreshold,
    StatusMessage,
    TaskEvent,
    TaskEventData,
    TaskEventMessage,
    TerminateCommand,
    TerminateMessage,
    decode,
    encode,
    parse_topic,
    subscription,
    topic,
)
from schemas.node import (
    DiskStatus,
    InferenceStats,
    JoinRequest,
    JoinResponse,
    Liveness,
    MemoryStatus,
    MqttConnectInfo,
    NetworkStatus,
    NodeInfo,
    NodeStatus,
    NodeView,
    TaskStatus,
    Throttling,
)
from schemas.resources import Accelerator, Resources

NATIVE = TaskSpec(runtime=Runtime.NATIVE, command=["python3", "-m", "worker"], env={"A": "1"})
DOCKER_JOB = JobSpec(
    name="detector",
    runtime=Runtime.DOCKER,
    image="registry.local/detector:1.2",
    replicas=3,
    priority=900,
    latency_budget_ms=100,
    resources=Resources(cpu=0.5, memory_mib=256, accelerators={"nvidia-gpu": 1}),
    constraints=Constraints(
        labels={"zone": "factory"}, arch=[Arch.ARM64], accelerator="nvidia-gpu"
    ),
)
INFO = NodeInfo(
    name="pi-01",
    hostname="pi-01.local",
    arch=Arch.ARM64,
    cpu_cores=4,
    memory_mib=3906,
    disk_mib=30000,
    accelerators=[Accelerator(kind="hailo", model="Hailo-8")],
    runtimes=[Runtime.NATIVE, Runtime.DOCKER],
    labels={"zone": "factory", "edge-io/site": "b2"},
)
STATUS = NodeStatus(
    ts=1.0,
    seq=7,
    cpu_percent=42.5,
    cpu_per_core=[40, 45],
    memory=MemoryStatus(total_mib=4000, available_mib=1000, used_percent=75),
    disk=DiskStatus(total_mib=100, free_mib=10, used_percent=90),
    network=NetworkStatus(rx_bytes_per_s=10, tx_bytes_per_s=3),
    temperatures_c={"cpu_thermal": 71.2},
    max_temperature_c=71.2,
    throttling=Throttling(throttled=True, raw="0x50005"),
    tasks=[
        TaskStatus(
            instance_id="i1",
            state=TaskState.RUNNING,
            runtime=Runtime.NATIVE,
            pid=42,
            inference=InferenceStats(frames_executed=30, latency_p95_ms=12.5),
        )
    ],
)

EXAMPLES: list[BaseModel] = [
    Resources(cpu=1.5, memory_mib=512, disk_mib=10),
    Accelerator(kind="nvidia-gpu", model="Orin", memory_mib=8192),
    Constraints(cluster="site-a", node="pi-01", max_temperature_c=80),
    UpdateStrategy(max_unavailable=1, max_surge=0, min_healthy_s=2.5, auto_rollback=False),
    NATIVE,
    DOCKER_JOB,
    Event(id="e1", ts=1.0, kind="instance.state", subject="i1", state="RUNNING", data={"x": 1}),
    Instance(id="i1", job_id="j1", replica=0, state=InstanceState.RUNNING, updated_at=1.0),
    INFO,
    JoinRequest(info=INFO, node_id="n1", node_secret="s3cret"),
    MqttConnectInfo(host="broker", port=1883, username="n1", password="pw", client_id="n1"),
    JoinResponse(
        node_id="n1",
        node_secret="s3cret",
        cluster_name="site-a",
        mqtt=MqttConnectInfo(host="b", port=1, username="u", password="p", client_id="c"),
        status_interval_s=1,
    ),
    Throttling(under_voltage=True),
    MemoryStatus(total_mib=1, available_mib=1, used_percent=0),
    DiskStatus(total_mib=1, free_mib=1, used_percent=0),
    NetworkStatus(),
    InferenceStats(frames_dropped=3),
    TaskStatus(instance_id="i1", state=TaskState.PAUSED, runtime=Runtime.DOCKER),
    STATUS,
    NodeView(id="n1", info=INFO, liveness=Liveness.READY, status=STATUS),
    ClusterRegistration(name="site-a", url="http://10.0.0.1:8001", labels={"region": "eu"}),
    ClusterRegistration(
        name="site-a", url="http://10.0.0.1:8001", cluster_id="c1", credential="c", api_token="t"
    ),
    ClusterRegistrationResponse(cluster_id="c1", credential="cred", report_interval_s=5),
    NodeCapacity(free=Resources(cpu=1), arch=Arch.AMD64, runtimes=[Runtime.NATIVE]),
    ThermalSummary(max_temperature_c=80, hot_nodes=1),
    InstanceChange(instance_id="i1", job_id="j1", state=InstanceState.SHED, ts=2.0),
    InstanceChangeData(node_name="n1", restarts=2, inference=None),
    ClusterReport(
        ts=1.0,
        seq=1,
        nodes_by_liveness={Liveness.READY: 2},
        total=Resources(cpu=8, memory_mib=8192),
        free=Resources(cpu=4, memory_mib=4096),
        largest_free_cpu=2,
        largest_free_memory_mib=2048,
        nodes=[NodeCapacity(free=Resources(cpu=2, memory_mib=2048), arch=Arch.ARM64)],
        labels={"zone": ["factory", "office"]},
    ),
    PlaceInstanceRequest(instance_id="i1", job_id="j1", job_name="detector", spec=NATIVE),
    PlaceInstanceResponse(accepted=False, instance_id="i1", reasons={"insufficient memory": 3}),
    PlaceInstanceBatch(
        instances=[PlaceInstanceRequest(instance_id="i2", job_id="j1", job_name="d", spec=NATIVE)]
    ),
    PlaceInstanceBatchResponse(
        results=[PlaceInstanceResponse(accepted=True, instance_id="i2", node_id="n1")]
    ),
    Presence(online=True, engine_version="0.1.0"),
    DeployCommand(instance_id="i1", job_id="j1", spec=NATIVE),
    TerminateCommand(instance_id="i1", reason="scaled down"),
    CommandAck(command_id="c1", command_kind="deploy", accepted=False, reason="runtime docker"),
    TaskEvent(instance_id="i1", state=TaskState.FAILED, exit_code=3, seq=9),
    TaskEventData(oom_killed=True, restart_in_s=1.5, restarts=1),
    ShedThreshold(enter=90.0, exit=70.0, enter_for_s=5.0, exit_for_s=5.0),
    LatencyCulprit(instance_id="i2", priority=1, p95_ms=120.0, budget_ms=100.0),
    CpuShare(cores=4, owned_percent=10.0, foreign_percent=80.0, owned_cores=0.4),
    StatusMessage(node_id="n1", payload=STATUS),
    PresenceMessage(node_id="n1", payload=Presence(online=False)),
    AckMessage(node_id="n1", payload=CommandAck(command_id="c", command_kind="x", accepted=True)),
    TaskEventMessage(node_id="n1", payload=TaskEvent(instance_id="i", state=TaskState.RUNNING)),
    DeployMessage(node_id="n1", payload=DeployCommand(instance_id="i", job_id="j", spec=NATIVE)),
    TerminateMessage(node_id="n1", payload=TerminateCommand(instance_id="i")),
    LogsRequest(instance_id="i1", tail=10, cursor="n42", expires_at=106.0),
    LogsRequestMessage(
        node_id="n1", ts=100.0, payload=LogsRequest(instance_id="i", expires_at=106.0)
    ),
    LogsChunk(request_id="r1", instance_id="i1", text="a\u00e9\n", cursor="d17.1", ended=True),
    LogsChunkMessage(
        node_id="n1", payload=LogsChunk(request_id="r", instance_id="i", seq=2, last=False)
    ),
    InstanceLogs(
        instance_id="i1", node_id="n1", text="x\n", cursor="n2", state=InstanceState.RUNNING
    ),
]


def _all_models() -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    for module in (
        schemas.common,
        schemas.resources,
        schemas.job,
        schemas.node,
        schemas.cluster,
        schemas.mqtt,
    ):
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseModel)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
                and obj is not StrictModel
                and obj is not OpenData
            ):
                found.add(obj)
    return found


def test_every_model_has_a_round_trip_example() -> None:
    missing = {m.__name__ for m in _all_models()} - {type(e).__name__ for e in EXAMPLES}
    assert not missing, f"add an example to EXAMPLES for: {sorted(missing)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: type(e).__name__)
def test_json_round_trip(example: BaseModel) -> None:
    raw = example.model_dump_json()
    again = type(example).model_validate_json(raw)
    assert again == example
    # plain json too: what curl or another language would send
    assert type(example).model_validate(json.loads(raw)) == example


BAD_VALUES: list[tuple[str, type[BaseModel], dict[str, Any], str]] = [
    (
        "update strategy that cannot progress",
        UpdateStrategy,
        {"max_surge": 0, "max_unavailable": 0},
        "cannot both be 0",
    ),
    (
        "progress deadline shorter than the health window",
        UpdateStrategy,
        {"min_healthy_s": 60, "progress_deadline_s": 30},
        "progress_deadline_s must be longer",
    ),
    (
        "name with capitals",
        JobSpec,
        {"name": "Detector", "runtime": "native", "command": ["x"]},
        "name",
    ),
    ("name too long", JobSpec, {"name": "a" * 64, "runtime": "native", "command": ["x"]}, "name"),
    (
        "negative replicas",
        JobSpec,
        {"name": "a", "runtime": "native", "command": ["x"], "replicas": -1},
        "replicas",
    ),
    (
        "negative cpu",
        JobSpec,
        {"name": "a", "runtime": "native", "command": ["x"], "resources": {"cpu": -1}},
        "resources.cpu",
    ),
    ("negative memory", Resources, {"memory_mib": -5}, "memory_mib"),
    ("unknown runtime", JobSpec, {"name": "a", "runtime": "wasm", "command": ["x"]}, "runtime"),
    ("docker without image", JobSpec, {"name": "a", "runtime": "docker"}, "image is required"),
    ("native without command", JobSpec, {"name": "a", "runtime": "native"}, "command is required"),
    (
        "unknown field",
        JobSpec,
        {"name": "a", "runtime": "native", "command": ["x"], "replicaz": 2},
        "replicaz",
    ),
    (
        "priority too high",
        JobSpec,
        {"name": "a", "runtime": "native", "command": ["x"], "priority": 5000},
        "priority",
    ),
    ("bad label key", Constraints, {"labels": {"bad key": "v"}}, "labels"),
    ("too many labels", Constraints, {"labels": {f"k{i}": "v" for i in range(40)}}, "labels"),
    ("bad env name", TaskSpec, {"runtime": "native", "command": ["x"], "env": {"1X": "v"}}, "env"),
    ("too many args", TaskSpec, {"runtime": "native", "command": ["x"] * 300}, "command"),
    ("bad image", TaskSpec, {"runtime": "docker", "image": "bad image!"}, "image"),
    ("bad arch", Constraints, {"arch": ["sparc"]}, "arch"),
    ("bad accelerator kind", Resources, {"accelerators": {"GPU!": 1}}, "accelerators"),
    (
        "zero cores",
        NodeInfo,
        {
            "name": "n",
            "hostname": "h",
            "arch": "amd64",
            "cpu_cores": 0,
            "memory_mib": 1,
            "disk_mib": 0,
        },
        "cpu_cores",
    ),
    (
        "bad port",
        MqttConnectInfo,
        {"host": "h", "port": 70000, "username": "u", "password": "p", "client_id": "c"},
        "port",
    ),
    (
        "cpu above 100",
        NodeStatus,
        {
            "ts": 1,
            "seq": 1,
            "cpu_percent": 140,
            "memory": {"total_mib": 1, "available_mib": 1, "used_percent": 1},
            "disk": {"total_mib": 1, "free_mib": 1, "used_percent": 1},
        },
        "cpu_percent",
    ),
    ("bad cluster url", ClusterRegistration, {"name": "c", "url": "not a url"}, "url"),
    (
        "bad instance id",
        PlaceInstanceRequest,
        {"instance_id": "a/b", "job_id": "j", "job_name": "j", "spec": NATIVE.model_dump()},
        "instance_id",
    ),
]


@pytest.mark.parametrize(
    ("model", "data", "needle"),
    [pytest.param(m, d, n, id=case) for case, m, d, n in BAD_VALUES],
)
def test_bad_values_are_rejected_naming_the_field(
    model: type[BaseModel], data: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    text = str(info.value)
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert needle in text or any(loc.startswith(needle) for loc in locs), text


def test_job_spec_task_spec_keeps_node_fields_only() -> None:
    task = DOCKER_JOB.task_spec()
    assert isinstance(task, TaskSpec) and not isinstance(task, JobSpec)
    assert task.image == DOCKER_JOB.image and task.priority == 900
    assert task.resources == DOCKER_JOB.resources


def test_secrets_are_hidden_in_repr_but_sent_on_the_wire() -> None:
    resp = ClusterRegistrationResponse(cluster_id="c", credential="topsecret", report_interval_s=1)
    assert "topsecret" not in repr(resp) and "topsecret" not in str(resp)
    assert json.loads(resp.model_dump_json())["credential"] == "topsecret"


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", Arch.AMD64), ("aarch64", Arch.ARM64), ("armv7l", Arch.ARM), ("mips", Arch.OTHER)],
)
def test_normalize_arch(machine: str, arch: Arch) -> None:
    assert normalize_arch(machine) is arch


# ------------------------------------------------------------------ envelope and topics


def _deploy_raw(**overrides: Any) -> dict[str, Any]:
    msg = DeployMessage(
        node_id="n1", payload=DeployCommand(instance_id="i", job_id="j", spec=NATIVE)
    )
    data: dict[str, Any] = json.loads(encode(msg))
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("case", "raw", "reason", "needle"),
    [
        ("not json", b"{oops", "bad_json", ""),
        ("not an object", b"[1, 2]", "bad_envelope", "JSON object"),
        ("unknown version", json.dumps(_deploy_raw(v=2)).encode(), "bad_version", "version 2"),
        ("missing version", json.dumps({"kind": "deploy"}).encode(), "bad_version", "None"),
        ("unknown kind", json.dumps(_deploy_raw(kind="reboot")).encode(), "unknown_kind", "reboot"),
        (
            "payload field wrong",
            json.dumps(
                _deploy_raw(
                    payload={"instance_id": "i", "job_id": "j", "spec": {"runtime": "native"}}
                )
            ).encode(),
            "invalid",
            "payload.spec",
        ),
        ("bad node id", json.dumps(_deploy_raw(node_id="a/b")).encode(), "invalid", "node_id"),
        ("too large", b"x" * (300 * 1024), "too_large", ""),
    ],
)
def test_decode_rejects_with_reason(case: str, raw: bytes, reason: str, needle: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(raw)
    assert info.value.reason == reason
    assert needle in info.value.detail


def _nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def _ack_with_payload(inner: str) -> bytes:
    return (
        '{"v":1,"kind":"ack","id":"m1","ts":1.0,"node_id":"n1","payload":' + inner + "}"
    ).encode()


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("2,000-deep arrays in the payload", _ack_with_payload(_nested(2000))),
        ("2,000-deep bare arrays", _nested(2000).encode()),
        ("2,000-deep objects", ('{"a":' * 2000 + "1" + "}" * 2000).encode()),
        ("deep and unterminated", b"[" * 100_000),
        ("deep as str", _nested(5000)),
        ("a number of 5,000 digits", b'{"v":1,"kind":"ack","n":1' + b"0" * 5000 + b"}"),
        ("invalid UTF-8", b'{"v":1,"kind":"\xff\xfe"}'),
        ("a lone surrogate in a str", '{"v":1,"kind":"\ud800"}'),
    ],
)
def test_decode_turns_every_parser_failure_into_bad_json(case: str, raw: bytes | str) -> None:
    """Issue 15: a 4 KB deeply nested message raised RecursionError (not a MessageError)
    on the cluster's MQTT thread and killed it."""
    with pytest.raises(MessageError) as info:
        decode(raw, topic_name=topic("n1", Channel.EVENTS))
    assert info.value.reason == "bad_json", info.value
    if "deep" in case:
        assert f"deeper than {schemas.mqtt.MAX_JSON_DEPTH}" in info.value.detail


def test_decode_accepts_nesting_up_to_the_bound() -> None:
    """Legitimate nesting (a task event's free-form `data`) well inside the bound decodes."""
    inner = '{"k":' * 150 + "1" + "}" * 150
    raw = (
        '{"v":1,"kind":"task_event","id":"m1","ts":1.0,"node_id":"n1","payload":'
        '{"instance_id":"i1","state":"RUNNING","data":{"deep":' + inner + "}}}"
    ).encode()
    message = decode(raw, topic_name=topic("n1", Channel.EVENTS))
    assert isinstance(message, TaskEventMessage)
    with pytest.raises(MessageError) as info:
        decode(raw.replace(inner.encode(), ('{"k":' * 300 + "1" + "}" * 300).encode()))
    assert info.value.reason == "bad_json"


def test_parse_json_bounds_like_decode() -> None:
    assert schemas.mqtt.parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(MessageError) as info:
        schemas.mqtt.parse_json(_nested(2000))
    assert info.value.reason == "bad_json"


def test_decode_returns_typed_messages() -> None:
    for example in EXAMPLES:
        if isinstance(
            example,
            StatusMessage
            | DeployMessage
            | AckMessage
            | TaskEventMessage
            | PresenceMessage
            | TerminateMessage
            | LogsRequestMessage
            | LogsChunkMessage,
        ):
            got = decode(encode(example))
            assert type(got) is type(example) and got == example


def test_decode_checks_topic_node_and_channel() -> None:
    raw = encode(StatusMessage(node_id="n1", payload=STATUS))
    assert decode(raw, topic_name=topic("n1", Channel.STATUS)).node_id == "n1"
    with pytest.raises(MessageError) as info:
        decode(raw, topic_name=topic("n2", Channel.STATUS))
    assert info.value.reason == "node_mismatch"
    with pytest.raises(MessageError) as info:
        decode(raw, topic_name=topic("n1", Channel.COMMANDS))
    assert info.value.reason == "wrong_channel"
    with pytest.raises(MessageError) as info:
        decode(raw, topic_name="other/n1/status")
    assert info.value.reason == "bad_topic"


def test_topics() -> None:
    assert topic("n-1", Channel.COMMANDS) == "edge/v1/nodes/n-1/commands"
    assert parse_topic("edge/v1/nodes/n-1/presence") == ("n-1", Channel.PRESENCE)
    assert subscription(Channel.STATUS) == "edge/v1/nodes/+/status"
    for bad in ("n/1", "+", "#", "", "a" * 65):
        with pytest.raises(ValueError):
            topic(bad, Channel.STATUS)
    for bad in ("edge/v1/nodes/n1/reboot", "edge/v1/nodes/n1", "edge/v2/nodes/n1/status"):
        with pytest.raises(ValueError):
            parse_topic(bad)
