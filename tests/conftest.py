"""Shared test set-up. RWKV_V7_ON must be set before the official `rwkv` package is imported."""

import os

import pytest

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def prefer_native_teams(candidates):
    """Injected kernel timings: native beats torch, more threads beat fewer. Tests never time
    anything, and every test that steps a model runs the native team."""
    return {name: 1.0 if name == "torch" else 1.0 / (1 + int(name.partition(":")[2] or 0))
            for name in candidates}


@pytest.fixture(autouse=True)
def kernel_paths(tmp_path_factory):
    """Path choices measured by `prefer_native_teams`, cached under a temporary directory."""
    from rwkv_swarm.kernels import paths

    chooser = paths.PathChooser(tmp_path_factory.mktemp("paths"), measure=prefer_native_teams)
    paths.set_default(chooser)
    yield chooser
    paths.set_default(None)


@pytest.fixture
def rigged_paths(kernel_paths):
    """rig(seconds) makes every path measurement answer `seconds(name)` for each candidate;
    returns the list it fills with the sorted candidates of each measurement."""
    def rig(seconds):
        measured: list[list[str]] = []

        def record(candidates):
            measured.append(sorted(candidates))
            return {name: seconds(name) for name in candidates}

        kernel_paths.measure = record
        return measured

    return rig


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs, and the CUDA devices PyTorch sees, so that
    node actors asking for a GPU share can be placed), shut down at its end."""
    import ray
    import torch

    gpus = {"num_gpus": torch.cuda.device_count()} if torch.cuda.is_available() else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             **gpus)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Every in-process host on one torch thread, as a node actor at half a CPU has: with the
    default two, their threads spin against each other and any other job on the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
