"""A node's device: one decision (resources.gpus -> NodeConfig.device), threaded through the
model, the rollout, the strategy and its beliefs; GPU configs that could not run are refused
before any actor starts. Runs on the CPU: torch's "meta" device stands in for another device
where only shapes and devices matter (tests/test_kernels_cuda.py runs the real thing)."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from tracking_env import TrackingEnv

from rwkv_swarm import Swarm, SwarmConfig
from rwkv_swarm.cluster.placement import check_gpus, gpu_slots, spawn_nodes
from rwkv_swarm.kalman import DirectionBelief
from rwkv_swarm.kernels import RWKV7, Population, RWKV7Config, native
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node.kalman_es import KalmanES
from rwkv_swarm.node.rollout import rollout
from rwkv_swarm.util.configio import ConfigError

MODEL = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=3, output_dim=2)
SIGNAL_ENV = {"kind": "signal", "lags": 3}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def swarm(tmp_path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 2, "env": SIGNAL_ENV, "es": KalmanESConfig(population=8),
                          "run_dir": str(tmp_path), **kw})


@pytest.mark.parametrize("gpus, device", [(0, "cpu"), (0.0, "cpu"), (0.5, "cuda"), (1, "cuda"),
                                          (2, "cuda")])
def test_resources_gpus_decide_every_nodes_device(tmp_path, gpus, device):
    config = swarm(tmp_path, resources={"gpus": gpus})
    assert config.resources.device == device
    assert [c.device for c in config.node_configs()] == [device, device]


def test_a_node_config_refuses_a_device_it_does_not_know():
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\), got 'tpu'"):
        NodeConfig(model=MODEL, device="tpu")


@no_cuda
def test_a_node_on_cuda_is_refused_where_pytorch_sees_no_cuda_device():
    with pytest.raises(ValueError, match=r"device 'cuda' \(a swarm's resources.gpus > 0\) needs "
                                         r"a CUDA device.*expected device 'cpu'"):
        Node(NodeConfig(model=MODEL, device="cuda"), TrackingEnv())


def test_a_node_on_the_cpu_keeps_every_tensor_there():
    node = Node(NodeConfig(model=MODEL, device="cpu", es=KalmanESConfig(population=8)),
                TrackingEnv())
    node.generation()
    assert node.device == torch.device("cpu") == node.strategy.device
    assert {p.device for p in node.model.parameters()} == {torch.device("cpu")}
    assert node.live_state.device == torch.device("cpu")
    assert node.strategy.direction_belief.mean.device == torch.device("cpu")


@pytest.mark.parametrize("machines, gpus, slots", [
    ([1.0], 0.5, 2), ([1.0], 0.4, 2), ([1.0], 0.1, 10), ([1.0], 1, 1), ([2.0, 1.0], 0.5, 6),
    ([4.0], 2, 2), ([3.0, 1.0], 2, 1), ([0.0], 0.5, 0), ([], 1, 0)])
def test_gpu_slots_fit_a_share_within_one_gpu_and_whole_gpus_within_one_machine(
        machines, gpus, slots):
    assert gpu_slots(machines, gpus) == slots


def test_nodes_are_refused_a_gpu_share_their_device_does_not_match(tmp_path):
    cpu_nodes = swarm(tmp_path).node_configs()
    with pytest.raises(ValueError, match=r"nodes \[0, 1\] run on a device that gpus=0.5 does "
                                         r"not give them"):
        spawn_nodes(cpu_nodes, "mismatch", local=True, gpus=0.5)
    gpu_nodes = swarm(tmp_path, resources={"gpus": 1}).node_configs()
    with pytest.raises(ValueError, match=r"device 'cuda' needs gpus > 0"):
        spawn_nodes(gpu_nodes, "mismatch", local=True, gpus=0.0)


@no_cuda
def test_a_launch_asking_for_gpus_is_refused_before_any_actor_starts(ray_session, tmp_path):
    config = swarm(tmp_path, resources={"gpus": 0.5, "cpus": 0.5})
    with pytest.raises(ConfigError, match=r"resources.gpus: got 0.5, but PyTorch sees no CUDA "
                                          r"device on this machine .*expected 0") as info:
        spawn_nodes(config.node_configs(), "gpu-refused", local=True, gpus=0.5,
                    prefix="gpu-refused/")
    assert info.value.key == "resources.gpus"
    for name in ("gpu-refused/node-0", "gpu-refused/node-1"):
        with pytest.raises(ValueError):
            ray.get_actor(name)
    with pytest.raises(ConfigError, match=r"resources.gpus: got 0.5, but PyTorch sees no CUDA"):
        Swarm.launch(config)
    # a cluster (not this machine) is asked for its GPUs: this Ray has none
    with pytest.raises(ConfigError, match=r"got 0.5 per node for 2 nodes \(2 actors of 0.5 "
                                          r"GPUs\), but the Ray cluster's GPUs per machine "
                                          r"\[0.0\] hold 0 such actors"):
        check_gpus(2, 0.5, local=False)
    with pytest.raises(ConfigError, match=r"got 0.5 per node for 4 nodes \(2 actors of 1 GPUs"):
        check_gpus(4, 0.5, local=False, per_actor=2)
    # packed, an actor asks for its nodes' sum: 3 x 0.4 = 1.2 GPUs, which Ray cannot place
    with pytest.raises(ConfigError, match=r"0.4 per node x 3 nodes per actor = 1.2 GPUs per "
                                          r"actor, which Ray cannot place"):
        check_gpus(6, 0.4, local=False, per_actor=3)
    check_gpus(2, 0.0, local=True)  # CPU nodes need no GPU


def test_a_direction_belief_lives_on_its_device_and_a_dict_of_it_on_none():
    b = DirectionBelief(4, device="meta")
    assert b.direction.device.type == "meta" and b.confidence.device.type == "meta"
    cpu = DirectionBelief(4)
    cpu.update(torch.ones(4), torch.ones(4))
    d = cpu.to_dict()
    assert "device" not in d
    moved = DirectionBelief.from_dict(d, device="meta")
    assert moved.mean.device.type == "meta" and moved.var.device.type == "meta"
    assert DirectionBelief.from_dict(d).mean.device.type == "cpu"


def test_a_strategy_keeps_its_beliefs_on_the_models_device():
    model = RWKV7(MODEL).to("meta")
    strategy = KalmanES(model, KalmanESConfig(population=8))
    assert strategy.device.type == "meta"
    assert strategy.direction_belief.direction.device.type == "meta"
    strategy.world_changed()  # a new belief after a surprise: on the device too
    assert strategy.direction_belief.direction.device.type == "meta"


@pytest.mark.parametrize("compact", [0.0, 0.9])
def test_a_rollout_hands_observations_on_the_states_device(compact):
    state = RWKV7(MODEL).zero_state(6).to("meta")
    seen = []

    def policy(obs, st, rows=None):
        seen.append(obs.device.type)
        return torch.zeros(obs.shape[0], 2), st  # actions leave the device for the host

    r = rollout(TrackingEnv(), policy, 6, 1, state, 5, compact=compact)
    assert seen == ["meta"] * 5 and r.state.device.type == "meta"
    assert np.isfinite(r.returns).all()


def test_the_row_path_never_picks_the_native_kernel_for_another_device(rigged_paths):
    measured = rigged_paths(lambda name: 1.0 if name == "torch" else 0.5)
    cpu = Population(RWKV7(MODEL), seed=1, sigma=0.05, size=8)
    meta = Population(RWKV7(MODEL).to("meta"), seed=1, sigma=0.05, size=8)
    assert meta.row_path(8) == "torch"
    if native.load() is not None:  # on the CPU the native kernel wins, as measured
        assert cpu.row_path(8).startswith("native:")
        assert measured and all("graph" not in names for names in measured)
    x = torch.zeros(8, 3, device="meta")
    with pytest.raises(ValueError, match=r"row path 'native:1' cannot run a meta input"):
        meta.step_rows(x, meta.model.zero_state(8), list(range(8)), path="native:1")
    with pytest.raises(ValueError, match=r"row path 'graph' cannot run a cpu input"):
        cpu.step_rows(torch.zeros(8, 3), cpu.model.zero_state(8), list(range(8)), path="graph")


@no_cuda
def test_a_checkpoint_from_a_gpu_node_is_taken_up_on_the_device_the_restore_names():
    import msgpack

    from rwkv_swarm.node.exchange import fingerprint

    node = Node(NodeConfig(model=MODEL, es=KalmanESConfig(population=8), seed=4), TrackingEnv())
    node.generation()
    d = msgpack.unpackb(node.checkpoint(), raw=False, strict_map_key=False)
    d["config"]["device"] = "cuda"  # as a node on a GPU writes it: its tensors as host copies
    blob = msgpack.packb(d, use_bin_type=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Node.restore(blob, TrackingEnv())
    restored = Node.restore(blob, TrackingEnv(), device="cpu")
    assert restored.config.device == "cpu"
    assert fingerprint(restored.model) == fingerprint(node.model)
    assert restored.generation()["fitness_mean"] == node.generation()["fitness_mean"]


def test_graph_rows_copy_in_pad_to_buckets_copy_out_and_recapture_on_new_weights():
    """`CudaGraphRows` with an eager stand-in for the capture (replay = the captured step on
    the static buffers): its buffers, buckets and copies, on the CPU."""
    from torch.testing import assert_close

    from rwkv_swarm.kernels import cuda_graph, rows

    captures = []

    def eager_capture(step, pop, x, bucket, key):
        g = cuda_graph.buffers(pop, x, bucket, key)

        class Replay:
            def replay(self):
                g.out.copy_(step(pop, g.x, g.state, g.members, g.new))

        g.graph, g.out = Replay(), step(pop, g.x, g.state, g.members, g.new)
        captures.append(bucket)
        return g

    pop = Population(RWKV7(MODEL, init="live"), seed=3, sigma=0.05, size=8,
                     include=("matrices", "head"))
    graphs = cuda_graph.CudaGraphRows(rows.step_torch, capture=eager_capture)
    gen = torch.Generator().manual_seed(0)
    for R in (8, 5, 3, 1, 6):
        x = torch.randn(R, 3, generator=gen)
        members = torch.randint(0, 8, (R,), generator=gen)
        state = pop.model.zero_state(R)
        state.wkv.normal_(generator=gen)
        before = state.clone()
        expected_state = state.empty_like()
        expected = rows.step_torch(pop, x, state, members, expected_state)
        out = state.empty_like()
        assert_close(graphs(pop, x, state, members, out), expected, atol=1e-5, rtol=1e-5)
        assert_close(out.wkv, expected_state.wkv, atol=1e-5, rtol=1e-5)
        assert state.equal(before)  # the given state is only read
        assert graphs(pop, x, state, members, state).shape == (R, 2)  # in place
        assert_close(state.att_x_prev, expected_state.att_x_prev, atol=1e-5, rtol=1e-5)
    assert captures == [8, 4, 1]  # one per bucket: 5 and 6 rows reuse the 8-row buffers
    with torch.no_grad():
        pop.model.head.weight.data = pop.model.head.weight.data * 1.5  # reallocated
    x, members = torch.randn(2, 3, generator=gen), torch.tensor([1, 6])
    state = pop.model.zero_state(2)
    assert_close(graphs(pop, x, state, members, state.empty_like()),
                 rows.step_torch(pop, x, state, members, state.empty_like()))
    assert captures == [8, 4, 1, 2]


def test_the_cuda_measurements_build_and_run_their_candidates(kernel_paths, monkeypatch):
    """The CUDA-only choices' code, run on the CPU with CUDA's calls stubbed: each candidate
    is called; one that fails (no CUDA streams here) is never chosen."""
    from rwkv_swarm.kernels import cuda_graph, rows
    from rwkv_swarm.kernels.low_rank import cuda_low_rank_form

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "stub")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ran = {}

    def measure(candidates):
        for name, fn in candidates.items():
            try:
                fn()
                ran[name] = 1.0 if name in ("torch", "rank1") else 0.5
            except Exception:  # noqa: BLE001 - the graph path needs real CUDA streams
                ran[name] = float("inf")
        return dict(ran)

    kernel_paths.measure = measure
    assert cuda_low_rank_form(torch.Size([4, 6, 10]), 7, 2, torch.device("cpu")) == "bmm"
    assert ran == {"rank1": 1.0, "bmm": 0.5}
    ran.clear()
    pop = Population(RWKV7(MODEL), seed=1, sigma=0.05, size=8)
    assert rows._cuda_path(pop, 8) == "torch"
    assert ran == {"torch": 1.0, "graph": float("inf")}
    ran.clear()
    model = RWKV7(MODEL)
    model.use_native = False  # the CPU's own wkv choice stays out of this measurement
    assert cuda_graph.step_path(model, 3) == "torch"
    assert ran == {"torch": 1.0, "graph": float("inf")}


@pytest.mark.skipif(native.load() is None, reason="the native library could not be built")
def test_a_forced_row_kernel_step_path_still_runs_a_cpu_population():
    from torch.testing import assert_close

    model = RWKV7(MODEL, init="live")
    pop = Population(model, seed=1, sigma=0.05, size=8)
    x, members = torch.randn(8, 3), list(range(8))
    expected, _ = pop.step_rows(x, model.zero_state(8), members, path="torch")
    model.step_path = "rows:1"
    assert pop.row_path(8) == "rows:1"
    assert_close(pop.step_rows(x, model.zero_state(8), members)[0], expected, atol=2e-5,
                 rtol=2e-5)
