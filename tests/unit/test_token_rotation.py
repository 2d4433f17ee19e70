"""Token rotation: several accepted join / registration tokens, rejoin by node secret,
removed nodes refused. The core is driven synchronously (no thread), as in
test_cluster_core; the store is an SQLite file so that a second core can reload it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from cluster_orchestrator.core import (
    REMOVED_NODES,
    ClusterCore,
    Forbidden,
    JoinUnauthorized,
    NodeBusy,
    NodeRemoved,
    NotFound,
)
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import EVENTS, NODES
from cluster_orchestrator.settings import ClusterSettings, token_accepted
from cluster_orchestrator.settings import load_settings as load_cluster_settings
from root_orchestrator.settings import RootSettings
from root_orchestrator.settings import load_settings as load_root_settings
from schemas.common import Arch
from schemas.job import InstanceState
from schemas.mqtt import CommandMessage
from schemas.node import JoinRequest, NodeInfo
from store import Store, open_store
from tests.unit.test_cluster_core import Clock, Harness

INFO = NodeInfo(name="a", hostname="a", arch=Arch.ARM64, cpu_cores=4, memory_mib=4096, disk_mib=1)


def rejoin(node_id: str, secret: str) -> JoinRequest:
    return JoinRequest(info=INFO, node_id=node_id, node_secret=SecretStr(secret))


class Cores:
    """Cores over one SQLite file: `new()` builds a fresh core that loads the store."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.clock = Clock()
        self.metrics = Metrics()
        self.open: list[tuple[Store, Persister]] = []

    def new(self) -> Harness:
        store = open_store(self.url)
        persister = Persister(store, self.metrics)
        persister.start()
        self.open.append((store, persister))
        sent: list[CommandMessage] = []

        def publish(message: CommandMessage) -> bool:
            sent.append(message)
            return True

        core = ClusterCore(
            settings=ClusterSettings(name="c1"),
            store=store,
            persister=persister,
            metrics=self.metrics,
            publish=publish,
            mono=self.clock.mono,
            wall=self.clock.wall,
            rng=random.Random(3),
        )
        core.load()
        return Harness(core, self.clock, sent, store, persister, self.metrics)

    def close(self) -> None:
        for store, persister in self.open:
            persister.stop()
            store.close()


@pytest.fixture
def cores(tmp_path: Path) -> Iterator[Cores]:
    made = Cores(tmp_path / "cluster.db")
    yield made
    made.close()


# ------------------------------------------------------------------ cluster: join


def test_rejoin_needs_the_node_secret_not_the_join_token(cores: Cores) -> None:
    h = cores.new()
    grant = h.core.join(JoinRequest(info=INFO))
    # the route found no accepted join token (rotated away): the secret alone is enough
    again = h.core.join(rejoin(grant.node_id, grant.node_secret), join_token_ok=False)
    assert (again.node_id, again.new, again.node_secret) == (
        grant.node_id,
        False,
        grant.node_secret,
    )
    # ... and a wrong or missing secret is refused, token or not
    for token_ok in (False, True):
        with pytest.raises(Forbidden) as info:
            h.core.join(rejoin(grant.node_id, "wrong"), join_token_ok=token_ok)
        assert info.value.reason == "node_secret_wrong"
        with pytest.raises(Forbidden):
            h.core.join(JoinRequest(info=INFO, node_id=grant.node_id), join_token_ok=token_ok)
    assert list(h.core.nodes) == [grant.node_id]
    assert h.metrics.counter("edge_cluster_joins_total", {"result": "rejoined"}) == 1
    assert h.metrics.counter("edge_cluster_joins_total", {"result": "forbidden"}) == 4


def test_new_and_unknown_nodes_need_an_accepted_join_token(cores: Cores) -> None:
    h = cores.new()
    with pytest.raises(JoinUnauthorized) as info:
        h.core.join(JoinRequest(info=INFO), join_token_ok=False)
    assert info.value.reason == "join_token"
    # an id this cluster never saw (its store was reset): admitted under that id only
    # with a join token, otherwise anyone could mint an identity
    with pytest.raises(JoinUnauthorized) as info:
        h.core.join(rejoin("n0123456789abcdef", "s" * 20), join_token_ok=False)
    assert info.value.reason == "node_unknown" and "not known" in str(info.value)
    assert h.core.nodes == {}
    grant = h.core.join(rejoin("n0123456789abcdef", "s" * 20), join_token_ok=True)
    assert grant.node_id == "n0123456789abcdef" and grant.new


