"""Ray: connecting (embedded local instance or a cluster), node actors (k nodes each), placement."""

from .actor import NodeActor
from .host import NodeHost
from .pack import NodePack
from .placement import PLACEMENTS, release, spawn_nodes
from .runtime import bind_host, connect, gcs_address, namespace

__all__ = ["PLACEMENTS", "NodeActor", "NodeHost", "NodePack", "bind_host", "connect", "gcs_address",
           "namespace", "release", "spawn_nodes"]
