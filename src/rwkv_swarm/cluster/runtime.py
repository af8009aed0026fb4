"""Connecting to Ray: an embedded local instance or an existing cluster, and where a node's
sockets should bind."""

from __future__ import annotations

import math
import os

import ray

LOCAL_HOST = "127.0.0.1"  # in local mode every socket stays on the loopback interface


def connect(address: str | None, cpus_needed: float = 1.0, namespace: str | None = None) -> bool:
    """Join Ray: address None starts an embedded local instance (with at least enough
    logical CPUs for `cpus_needed`), "auto" or "host:port" joins an existing cluster.
    Returns True when this call started Ray (and the caller should shut it down)."""
    if ray.is_initialized():
        return False
    if address is None:
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed))
        ray.init(num_cpus=cpus, include_dashboard=False, namespace=namespace,
                 log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"cannot join a Ray cluster at {address!r} ({e}); start one with "
                             "`ray start --head`, or leave the address out for a local Ray") \
                from None
    return True


def gcs_address() -> str:
    """The address another process passes to `connect` to join this Ray instance."""
    return ray.get_runtime_context().gcs_address


def namespace() -> str:
    return ray.get_runtime_context().namespace


def bind_host(local: bool) -> str:
    """Where a node binds: the loopback in local mode, this Ray node's IP on a cluster."""
    return LOCAL_HOST if local else ray.util.get_node_ip_address()
