"""Ray: connect, placement, endpoint discovery, restarts, checkpoints."""
