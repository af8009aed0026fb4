"""Ray: connecting (embedded local instance or a cluster), one actor per node, placement."""

from .actor import NodeActor
from .host import NodeHost
from .placement import PLACEMENTS, release, spawn_nodes
from .runtime import bind_host, connect, gcs_address, namespace

__all__ = ["PLACEMENTS", "NodeActor", "NodeHost", "bind_host", "connect", "gcs_address",
           "namespace", "release", "spawn_nodes"]
