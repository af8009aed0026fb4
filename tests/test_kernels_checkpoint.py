"""Loading official checkpoints: shapes read from tensors, clear errors for anything else."""

from __future__ import annotations

import pytest
import torch
from official import random_official_checkpoint

from rwkv_swarm.kernels import RWKV7, RWKV7Config
from rwkv_swarm.kernels.checkpoint import (
    config_from_state_dict,
    control_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def test_config_is_read_from_tensor_shapes(tmp_path):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 3, 77, dims=(64, 32, 48, 96),
                                      F=320)
    cfg = config_from_state_dict(torch.load(path, weights_only=True))
    assert (cfg.n_embd, cfg.n_layer, cfg.head_size, cfg.vocab_size) == (128, 3, 64, 77)
    assert cfg.lora_dims == {"w": 64, "a": 32, "v": 48, "g": 96}
    assert cfg.ffn_dim == 320


def test_missing_tensor_is_named(tmp_path):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 2, 64)
    sd = torch.load(path, weights_only=True)
    del sd["blocks.1.att.k_a"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing tensor 'blocks\.1\.att\.k_a'"):
        RWKV7.from_checkpoint(path)


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 2, 64)
    sd = torch.load(path, weights_only=True)
    sd["blocks.0.ffn.value.weight"] = torch.zeros(128, 100)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"'blocks\.0\.ffn\.value\.weight' has shape "
                                         r"\(128, 100\), expected \(128, 512\)"):
        RWKV7.from_checkpoint(path)


def test_unexpected_tensor_is_rejected(tmp_path):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 2, 64)
    sd = torch.load(path, weights_only=True)
    sd["blocks.0.att.time_faaaa"] = torch.zeros(3)  # an RWKV-6 name
    torch.save(sd, path)
    with pytest.raises(ValueError, match="unexpected tensors.*time_faaaa"):
        RWKV7.from_checkpoint(path)


def test_file_that_is_not_a_checkpoint_gets_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a zip file" * 10)
    with pytest.raises(ValueError, match="cannot read"):
        RWKV7.from_checkpoint(junk)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="holds a list"):
        RWKV7.from_checkpoint(listed)
    gpt = tmp_path / "gpt.pth"
    torch.save({"wte.weight": torch.zeros(10, 8)}, gpt)
    with pytest.raises(ValueError, match="missing tensor 'emb.weight'"):
        RWKV7.from_checkpoint(gpt)


def test_save_then_load_round_trips_exactly_in_fp32(tmp_path):
    model = RWKV7(RWKV7Config(n_embd=128, n_layer=2, vocab_size=50), seed=3)
    save_checkpoint(model, tmp_path / "m.pth", dtype=torch.float32)
    loaded = RWKV7.from_checkpoint(tmp_path / "m.pth")
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name


def control_model(seed: int = 5) -> RWKV7:
    return RWKV7(RWKV7Config(n_embd=64, n_layer=2, head_size=32, input_dim=4, output_dim=2,
                             dim_w=16), seed=seed)


def test_control_mode_round_trips_exactly_in_its_own_layout(tmp_path):
    model = control_model()
    with torch.no_grad():  # weights no initialiser would give, so a reload cannot fake them
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_checkpoint(model, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert (raw["format"], raw["version"]) == ("rwkv-swarm/control-model", 1)
    assert raw["config"] == model.config.to_dict()
    loaded = RWKV7.from_checkpoint(tmp_path / "m.pt")
    assert loaded.config == model.config
    own = dict(model.named_parameters())
    assert set(own) == set(dict(loaded.named_parameters()))
    for name, b in loaded.named_parameters():
        assert b.dtype == torch.float32 and torch.equal(own[name], b), name
    x = torch.randn(3, 4)
    assert torch.equal(model.step_torch(x, model.zero_state(3))[0],
                       loaded.step_torch(x, loaded.zero_state(3))[0])


def test_control_mode_checkpoint_problems_are_named(tmp_path):
    good = control_checkpoint(control_model())

    def fails(d, pattern):
        torch.save(d, tmp_path / "c.pt")
        with pytest.raises(ValueError, match=pattern):
            load_checkpoint(tmp_path / "c.pt")

    fails({**good, "version": 7}, r"control-mode checkpoint .*c\.pt.*version 7, expected")
    fails({k: v for k, v in good.items() if k != "config"}, r"fields \['config'\] missing")
    fails({**good, "config": {**good["config"], "n_embed": 64}}, r"unknown RWKV7Config fields "
                                                                  r"\['n_embed'\]")
    token = {**good["config"], "input_dim": None, "output_dim": None, "vocab_size": 9}
    fails({**good, "config": token}, "token-mode")
    fails({**good, "config": {**good["config"], "input_dim": 5}},
          r"'encoder\.weight' has shape \(64, 4\), expected \(64, 5\)")
    weights = dict(good["weights"])
    del weights["head.weight"]
    fails({**good, "weights": weights}, r"missing tensor 'head\.weight'")


def test_control_checkpoint_refuses_a_token_mode_model():
    with pytest.raises(ValueError, match="control-mode model"):
        control_checkpoint(RWKV7(RWKV7Config(n_embd=64, n_layer=1, head_size=32,
                                             vocab_size=10)))
