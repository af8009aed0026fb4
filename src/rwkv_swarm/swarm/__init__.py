"""The swarm: user API (`Swarm`, `SwarmConfig`, `Signal`), topology, coordinator, traces, CLI.

Its names are imported on first use (`util/lazy.py`): a CLI verb that only reads a run's files
does not load torch or Ray."""

from ..util.lazy import lazy_exports

_EXPORTS = {
    ".api": ("Swarm",),
    ".config": ("Migration", "Resources", "Scheduled", "SwarmConfig", "Topology", "Variation"),
    ".coordinator": ("Coordinator",),
    ".signals": ("Signal",),
    ".trace": ("EventLog", "TraceWriter", "load_trace", "read_events"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["Coordinator", "EventLog", "Migration", "Resources", "Scheduled", "Signal", "Swarm",
           "SwarmConfig", "Topology", "TraceWriter", "Variation", "load_trace", "read_events"]
