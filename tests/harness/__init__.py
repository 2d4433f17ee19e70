"""A reusable stand-in for the cluster side, for node engine tests and benchmarks.

* `JoinServer`: the cluster's ``POST /api/v1/nodes`` join endpoint (stdlib HTTP server
  in a thread) that checks the token and issues per-node MQTT credentials via dynsec.
* `ServiceClient`: an MQTT client with the cluster service role that sends commands and
  collects status, events, acks and presence, with `wait_for(predicate, timeout)`.
* `NodeEngineProcess`: runs a real ``node-engine`` subprocess.
* `FakeCluster`: the three together on one broker.
"""

from tests.harness.cluster import FakeCluster
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.join_server import JoinServer
from tests.harness.service import ServiceClient, WaitTimeout

__all__ = ["FakeCluster", "JoinServer", "NodeEngineProcess", "ServiceClient", "WaitTimeout"]
