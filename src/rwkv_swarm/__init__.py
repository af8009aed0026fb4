"""rwkv-swarm: evolve swarms of RWKV-7 recurrent models with Kalman-guided evolution strategies."""

__version__ = "0.1.0"
