"""Socket options for every MQTT client of the system (paho `on_socket_open`).

Commands, acks and dynsec requests are small request/response messages: with Nagle's
algorithm on, a message written while an earlier one is unacknowledged waits for the
peer's delayed ACK (~40 ms on Linux). Measured on deploys: p50 111 -> 63 ms with
TCP_NODELAY. Mosquitto sets it on its side (`set_tcp_nodelay true`); this sets it on
ours.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["set_tcp_nodelay"]


def set_tcp_nodelay(client: Any, userdata: Any, sock: Any) -> None:
    """paho `on_socket_open` callback: turn Nagle's algorithm off on a TCP socket
    (TLS included); other transports (websockets, unix sockets) are left alone."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    try:
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket
        return
