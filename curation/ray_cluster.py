"""Joining Ray: the one place generate and index connect, so both stages meet the same cluster."""

from __future__ import annotations

import os


def connect_ray() -> None:
    """Join the cluster `RAY_ADDRESS` names, else start a local Ray; a caller's own `ray.init` wins."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
