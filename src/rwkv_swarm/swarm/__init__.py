"""User API, topology, coordinator, environments, traces, CLI."""
