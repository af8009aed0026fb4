"""Kalman filters, fitness and search-direction beliefs, belief fusion (pure compute)."""
