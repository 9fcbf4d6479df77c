"""Ports for the local servers curate starts (Label Studio, the FiftyOne App).

On a shared machine the configured port is often taken by a colleague's server. Waiting for a
server that cannot bind only ends in a misleading timeout, so the port is checked first and the
nearest free one above it is used instead; the command says so.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

SEARCH = 100
"""How many ports above the wanted one are tried before asking the system for any free port."""


def port_free(port: int, address: str = "127.0.0.1") -> bool:
    """Whether a server could bind the port (servers set SO_REUSEADDR too, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str = "127.0.0.1") -> int:
    """Any port free right now, chosen by the system."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def choose_port(wanted: int, address: str = "127.0.0.1") -> int:
    """`wanted` if free, else the nearest free port above it (easier to recall than a random one)."""
    for port in range(wanted, min(wanted + SEARCH, 65536)):
        if port_free(port, address):
            return port
    return free_port(address)


def moved_note(wanted: int, url: str) -> str | None:
    """The line telling the user that a server is not on the port they asked for, or None if it is."""
    actual = urlsplit(url).port
    return None if actual == wanted else f"port {wanted} was busy; serving on {actual}"
