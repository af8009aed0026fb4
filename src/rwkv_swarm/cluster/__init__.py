"""Ray: connecting (embedded local instance or a cluster), node actors (k nodes each), placement.

Its names are imported on first use (`util/lazy.py`), so that reading a run's record
(`cluster.runtime`) does not load torch."""

from ..util.lazy import lazy_exports

_EXPORTS = {
    ".actor": ("NodeActor",),
    ".host": ("NodeHost",),
    ".pack": ("NodePack",),
    ".placement": ("PLACEMENTS", "release", "spawn_nodes"),
    ".runtime": ("bind_host", "connect", "gcs_address", "namespace"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["PLACEMENTS", "NodeActor", "NodeHost", "NodePack", "bind_host", "connect",
           "gcs_address", "namespace", "release", "spawn_nodes"]
