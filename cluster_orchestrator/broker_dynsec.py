"""Administer Mosquitto's dynamic-security plugin over MQTT.

:class:`DynsecAdmin` connects as the dynsec admin, publishes JSON command batches to
``$CONTROL/dynamic-security/v1`` and waits for the matching reply on
``$CONTROL/dynamic-security/v1/response``. One request is in flight at a time (a
lock), every command carries ``correlationData`` so stale replies (for example of a
request that timed out) are recognised and dropped. The paho network thread only
hands replies over through a queue; all work happens in the caller's thread.

Roles and clients for the edge protocol (see ``docs/broker.md``):

* ``node-<id>`` (role and username): publish only ``edge/v1/nodes/<id>/status``,
  ``/events``, ``/presence`` (also its last will) and ``/logs``, subscribe to and
  receive only ``edge/v1/nodes/<id>/commands``.
* ``cluster-service`` (role): subscribe to and receive
  ``edge/v1/nodes/+/status|events|presence|logs``, publish ``edge/v1/nodes/+/commands``.

Node roles are written at every join; `DynsecAdmin.upgrade_node_roles` brings the roles
of nodes that joined under an older version to today's ACLs (the cluster orchestrator
calls it at start), without touching their passwords or connections.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from schemas.mqtt_socket import set_tcp_nodelay

__all__ = [
    "CONTROL_TOPIC",
    "NODE_ID_PATTERN",
    "NODE_TOPIC_PREFIX",
    "RESPONSE_TOPIC",
    "SERVICE_ROLE",
    "Acl",
    "AclType",
    "DynsecAdmin",
    "DynsecConnectError",
    "DynsecError",
    "DynsecTimeout",
    "NodeCredentials",
    "ServiceCredentials",
    "acl_changes",
    "node_acls",
    "node_client_id",
    "node_role_name",
    "node_topic",
    "node_username",
    "service_acls",
    "validate_node_id",
]

log = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
NODE_TOPIC_PREFIX: Final = "edge/v1/nodes"
SERVICE_ROLE: Final = "cluster-service"
NODE_ID_PATTERN: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")

AclType = Literal[
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
]
NodeTopicKind = Literal["status", "events", "presence", "commands", "logs"]
NODE_PUBLISHES: Final = ("status", "events", "presence", "logs")
"""The topics of its own a node publishes on (and the service subscribes to)."""


class DynsecError(RuntimeError):
    """The broker rejected a dynamic-security command (``error`` is its text)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynsec {command} failed: {error}")
        self.command = command
        self.error = error

    @property
    def not_found(self) -> bool:
        """True if the broker said the client/role/group does not exist."""
        return "not found" in self.error.lower()

    @property
    def already_exists(self) -> bool:
        """True if the broker said the client/role/group exists already."""
        return "already exists" in self.error.lower()


class DynsecTimeout(DynsecError):
    """No reply from the broker before the deadline."""


class DynsecConnectError(ConnectionError):
    """The admin client could not connect or authenticate."""


