"""Mosquitto configuration for one cluster: ``mosquitto.conf`` plus a dynamic-security file.

Everything here is plain file generation and binary lookup; nothing starts a broker.
See ``docs/broker.md`` for the resulting configuration and the security model.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_ACL_ACCESS",
    "DYNSEC_FILE_NAME",
    "LOG_FILE_NAME",
    "MAX_ADMIN_PASSWORD_LENGTH",
    "BrokerConfigError",
    "BrokerFiles",
    "BrokerLimits",
    "TlsFiles",
    "TlsListener",
    "find_dynsec_plugin",
    "find_mosquitto_binary",
    "find_mosquitto_ctrl",
    "generate_password",
    "write_broker_files",
]

CONFIG_FILE_NAME = "mosquitto.conf"
DYNSEC_FILE_NAME = "dynamic-security.json"
LOG_FILE_NAME = "mosquitto.log"
PERSISTENCE_FILE_NAME = "mosquitto.db"
MAX_ADMIN_PASSWORD_LENGTH = 128

#: Default ACL access enforced on the dynamic-security file: deny everything that a
#: role does not explicitly allow, except unsubscribing (harmless).
DEFAULT_ACL_ACCESS: dict[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}

_PLUGIN_NAME = "mosquitto_dynamic_security.so"

# Where distributions put the plugin. The multiarch Debian/Ubuntu directory
# (/usr/lib/<triplet>/) is globbed so that arm64/armhf boxes work too.
_PLUGIN_GLOBS = (
    "/usr/lib/*/" + _PLUGIN_NAME,
    "/usr/lib/" + _PLUGIN_NAME,
    "/usr/lib64/" + _PLUGIN_NAME,
    "/usr/lib/mosquitto/" + _PLUGIN_NAME,
    "/usr/local/lib/" + _PLUGIN_NAME,
    "/usr/local/lib/*/" + _PLUGIN_NAME,
    "/usr/local/lib/mosquitto/" + _PLUGIN_NAME,
    "/opt/homebrew/lib/" + _PLUGIN_NAME,
    "/opt/homebrew/opt/mosquitto/lib/" + _PLUGIN_NAME,
)


class BrokerConfigError(RuntimeError):
    """The broker configuration cannot be produced (missing binary, plugin, bad input)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener.

    ``cafile`` is only needed to verify client certificates; set
    ``require_certificate`` to demand them (mutual TLS).
    """

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener beside the plain one: ``host`` and ``port`` and its files.

    With it, ``write_broker_files``'s ``host``/``port`` listener stays plain (meant for
    loopback: the orchestrator's own clients) and nodes connect here.
    """

    host: str
    port: int
    files: TlsFiles


@dataclass(frozen=True)
class BrokerLimits:
    """Resource limits written into ``mosquitto.conf``."""

    #: Largest MQTT packet the broker accepts (bytes). Status messages with a full
    #: task list are a few KiB; 256 KiB leaves room and stops abuse.
    max_packet_size: int = 256 * 1024
    #: Messages queued per client beyond the in-flight window (per persistent session).
    max_queued_messages: int = 1000
    #: QoS 1/2 messages in flight per client.
    max_inflight_messages: int = 20
    #: Simultaneous connections on the listener (-1 = unlimited).
    max_connections: int = -1
    #: Highest keepalive a v5 client may ask for (seconds).
    max_keepalive: int = 300
    #: Drop persistent sessions of clients not seen for this long (mosquitto syntax).
    persistent_client_expiration: str = "14d"
    #: Seconds between saves of the in-memory state (sessions, retained, queued).
    autosave_interval: int = 60


@dataclass(frozen=True)
class BrokerFiles:
    """Paths and listener address of a generated broker configuration."""

    directory: Path
    config_file: Path
    dynsec_file: Path
    log_file: Path
    persistence_file: Path
    host: str
    port: int
    tls: bool
    #: The separate TLS listener, when one was written (``tls_listener=``).
    tls_host: str | None = None
    tls_port: int | None = None


