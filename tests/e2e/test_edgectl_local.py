"""`edgectl local up` end to end: real Mosquitto, root, cluster and node engine processes.

Drives the console script in subprocesses exactly as an operator would: start a small
system in the background, submit a job with --wait, read it back as JSON, stop it with
`edgectl local down` and check with psutil that nothing of it still runs; then resume the
same data directory in the foreground (same ids, the job runs again) and stop it with
SIGINT (Ctrl-C). A second test runs a Docker task, SIGKILLs `local up` itself, and checks
that `local down` still stops everything and removes the container.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fixtures.broker import _require_mosquitto
from tests.harness.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(900)]


def _edgectl() -> list[str]:
    script = Path(sys.executable).with_name("edgectl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgectl.main"]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE")}
    env["HOME"] = str(tmp)  # no stray ~/.local/share/edge
    env["COLUMNS"] = "200"
    return env


class Edgectl:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env

    def __call__(self, *args: str, timeout: float = 240, check: bool = True) -> Any:
        done = subprocess.run(
            [*_edgectl(), *args, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check:
            assert done.returncode == 0, (
                f"edgectl {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}\n"
                f"{self.logs()}"
            )
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def logs(self) -> str:
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            try:
                lines = log.read_text(errors="replace").splitlines()[-15:]
            except OSError:
                continue
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)


def system_processes(data_dir: Path) -> list[str]:
    """Every live process whose command line names the data directory or runs inside it.

    Covers edgectl itself, the brokers (config path), the orchestrators and node engines
    (data and state directories, working directories) and native tasks (working
    directory under nodes/).
    """
    base = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"] or ""
        except (psutil.Error, KeyError):
            continue
        if base in cmdline or cwd == base or cwd.startswith(base + os.sep):
            found.append(f"{proc.info['pid']}: {cmdline} (cwd {cwd})")
    return found


def _local(data_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data_dir / "local.json").read_text()))
    except (OSError, ValueError):
        return {}


@pytest.fixture
def edgectl(tmp_path: Path) -> Iterator[Edgectl]:
    _require_mosquitto()
    data_dir = tmp_path / "edge-data"
    ctl = Edgectl(data_dir, _env(tmp_path))
    yield ctl
    if (data_dir / "local.json").exists():
        ctl("local", "down", check=False, timeout=300)
    left = system_processes(data_dir)
    for line in left:  # never leave anything running on the machine
        pid = int(line.split(":", 1)[0])
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_local_up_submit_down_resume(edgectl: Edgectl) -> None:
    data_dir = edgectl.data_dir
    up = edgectl("local", "up", "--detach", "--clusters", "1", "--nodes-per-cluster", "2")
    local = _local(data_dir)
    assert local["state"] == "ready"
    assert local["root_url"] in up.stdout and local["token"] in up.stdout
    assert "edgectl local down" in up.stdout
    assert {p["kind"] for p in local["processes"]} == {"broker", "root", "cluster", "node"}
    assert len([p for p in local["processes"] if p["kind"] == "node"]) == 2
    assert all(Path(p["log"]).exists() for p in local["processes"])
    assert (data_dir / "local.json").stat().st_mode & 0o777 == 0o600

    clusters = edgectl.json("clusters", "ls")["clusters"]
    assert [(c["name"], c["liveness"]) for c in clusters] == [("c1", "READY")]
    nodes = edgectl.json("nodes", "ls")["nodes"]
    node_ids = {n["info"]["name"]: n["id"] for n in nodes}
    assert sorted(node_ids) == ["c1-n1", "c1-n2"]

    submit = edgectl("jobs", "submit", "-f", str(EXAMPLES / "native-job.yaml"), "--wait")
    assert "RUNNING" in submit.stdout
    job = edgectl.json("jobs", "get", "hello-native")
    assert job["state"] == "RUNNING"
    assert job["actual_replicas"] == job["desired_replicas"] == 1
    (instance,) = [i for i in job["instances"] if i["state"] == "RUNNING"]
    assert instance["cluster_name"] == "c1" and instance["node_name"] in node_ids
    explain = edgectl("jobs", "explain", "hello-native").stdout
    assert "c1 (chosen)" in explain

    running = system_processes(data_dir)
    assert any("mosquitto" in p for p in running)
    assert any("node_engine.main" in p for p in running)
    assert any("/nodes/" in p and "native" in p for p in running), running  # the task
    supervisor = local["supervisor"]["pid"]

    down = edgectl("local", "down")
    assert "stopped" in down.stdout
    assert not psutil.pid_exists(supervisor) or psutil.Process(supervisor).status() == "zombie"
    assert system_processes(data_dir) == []
    assert _local(data_dir)["state"] == "stopped"
    # a stopped system: commands say so in one line and suggest local up
    refused = edgectl("jobs", "ls", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: cannot reach the root orchestrator")
    assert "edgectl local up" in refused.stderr

    # resume in the foreground: same system, same ids, the job runs again
    log = (data_dir.parent / "foreground.log").open("w")
    fg = subprocess.Popen(
        [*_edgectl(), "local", "up", "--data-dir", str(data_dir)],
        env=edgectl.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        wait_for(
            lambda: (
                fg.poll() is not None
                or (
                    _local(data_dir).get("state") == "ready"
                    and _local(data_dir).get("supervisor", {}).get("pid") == fg.pid
                )
            ),
            240,
            "the resumed system to be ready",
        )
        assert fg.poll() is None, (data_dir.parent / "foreground.log").read_text()
        assert [c["id"] for c in edgectl.json("clusters", "ls")["clusters"]] == [clusters[0]["id"]]
        again = {n["info"]["name"]: n["id"] for n in edgectl.json("nodes", "ls")["nodes"]}
        assert again == node_ids

        def job_running() -> dict[str, Any] | None:
            view = edgectl.json("jobs", "get", "hello-native")
            return view if view["state"] == "RUNNING" else None

        resumed = wait_for(job_running, 120, "the job to run again after the resume")
        assert resumed["id"] == job["id"]
        assert [j["id"] for j in edgectl.json("jobs", "ls")["jobs"]] == [job["id"]]
    finally:
        fg.send_signal(signal.SIGINT)  # Ctrl-C
        code = fg.wait(300)
        log.close()
    output = (data_dir.parent / "foreground.log").read_text()
    assert code == 0, output
    assert "local system resumed" in output
    assert "no process left" in output
    assert system_processes(data_dir) == []


@pytest.mark.docker
def test_local_down_after_local_up_was_killed_removes_a_docker_task(
    edgectl: Edgectl, busybox_image: str
) -> None:
    import docker

    edgectl("local", "up", "--detach", "--clusters", "1", "--nodes-per-cluster", "1")
    edgectl("jobs", "submit", "-f", str(EXAMPLES / "docker-job.yaml"), "--wait")
    job = edgectl.json("jobs", "get", "hello-docker")
    assert job["state"] == "RUNNING" and job["spec"]["image"] == busybox_image
    engine_id = (edgectl.data_dir / "nodes" / "c1-n1" / "engine-id").read_text().strip()
    client = docker.from_env()
    try:

        def containers() -> list[Any]:
            return list(
                client.containers.list(
                    all=True, ignore_removed=True, filters={"label": f"edge.engine={engine_id}"}
                )
            )

        assert [c.status for c in containers()] == ["running"]
        # `local up` itself dies (SIGKILL): `local down` stops what it left from local.json
        supervisor = psutil.Process(_local(edgectl.data_dir)["supervisor"]["pid"])
        supervisor.kill()
        supervisor.wait(30)
        down = edgectl("local", "down")
        assert "stopping node-c1-n1" in down.stderr
        assert "stopped docker task" in down.stderr
        assert containers() == []
        assert system_processes(edgectl.data_dir) == []
    finally:
        client.close()


@pytest.mark.docker
def test_local_down_then_up_runs_every_job_again_in_place(
    edgectl: Edgectl, busybox_image: str, tmp_path: Path
) -> None:
    """`local down` + `local up`: same instance ids on the same nodes, whatever the restart
    policy (a system stop is not a failure), no restart counted, nothing LOST or moved."""
    edgectl("local", "up", "--detach", "--clusters", "1", "--nodes-per-cluster", "2")
    native = tmp_path / "never-native.yaml"
    native.write_text(
        "name: keeper\nruntime: native\nreplicas: 2\nplacement_policy: spread\n"
        'command: ["/bin/sh", "-c", "while true; do sleep 1; done"]\n'
        "resources: {cpu: 0.1, memory_mib: 16}\nrestart_policy: never\n"
    )
    docker_job = tmp_path / "never-docker.yaml"
    docker_job.write_text(
        f"name: boxer\nruntime: docker\nimage: {busybox_image}\n"
        'command: ["sleep", "3600"]\nresources: {cpu: 0.1, memory_mib: 32}\n'
        "restart_policy: never\n"
    )
    for path in (native, docker_job):
        edgectl("jobs", "submit", "-f", str(path), "--wait")

    def placed(name: str) -> dict[str, tuple[str, str]]:
        view = edgectl.json("jobs", "get", name)
        return {i["id"]: (i["state"], i["node_name"]) for i in view["instances"]}

    before = {name: placed(name) for name in ("keeper", "boxer")}
    assert all(s == "RUNNING" for job in before.values() for s, _n in job.values()), before
    assert len({n for _s, n in before["keeper"].values()}) == 2  # spread over both nodes

    assert edgectl("local", "status").returncode == 0
    edgectl("local", "down")
    assert system_processes(edgectl.data_dir) == []
    stopped = edgectl("local", "status", check=False)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    edgectl("local", "up", "--detach")

    def all_running() -> dict[str, dict[str, tuple[str, str]]] | None:
        now = {name: placed(name) for name in ("keeper", "boxer")}
        ok = all(s == "RUNNING" for job in now.values() for s, _n in job.values())
        return now if ok else None

    after = wait_for(all_running, 120, "every instance RUNNING again after local up")
    assert after == before  # same instance ids, same nodes, nothing new
    for name in ("keeper", "boxer"):
        view = edgectl.json("jobs", "get", name)
        assert view["state"] == "RUNNING"
        assert all(i["restarts"] == 0 for i in view["instances"]), view["instances"]

    def events() -> list[dict[str, Any]]:
        out = edgectl("events", "--tail", "0", "-o", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def restarted_again() -> list[dict[str, Any]] | None:
        # the root's view said RUNNING all along (in place); the engines' restarts of the
        # tasks reach it with the cluster's next reports
        again = [e for e in events() if "again after the system was stopped" in e.get("reason", "")]
        return again if len(again) >= 3 else None

    wait_for(
        restarted_again,
        60,
        "the 3 in-place restarts reported to the root",
        context=lambda: "\n".join(
            f"{e.get('kind')} {e.get('state')} {e.get('reason')}" for e in events()[-40:]
        ),
    )
    lost = [e for e in events() if e.get("state") in ("LOST", "FAILED")]
    assert lost == [], lost

    # a node engine that dies makes `local status` fail, naming it
    (engine,) = [p for p in _local(edgectl.data_dir)["processes"] if p["name"] == "node-c1-n2"]
    psutil.Process(engine["pid"]).kill()
    wait_for(
        lambda: (
            not psutil.pid_exists(engine["pid"])
            or psutil.Process(engine["pid"]).status() == psutil.STATUS_ZOMBIE
        ),
        10,
        "the engine gone",
    )
    down = edgectl("local", "status", check=False)
    assert down.returncode == 1, down.stdout + down.stderr
    assert "node-c1-n2" in down.stderr and "down" in down.stderr
    as_json = json.loads(edgectl("local", "status", "-o", "json", check=False).stdout)
    assert as_json["down"] == ["node-c1-n2"]
