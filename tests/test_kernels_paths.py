"""Kernel path choice: measured (here: injected) once, cached per CPU, never trusted blindly;
every path gives the same outputs as PyTorch."""

from __future__ import annotations

import json

import pytest
import torch
from test_kernels_model import CONTROL, TOKEN, needs_native, nontrivial
from torch.testing import assert_close

from rwkv_swarm.kernels import RWKV7, native, paths


class Timings:
    """An injected measurement: fixed seconds per candidate (`other` for any not named),
    counting the calls."""

    def __init__(self, other: float | None = None, **seconds: float):
        self.seconds, self.other, self.calls = seconds, other, 0

    def __call__(self, candidates):
        self.calls += 1
        return {name: self.seconds[name] if self.other is None else
                self.seconds.get(name, self.other) for name in candidates}


def step_entries(chooser: paths.PathChooser) -> list[dict]:
    """The stored step choices' sizes."""
    keys = json.loads(chooser.file.read_text())["choices"]
    return [json.loads(k.partition("|")[2]) for k in keys if k.startswith("step|")]


CANDIDATES = {"torch": lambda: None, "native:1": lambda: None, "native:2": lambda: None}


def test_the_fastest_measured_candidate_is_chosen_and_remembered_on_disk(tmp_path):
    timings = Timings(torch=3.0, **{"native:1": 1.0, "native:2": 2.0})
    chooser = paths.PathChooser(tmp_path, measure=timings, identity="cpu A")
    assert chooser.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    assert chooser.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    assert timings.calls == 1
    again = paths.PathChooser(tmp_path, measure=Timings(), identity="cpu A")  # a new process
    assert again.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    stored = json.loads(chooser.file.read_text())
    assert stored["cpu"] == "cpu A"
    assert list(stored["choices"].values())[0]["seconds"]["torch"] == 3.0


def test_other_sizes_are_measured_apart(tmp_path):
    timings = Timings(torch=1.0, **{"native:1": 2.0, "native:2": 3.0})
    chooser = paths.PathChooser(tmp_path, measure=timings, identity="cpu A")
    chooser.choose("step", {"C": 8}, CANDIDATES)
    assert chooser.choose("step", {"C": 16}, CANDIDATES) == "torch"
    assert timings.calls == 2


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff garbage", b"{", b"[]", b'"text"', b'{"version": 1}',
    b'{"version": 1, "cpu": "cpu A", "choices": []}',
    b'{"version": 99, "cpu": "cpu A", "choices": {}}',
    b'{"version": 1, "cpu": "cpu A", "choices": {"x": 3}}',
], ids=["empty", "binary", "truncated", "list", "string", "no-cpu", "choices-list",
        "other-version", "entry-not-a-dict"])
def test_a_corrupt_cache_file_is_measured_again_and_rewritten(tmp_path, content):
    chooser = paths.PathChooser(tmp_path, measure=Timings(torch=2.0, **{"native:1": 1.0,
                                                                        "native:2": 3.0}),
                                identity="cpu A")
    chooser.file.parent.mkdir(parents=True, exist_ok=True)
    chooser.file.write_bytes(content)
    assert chooser.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    assert json.loads(chooser.file.read_text())["cpu"] == "cpu A"


def test_a_cache_file_from_another_cpu_is_ignored(tmp_path):
    theirs = paths.PathChooser(tmp_path, measure=Timings(torch=1.0, **{"native:1": 2.0,
                                                                       "native:2": 3.0}),
                               identity="cpu B")
    theirs.choose("step", {"C": 8}, CANDIDATES)
    ours = paths.PathChooser(tmp_path, measure=Timings(torch=3.0, **{"native:1": 1.0,
                                                                     "native:2": 2.0}),
                             identity="cpu A")
    ours.file.parent.mkdir(parents=True, exist_ok=True)
    ours.file.write_text(theirs.file.read_text())  # their measurements at our file name
    assert ours.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    assert ours.measure.calls == 1


def test_a_cached_choice_that_is_no_longer_a_candidate_is_measured_again(tmp_path):
    chooser = paths.PathChooser(tmp_path, measure=Timings(torch=2.0, **{"native:1": 1.0,
                                                                        "native:2": 3.0}),
                                identity="cpu A")
    assert chooser.choose("step", {"C": 8}, CANDIDATES) == "native:1"
    fresh = paths.PathChooser(tmp_path, measure=chooser.measure, identity="cpu A")
    assert fresh.choose("step", {"C": 8}, {"torch": lambda: None, "native:2": lambda: None}) \
        == "torch"  # no native:1 here (e.g. fewer CPUs): measured again


