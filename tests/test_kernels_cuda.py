"""The CUDA paths (run only where a CUDA device is present; skipped, saying so, elsewhere):
exactness against the CPU at the oracle tests' tolerances, the population step's CUDA graph,
a rollout and a node on the device, a 2-node consensus swarm on half a GPU each."""

from __future__ import annotations

import pytest
import torch
from test_kernels_model import CONTROL, TOKEN, nontrivial
from torch.testing import assert_close

from rwkv_swarm.kernels import GROUPS, Population, RWKV7Config

# the node and swarm layers (zmq, gymnasium, Ray) are imported by the tests that use them, so
# that the kernel tests run where only torch is installed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
def test_cuda_forward_and_step_match_cpu(cfg):
    cpu = nontrivial(cfg)
    gpu = nontrivial(cfg).cuda()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (3, 20), generator=g) if cfg.token_mode \
        else torch.randn(3, 20, cfg.input_dim, generator=g)
    out_cpu, st_cpu = cpu(x)
    out_gpu, st_gpu = gpu(x.cuda())
    assert_close(out_gpu.cpu(), out_cpu, **TOL)
    assert_close(st_gpu.wkv.cpu(), st_cpu.wkv, **TOL)
    state = gpu.zero_state(3)
    for t in range(20):
        out, state = gpu.step(x[:, t].cuda(), state)
    assert_close(out.cpu(), out_cpu[:, -1], **TOL)


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
def test_cuda_graph_step_equals_eager_step_and_sees_weight_updates(cfg):
    model = nontrivial(cfg).cuda()
    g = torch.Generator().manual_seed(1)
    xs = torch.randint(0, 40, (12, 2), generator=g) if cfg.token_mode \
        else torch.randn(12, 2, cfg.input_dim, generator=g)
    eager_state = graph_state = model.zero_state(2)
    model.enable_cuda_graph_step(batch=2)
    for x in xs.cuda():
        before = graph_state.clone()
        eager_out, eager_state = model.step_torch(x, eager_state)
        graph_out, graph_state = model.step(x, graph_state)
        assert before.equal(graph_state) is False  # a new state came back
        assert_close(graph_out, eager_out, **TOL)
    with torch.no_grad():
        model.head.weight.mul_(1.5)
    assert_close(model.step(xs[0].cuda(), graph_state)[0],
                 model.step_torch(xs[0].cuda(), graph_state)[0], **TOL)


def test_a_cuda_step_replays_a_graph_where_measured_faster(rigged_paths):
    measured = rigged_paths(lambda name: 0.5 if name == "graph" else 1.0)
    model = nontrivial(CONTROL).cuda()
    x = torch.randn(3, CONTROL.input_dim, generator=torch.Generator().manual_seed(6)).cuda()
    state = model.zero_state(3)
    state.wkv.normal_()
    eager_out, eager_state = model.step_torch(x, state)
    out, new = model.step(x, state)
    assert measured == [["graph", "torch"]] and model.chosen_step_path(3) == "graph"
    assert 3 in model._graphs
    assert_close(out, eager_out, **TOL)
    assert_close(new.wkv, eager_state.wkv, **TOL)


@pytest.mark.parametrize("form", ["rank1", "bmm"])
def test_cuda_population_forward_matches_cpu(kernel_paths, form):
    kernel_paths.measure = lambda cands: {name: 0.5 if name == form else 1.0 for name in cands}
    cpu = nontrivial(CONTROL)
    gpu = nontrivial(CONTROL).cuda()
    x = torch.randn(8, 2, 10, CONTROL.input_dim, generator=torch.Generator().manual_seed(2))
    out_cpu, _ = Population(cpu, seed=4, sigma=0.05, size=8, include=GROUPS).forward(x)
    out_gpu, _ = Population(gpu, seed=4, sigma=0.05, size=8, include=GROUPS).forward(x.cuda())
    assert_close(out_gpu.cpu(), out_cpu, **TOL)


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
def test_cuda_population_step_by_rows_matches_cpu(cfg):
    cpu, gpu = nontrivial(cfg), nontrivial(cfg).cuda()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 40, (5,), generator=g) if cfg.token_mode \
        else torch.randn(5, cfg.input_dim, generator=g)
    members = [3, 0, 7, 7, 2]
    out_cpu, st_cpu = Population(cpu, seed=4, sigma=0.05, size=8, include=GROUPS).step_rows(
        x, cpu.zero_state(5), members)
    out_gpu, st_gpu = Population(gpu, seed=4, sigma=0.05, size=8, include=GROUPS).step_rows(
        x.cuda(), gpu.zero_state(5), members)
    assert_close(out_gpu.cpu(), out_cpu, **TOL)
    assert_close(st_gpu.wkv.cpu(), st_cpu.wkv, **TOL)


# -- the population step as a CUDA graph, rollouts and nodes on the device -----------------------

SIGNAL_ENV = {"kind": "signal", "lags": 3}
NODE_MODEL = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=3, output_dim=2)


TRACKING = RWKV7Config(n_embd=64, n_layer=2, head_size=32, input_dim=3, output_dim=2)


def population(device: str, cfg: RWKV7Config = CONTROL, size: int = 8) -> Population:
    return Population(nontrivial(cfg).to(device), seed=4, sigma=0.05, size=size,
                      include=GROUPS)


