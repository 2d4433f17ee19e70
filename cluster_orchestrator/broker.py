"""Mosquitto broker tooling for a cluster: config, process, dynamic-security admin.

This module is the public facade; the implementation lives in
:mod:`cluster_orchestrator.broker_config` (files), :mod:`cluster_orchestrator.broker_process`
(the ``mosquitto`` child process) and :mod:`cluster_orchestrator.broker_dynsec` (the
dynamic-security admin client). See ``docs/broker.md``.

Typical use (``edgectl local up``, the cluster orchestrator, tests)::

    files = write_broker_files(data_dir / "broker", host="127.0.0.1", port=1883,
                               admin_username="admin", admin_password=admin_pw)
    with MosquittoProcess(files, admin_username="admin", admin_password=admin_pw) as broker:
        with broker.admin() as admin:
            creds = admin.ensure_node_client("node-1", generate_password())
"""

from __future__ import annotations

from cluster_orchestrator.broker_config import (
    CONFIG_FILE_NAME,
    DEFAULT_ACL_ACCESS,
    DYNSEC_FILE_NAME,
    LOG_FILE_NAME,
    MAX_ADMIN_PASSWORD_LENGTH,
    BrokerConfigError,
    BrokerFiles,
    BrokerLimits,
    TlsFiles,
    TlsListener,
    find_dynsec_plugin,
    find_mosquitto_binary,
    find_mosquitto_ctrl,
    generate_password,
    write_broker_files,
)
from cluster_orchestrator.broker_dynsec import (
    CONTROL_TOPIC,
    NODE_ID_PATTERN,
    NODE_TOPIC_PREFIX,
    RESPONSE_TOPIC,
    SERVICE_ROLE,
    Acl,
    AclType,
    DynsecAdmin,
    DynsecConnectError,
    DynsecError,
    DynsecTimeout,
    NodeCredentials,
    ServiceCredentials,
    node_acls,
    node_client_id,
    node_role_name,
    node_topic,
    node_username,
    service_acls,
    validate_node_id,
)
from cluster_orchestrator.broker_process import BrokerStartError, MosquittoProcess, find_free_port

__all__ = [
    "CONFIG_FILE_NAME",
    "CONTROL_TOPIC",
    "DEFAULT_ACL_ACCESS",
    "DYNSEC_FILE_NAME",
    "LOG_FILE_NAME",
    "MAX_ADMIN_PASSWORD_LENGTH",
    "NODE_ID_PATTERN",
    "NODE_TOPIC_PREFIX",
    "RESPONSE_TOPIC",
    "SERVICE_ROLE",
    "Acl",
    "AclType",
    "BrokerConfigError",
    "BrokerFiles",
    "BrokerLimits",
    "BrokerStartError",
    "DynsecAdmin",
    "DynsecConnectError",
    "DynsecError",
    "DynsecTimeout",
    "MosquittoProcess",
    "NodeCredentials",
    "ServiceCredentials",
    "TlsFiles",
    "TlsListener",
    "find_dynsec_plugin",
    "find_free_port",
    "find_mosquitto_binary",
    "find_mosquitto_ctrl",
    "generate_password",
    "node_acls",
    "node_client_id",
    "node_role_name",
    "node_topic",
    "node_username",
    "service_acls",
    "validate_node_id",
    "write_broker_files",
]
