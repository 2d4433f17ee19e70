"""Placement decisions through the code the orchestrators run: CPU per decision, rate.

Run: .venv/bin/python -m bench.placement [--seconds S] [--nodes 1000] [--repo PATH]

Cluster shape: a real `ClusterCore` (fake broker and clock, in-memory SQLite) with
``--nodes`` nodes joined through `join` and reporting through the core's MQTT
handler, with a realistic mix: architectures arm64/amd64/arm 6:3:1, 20% native
only, 2/4/8 cores, 1-8 GiB, zones and tiers as labels, 10% with a GPU, random CPU
load and memory use, 35-88 C, 4% throttled, 1% shedding, 3% silent (never reported:
NOT_READY), 2% cordoned; 1,000 instances already placed (reservations). Each timed
decision is `scheduling.decide`, what `place_instance`, retries, moves and
rebalancing call: the candidates with their reservations, every filter (a named
reason for each rejected node), the scores of every feasible node, the tie broken
by the core's rng, and the `to_dict(limit=10)` explanation stored with the instance.
Four request shapes (small docker job; native arm64 job under 75 C; 2-core
zone=factory job; GPU job) alternate with the two policies. Between two decisions
(not timed) one node reports a new status and the previous decision's node gets its
instance, as `place_instance` does, so every decision has changes to take in (at
1,000 decisions/s and 1,000 nodes reporting each second, about one per decision);
the oldest of the bench's own placements leave beyond 200, so the fleet stays as
loaded as at the start however many decisions a run makes.

Also measured in the same run, on the same core:

* ``place_instance``: the whole API call on the core thread (the decision, the
  instance, its events and document handed to the store writer, the DEPLOY handed to
  the publisher; the writer thread's own work is not counted);
* status step: one steady node status (already READY, no task) through the core's
  message handler (`ClusterCore.handle`: `inbound.apply`, then the effects, of which
  there are none), the hot path of status ingestion; the status is built untimed;
* floor: `scheduling.decide` in a core with one node: the fixed cost of a decision;
* candidates: building every node's candidate from its status and reservations once
  (what each decision started with before the core kept them).

Root shape: 100 clusters with 20 nodes each, as `RootService` decides:
`root_orchestrator.scheduler.build_candidates` from the cluster reports (with 5
replicas reserved per cluster since its report) and `place`, plus `to_dict(limit=10)`.

CPU is the thread's CPU time (`time.thread_time`); each figure is the best of
``--repeat`` runs of ``--seconds``. ``--repo PATH`` runs this script against another
checkout (it re-executes itself with PATH first on the import path), to compare with
older code. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.settings import ClusterSettings
from placement import Decision, Request, place
from root_orchestrator.scheduler import ClusterSnapshot, build_candidates, request_for
from schemas.cluster import ClusterReport, NodeCapacity, PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import Constraints, TaskSpec
from schemas.mqtt import AckMessage, CommandAck, CommandMessage, DeployMessage, StatusMessage
from schemas.node import (
    DiskStatus,
    JoinRequest,
    MemoryStatus,
    NodeInfo,
    NodeStatus,
    Throttling,
)
from schemas.resources import Accelerator, Resources
from store import open_store

#: the cluster core as plan functions and effects (docs/architecture.md); an older
#: checkout (--repo) has the decisions as private methods of `ClusterCore`
SPLIT = hasattr(ClusterCore, "execute")
if SPLIT:
    from cluster_orchestrator.effects import Effects
    from cluster_orchestrator.scheduling import decide

ZONES = ("factory", "warehouse", "office", "yard")
#: bench placements kept on the fleet; older ones leave, so the load stays as it was
WINDOW = 200
ARCHS = (Arch.ARM64, Arch.AMD64, Arch.ARM)
POLICIES = ("spread", "binpack")


def _arch(rng: random.Random) -> Arch:
    return rng.choices(ARCHS, weights=(6, 3, 1))[0]


def _runtimes(rng: random.Random) -> list[Runtime]:
    return [Runtime.DOCKER, Runtime.NATIVE] if rng.random() < 0.8 else [Runtime.NATIVE]


def spec(cpu: float, memory_mib: int, runtime: Runtime, **resources: Any) -> TaskSpec:
    """A task spec of the given size."""
    if runtime is Runtime.DOCKER:
        return TaskSpec(
            runtime=runtime,
            image="busybox:latest",
            command=["sleep", "3600"],
            resources=Resources(cpu=cpu, memory_mib=memory_mib, **resources),
        )
    return TaskSpec(
        runtime=runtime,
        command=["sleep", "3600"],
        resources=Resources(cpu=cpu, memory_mib=memory_mib, **resources),
    )


#: (spec, constraints) of the four request shapes
SHAPES: tuple[tuple[TaskSpec, Constraints], ...] = (
    (spec(0.5, 512, Runtime.DOCKER, disk_mib=500), Constraints()),
    (spec(1.0, 1024, Runtime.NATIVE), Constraints(arch=[Arch.ARM64], max_temperature_c=75.0)),
    (spec(2.0, 2048, Runtime.DOCKER, disk_mib=2000), Constraints(labels={"zone": "factory"})),
    (
        spec(1.0, 1024, Runtime.DOCKER, accelerators={"gpu": 1}),
        Constraints(accelerator="gpu"),
    ),
)


class Fleet:
    """A ClusterCore with simulated nodes, driven on the calling thread."""

    def __init__(self, nodes: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.sent: list[CommandMessage] = []
        self.store = open_store("sqlite://:memory:")
        self.metrics = Metrics()
        self.persister = Persister(self.store, self.metrics)
        self.persister.start()
        self.core = ClusterCore(
            settings=ClusterSettings(name="bench"),
            store=self.store,
            persister=self.persister,
            metrics=self.metrics,
            publish=self._publish,
            rng=random.Random(7),
        )
        self.ids: list[str] = []
        self.reporting: list[str] = []
        self.seq: dict[str, int] = {}
        self.count = 0
        for i in range(nodes):
            self._join(i)

    def _publish(self, message: CommandMessage) -> bool:
        self.sent.append(message)
        return True

    def _join(self, i: int) -> None:
        rng = self.rng
        gpu = [Accelerator(kind="gpu", count=1)] if rng.random() < 0.1 else []
        info = NodeInfo(
            name=f"dev-{i:04d}",
            hostname=f"dev-{i:04d}",
            arch=_arch(rng),
            cpu_cores=rng.choice((2, 4, 4, 8)),
            memory_mib=rng.choice((1024, 2048, 4096, 4096, 8192)),
            disk_mib=rng.choice((16_000, 32_000, 64_000)),
            runtimes=_runtimes(rng),
            labels={"zone": rng.choice(ZONES), "tier": rng.choice(("edge", "gateway"))},
            accelerators=gpu,
        )
        node_id = self.core.join(JoinRequest(info=info)).node_id
        self.ids.append(node_id)
        if rng.random() < 0.02:
            self.core.set_cordoned(node_id, True)
        if rng.random() >= 0.03:  # the others stay silent: NOT_READY
            self.reporting.append(node_id)
            self.status(node_id)

    def status_message(self, node_id: str) -> StatusMessage:
        """The node's next status (random load, temperature, throttling)."""
        rng = self.rng
        info = self.core.nodes[node_id].info
        seq = self.seq[node_id] = self.seq.get(node_id, 0) + 1
        now = time.time()
        temp = round(rng.uniform(35.0, 88.0), 1)
        payload = NodeStatus(
            ts=now,
            seq=seq,
            cpu_percent=round(rng.uniform(0.0, 90.0), 1),
            memory=MemoryStatus(
                total_mib=info.memory_mib,
                available_mib=int(info.memory_mib * rng.uniform(0.3, 0.9)),
                used_percent=40.0,
            ),
            disk=DiskStatus(total_mib=info.disk_mib, free_mib=info.disk_mib // 2, used_percent=50),
            max_temperature_c=temp,
            throttling=Throttling(throttled=rng.random() < 0.04),
            shedding=rng.random() < 0.01,
            runtimes=info.runtimes,
        )
        return StatusMessage(node_id=node_id, ts=now, payload=payload)

    def status(self, node_id: str) -> None:
        """One status of the node through the core's MQTT handler."""
        message = self.status_message(node_id)
        handle(self.core, Inbound(message=message, retained=False, received_at=message.ts))

    def request(self, i: int, shape: int | None = None) -> PlaceInstanceRequest:
        """The i-th placement request (shapes and policies in turn)."""
        self.count += 1
        task, constraints = SHAPES[i % len(SHAPES) if shape is None else shape]
        return PlaceInstanceRequest(
            instance_id=f"i{self.count:07d}",
            job_id=f"job-{i % 20:02d}",
            job_name="job",
            spec=task,
            constraints=constraints,
            placement_policy=POLICIES[(i // len(SHAPES)) % 2],
        )

    def ack_all(self) -> None:
        """Acknowledge every command sent so far (the node side)."""
        for message in self.sent:
            if isinstance(message, DeployMessage):
                ack = CommandAck(
                    command_id=message.id,
                    command_kind=message.kind,
                    instance_id=message.payload.instance_id,
                    accepted=True,
                )
                now = time.time()
                handle(
                    self.core,
                    Inbound(
                        message=AckMessage(node_id=message.node_id, payload=ack),
                        retained=False,
                        received_at=now,
                    ),
                )
        self.sent.clear()

    def close(self) -> None:
        self.persister.stop()
        self.store.close()


def timed(fn: Callable[[int], object], seconds: float, between: Callable[[int], object]) -> float:
    """CPU seconds of this thread per call of fn(i), calling between(i) (untimed) after each."""
    fn(0)
    between(0)
    spent = 0.0
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.thread_time()
        fn(calls)
        spent += time.thread_time() - t0
        between(calls)
        calls += 1
    return spent / calls


def best(fn: Callable[[], float], repeat: int) -> float:
    """The lowest of `repeat` measurements (the least disturbed by other load)."""
    return min(fn() for _ in range(repeat))


def plan_decision(core: ClusterCore, inst: InstanceRecord) -> Decision:
    """One decision as the core makes it: `scheduling.decide` on the core's state, then
    its effects (the placement counter) through the core's runner."""
    if not SPLIT:  # older checkout: the decision and its counter in one method
        return core._decide(inst, exclude=set())  # type: ignore[attr-defined,no-any-return]
    fx = Effects(core.now())
    decision = decide(core.state, fx, inst, set())
    core.execute(fx.items)
    return decision


def handle(core: ClusterCore, inbound: Inbound) -> None:
    """One node message through the core, as its loop handles it."""
    if not SPLIT:
        core._handle(inbound)  # type: ignore[attr-defined]
    else:
        core.handle(inbound)


def set_node(core: ClusterCore, inst: InstanceRecord, node_id: str | None) -> None:
    """Assign `inst` to `node_id` in the core's tables (indexes kept current)."""
    if not SPLIT:
        core._set_node(inst, node_id)  # type: ignore[attr-defined]
    else:
        core.state.set_node(inst, node_id)


def node_candidate(core: ClusterCore, node: NodeRecord, reserved: Any) -> Any:
    """The node's placement candidate built from scratch."""
    if not SPLIT:
        return core._candidate(node, reserved)  # type: ignore[attr-defined]
    return core.state.candidate(node, reserved)


def cluster_figures(nodes: int, seconds: float, repeat: int) -> dict[str, Any]:
    """The cluster shape: `scheduling.decide`, `place_instance`, floor, candidate build."""
    fleet = Fleet(nodes)
    core = fleet.core
    for i in range(1000):  # instances already placed: reservations
        core.place_instance(fleet.request(i, shape=0))
    fleet.ack_all()
    reporting = fleet.reporting
    placed: deque[str] = deque()

    def retire() -> None:
        # the fleet stays as loaded as at the start: the oldest bench placements leave
        while len(placed) > WINDOW:
            inst = core.instances.pop(placed.popleft(), None)
            if inst is not None:
                set_node(core, inst, None)

    def decide(i: int) -> object:
        request = fleet.request(i)
        inst = InstanceRecord.from_request(request, time.time())
        decision = plan_decision(core, inst)
        if decision.chosen is not None:
            placed.append(inst.id)
            core.instances[inst.id] = inst
            set_node(core, inst, decision.chosen.id)
        return decision

    def churn(i: int) -> None:
        fleet.status(reporting[i % len(reporting)])
        retire()

    feasible = []
    for shape in range(len(SHAPES)):
        inst = InstanceRecord.from_request(fleet.request(shape, shape=shape), time.time())
        d = plan_decision(core, inst)
        feasible.append(f"req{shape + 1}: {d.feasible}/{d.considered} feasible")
    print(f"== cluster core, {nodes} nodes: " + "; ".join(feasible), flush=True)
    decide_cpu = best(lambda: timed(decide, seconds, churn), repeat)
    sample = plan_decision(core, InstanceRecord.from_request(fleet.request(0), time.time()))
    print(f"  sample explanation: {sample.explain()}")

    upcoming = [fleet.status_message(reporting[0])]

    def status_step(_i: int) -> None:
        message = upcoming[0]
        handle(core, Inbound(message=message, retained=False, received_at=message.ts))

    def next_status(i: int) -> None:
        upcoming[0] = fleet.status_message(reporting[(i + 1) % len(reporting)])

    status_cpu = best(lambda: timed(status_step, seconds / 2, next_status), repeat)

    def place_api(i: int) -> object:
        response = core.place_instance(fleet.request(i))
        if response.accepted:
            placed.append(response.instance_id)
        return response

    def churn_ack(i: int) -> None:
        fleet.ack_all()
        churn(i)

    place_cpu = best(lambda: timed(place_api, seconds, churn_ack), repeat)

    def build_all(_i: int) -> object:
        return _scratch_candidates(core)

    build_cpu = best(lambda: timed(build_all, seconds / 2, lambda _i: None), repeat)
    fleet.close()

    one = Fleet(1)
    one.rng = random.Random(3)

    def decide_one(i: int) -> object:
        inst = InstanceRecord.from_request(one.request(i, shape=0), time.time())
        return plan_decision(one.core, inst)

    floor_cpu = best(lambda: timed(decide_one, seconds / 2, lambda _i: None), repeat)
    one.close()
    return {
        "decide_cpu_us": decide_cpu * 1e6,
        "place_instance_cpu_us": place_cpu * 1e6,
        "status_step_cpu_us": status_cpu * 1e6,
        "floor_cpu_us": floor_cpu * 1e6,
        "build_candidates_cpu_us": build_cpu * 1e6,
    }


def _scratch_candidates(core: ClusterCore) -> list[Any]:
    """Every node's candidate built from its status and a pass over every instance."""
    from cluster_orchestrator.candidates import reservations

    reserved = reservations(
        (inst.node_id, inst.spec.resources)
        for inst in core.instances.values()
        if inst.node_id is not None and not inst.state.terminal
    )
    return [node_candidate(core, node, reserved.get(node.id)) for node in core.nodes.values()]


def make_reports(clusters: int, units_each: int, seed: int = 2) -> list[ClusterSnapshot]:
    """Cluster snapshots as the root holds them: a report with per-node summaries."""
    rng = random.Random(seed)
    out = []
    for i in range(clusters):
        nodes = []
        total_cpu = total_mem = 0.0
        for _ in range(units_each):
            cpu, mem = float(rng.choice((2, 4, 8))), rng.choice((1024, 4096, 8192))
            total_cpu, total_mem = total_cpu + cpu, total_mem + mem
            nodes.append(
                NodeCapacity(
                    free=Resources(
                        cpu=round(cpu * rng.random(), 2),
                        memory_mib=int(mem * rng.random() ** 2),
                        disk_mib=int(32_000 * rng.random()),
                        accelerators={"gpu": rng.choice((0, 1))} if rng.random() < 0.1 else {},
                    ),
                    arch=_arch(rng),
                    runtimes=_runtimes(rng),
                    labels={"zone": rng.choice(ZONES)},
                    temperature_c=round(rng.uniform(30.0, 80.0), 1),
                    throttled=rng.random() < 0.03,
                )
            )
        accel: dict[str, int] = {}
        for n in nodes:
            for kind, count in n.free.accelerators.items():
                accel[kind] = accel.get(kind, 0) + count
        report = ClusterReport(
            ts=time.time(),
            seq=1,
            total=Resources(cpu=total_cpu, memory_mib=int(total_mem), disk_mib=32_000 * len(nodes)),
            free=Resources(
                cpu=sum(n.free.cpu for n in nodes),
                memory_mib=sum(n.free.memory_mib for n in nodes),
                disk_mib=sum(n.free.disk_mib for n in nodes),
                accelerators=accel,
            ),
            largest_free_cpu=max(n.free.cpu for n in nodes),
            largest_free_memory_mib=max(n.free.memory_mib for n in nodes),
            nodes=nodes,
            runtimes=sorted({r for n in nodes for r in n.runtimes}),
            archs=sorted({n.arch for n in nodes}),
            accelerators=dict.fromkeys(accel, 1),
        )
        reserved = tuple(Request(cpu=0.25, memory_mib=128, runtime="docker") for _ in range(5))
        out.append(
            ClusterSnapshot(
                id=f"c{i:03d}",
                name=f"site-{i:03d}",
                ready=rng.random() >= 0.05,
                report=report,
                labels={"country": rng.choice(("de", "fr", "it"))},
                reserved=reserved,
            )
        )
    return out


def root_figures(seconds: float, repeat: int) -> dict[str, Any]:
    """The root shape: candidates from reports (per request) and `place`, as RootService."""
    snapshots = make_reports(100, 20)
    requests = [request_for(task, constraints) for task, constraints in SHAPES]
    rng = random.Random(7)

    def decide(i: int) -> object:
        request = requests[i % len(requests)]
        candidates = build_candidates(request, snapshots)
        decision = place(request, candidates, POLICIES[i % 2], rng, noun="cluster")
        return decision.to_dict(limit=10)

    mix = []
    for number, request in enumerate(requests, 1):
        d = place(request, build_candidates(request, snapshots), "spread", random.Random(0))
        mix.append(f"req{number}: {d.feasible}/{d.considered} feasible")
    print("== root, 100 clusters x 20 nodes: " + "; ".join(mix), flush=True)
    return {
        "root_decide_cpu_us": best(lambda: timed(decide, seconds, lambda _i: None), repeat) * 1e6
    }


def main() -> None:
    """Run every measurement and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repo", help="run against the code of this checkout")
    args = parser.parse_args()
    if args.repo:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.abspath(args.repo) + os.pathsep + env.get("PYTHONPATH", "")
        argv, skip = [], False
        for arg in sys.argv[1:]:
            if skip or arg.startswith("--repo="):
                skip = False
            elif arg == "--repo":
                skip = True
            else:
                argv.append(arg)
        # run this file's code, not a module: `bench` would come from the other checkout
        code = (
            "import runpy, sys; path = sys.argv[1]; sys.argv = [path, *sys.argv[2:]]; "
            "runpy.run_path(path, run_name='__main__')"
        )
        child = [sys.executable, "-c", code, os.path.abspath(__file__), *argv]
        sys.exit(subprocess.call(child, env=env, cwd=os.path.abspath(args.repo)))

    import placement

    print(f"placement package: {os.path.dirname(placement.__file__)}")
    figures = cluster_figures(args.nodes, args.seconds, args.repeat)
    figures.update(root_figures(args.seconds, args.repeat))
    d_us = figures["decide_cpu_us"]
    print(
        f"  decide         : {d_us:8.1f} us CPU per decision = {1e6 / d_us:7.0f} decisions/s "
        "(candidates, every filter and score, to_dict(limit=10))"
    )
    print(
        f"  place_instance : {figures['place_instance_cpu_us']:8.1f} us CPU on the core thread "
        f"= {1e6 / figures['place_instance_cpu_us']:7.0f}/s (decision, instance, events, DEPLOY)"
    )
    print(
        f"  status step    : {figures['status_step_cpu_us']:8.1f} us CPU on the core thread per "
        "steady node status (no liveness change, no task)"
    )
    print(
        f"  floor          : {figures['floor_cpu_us']:8.1f} us CPU per decide with 1 node "
        f"(ratio {d_us / figures['floor_cpu_us']:.1f}x)"
    )
    print(
        f"  candidates     : {figures['build_candidates_cpu_us']:8.1f} us CPU to build "
        f"{args.nodes} candidates once (ratio {figures['build_candidates_cpu_us'] / d_us:.2f}x "
        "a decision)"
    )
    r_us = figures["root_decide_cpu_us"]
    print(
        f"  root decision  : {r_us:8.1f} us CPU = {1e6 / r_us:7.0f} decisions/s (100 clusters: "
        "candidates from reports, place, to_dict(limit=10))"
    )
    result = {key: round(value, 1) for key, value in figures.items()}
    result["decisions_per_s_1000_nodes"] = round(1e6 / d_us, 1)
    result["root_decisions_per_s_100_clusters"] = round(1e6 / r_us, 1)
    result["nodes"] = args.nodes
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
