"""Worlds of a user's own, defined outside rwkv_swarm, for tests/test_own_world.py."""