def test_an_unwritable_cache_still_chooses(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    chooser = paths.PathChooser(blocker / "sub", measure=Timings(torch=1.0, **{"native:1": 2.0,
                                                                             "native:2": 3.0}))
    assert chooser.choose("step", {"C": 8}, CANDIDATES) == "torch"
    assert "could not store" in caplog.text


def test_the_real_measurement_runs_every_candidate_interleaved():
    calls = []
    seconds = paths.measure_interleaved({"a": lambda: calls.append("a"),
                                         "b": lambda: calls.append("b")}, rounds=3, sample_s=0,
                                        batches=1)
    assert set(seconds) == {"a", "b"} and calls == ["a", "b"] * 4  # a warm-up, then 3 rounds


def test_a_burst_of_load_is_outlasted_by_more_rounds(monkeypatch):
    """A fake clock: candidate a's first 3 rounds are slowed 10x, as by another program."""
    now = [0.0]
    monkeypatch.setattr(paths.time, "perf_counter", lambda: now[0])
    costs = {"a": [1.0] + [10.0] * 3 + [1.0] * 100, "b": [2.0] * 104}  # warm-up first

    def run(name):
        now[0] += costs[name].pop(0)

    seconds = paths.measure_interleaved({"a": lambda: run("a"), "b": lambda: run("b")},
                                        rounds=4, sample_s=0)
    assert seconds == {"a": 1.0, "b": 2.0}
    assert len(costs["a"]) == 104 - (1 + 4 + 4)  # a warm-up, two sets of 4 rounds, no third


def test_a_candidate_that_fails_in_its_measurement_is_never_chosen(caplog):
    def broken():
        raise MemoryError("no scratch")

    seconds = paths.measure_interleaved({"torch": lambda: None, "native:1": broken}, rounds=1,
                                        sample_s=0)
    assert seconds["native:1"] == float("inf") and seconds["torch"] < float("inf")
    assert "native:1 failed" in caplog.text


@needs_native
@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_every_step_path_gives_the_torch_outputs(cfg, batch):
    model = nontrivial(cfg)
    g = torch.Generator().manual_seed(batch)
    state = model.zero_state(batch)
    for t in (state.att_x_prev, state.wkv, state.ffn_x_prev):
        t.normal_(generator=g)
    x = torch.randint(0, cfg.vocab_size, (batch,), generator=g) if cfg.token_mode \
        else torch.randn(batch, cfg.input_dim, generator=g)
    expected, expected_state = model.step_torch(x, state)
    for n in (1, 2, 3, 4):
        out, new = model.step_native(x, state, n)
        assert_close(out, expected, atol=2e-5, rtol=2e-5)
        for a, b in zip(new.tensors(), expected_state.tensors(), strict=True):
            assert_close(a, b, atol=2e-5, rtol=2e-5)


@needs_native
def test_step_runs_the_path_measured_fastest_for_its_batch_bucket(kernel_paths, monkeypatch):
    model = nontrivial(CONTROL)
    ran = []
    real = model.step_native
    monkeypatch.setattr(model, "step_native",
                        lambda x, s, n=1: (ran.append((x.shape[0], n)), real(x, s, n))[1])
    kernel_paths.measure = Timings(other=1.0, torch=0.5)  # torch fastest, for every kernel
    model.step(torch.randn(3, 6))  # bucket 4: measured on 4 rows
    model.step(torch.randn(4, 6))  # the same bucket: not measured again
    assert ran == [] and [e["batch"] for e in step_entries(kernel_paths)] == [4]
    other = nontrivial(CONTROL)
    kernel_paths.measure = Timings(other=0.1, torch=1.0)  # every native team ties
    monkeypatch.setattr(other, "step_native",
                        lambda x, s, n=1: (ran.append(("other", n)), real(x, s, n))[1])
    other.step(torch.randn(1, 6))
    assert ran == [("other", 1)]  # ties go to the first candidate: one thread


@needs_native
def test_batches_beyond_the_step_kernels_limit_choose_between_torch_and_the_row_kernel(
        kernel_paths):
    model = nontrivial(CONTROL)
    seen = []

    def timings(candidates):
        seen.append(sorted(candidates))
        return {name: 0.5 if name == "rows:1" else 1.0 for name in candidates}

    kernel_paths.measure = timings
    assert native.step_path(model, native.MAX_BATCH + 1) == "rows:1"
    assert "torch" in seen[0] and not any(name.startswith("native") for name in seen[0])


@needs_native
@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
def test_the_row_kernel_path_gives_the_torch_outputs(cfg):
    model = nontrivial(cfg)
    g = torch.Generator().manual_seed(4)
    state = model.zero_state(5)
    for t in state.tensors():
        t.normal_(generator=g)
    x = torch.randint(0, cfg.vocab_size, (5,), generator=g) if cfg.token_mode \
        else torch.randn(5, cfg.input_dim, generator=g)
    expected, expected_state = model.step_torch(x, state)
    for path in ("rows:1", "rows:2"):
        model.step_path = path  # forced: the row kernel runs
        out, new = model.step(x, state)
        assert_close(out, expected, atol=2e-5, rtol=2e-5)
        for a, b in zip(new.tensors(), expected_state.tensors(), strict=True):
            assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_a_forced_path_is_not_measured(kernel_paths, monkeypatch):
    model = nontrivial(CONTROL)
    monkeypatch.setattr(native, "step_path", None)  # calling it would raise
    model.step_path = "torch"
    out, _ = model.step(torch.randn(2, 6))
    assert out.shape == (2, 3)


def test_native_off_means_torch(kernel_paths):
    model = RWKV7(CONTROL)
    model.use_native = False
    kernel_paths.measure = Timings()
    model.step(torch.randn(1, 6))


def test_native_teams_stay_within_pytorchs_thread_count(monkeypatch):
    monkeypatch.setattr(paths, "usable_cpus", lambda: 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert native.thread_counts() == [1]
        torch.set_num_threads(3)
        assert native.thread_counts() == [1, 2]
    finally:
        torch.set_num_threads(before)
