"""A silent cluster's name cannot be taken over; its own process comes back fine.

Real processes: the root (SQLite) and a cluster orchestrator with its own Mosquitto.
The cluster registers, goes silent (its process stops, the root marks it
UNREACHABLE), an attacker with the shared registration token registers the same name
(refused, 409), and the real cluster, started again on its data directory, re-registers
with its stored identity. Then the cluster loses its disk: its fresh registration is
refused until an operator resets the identity, and then takes the record over.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.harness.system import REGISTRATION_TOKEN, LocalSystem, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEADLINE = 60.0


def test_takeover_refused_and_real_cluster_returns(tmp_path: Path) -> None:
    with LocalSystem(
        tmp_path / "sys",
        root_settings={"cluster_unreachable_after": 2.0, "cluster_lost_after": 600.0},
    ) as system:
        system.start_root()
        cluster = system.add_cluster("c1", nodes=0)
        system.wait_clusters_ready(["c1"], DEADLINE)
        with system.root_client() as http:
            cid = http.get("/api/v1/clusters/c1").json()["id"]

            cluster.process.stop()
            wait_for(
                lambda: http.get(f"/api/v1/clusters/{cid}").json()["liveness"] == "UNREACHABLE",
                DEADLINE,
                "c1 UNREACHABLE",
            )
            attack = httpx.post(
                system.root.url + "/api/v1/clusters/register",
                json={"name": "c1", "url": "http://127.0.0.1:9", "api_token": "stolen-work"},
                headers={"authorization": f"Bearer {REGISTRATION_TOKEN}"},
                timeout=10,
            )
            assert attack.status_code == 409, attack.text
            assert "reset-identity" in attack.json()["detail"]
            assert http.get(f"/api/v1/clusters/{cid}").json()["url"] == cluster.url

            # the real cluster comes back with its stored identity: same id, READY
            cluster.process.start(DEADLINE)
            wait_for(
                lambda: http.get(f"/api/v1/clusters/{cid}").json()["liveness"] == "READY",
                DEADLINE,
                "c1 READY again",
                context=system.logs,
            )
            assert [c["id"] for c in http.get("/api/v1/clusters").json()["clusters"]] == [cid]

            # the cluster loses its disk: a fresh registration, refused (409) ...
            cluster.process.stop()
            for name in ("cluster.db", "cluster.db-wal", "cluster.db-shm"):
                (cluster.process.data_dir / name).unlink(missing_ok=True)
            cluster.process.start(DEADLINE)
            wait_for(
                lambda: "409" in cluster.process.log_path.read_text(errors="replace"),
                DEADLINE,
                "the cluster's fresh registration refused",
            )
            assert "reset-identity" in cluster.process.log_path.read_text(errors="replace")
            # ... until an operator resets the identity: then it takes the record over
            r = http.post("/api/v1/clusters/c1/reset-identity", json={"ttl_s": 300})
            assert r.status_code == 200, r.text

            def took_over() -> bool:
                view = http.get(f"/api/v1/clusters/{cid}").json()
                return view["liveness"] == "READY" and view["identity_reset_until"] is None

            wait_for(took_over, DEADLINE, "c1 re-registered after the reset", context=system.logs)
            assert [c["id"] for c in http.get("/api/v1/clusters").json()["clusters"]] == [cid]