@dataclass(frozen=True)
class Acl:
    """One dynamic-security ACL entry. Higher ``priority`` is evaluated first."""

    acltype: AclType
    topic: str
    allow: bool = True
    priority: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form used in ``createRole`` / ``addRoleACL``."""
        return {
            "acltype": self.acltype,
            "topic": self.topic,
            "allow": self.allow,
            "priority": self.priority,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Acl:
        """Parse an ACL as returned by ``getRole``."""
        return cls(
            acltype=data["acltype"],
            topic=data["topic"],
            allow=bool(data.get("allow", False)),
            priority=int(data.get("priority", 0)),
        )


@dataclass(frozen=True)
class NodeCredentials:
    """MQTT credentials issued to one node. ``password`` is kept out of ``repr``."""

    node_id: str
    username: str
    password: str = field(repr=False)
    role: str
    #: The MQTT client id the node must use (its session key; bound in dynsec).
    client_id: str


@dataclass(frozen=True)
class ServiceCredentials:
    """MQTT credentials of the cluster orchestrator's own client."""

    username: str
    password: str = field(repr=False)
    role: str


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it matches ``[a-zA-Z0-9_-]{1,64}``, else raise ``ValueError``.

    Node ids end up in topics and ACLs, so ``+``, ``#``, ``/`` and the like must never
    get through.
    """
    if not isinstance(node_id, str) or NODE_ID_PATTERN.fullmatch(node_id) is None:
        raise ValueError(f"invalid node id {node_id!r}: must match [a-zA-Z0-9_-]{{1,64}}")
    return node_id


def node_topic(node_id: str, kind: NodeTopicKind) -> str:
    """Return ``edge/v1/nodes/<node_id>/<kind>`` after validating ``node_id``."""
    if kind not in ("status", "events", "presence", "commands", "logs"):
        raise ValueError(f"unknown node topic kind {kind!r}")
    return f"{NODE_TOPIC_PREFIX}/{validate_node_id(node_id)}/{kind}"


def node_username(node_id: str) -> str:
    """MQTT username of a node: ``node-<id>``."""
    return f"node-{validate_node_id(node_id)}"


def node_client_id(node_id: str) -> str:
    """MQTT client id a node must use: ``node-<id>``."""
    return f"node-{validate_node_id(node_id)}"


def node_role_name(node_id: str) -> str:
    """Dynsec role of a node: ``node-<id>``."""
    return f"node-{validate_node_id(node_id)}"


def node_acls(node_id: str) -> list[Acl]:
    """The ACLs of a node's role: its own status/events/presence/logs out, its commands in."""
    acls = [Acl("publishClientSend", node_topic(node_id, kind)) for kind in NODE_PUBLISHES]
    commands = node_topic(node_id, "commands")
    acls += [
        Acl("subscribeLiteral", commands),
        Acl("publishClientReceive", commands),
    ]
    return acls


def service_acls() -> list[Acl]:
    """The ACLs of the ``cluster-service`` role."""
    acls: list[Acl] = []
    for kind in NODE_PUBLISHES:
        pattern = f"{NODE_TOPIC_PREFIX}/+/{kind}"
        acls += [Acl("subscribePattern", pattern), Acl("publishClientReceive", pattern)]
    acls.append(Acl("publishClientSend", f"{NODE_TOPIC_PREFIX}/+/commands"))
    return acls


def _acl_key(acl: Acl) -> tuple[str, str]:
    return (acl.acltype, acl.topic)


def acl_changes(name: str, current: Iterable[Acl], wanted: Iterable[Acl]) -> list[dict[str, Any]]:
    """The dynsec commands that bring role `name` from `current` to exactly `wanted`."""
    have = {_acl_key(a): a for a in current}
    want = {_acl_key(a): a for a in wanted}
    commands: list[dict[str, Any]] = []
    for key, acl in have.items():
        if want.get(key) != acl:
            commands.append(
                {"command": "removeRoleACL", "rolename": name, "acltype": key[0], "topic": key[1]}
            )
    for key, acl in want.items():
        if have.get(key) != acl:
            commands.append({"command": "addRoleACL", "rolename": name, **acl.to_json()})
    return commands