def test_cuda_graph_rows_equal_the_torch_rows_at_every_batch_and_see_weight_updates():
    pop = population("cuda")
    g = torch.Generator().manual_seed(5)
    for R in (8, 5, 3, 1):  # buckets 8, 8, 4, 1: padded rows never reach the result
        x = torch.randn(R, CONTROL.input_dim, generator=g).cuda()
        members = torch.randint(0, 8, (R,), generator=g)
        state = pop.model.zero_state(R)
        state.wkv.normal_()
        eager_out, eager_state = pop.step_rows(x, state, members, path="torch")
        graph_out, graph_state = pop.step_rows(x, state, members, path="graph")
        assert_close(graph_out, eager_out, **TOL)
        assert_close(graph_state.wkv, eager_state.wkv, **TOL)
        inplace = state.clone()
        out, same = pop.step_rows(x, inplace, members, inplace=True, path="graph")
        assert same is inplace and inplace.equal(graph_state)
    with torch.no_grad():
        pop.model.head.weight.mul_(1.5)
    assert_close(pop.step_rows(x, state, members, path="graph")[0],
                 pop.step_rows(x, state, members, path="torch")[0], **TOL)


def test_cuda_row_path_is_measured_between_torch_and_the_graph_never_native(rigged_paths):
    measured = rigged_paths(lambda name: 0.5 if name == "graph" else 1.0)
    pop = population("cuda")
    assert pop.row_path(8) == "graph"
    assert measured == [["graph", "torch"]]


def row_rollout(pop: Population, env, path: str | None = None) -> object:
    """Two episodes per member, compacted to the live copies as `Node.evaluate` runs them."""
    from rwkv_swarm.node.rollout import COMPACT_BELOW, rollout

    n = pop.size * 2
    member_of = torch.arange(pop.size).repeat_interleave(2)
    path = path or pop.row_path(n)

    def policy(obs, state, rows):
        return pop.step_rows(obs, state, member_of[rows], inplace=True, path=path)

    return rollout(env, policy, n, 3, pop.model.zero_state(n), 40, compact=COMPACT_BELOW)


@pytest.mark.parametrize("path", ["torch", "graph"])
def test_cuda_population_rollout_matches_cpu(path):
    from tracking_env import TrackingEnv

    cpu = row_rollout(population("cpu", TRACKING), TrackingEnv(length=30))
    gpu = row_rollout(population("cuda", TRACKING), TrackingEnv(length=30), path)
    assert gpu.state.device.type == "cuda"
    assert_close(torch.from_numpy(gpu.returns), torch.from_numpy(cpu.returns), **TOL)
    assert_close(gpu.state.wkv.cpu(), cpu.state.wkv, **TOL)


def test_a_node_on_cuda_keeps_its_state_there_matches_cpu_and_restores_exactly():
    from tracking_env import TrackingEnv

    from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
    from rwkv_swarm.node.exchange import fingerprint

    def node(device: str):
        return Node(NodeConfig(model=NODE_MODEL, es=KalmanESConfig(population=8), seed=2,
                               device=device), TrackingEnv())

    cpu, gpu = node("cpu"), node("cuda")
    cpu.begin(), gpu.begin()
    assert_close(torch.from_numpy(gpu.evaluate()), torch.from_numpy(cpu.evaluate()), **TOL)
    gpu.finish()
    gpu.generation()
    s = gpu.strategy
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    assert gpu.live_state.device.type == "cuda" and s.device.type == "cuda"
    assert s.direction_belief.mean.device.type == "cuda" and s.noise_var.device.type == "cuda"
    blob = gpu.checkpoint()
    on_cpu = Node.restore(blob, TrackingEnv(), device="cpu")
    assert fingerprint(on_cpu.model) == fingerprint(gpu.model)  # host copies of the same bits
    expected = gpu.generation()
    restored = Node.restore(blob, TrackingEnv())
    got = restored.generation()
    assert got["fitness_mean"] == expected["fitness_mean"]
    assert fingerprint(restored.model) == fingerprint(gpu.model)


def test_a_two_node_consensus_swarm_on_half_a_gpu_each_holds_one_set_of_weights(
        ray_session, tmp_path):
    from rwkv_swarm import Swarm, SwarmConfig, load_trace
    from rwkv_swarm.node import KalmanESConfig

    config = SwarmConfig(nodes=2, mode="consensus", env=SIGNAL_ENV, seed=3,
                         es=KalmanESConfig(population=8), run_dir=str(tmp_path),
                         resources={"cpus": 0.5, "gpus": 0.5})
    assert [c.device for c in config.node_configs()] == ["cuda", "cuda"]
    with Swarm.launch(config) as swarm:
        swarm.run(3)
    t = load_trace(swarm.run_dir).to_pydict()
    rows = sorted(zip(t["generation"], t["node"], t["fingerprint"], strict=True))
    assert [(g, n) for g, n, _ in rows] == [(g, n) for g in range(3) for n in range(2)]
    for g in range(3):  # the group steps as one node: equal weights after every generation
        assert rows[2 * g][2] == rows[2 * g + 1][2]
    assert len({f for _, _, f in rows}) == 3  # and they moved
