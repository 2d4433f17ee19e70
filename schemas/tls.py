"""TLS client contexts for the MQTT clients of the cluster and the node engine.

One policy for every client that talks to a cluster broker over TLS: TLS 1.2 or
newer, the broker's certificate must chain to the given CA (a file, PEM text, or the
system store when neither is given) and must name the host the client connects to, or
``server_name`` when one is configured (a broker reached by an IP address whose
certificate only names a DNS name).

paho checks the certificate during its handshake but reports a failure only as a
generic connect failure. `last_tls_error` returns the reason of the last failed
handshake of a context made here, so the caller can log "certificate verify failed:
self-signed certificate in certificate chain" instead of "cannot reach the broker".

Importing this module imports ``ssl`` (OpenSSL): the node engine imports it only when
its broker asks for TLS (see `node_engine.lean`).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

__all__ = ["TlsSetupError", "client_context", "describe_tls_error", "last_tls_error"]


class TlsSetupError(ValueError):
    """The CA material cannot be loaded (missing file, not PEM, no certificate)."""


class _ReportingSocket(ssl.SSLSocket):
    """An SSLSocket that remembers why its handshake failed on its context."""

    def do_handshake(self, block: bool = False) -> None:
        """Run the handshake; record a failure on the context, then re-raise it."""
        try:
            super().do_handshake(block)
        except ssl.SSLError as exc:
            context = self.context
            if isinstance(context, _ClientContext):
                context.last_error = describe_tls_error(exc)
            raise


class _ClientContext(ssl.SSLContext):
    """SSLContext that verifies a fixed server name (when set) instead of the host."""

    server_name: str | None = None
    last_error: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap as the base class does, with `server_name` as the name to verify."""
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )


def describe_tls_error(exc: BaseException) -> str:
    """One line for an operator: what OpenSSL refused and why."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"TLS certificate verification failed: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS error: {exc}"


def client_context(
    *,
    cafile: Path | None = None,
    cadata: str | None = None,
    server_name: str | None = None,
) -> ssl.SSLContext:
    """A verifying client context (CA file, else PEM text, else the system store).

    Hostname checking stays on: the certificate must name `server_name` when given,
    else the host the client connects to. Raises `TlsSetupError` when the CA cannot be
    loaded.
    """
    context = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _ReportingSocket
    context.server_name = server_name or None
    try:
        if cafile is not None:
            context.load_verify_locations(cafile=str(cafile))
        elif cadata:
            context.load_verify_locations(cadata=cadata)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        source = str(cafile) if cafile is not None else "the CA sent by the cluster"
        raise TlsSetupError(f"cannot load the CA certificate(s) from {source}: {exc}") from None
    if (cafile is not None or cadata) and not context.get_ca_certs():
        source = str(cafile) if cafile is not None else "the CA sent by the cluster"
        raise TlsSetupError(f"no CA certificate found in {source}")
    return context


def last_tls_error(context: ssl.SSLContext | None) -> str | None:
    """The reason of the last failed handshake of a `client_context`, then forget it."""
    if not isinstance(context, _ClientContext):
        return None
    error, context.last_error = context.last_error, None
    return error