class DynsecAdmin:
    """A small synchronous client for the dynamic-security control API.

    Thread-safe: requests are serialised by a lock. Use as a context manager or call
    :meth:`connect` / :meth:`close`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.timeout = timeout
        self._protocol = protocol
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"dynsec-admin-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
        )
        # a callback that raises must never end the network thread (issue 15)
        self._client.suppress_exceptions = True
        self._client.username_pw_set(username, password)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_socket_open = set_tcp_nodelay
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        # Hand-over from the paho thread: CONNACK results, SUBACK, replies.
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._ready = threading.Event()
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._started = False
        self._ever_connected = False

    # ----- paho callbacks (network thread: hand over only) -----

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack.put(reason_code)
        if not reason_code.is_failure:
            self._ever_connected = True
            # Re-subscribe on every (re)connect: the admin session is not persistent.
            client.subscribe(RESPONSE_TOPIC, qos=1)
        elif not self._ever_connected:
            # Refused on the first attempt (bad credentials): do not let paho retry;
            # connect() reports the failure. Later refusals are retried as usual.
            client.disconnect()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._replies.put(bytes(msg.payload))
        except Exception:  # never let a reply end the network thread
            log.exception("dropped a dynsec reply on %s", msg.topic)

    # ----- connection -----

    def connect(self, timeout: float | None = None) -> DynsecAdmin:
        """Connect, authenticate and subscribe to the reply topic, within ``timeout``.

        Raises :class:`DynsecConnectError` if the broker is unreachable or refuses
        the credentials.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise DynsecConnectError(
                f"cannot reach broker at {self.host}:{self.port}: {exc}"
            ) from exc
        self._client.loop_start()
        self._started = True
        try:
            try:
                rc = self._connack.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DynsecConnectError(
                    f"no CONNACK from {self.host}:{self.port} before the deadline"
                ) from None
            if rc.is_failure:
                raise DynsecConnectError(f"broker refused admin {self.username!r}: {rc}")
            if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                raise DynsecConnectError(f"could not subscribe to {RESPONSE_TOPIC}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        if not self._started:
            return
        self._started = False
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        self._ready.clear()

    def __enter__(self) -> DynsecAdmin:
        if not self._started:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----- raw commands -----

    def execute(
        self, commands: Sequence[Mapping[str, Any]], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Send a batch of commands and return the broker's responses, in order.

        Each response is a dict with ``command`` and optionally ``error`` and
        ``data``; errors are *not* raised here (see :meth:`command`). Raises
        :class:`DynsecTimeout` if no reply arrives in time.
        """
        if not commands:
            return []
        batch_id = uuid.uuid4().hex
        wire = []
        for index, cmd in enumerate(commands):
            item = dict(cmd)
            item["correlationData"] = f"{batch_id}:{index}"
            wire.append(item)
        payload = json.dumps({"commands": wire})
        names = ",".join(str(c.get("command")) for c in commands)
        with self._lock:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                raise DynsecTimeout(names, "not connected to the broker")
            # Drop replies that belong to earlier, timed-out requests.
            while True:
                try:
                    self._replies.get_nowait()
                except queue.Empty:
                    break
            info = self._client.publish(CONTROL_TOPIC, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise DynsecError(names, f"publish failed: {mqtt.error_string(info.rc)}")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DynsecTimeout(names, "no reply before the deadline")
                try:
                    raw = self._replies.get(timeout=remaining)
                except queue.Empty:
                    continue
                responses = self._match(raw, batch_id)
                if responses is not None:
                    if len(responses) != len(commands):
                        raise DynsecError(
                            names, f"expected {len(commands)} responses, got {len(responses)}"
                        )
                    return responses

    @staticmethod
    def _match(raw: bytes, batch_id: str) -> list[dict[str, Any]] | None:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            log.warning("ignoring a non-JSON dynsec reply")
            return None
        responses = doc.get("responses") if isinstance(doc, dict) else None
        if not isinstance(responses, list) or not responses:
            return None
        ours = [
            r
            for r in responses
            if isinstance(r, dict) and str(r.get("correlationData", "")).startswith(batch_id)
        ]
        if not ours:
            return None
        ours.sort(key=lambda r: int(str(r["correlationData"]).rsplit(":", 1)[1]))
        return ours

    def command(self, command: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Run one command; return its ``data`` (or ``{}``); raise :class:`DynsecError`."""
        response = self.execute([{"command": command, **args}], timeout=timeout)[0]
        error = response.get("error")
        if error:
            raise DynsecError(command, str(error))
        data = response.get("data")
        return data if isinstance(data, dict) else {}

    # ----- defaults -----

    def get_default_acl_access(self) -> dict[str, bool]:
        """Return the default access per ACL type (``publishClientSend``, ...)."""
        data = self.command("getDefaultACLAccess")
        return {str(a["acltype"]): bool(a["allow"]) for a in data.get("acls", [])}

    def set_default_acl_access(self, access: Mapping[str, bool]) -> None:
        """Set the default access for the given ACL types."""
        self.command(
            "setDefaultACLAccess",
            acls=[{"acltype": k, "allow": bool(v)} for k, v in access.items()],
        )

    # ----- roles -----

    def create_role(
        self, name: str, acls: Iterable[Acl] = (), *, text_name: str | None = None
    ) -> None:
        """Create a role with the given ACLs. Raises if it exists."""
        args: dict[str, Any] = {"rolename": name, "acls": [a.to_json() for a in acls]}
        if text_name is not None:
            args["textname"] = text_name
        self.command("createRole", **args)

    def delete_role(self, name: str) -> None:
        """Delete a role (clients keep working without its ACLs)."""
        self.command("deleteRole", rolename=name)

    def get_role(self, name: str) -> dict[str, Any] | None:
        """Return the role as stored by the broker, or ``None`` if it does not exist."""
        try:
            data = self.command("getRole", rolename=name)
        except DynsecError as exc:
            if exc.not_found:
                return None
            raise
        role = data.get("role")
        return role if isinstance(role, dict) else None

    def list_roles(self) -> list[str]:
        """Return all role names."""
        data = self.command("listRoles", verbose=False, count=-1, offset=0)
        return [
            str(r) if not isinstance(r, dict) else str(r["rolename"]) for r in data.get("roles", [])
        ]

    def add_role_acl(self, name: str, acl: Acl) -> None:
        """Add one ACL to a role."""
        self.command("addRoleACL", rolename=name, **acl.to_json())

    def remove_role_acl(self, name: str, acltype: AclType, topic: str) -> None:
        """Remove one ACL from a role."""
        self.command("removeRoleACL", rolename=name, acltype=acltype, topic=topic)

    def ensure_role(self, name: str, acls: Sequence[Acl]) -> None:
        """Create ``name`` or bring its ACLs to exactly ``acls`` (idempotent)."""
        role = self.get_role(name)
        if role is None:
            try:
                self.create_role(name, acls)
                return
            except DynsecError as exc:
                if not exc.already_exists:
                    raise
                role = self.get_role(name) or {}
        current = [Acl.from_json(a) for a in role.get("acls", [])]
        for response in self.execute(acl_changes(name, current, acls)):
            if response.get("error"):
                raise DynsecError(str(response.get("command")), str(response["error"]))

    def upgrade_node_roles(self, batch: int = 200) -> list[str]:
        """Bring every ``node-<id>`` role to exactly `node_acls(id)` (roles of nodes that
        joined under an older version lack newer topics, e.g. ``logs``). Passwords and
        live connections are left alone. Returns the roles that changed."""
        data = self.command("listRoles", verbose=True, count=-1, offset=0)
        commands: list[dict[str, Any]] = []
        changed: list[str] = []
        for role in data.get("roles", []):
            if not isinstance(role, dict):
                continue
            name = str(role.get("rolename", ""))
            node_id = name.removeprefix("node-")
            if name == node_id or NODE_ID_PATTERN.fullmatch(node_id) is None:
                continue
            current = [Acl.from_json(a) for a in role.get("acls", []) if isinstance(a, dict)]
            fixes = acl_changes(name, current, node_acls(node_id))
            if fixes:
                changed.append(name)
                commands += fixes
        for start in range(0, len(commands), batch):
            for response in self.execute(commands[start : start + batch]):
                if response.get("error"):
                    raise DynsecError(str(response.get("command")), str(response["error"]))
        return changed

    # ----- clients -----

    def create_client(
        self,
        username: str,
        password: str,
        roles: Iterable[str] = (),
        *,
        client_id: str | None = None,
        text_name: str | None = None,
    ) -> None:
        """Create a client with the given roles. Raises if it exists."""
        args: dict[str, Any] = {
            "username": username,
            "password": password,
            "roles": [{"rolename": r} for r in roles],
        }
        if client_id is not None:
            args["clientid"] = client_id
        if text_name is not None:
            args["textname"] = text_name
        self.command("createClient", **args)

    def delete_client(self, username: str) -> None:
        """Delete a client; the broker disconnects it if it is connected."""
        self.command("deleteClient", username=username)

    def set_client_password(self, username: str, password: str) -> None:
        """Replace a client's password (existing connections are not dropped)."""
        self.command("setClientPassword", username=username, password=password)

    def disable_client(self, username: str) -> None:
        """Disable a client; the broker disconnects it and refuses new connections."""
        self.command("disableClient", username=username)

    def enable_client(self, username: str) -> None:
        """Re-enable a disabled client."""
        self.command("enableClient", username=username)

    def add_client_role(self, username: str, role: str, priority: int = 0) -> None:
        """Attach a role to a client."""
        self.command("addClientRole", username=username, rolename=role, priority=priority)

    def remove_client_role(self, username: str, role: str) -> None:
        """Detach a role from a client."""
        self.command("removeClientRole", username=username, rolename=role)

    def get_client(self, username: str) -> dict[str, Any] | None:
        """Return the client as stored by the broker (no password), or ``None``."""
        try:
            data = self.command("getClient", username=username)
        except DynsecError as exc:
            if exc.not_found:
                return None
            raise
        client = data.get("client")
        return client if isinstance(client, dict) else None

    def list_clients(self) -> list[str]:
        """Return all client usernames."""
        data = self.command("listClients", verbose=False, count=-1, offset=0)
        return [
            str(c) if not isinstance(c, dict) else str(c["username"])
            for c in data.get("clients", [])
        ]

    def set_client_id(self, username: str, client_id: str | None) -> None:
        """Bind ``username`` to one MQTT client id (``None`` removes the binding)."""
        args: dict[str, Any] = {"username": username}
        if client_id is not None:
            args["clientid"] = client_id
        self.command("setClientId", **args)

    def _ensure_client(
        self, username: str, password: str, roles: Sequence[str], client_id: str | None
    ) -> None:
        """Create ``username`` or reset its password, client id, roles and enabled flag."""
        try:
            self.create_client(username, password, roles, client_id=client_id)
            return
        except DynsecError as exc:
            if not exc.already_exists:
                raise
        client = self.get_client(username) or {}
        have = {str(r.get("rolename")) for r in client.get("roles", []) if isinstance(r, dict)}
        # Note: setClientPassword disconnects the client's live connections.
        commands: list[dict[str, Any]] = [
            {"command": "setClientPassword", "username": username, "password": password}
        ]
        if client.get("clientid") != client_id:
            cmd: dict[str, Any] = {"command": "setClientId", "username": username}
            if client_id is not None:
                cmd["clientid"] = client_id
            commands.append(cmd)
        commands += [
            {"command": "removeClientRole", "username": username, "rolename": r}
            for r in sorted(have - set(roles))
        ]
        commands += [
            {"command": "addClientRole", "username": username, "rolename": r}
            for r in roles
            if r not in have
        ]
        if client.get("disabled"):
            commands.append({"command": "enableClient", "username": username})
        for response in self.execute(commands):
            if response.get("error"):
                raise DynsecError(str(response.get("command")), str(response["error"]))

    def ensure_node_client(
        self, node_id: str, password: str, *, bind_client_id: bool = True
    ) -> NodeCredentials:
        """Create or update node ``node_id``'s role and client (idempotent).

        The role is reset to exactly :func:`node_acls`; the client gets ``password``,
        only the node role, and is enabled. With ``bind_client_id`` (the default) the
        username may only connect with MQTT client id ``node-<id>``
        (``NodeCredentials.client_id``): otherwise another node could connect with
        this node's client id, take over its persistent session and make the broker
        discard the commands queued for it.

        If the client exists, its password is reset, which makes the broker
        disconnect its live connections (it reconnects with the new password).
        """
        validate_node_id(node_id)
        role = node_role_name(node_id)
        username = node_username(node_id)
        client_id = node_client_id(node_id) if bind_client_id else None
        self.ensure_role(role, node_acls(node_id))
        self._ensure_client(username, password, [role], client_id)
        return NodeCredentials(
            node_id=node_id,
            username=username,
            password=password,
            role=role,
            client_id=node_client_id(node_id),
        )

    def delete_node_client(self, node_id: str) -> None:
        """Delete a node's client and role if they exist (idempotent)."""
        responses = self.execute(
            [
                {"command": "deleteClient", "username": node_username(node_id)},
                {"command": "deleteRole", "rolename": node_role_name(node_id)},
            ]
        )
        for response in responses:
            error = response.get("error")
            if error and "not found" not in str(error).lower():
                raise DynsecError(str(response.get("command")), str(error))

    def ensure_service_client(self, username: str, password: str) -> ServiceCredentials:
        """Create or update the cluster orchestrator's client with the service role."""
        if not username or any(ch in username for ch in "+#/\0\n"):
            raise ValueError(f"invalid service username {username!r}")
        self.ensure_role(SERVICE_ROLE, service_acls())
        self._ensure_client(username, password, [SERVICE_ROLE], None)
        return ServiceCredentials(username=username, password=password, role=SERVICE_ROLE)