def test_removed_node_is_refused_with_its_reason_even_after_a_restart(cores: Cores) -> None:
    h = cores.new()
    grant = h.core.join(JoinRequest(info=INFO))
    removal = h.core.remove_node(grant.node_id)
    assert removal.node.id == grant.node_id and removal.durable is not None
    removal.durable.result(5)
    assert grant.node_id not in h.core.nodes
    with pytest.raises(NotFound):
        h.core.get_node(grant.node_id)
    with pytest.raises(NotFound):
        h.core.remove_node(grant.node_id)

    def refused(core: ClusterCore) -> None:
        for token_ok in (False, True):  # a join token does not bring a removed node back
            with pytest.raises(NodeRemoved) as info:
                core.join(rejoin(grant.node_id, grant.node_secret), join_token_ok=token_ok)
            assert info.value.reason == "node_removed" and "removed" in str(info.value)
            # without its secret nobody learns that the node was removed
            with pytest.raises(Forbidden) as wrong:
                core.join(rejoin(grant.node_id, "guess"), join_token_ok=token_ok)
            assert type(wrong.value) is Forbidden

    refused(h.core)
    assert h.persister.flush(5)
    assert h.store.get(NODES, grant.node_id) is None
    tomb = h.store.get(REMOVED_NODES, grant.node_id)
    assert tomb is not None and grant.node_secret not in json.dumps(tomb)
    kinds = [doc["kind"] for doc in h.store.find(EVENTS, {"node_id": grant.node_id})]
    assert "node.removed" in kinds
    # a restarted cluster still refuses it
    reloaded = cores.new()
    assert reloaded.core.nodes == {} and grant.node_id in reloaded.core.removed_nodes
    refused(reloaded.core)
    # the machine can join again as a new node (fresh identity, with a join token)
    fresh = reloaded.core.join(JoinRequest(info=INFO))
    assert fresh.new and fresh.node_id != grant.node_id


def test_node_with_instances_cannot_be_removed(cores: Cores) -> None:
    h = cores.new()
    node_id = h.join("busy")
    decision = h.place("i1")
    assert decision.accepted, decision
    with pytest.raises(NodeBusy) as info:
        h.core.remove_node(node_id)
    assert "i1" in str(info.value) and "drain" in str(info.value)
    assert node_id in h.core.nodes
    h.run("i1")
    with pytest.raises(NodeBusy):
        h.core.remove_node(node_id)
    h.core.delete_instance("i1")
    h.ack(h.terminates()[-1])
    assert h.inst("i1").state is InstanceState.TERMINATED
    h.core.remove_node(node_id)
    assert node_id not in h.core.nodes


# ------------------------------------------------------------------ settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in (
        "EDGE_CONFIG",
        "EDGE_JOIN_TOKEN",
        "EDGE_JOIN_TOKENS",
        "EDGE_REGISTRATION_TOKEN",
        "EDGE_REGISTRATION_TOKENS",
        "EDGE_OPERATOR_TOKENS",
    ):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_cluster_accepts_join_token_and_join_tokens(clean_env: pytest.MonkeyPatch) -> None:
    assert load_cluster_settings([]).configured_join_tokens() == []  # -> generated file
    clean_env.setenv("EDGE_JOIN_TOKEN", "old-token-1")
    clean_env.setenv("EDGE_JOIN_TOKENS", " new-token-2 , old-token-1,")
    s = load_cluster_settings([])
    assert s.configured_join_tokens() == ["old-token-1", "new-token-2"]
    assert "new-token-2" not in repr(s)
    s = load_cluster_settings(["--join-tokens", '["json-token-3", "json-token-4"]'])
    assert s.configured_join_tokens() == ["old-token-1", "json-token-3", "json-token-4"]


def test_cluster_join_tokens_from_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("join_tokens:\n  - file-token-1\n  - file-token-2\n")
    s = load_cluster_settings(["--config", str(cfg)])
    assert s.configured_join_tokens() == ["file-token-1", "file-token-2"]


@pytest.mark.parametrize("value", ["short", "long-enough,short", '["x"]'])
def test_cluster_join_tokens_must_be_long_enough(clean_env: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValidationError, match="at least 8 characters"):
        load_cluster_settings(["--join-tokens", value])


def test_token_accepted_checks_every_token() -> None:
    accepted = ["first-token", "second-token"]
    assert token_accepted("first-token", accepted) and token_accepted("second-token", accepted)
    assert not token_accepted("second-toke", accepted)
    assert not token_accepted("", accepted) and not token_accepted("first-token", [])


def test_root_registration_tokens(clean_env: pytest.MonkeyPatch) -> None:
    s = RootSettings()
    assert s.accepted_registration_tokens() == [] and not s.registration_token_ok("anything")
    clean_env.setenv("EDGE_REGISTRATION_TOKEN", "old-registration")
    clean_env.setenv("EDGE_REGISTRATION_TOKENS", "new-registration,old-registration")
    s = load_root_settings([])
    assert s.accepted_registration_tokens() == ["old-registration", "new-registration"]
    assert s.registration_token_ok("old-registration")
    assert s.registration_token_ok("new-registration")
    assert not s.registration_token_ok("new-registratio") and not s.registration_token_ok("")
    assert "new-registration" not in repr(s)
    s = load_root_settings(["--registration-tokens", '["json-registration"]'])
    assert s.accepted_registration_tokens() == ["old-registration", "json-registration"]
    with pytest.raises(ValidationError, match="at least 8 characters"):
        load_root_settings(["--registration-tokens", "ok-length,short"])


def test_help_texts_describe_the_rotation() -> None:
    from cluster_orchestrator.settings import build_parser as cluster_parser
    from root_orchestrator.settings import build_parser as root_parser

    cluster_help = " ".join(cluster_parser().format_help().split())
    assert "--join-tokens" in cluster_help and "rolling rotation" in cluster_help
    assert "rejoins with its own node secret" in cluster_help
    root_help = " ".join(root_parser().format_help().split())
    assert "--registration-tokens" in root_help and "rolling rotation" in root_help