def generate_password(nbytes: int = 32) -> str:
    """Return a strong random password (URL-safe, ``nbytes`` bytes of entropy)."""
    if nbytes < 16:
        raise ValueError("use at least 16 random bytes for a password")
    return secrets.token_urlsafe(nbytes)


def _first_existing(candidates: list[str]) -> Path | None:
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_mosquitto_binary(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``mosquitto`` executable.

    Looks at ``explicit`` first, then ``PATH``, then ``/usr/sbin`` and friends (``sbin``
    is often missing from a non-root ``PATH``). Raises :class:`BrokerConfigError`.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerConfigError(f"mosquitto binary not executable: {path}")
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    path_or_none = _first_existing(
        [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/local/bin/mosquitto",
            "/opt/homebrew/sbin/mosquitto",
            "/opt/homebrew/bin/mosquitto",
        ]
    )
    if path_or_none is None:
        raise BrokerConfigError(
            "mosquitto not found (install the 'mosquitto' package, e.g. apt-get install mosquitto)"
        )
    return path_or_none


def find_mosquitto_ctrl(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``mosquitto_ctrl`` executable (Debian package ``mosquitto-clients``)."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerConfigError(f"mosquitto_ctrl not executable: {path}")
    found = shutil.which("mosquitto_ctrl")
    if found:
        return Path(found)
    path_or_none = _first_existing(
        [
            "/usr/bin/mosquitto_ctrl",
            "/usr/local/bin/mosquitto_ctrl",
            "/opt/homebrew/bin/mosquitto_ctrl",
        ]
    )
    if path_or_none is None:
        raise BrokerConfigError(
            "mosquitto_ctrl not found (install 'mosquitto-clients', "
            "e.g. apt-get install mosquitto-clients)"
        )
    return path_or_none


def find_dynsec_plugin(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate ``mosquitto_dynamic_security.so`` at run time.

    The directory depends on the distribution and architecture
    (``/usr/lib/x86_64-linux-gnu``, ``/usr/lib/aarch64-linux-gnu``, ...). Also looks
    next to the ``mosquitto`` binary's prefix. Raises :class:`BrokerConfigError`.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file():
            return path
        raise BrokerConfigError(f"dynamic-security plugin not found: {path}")
    patterns = list(_PLUGIN_GLOBS)
    try:
        prefix = find_mosquitto_binary().resolve().parent.parent
        patterns += [str(prefix / "lib" / _PLUGIN_NAME), str(prefix / "lib" / "*" / _PLUGIN_NAME)]
    except BrokerConfigError:
        pass
    for pattern in patterns:
        for match in sorted(glob.glob(pattern)):
            if Path(match).is_file():
                return Path(match)
    raise BrokerConfigError(
        f"{_PLUGIN_NAME} not found; it ships with Debian's 'mosquitto' package (>= 2.0)"
    )


def _check_conf_value(name: str, value: str) -> None:
    """Refuse values that would inject extra lines or break mosquitto's parser."""
    if not value or any(ch in value for ch in "\r\n\0") or value != value.strip():
        raise BrokerConfigError(f"invalid value for {name}: {value!r}")


def _init_dynsec_file(
    dynsec_file: Path, admin_username: str, admin_password: str, ctrl: Path
) -> None:
    """Create ``dynsec_file`` with ``mosquitto_ctrl dynsec init``.

    The password is fed on stdin (it prompts twice) rather than on the command line,
    so it never shows up in ``ps``. ``umask`` keeps the file private (it holds hashes).
    """
    tmp = dynsec_file.with_name(dynsec_file.name + ".init")
    tmp.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(ctrl), "dynsec", "init", str(tmp), admin_username],
        input=f"{admin_password}\n{admin_password}\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        umask=0o077,
    )
    # mosquitto_ctrl exits 0 even when it refuses to overwrite, so check the file.
    if proc.returncode != 0 or not tmp.is_file():
        raise BrokerConfigError(
            f"mosquitto_ctrl dynsec init failed (rc={proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    os.replace(tmp, dynsec_file)


def _enforce_default_acl_access(dynsec_file: Path) -> None:
    """Rewrite ``defaultACLAccess`` to :data:`DEFAULT_ACL_ACCESS` if it differs."""
    data = json.loads(dynsec_file.read_text(encoding="utf-8"))
    current = data.get("defaultACLAccess") or {}
    wanted = {**current, **DEFAULT_ACL_ACCESS}
    if current == wanted:
        return
    data["defaultACLAccess"] = wanted
    tmp = dynsec_file.with_name(dynsec_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent="\t")
    os.replace(tmp, dynsec_file)


def _render_config(
    *,
    directory: Path,
    host: str,
    port: int,
    plugin: Path,
    dynsec_file: Path,
    log_file: Path,
    tls: TlsFiles | None,
    tls_listener: TlsListener | None,
    limits: BrokerLimits,
    run_as_user: str | None,
) -> str:
    lines = [
        "# Generated by cluster_orchestrator.broker.write_broker_files; edits are overwritten.",
        "# See docs/broker.md.",
        "",
        "# Global settings: one security configuration for all listeners.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
        "",
        "# Disable Nagle: request/response traffic is ~200x slower without this.",
        "set_tcp_nodelay true",
        "",
        "# Persistence: sessions, queued QoS 1 messages and retained messages survive restarts.",
        "persistence true",
        f"persistence_location {directory}{os.sep}",
        f"persistence_file {PERSISTENCE_FILE_NAME}",
        f"autosave_interval {limits.autosave_interval}",
        f"persistent_client_expiration {limits.persistent_client_expiration}",
        "",
        "# Limits.",
        f"max_packet_size {limits.max_packet_size}",
        f"max_queued_messages {limits.max_queued_messages}",
        f"max_inflight_messages {limits.max_inflight_messages}",
        f"max_keepalive {limits.max_keepalive}",
        "",
        "# Logging.",
        f"log_dest file {log_file}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
    ]
    if run_as_user is not None:
        lines += [
            "# Only matters when started as root: do not switch to the 'mosquitto' user,",
            "# which could not write this directory.",
            f"user {run_as_user}",
            "",
        ]
    # set_tcp_nodelay above is a general option: it applies to every listener below.
    lines += [
        "# Listener." if tls_listener is None else "# Plain listener (the orchestrator's clients).",
        f"listener {port} {host}",
        f"max_connections {limits.max_connections}",
    ]
    if tls is not None:
        lines += _tls_lines(tls)
    if tls_listener is not None:
        lines += [
            "",
            "# TLS listener (nodes).",
            f"listener {tls_listener.port} {tls_listener.host}",
            f"max_connections {limits.max_connections}",
            *_tls_lines(tls_listener.files),
        ]
    return "\n".join(lines) + "\n"


def _tls_lines(tls: TlsFiles) -> list[str]:
    lines = [
        f"certfile {tls.certfile}",
        f"keyfile {tls.keyfile}",
        "tls_version tlsv1.2",
    ]
    if tls.cafile is not None:
        lines.append(f"cafile {tls.cafile}")
    if tls.require_certificate:
        lines.append("require_certificate true")
    return lines


def _check_tls_files(tls: TlsFiles) -> None:
    for name, value in (
        ("certfile", tls.certfile),
        ("keyfile", tls.keyfile),
        ("cafile", tls.cafile),
    ):
        if value is not None:
            _check_conf_value(name, str(value))
            if not Path(value).is_file():
                raise BrokerConfigError(f"TLS {name} not found: {value}")


def write_broker_files(
    directory: Path,
    *,
    host: str,
    port: int,
    admin_username: str,
    admin_password: str,
    tls: TlsFiles | None = None,
    tls_listener: TlsListener | None = None,
    limits: BrokerLimits | None = None,
    plugin_path: str | os.PathLike[str] | None = None,
    mosquitto_ctrl: str | os.PathLike[str] | None = None,
    run_as_user: str | None = None,
) -> BrokerFiles:
    """Write ``mosquitto.conf`` and the dynamic-security JSON into ``directory``.

    The config file is always rewritten (so the port or TLS can change); the
    dynamic-security file is created with ``mosquitto_ctrl dynsec init`` only if it
    does not exist yet, so clients and roles survive a restart ("resume"). In both
    cases ``defaultACLAccess`` is forced to deny-by-default
    (:data:`DEFAULT_ACL_ACCESS`). When resuming, ``admin_password`` is not checked
    against the stored hash. Do not call this while a broker is running on
    ``directory``: the broker owns the dynamic-security file then.

    ``tls`` makes the ``host``/``port`` listener a TLS one; ``tls_listener`` adds a
    second, TLS listener and keeps ``host``/``port`` plain (for the orchestrator's own
    clients on loopback). Every file written here is mode 0600, the directory 0700.

    ``run_as_user`` is written as mosquitto's ``user`` option; by default it is the
    current user, so a broker started as root stays root instead of switching to the
    ``mosquitto`` user, which could not write ``directory``.
    """
    _check_conf_value("host", host)
    _check_conf_value("admin_username", admin_username)
    if any(ch in admin_username for ch in "+#/") or len(admin_username) > 64:
        raise BrokerConfigError(f"invalid admin username: {admin_username!r}")
    if (
        not admin_password
        or len(admin_password.encode("utf-8")) > MAX_ADMIN_PASSWORD_LENGTH
        or not admin_password.isprintable()
    ):
        # mosquitto_ctrl reads the password with a ~200-byte buffer and silently
        # truncates longer ones (it then stores a different password than ours).
        raise BrokerConfigError(
            f"invalid admin password: 1..{MAX_ADMIN_PASSWORD_LENGTH} bytes, printable"
        )
    if not 0 < port < 65536:
        raise BrokerConfigError(f"invalid port: {port}")
    directory = Path(directory).resolve()
    _check_conf_value("directory", str(directory))
    if any(ch.isspace() for ch in str(directory)):
        # mosquitto splits option values on whitespace for some options.
        raise BrokerConfigError(f"broker directory must not contain whitespace: {directory}")
    if tls is not None:
        _check_tls_files(tls)
    if tls_listener is not None:
        if tls is not None:
            raise BrokerConfigError("give tls or tls_listener, not both")
        _check_conf_value("tls host", tls_listener.host)
        if not 0 < tls_listener.port < 65536 or tls_listener.port == port:
            raise BrokerConfigError(f"invalid TLS port: {tls_listener.port}")
        _check_tls_files(tls_listener.files)
    if run_as_user is None:
        run_as_user = pwd.getpwuid(os.geteuid()).pw_name
    _check_conf_value("run_as_user", run_as_user)

    plugin = find_dynsec_plugin(plugin_path)
    _check_conf_value("plugin_path", str(plugin))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)

    dynsec_file = directory / DYNSEC_FILE_NAME
    if not dynsec_file.exists():
        _init_dynsec_file(
            dynsec_file, admin_username, admin_password, find_mosquitto_ctrl(mosquitto_ctrl)
        )
    _enforce_default_acl_access(dynsec_file)
    os.chmod(dynsec_file, 0o600)

    log_file = directory / LOG_FILE_NAME
    config_file = directory / CONFIG_FILE_NAME
    text = _render_config(
        directory=directory,
        host=host,
        port=port,
        plugin=plugin,
        dynsec_file=dynsec_file,
        log_file=log_file,
        tls=tls,
        tls_listener=tls_listener,
        limits=limits or BrokerLimits(),
        run_as_user=run_as_user,
    )
    tmp = config_file.with_name(config_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, config_file)
    return BrokerFiles(
        directory=directory,
        config_file=config_file,
        dynsec_file=dynsec_file,
        log_file=log_file,
        persistence_file=directory / PERSISTENCE_FILE_NAME,
        host=host,
        port=port,
        tls=tls is not None,
        tls_host=tls_listener.host if tls_listener is not None else None,
        tls_port=tls_listener.port if tls_listener is not None else None,
    )
