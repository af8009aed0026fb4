"""Shared test set-up. RWKV_V7_ON must be set before the official `rwkv` package is imported.

Torch runs on one intra-op thread: the suite shares its two cores with Ray's node actors, and
two spinning OpenMP threads per process under other load slowed a coordinator test 180x.
"""

import os

import pytest
import torch

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs), shut down at its end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
