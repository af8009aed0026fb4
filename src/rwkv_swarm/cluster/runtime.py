"""Connecting to Ray: an embedded local instance or an existing cluster, where a node's sockets
should bind, and what another process needs to join the same Ray (its auth mode and token).
Ray is imported where it is used: a CLI verb that reads a run's record loads none of it."""

from __future__ import annotations

import hashlib
import math
import os
import socket

LOCAL_HOST = "127.0.0.1"  # in local mode every socket stays on the loopback interface
JOIN_ADVICE = "start one with `ray start --head`, or leave the address out for a local Ray"


def connect(address: str | None, cpus_needed: float = 1.0, namespace: str | None = None,
            advice: str = JOIN_ADVICE) -> bool:
    """Join Ray: address None starts an embedded local instance (with at least enough
    logical CPUs for `cpus_needed`), "auto" or "host:port" joins an existing cluster
    (ValueError with `advice` when that fails), with token auth on when a Ray token is at
    hand and RAY_AUTH_MODE does not say otherwise (a cluster without auth accepts it too).
    Returns True when this call started Ray (and the caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed))
        # "local": always a new instance of our own, never a cluster that RAY_ADDRESS or a
        # record left by `ray start` points to (which would also refuse num_cpus)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace=namespace,
                 log_to_driver=False, configure_logging=False)
    else:
        if "RAY_AUTH_MODE" not in os.environ and token_fingerprint() is not None:
            use_token_auth()  # as ray.init does for "auto", so a token cluster lets us in
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"cannot join a Ray cluster at {address!r} ({e}); {advice}") \
                from None
    return True


def gcs_address() -> str:
    """The address another process passes to `connect` to join this Ray instance."""
    import ray

    return ray.get_runtime_context().gcs_address


def embedded() -> bool:
    """Whether this process started the Ray it is in (which then ends with it)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "head", False))


def namespace() -> str:
    import ray

    return ray.get_runtime_context().namespace


def bind_host(local: bool) -> str:
    """Where a node binds: the loopback in local mode, this Ray node's IP on a cluster."""
    import ray

    return LOCAL_HOST if local else ray.util.get_node_ip_address()


# -- what another process needs to join ------------------------------------------------------------
# Ray turns token authentication on for a local cluster that ray.init() starts (the token in
# ~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), but a process that joins it by
# address does not turn it on by itself: it has to be told, or Ray refuses it.

def auth_mode() -> str:
    """This process's Ray authentication mode: "token" or "disabled"."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"


def token_fingerprint() -> str | None:
    """A short hash of the auth token Ray would use in this process (None: no token), to tell
    whether two processes hold the same token without writing the token anywhere."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since it last looked
    token = loader.get_raw_token(ignore_auth_mode=True)
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


def use_token_auth(token_path: str | None = None) -> None:
    """Turn Ray's token authentication on for this process (before it joins a cluster that
    requires it); `token_path` is where the token is, unless this process names one itself."""
    if token_path and not (os.environ.get("RAY_AUTH_TOKEN")
                           or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray caches its config from the environment: read it again


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at `address` ("host:port"): a dead cluster
    is told at once, not after Ray's own retries."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
