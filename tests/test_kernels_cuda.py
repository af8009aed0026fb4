"""The optional CUDA path (runs only where a CUDA device is present)."""

from __future__ import annotations

import pytest
import torch
from test_kernels_model import CONTROL, TOKEN, nontrivial
from torch.testing import assert_close

from rwkv_swarm.kernels import GROUPS, Population

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
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


def test_cuda_population_forward_matches_cpu():
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
