"""Recomputing BPTT: the same loss, gradients and state as plain BPTT, in O(√T) memory."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.nn import model as model_module
from charrnn.training import start as training
from charrnn.base.errors import CharrnnError
from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import (DEFAULT_MEMORY_BUDGET, bptt_memory_bytes, choose_bptt_memory,
                               default_segment_steps, loss_and_grads_recompute,
                               segment_bounds)
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import ConfigError, TrainConfig

V, H = 6, 5


def scaled_model(activation="tanh", dtype="float64", seed=0, vocab_size=V, num_hiddens=H):
    """A model with weights large enough for long-range gradients to matter."""
    model = RNNLM(vocab_size, num_hiddens, activation=activation, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for param in model.params.values():
        param[...] = rng.standard_normal(param.shape) * (0.4 if activation == "linear" else 0.8)
    return model


def window(batch_size, num_steps, seed=0, vocab_size=V):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, (2, batch_size, num_steps)).astype(np.int32)


def both(model, X, Y, state, truncation, segment_steps=None, seed=7):
    """(plain, recomputed) results, each drawing ξ from a Generator of the same seed."""
    plain = model.loss_and_grads(X, Y, state, truncation=truncation, rng=np.random.default_rng(seed))
    recomputed = loss_and_grads_recompute(model, X, Y, state, truncation=truncation,
                                          rng=np.random.default_rng(seed), segment_steps=segment_steps)
    return plain, recomputed


def assert_same(plain, recomputed, rtol):
    (loss, grads, state), (loss_r, grads_r, state_r) = plain, recomputed
    assert loss_r == pytest.approx(loss, rel=rtol, abs=0)
    assert np.array_equal(state_r, state)  # the recurrence runs the same operations
    assert grads_r.keys() == grads.keys()
    for name, grad in grads.items():
        assert grads_r[name].dtype == grad.dtype and grads_r[name].shape == grad.shape
        scale = np.abs(grad).max()
        assert np.abs(grads_r[name] - grad).max() <= rtol * scale, name


@settings(max_examples=40, deadline=None)
@given(batch_size=st.integers(1, 3), num_steps=st.integers(1, 40), segment_steps=st.integers(1, 45),
       truncation=st.sampled_from(["full", "regular:1", "regular:4", "randomized:0.5", "randomized:1"]),
       activation=st.sampled_from(["tanh", "linear"]), with_state=st.booleans())
def test_recompute_equals_plain_bptt_to_round_off(batch_size, num_steps, segment_steps, truncation,
                                                  activation, with_state):
    model = scaled_model(activation)
    X, Y = window(batch_size, num_steps, seed=num_steps)
    state = np.random.default_rng(3).standard_normal((batch_size, H)) if with_state else None
    assert_same(*both(model, X, Y, state, truncation, segment_steps), rtol=1e-12)


@pytest.mark.parametrize("truncation", ["full", "regular:3", "randomized:0.3"])
def test_one_segment_over_the_window_is_bit_identical(truncation):
    model = scaled_model()
    X, Y = window(2, 17)
    (loss, grads, _), (loss_r, grads_r, _) = both(model, X, Y, None, truncation, segment_steps=17)
    assert loss_r == loss
    assert all(np.array_equal(grads_r[name], grads[name]) for name in grads)


def test_float32_close_and_gradients_reach_far_back():
    model = scaled_model(dtype="float32")
    X, Y = window(2, 300)
    plain, recomputed = both(model, X, Y, None, "full")
    assert_same(plain, recomputed, rtol=2e-5)
    truncated = model.loss_and_grads(X, Y, truncation="regular:1")[1]
    # the full gradient differs from the one-step one, so segments really pass the carry on
    assert np.abs(recomputed[1]["W_hh"] - truncated["W_hh"]).max() > 1e-3 * np.abs(truncated["W_hh"]).max()


def test_randomized_draws_the_same_xi_from_rng():
    model = scaled_model()
    X, Y = window(3, 50)
    rng_plain, rng_recomputed = np.random.default_rng(11), np.random.default_rng(11)
    plain = model.loss_and_grads(X, Y, truncation="randomized:0.2", rng=rng_plain)
    recomputed = loss_and_grads_recompute(model, X, Y, truncation="randomized:0.2", rng=rng_recomputed)
    assert_same(plain, recomputed, rtol=1e-12)
    assert rng_plain.random() == rng_recomputed.random()  # both consumed the same draws
    with pytest.raises(CharrnnError, match="rng"):
        loss_and_grads_recompute(model, X, Y, truncation="randomized:0.2")


def test_segments_cover_the_window():
    assert segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert segment_bounds(3, 5) == [(0, 3)]
    assert [default_segment_steps(t) for t in (1, 2, 10, 100, 10_000)] == [1, 1, 3, 10, 100]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_segment_steps_and_input(bad):
    model = scaled_model()
    X, Y = window(1, 5)
    with pytest.raises(CharrnnError, match="segment_steps"):
        loss_and_grads_recompute(model, X, Y, segment_steps=bad)
    with pytest.raises(CharrnnError, match="token id"):
        loss_and_grads_recompute(model, X + V, Y)


def held_bytes(ws):
    """Bytes of the arrays a Workspace owns (views and aliases counted once, as their base)."""
    owned = {id(a): a for a in vars(ws).values() if isinstance(a, np.ndarray) and a.base is None}
    return sum(a.nbytes for a in owned.values())


@pytest.mark.parametrize("cell, num_layers, dropout", [
    ("rnn", 1, 0.0), ("rnn", 2, 0.5), ("gru", 1, 0.0), ("gru", 3, 0.2), ("lstm", 1, 0.0), ("lstm", 2, 0.5)])
def test_predicted_memory_is_the_workspace(cell, num_layers, dropout):
    B, T = 3, 50
    model = RNNLM(V, H, cell=cell, num_layers=num_layers, dropout=dropout)
    X, Y = window(B, T)
    model.loss_and_grads(X, Y, dropout_rng=np.random.default_rng(0))
    predicted = bptt_memory_bytes(B, T, H, V, "float32", cell=cell, num_layers=num_layers, dropout=dropout)
    assert predicted == held_bytes(model.workspace(B, T))


def test_predicted_memory_grows_like_sqrt_t():
    for kwargs in ({}, dict(cell="lstm", num_layers=2, dropout=0.5)):
        recompute = [bptt_memory_bytes(1, t, 256, 28, "float32", default_segment_steps(t), **kwargs)
                     for t in (10**8, 10**10)]
        plain = [bptt_memory_bytes(1, t, 256, 28, "float32", **kwargs) for t in (10**8, 10**10)]
        assert plain[1] / plain[0] == pytest.approx(100, rel=0.01)
        assert recompute[1] / recompute[0] == pytest.approx(10, rel=0.05)


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_recompute_allocates_a_fraction_of_plain():
    X, Y = window(2, 4096, vocab_size=20)
    plain = peak_bytes(lambda: RNNLM(20, 16).loss_and_grads(X, Y))
    recomputed = peak_bytes(lambda: loss_and_grads_recompute(RNNLM(20, 16), X, Y))
    assert plain >= bptt_memory_bytes(2, 4096, 16, 20, "float32")
    assert recomputed < plain / 8


def test_auto_stores_within_the_budget_and_recomputes_beyond():
    model = scaled_model()
    X, Y = window(2, 30)
    needed = bptt_memory_bytes(2, 30, H, V, model.dtype)
    assert choose_bptt_memory("auto", model, 2, 30, needed) == "store"
    assert choose_bptt_memory("auto", model, 2, 30, needed - 1) == "recompute"
    assert choose_bptt_memory("recompute", model, 2, 30) == "recompute"
    assert choose_bptt_memory("store", model, 2, 30, 1) == "store"
    assert bptt_memory_bytes(1, 10_000_000, H, V, model.dtype) > DEFAULT_MEMORY_BUDGET
    assert choose_bptt_memory("auto", model, 1, 10_000_000) == "recompute"
    plain = model.loss_and_grads(X, Y)
    for budget in (needed, 1):
        assert_same(plain, model.loss_and_grads(X, Y, bptt_memory="auto", memory_budget_bytes=budget), rtol=1e-12)
    with pytest.raises(CharrnnError, match="bptt_memory"):
        choose_bptt_memory("sometimes", model, 2, 30)


def test_training_with_recomputation_follows_the_stored_run(tmp_path, monkeypatch):
    """charrnn.training.start.train with bptt_memory "recompute" takes the same steps as "store", to round-off."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["truncation"])
        return loss_and_grads_recompute(*args, **kwargs)

    monkeypatch.setattr(model_module, "loss_and_grads_recompute", counted)  # where RNNLM.loss_and_grads finds it
    text = tmp_path / "text.txt"
    text.write_text(" ".join(np.random.default_rng(1).choice(["time", "machine", "past", "go"], 300)))
    runs = {}
    for mode in ("store", "recompute"):
        config = TrainConfig(corpus=str(text), num_hiddens=8, batch_size=2, num_steps=40,
                                      dtype="float64", truncation="randomized:0.5", max_tokens=800,
                                      eval_every=10_000, sample_length=0, bptt_memory=mode)
        runs[mode] = training.train(config, tmp_path / mode)
    assert calls == ["randomized:0.5"] * 10  # every step of the second run, none of the first
    stored, recomputed = (load_checkpoint(runs[m].out_dir / CHECKPOINT) for m in runs)
    assert recomputed.config.bptt_memory == "recompute"
    for name, value in stored.model.params.items():
        np.testing.assert_allclose(recomputed.model.params[name], value, rtol=1e-9, atol=1e-12)
    assert runs["recompute"].val_ppl == pytest.approx(runs["store"].val_ppl, rel=1e-9)
    with pytest.raises(ConfigError, match="bptt_memory"):
        TrainConfig(bptt_memory="never")
    with pytest.raises(ConfigError, match="bptt_memory_budget"):
        TrainConfig(bptt_memory_budget=0)
