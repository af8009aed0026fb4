"""The swarm: user API (`Swarm`, `SwarmConfig`, `Signal`), topology, coordinator, traces, CLI."""

from .api import Swarm
from .config import Migration, Resources, Scheduled, SwarmConfig, Topology, Variation
from .coordinator import Coordinator
from .signals import Signal
from .trace import EventLog, TraceWriter, load_trace, read_events

__all__ = ["Coordinator", "EventLog", "Migration", "Resources", "Scheduled", "Signal", "Swarm",
           "SwarmConfig", "Topology", "TraceWriter", "Variation", "load_trace", "read_events"]
