"""Joining Ray: the one place generate and index connect, so both stages meet the same cluster.

A team's cluster (`deploy/ray_cluster.sh`) is named by `RAY_ADDRESS` and guarded by a token. Ray
itself retries an address nobody answers at for minutes, and answers a missing token with a page of
log lines; both are settings the user fixes, so they end as one clear error here.
"""

from __future__ import annotations

import os
import socket

from curation.core.errors import CurateError


def _check_answers(address: str) -> None:
    """Refuse a `host:port` (or `ray://host:port`) where nothing listens, before Ray retries it for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise CurateError(f"RAY_ADDRESS={address} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise CurateError(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({exc.strerror or exc}): start one"
            " (deploy/ray_cluster.sh start DIR), or unset RAY_ADDRESS to run a local Ray"
        ) from exc


def connect_ray() -> None:
    """Join the cluster `RAY_ADDRESS` names, else start a local Ray; a caller's own `ray.init` wins.

    Raises:
        CurateError: when nothing answers at `RAY_ADDRESS`, or the cluster refuses this process
            (e.g. token authentication without the token).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto":
        _check_answers(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise CurateError(
            f"could not join the Ray cluster at RAY_ADDRESS={address} ({exc}); a cluster with token"
            " authentication also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN_PATH), as"
            " `deploy/ray_cluster.sh env DIR` prints"
        ) from exc
