"""RNNLM: initialisation, forward/backward consistency, truncation, bad input, files."""
import json
import zipfile

import numpy as np
import pytest

from charrnn.nn import model as model_module
from charrnn.training.checkpoint import load_model, load_model_with_extras, save_model
from charrnn.base.errors import CharrnnError
from charrnn.base.io import load_npz, save_npz
from charrnn.nn.model import PARAM_NAMES, RNNLM
from charrnn.nn.truncation import parse_truncation
from charrnn.infer.sample import stepper
from charrnn.nn.truncation import CUT, path_scales

V, H, B, T = 7, 5, 3, 9


def batch(seed=0, batch_size=B, num_steps=T, vocab_size=V):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, vocab_size, (batch_size, num_steps)).astype(np.int32)
    Y = rng.integers(0, vocab_size, (batch_size, num_steps)).astype(np.int32)
    return X, Y


def scaled_model(activation="tanh", dtype="float64", seed=0):
    """A model with weights large enough for the recurrence to matter."""
    m = RNNLM(V, H, activation=activation, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in m.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.7
    return m


def reference_loss(m, X, Y, state=None):
    """Mean cross-entropy by a plain per-step loop, independent of the model's internals."""
    p = {k: v.astype(np.float64) for k, v in m.params.items()}
    h = np.zeros((len(X), m.num_hiddens)) if state is None else np.asarray(state, np.float64)
    phi = np.tanh if m.activation == "tanh" else (lambda a: a)
    total = 0.0
    for t in range(X.shape[1]):
        h = phi(p["W_xh"][X[:, t]] + h @ p["W_hh"] + p["b_h"])
        o = h @ p["W_hq"] + p["b_q"]
        log_softmax = o - o.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        total -= log_softmax[np.arange(len(X)), Y[:, t]].sum()
    return total / X.size, h


# ------------------------------------------------------------------ construction


def test_init_shapes_dtype_and_textbook_scale():
    m = RNNLM(V, H)
    assert m.dtype == np.float32 and m.activation == "tanh"
    assert {k: p.shape for k, p in m.params.items()} == {
        "W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}
    assert all(p.dtype == np.float32 for p in m.params.values())
    assert not m.params["b_h"].any() and not m.params["b_q"].any()
    big = RNNLM(50, 200, seed=3)
    assert abs(big.params["W_hh"].std() - 0.01) < 0.001
    assert abs(big.params["W_xh"].mean()) < 0.001


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = RNNLM(V, H, seed=4), RNNLM(V, H, seed=4), RNNLM(V, H, seed=5)
    for name in PARAM_NAMES[:1] + PARAM_NAMES[3:4]:
        assert np.array_equal(a.params[name], b.params[name])
        assert not np.array_equal(a.params[name], c.params[name])


def test_float32_model_is_rounded_float64_model():
    m32, m64 = RNNLM(V, H, dtype="float32", seed=2), RNNLM(V, H, dtype="float64", seed=2)
    for name in PARAM_NAMES:
        assert m64.params[name].dtype == np.float64
        assert np.array_equal(m32.params[name], m64.params[name].astype(np.float32))


@pytest.mark.parametrize("kwargs, word", [
    (dict(vocab_size=0, num_hiddens=3), "vocab_size"),
    (dict(vocab_size=3.0, num_hiddens=3), "vocab_size"),
    (dict(vocab_size=3, num_hiddens=True), "num_hiddens"),
    (dict(vocab_size=3, num_hiddens=3, activation="relu"), "relu"),
    (dict(vocab_size=3, num_hiddens=3, dtype="float16"), "float16"),
    (dict(vocab_size=3, num_hiddens=3, dtype=None), "dtype"),
    (dict(vocab_size=3, num_hiddens=3, seed=-1), "seed"),
])
def test_bad_constructor_arguments(kwargs, word):
    with pytest.raises(CharrnnError, match=word):
        RNNLM(**kwargs)


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_loss_matches_plain_loop_and_state_is_last_hidden(activation):
    m = scaled_model(activation)
    X, Y = batch()
    state = np.random.default_rng(1).standard_normal((B, H))
    loss, _, last = m.loss_and_grads(X, Y, state)
    expected_loss, expected_last = reference_loss(m, X, Y, state)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(last, expected_last, rtol=1e-12, atol=1e-14)


def test_huge_logits_are_stable_and_a_common_shift_changes_nothing():
    """softmax is shift invariant: adding 1000 to every output bias leaves loss and gradients
    as they were, where a softmax without max subtraction would overflow."""
    m = scaled_model(dtype="float32")
    X, Y = batch()
    loss, grads, _ = m.loss_and_grads(X, Y)
    m.params["b_q"] += 1000
    shifted_loss, shifted_grads, _ = m.loss_and_grads(X, Y)
    assert shifted_loss == pytest.approx(loss, abs=1e-3)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(shifted_grads[name], grads[name], atol=2e-4)


def test_initial_loss_is_about_log_vocab():
    loss = RNNLM(28, 16, seed=0).loss_and_grads(*batch(vocab_size=28))[0]
    assert abs(loss - np.log(28)) < 0.01


def test_float32_model_keeps_float32_and_agrees_with_float64():
    m64 = scaled_model(dtype="float64")
    m32 = RNNLM(V, H, dtype="float32")
    for name in PARAM_NAMES:
        m32.params[name][...] = m64.params[name]
    X, Y = batch()
    state = np.random.default_rng(1).standard_normal((B, H))  # float64 state is cast
    loss32, grads32, state32 = m32.loss_and_grads(X, Y, state, "randomized:0.7",
                                                  np.random.default_rng(0))
    loss64, grads64, _ = m64.loss_and_grads(X, Y, state, "randomized:0.7",
                                            np.random.default_rng(0))
    assert isinstance(loss32, float) and state32.dtype == np.float32
    assert m32.step(X[:, 0], state32)[0].dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name in PARAM_NAMES:
        assert grads32[name].dtype == np.float32 and grads32[name].shape == m32.params[name].shape
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=1e-3, atol=1e-5)


def test_same_seed_same_data_bit_identical_runs():
    X, Y = batch()
    runs = []
    for _ in range(2):
        m = RNNLM(V, H, seed=7)
        rng = np.random.default_rng(11)
        runs.append([m.loss_and_grads(X, Y, None, "randomized:0.5", rng) for _ in range(3)])
    for (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) in zip(*runs):
        assert loss_a == loss_b and np.array_equal(state_a, state_b)
        assert all(np.array_equal(grads_a[k], grads_b[k]) for k in PARAM_NAMES)


def test_evaluate_loss_equals_training_loss_and_state():
    m = scaled_model(dtype="float32")
    X, Y = batch()
    loss, _, state = m.loss_and_grads(X, Y)
    loss_sum, count, eval_state = m.forward_loss(X, Y)
    assert count == X.size and loss_sum / count == loss
    assert np.array_equal(state, eval_state)


def test_evaluate_long_window_in_chunks_matches_plain_loop():
    m = scaled_model()
    num_steps = model_module.EVAL_CHUNK_STEPS * 2 + 17
    X, Y = batch(num_steps=num_steps)
    loss_sum, count, state = m.forward_loss(X, Y)
    expected_loss, expected_state = reference_loss(m, X, Y)
    assert loss_sum / count == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(state, expected_state, rtol=1e-10, atol=1e-12)


def test_step_by_step_matches_forward_pass():
    m = scaled_model(dtype="float32")
    X, Y = batch()
    state = None
    logits = []
    for t in range(T):
        step_logits, state = m.step(X[:, t], state)
        logits.append(step_logits)
    logits = np.stack(logits, axis=1)  # (B, T, V)
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    step_loss = -np.take_along_axis(log_p, Y[..., None], axis=-1).mean()
    loss, _, forward_state = m.loss_and_grads(X, Y)
    assert step_loss == pytest.approx(loss, rel=1e-5)
    np.testing.assert_array_equal(state, forward_state)


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_generation_stepper_gives_step_numbers_exactly(activation):
    m = scaled_model(activation, dtype="float32")
    advance = stepper(m)
    state = advanced = np.zeros((1, H), np.float32)
    for token in [3, 0, 6, 6, 1, 3]:
        logits, state = m.step(np.array([token]), state)
        advanced_logits, advanced = advance(token, advanced)
        np.testing.assert_array_equal(advanced_logits, logits)
        np.testing.assert_array_equal(advanced, state)


def test_state_carries_across_minibatches():
    m = scaled_model()
    X, Y = batch(num_steps=8)
    loss_whole, _, state_whole = m.loss_and_grads(X, Y)
    loss_a, _, state_a = m.loss_and_grads(X[:, :3], Y[:, :3])
    loss_b, _, state_b = m.loss_and_grads(X[:, 3:], Y[:, 3:], state_a)
    assert (3 * loss_a + 5 * loss_b) / 8 == pytest.approx(loss_whole, rel=1e-13)
    np.testing.assert_allclose(state_b, state_whole, rtol=1e-13)


def test_returned_arrays_survive_later_calls_with_other_shapes():
    m = scaled_model()
    X, Y = batch()
    first = m.loss_and_grads(X, Y)
    kept = (first[0], {k: g.copy() for k, g in first[1].items()}, first[2].copy())
    for shape_seed in range(6):  # more shapes than the workspace cache holds
        m.loss_and_grads(*batch(seed=shape_seed, batch_size=2 + shape_seed, num_steps=4))
    again = m.loss_and_grads(X, Y)
    for result in (first, again):
        assert result[0] == kept[0] and np.array_equal(result[2], kept[2])
        assert all(np.array_equal(result[1][k], kept[1][k]) for k in PARAM_NAMES)


# ------------------------------------------------------------------ truncation


def test_parse_truncation():
    assert parse_truncation("full") == ("full", None)
    assert parse_truncation("regular:5") == ("regular", 5)
    assert parse_truncation(" randomized:0.25 ") == ("randomized", 0.25)
    assert parse_truncation("randomized:1") == ("randomized", 1.0)


@pytest.mark.parametrize("bad", ["", "ful", "full:", "full:3", "regular", "regular:0", "regular:-2",
                                 "regular:2.5", "regular:x", "randomized", "randomized:0",
                                 "randomized:1.5", "randomized:-0.1", "randomized:nan",
                                 "randomized:p", None, 3])
def test_parse_truncation_rejects(bad):
    with pytest.raises(ValueError, match="truncation") as err:
        parse_truncation(bad)
    assert isinstance(err.value, CharrnnError) and repr(bad) in str(err.value)


def all_grads(m, X, Y, state, truncation, rng=None):
    return m.loss_and_grads(X, Y, state, truncation, rng)[1]


@pytest.mark.parametrize("chunk", [T, T + 1, 1000])
def test_regular_with_chunk_at_least_window_is_full_exactly(chunk):
    m = scaled_model()
    X, Y = batch()
    full = all_grads(m, X, Y, None, "full")
    regular = all_grads(m, X, Y, None, f"regular:{chunk}")
    assert all(np.array_equal(full[k], regular[k]) for k in PARAM_NAMES)


def test_regular_one_keeps_no_recurrent_path():
    """regular:1 cuts every path: dW_hh = Σ_t h_{t-1}ᵀ (dL/do_t W_hqᵀ ⊙ (1 - h_t²))."""
    m = scaled_model()
    X, Y = batch()
    grads = all_grads(m, X, Y, None, "regular:1")
    h = [np.zeros((B, H))]
    dW_hh = np.zeros((H, H))
    for t in range(T):
        h.append(np.tanh(m.params["W_xh"][X[:, t]] + h[t] @ m.params["W_hh"] + m.params["b_h"]))
        o = h[t + 1] @ m.params["W_hq"] + m.params["b_q"]
        d_out = np.exp(o) / np.exp(o).sum(axis=1, keepdims=True)
        d_out[np.arange(B), Y[:, t]] -= 1
        dW_hh += h[t].T @ ((d_out / X.size) @ m.params["W_hq"].T * (1 - h[t + 1] ** 2))
    np.testing.assert_allclose(grads["W_hh"], dW_hh, rtol=1e-12, atol=1e-15)
    assert not np.allclose(grads["W_hh"], all_grads(m, X, Y, None, "full")["W_hh"])


def test_randomized_one_is_full_exactly_and_draws_nothing():
    m = scaled_model()
    X, Y = batch()
    rng = np.random.default_rng(3)
    full = all_grads(m, X, Y, None, "full")
    one = all_grads(m, X, Y, None, "randomized:1", rng)
    assert all(np.array_equal(full[k], one[k]) for k in PARAM_NAMES)
    assert rng.random() == np.random.default_rng(3).random()


def test_randomized_draws_vary_and_follow_rng():
    m = scaled_model()
    X, Y = batch()
    a = all_grads(m, X, Y, None, "randomized:0.5", np.random.default_rng(1))
    b = all_grads(m, X, Y, None, "randomized:0.5", np.random.default_rng(1))
    c = all_grads(m, X, Y, None, "randomized:0.5", np.random.default_rng(2))
    assert np.array_equal(a["W_hh"], b["W_hh"]) and not np.array_equal(a["W_hh"], c["W_hh"])
    assert np.array_equal(a["W_hq"], c["W_hq"])  # the output layer has no recurrent path


def test_randomized_xi_per_step_and_row_is_zero_or_inverse_p():
    scales = path_scales("randomized:0.25", 400, 50, np.random.default_rng(0),
                                      np.float32)
    assert scales[0] is CUT
    xi = np.stack(scales[1:])
    assert xi.shape == (399, 50, 1) and xi.dtype == np.float32
    assert set(np.unique(xi)) == {0.0, 4.0}
    assert abs(xi.mean() - 1.0) < 0.03  # E[ξ] = 1: 19,950 draws, s.e. ~0.012


def test_randomized_needs_a_generator():
    m = RNNLM(V, H)
    with pytest.raises(CharrnnError, match="rng"):
        m.loss_and_grads(*batch(), truncation="randomized:0.5")
    with pytest.raises(CharrnnError, match="rng"):
        m.loss_and_grads(*batch(), truncation="randomized:0.5", rng=42)


def test_gradient_does_not_flow_into_the_given_state():
    """The state is a constant: the gradient equals that of a window with h_0 fixed."""
    m = scaled_model()
    X, Y = batch()
    state = np.random.default_rng(5).standard_normal((B, H))
    grads = all_grads(m, X, Y, state, "full")
    regular = all_grads(m, X, Y, state, f"regular:{T}")
    assert all(np.array_equal(grads[k], regular[k]) for k in PARAM_NAMES)
    assert not np.allclose(grads["W_hh"], all_grads(m, X, Y, None, "full")["W_hh"])


def test_segment_pieces_compose_into_full_bptt():
    """The public segment pieces, run backwards segment by segment from stored segment start
    states with the gradient carried between them (as a recomputing backward pass would),
    give the gradient of one "full" pass."""
    m = scaled_model()
    X, Y = batch(num_steps=10)
    full = all_grads(m, X, Y, None, "full")
    bounds = [(0, 4), (4, 7), (7, 10)]
    starts = [None] + [m.forward_loss(X[:, :s], Y[:, :s])[2].reshape(1, 1, B, H) for s, _ in bounds[1:]]
    scales = path_scales("full", 10, B, None, m.dtype)
    total = {name: 0.0 for name in PARAM_NAMES}
    carry = np.zeros((1, 1, B, H))
    for (s, e), state in reversed(list(zip(bounds, starts))):
        X_tm, y = X[:, s:e].T, Y[:, s:e].T.reshape(-1)
        ws = m.workspace(B, e - s)
        m.forward_segment(X_tm, state, ws)
        m.softmax_cross_entropy(y, ws)
        grads = dict(zip(("W_hq", "b_q"), m.output_grads(y, 1.0 / X.size, ws)))
        grads.update(m.backward_segment(X_tm, scales[s:e], carry, ws))
        for name in PARAM_NAMES:
            total[name] = total[name] + grads[name]
    for name in PARAM_NAMES:
        np.testing.assert_allclose(total[name], full[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("vocab_size, draw", [
    (50, lambda rng, shape: rng.integers(0, 50, shape)),  # many distinct tokens, some absent
    (6, lambda rng, shape: np.where(rng.random(shape) < 0.9, 4, rng.integers(0, 6, shape))),
    (3, lambda rng, shape: np.full(shape, 2)),  # one token only
])
def test_input_grads_segment_sum_matches_a_scatter_add(vocab_size, draw):
    """dW_xh[v] = Σ_{x = v} δ over every (step, row), tokens absent from the window get zero
    rows, and db_h sums every row: against np.add.at on the same δ. A linear model with every
    path cut makes δ_t the given dL/dh_t."""
    rng = np.random.default_rng(0)
    m = RNNLM(vocab_size, 40, activation="linear", dtype="float64")
    X_tm = draw(rng, (6, 5)).astype(np.int32)
    ws = m.workspace(5, 6).for_backward()
    ws.hs[...] = rng.standard_normal(ws.hs.shape)
    ws.dH[...] = rng.standard_normal(ws.dH.shape)
    rows = ws.dH.reshape(30, 40).copy()
    grads = m.backward_segment(X_tm, [CUT] * 6, np.zeros((1, 1, 5, 40)), ws)
    dW_xh, dW_hh, db_h = grads["W_xh"], grads["W_hh"], grads["b_h"]
    expected = np.zeros((vocab_size, 40))
    np.add.at(expected, X_tm.reshape(-1), rows)
    np.testing.assert_allclose(dW_xh, expected, rtol=1e-13, atol=1e-13)
    assert not dW_xh[np.setdiff1d(np.arange(vocab_size), X_tm)].any()
    np.testing.assert_allclose(db_h, rows.sum(axis=0), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dW_hh, ws.hs[0, :-1].reshape(30, 40).T @ rows, rtol=1e-13)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make, word", [
    (lambda X, Y: (X - X.min() - 1, Y, None), "X holds token id -1"),
    (lambda X, Y: (X, np.where(Y == Y.max(), V, Y), None), rf"Y holds token id {V}, outside \[0, {V}\)"),
    (lambda X, Y: (X.astype(float), Y, None), "X must hold integer"),
    (lambda X, Y: (X[0], Y, None), "X must be a non-empty"),
    (lambda X, Y: (X[:, :0], Y[:, :0], None), "X must be a non-empty"),
    (lambda X, Y: (X, Y[:, :-1], None), "same shape"),
    (lambda X, Y: (X, Y, np.zeros((B, H + 1))), "state must have shape"),
    (lambda X, Y: (X, Y, np.zeros((B + 1, H))), "state must have shape"),
])
def test_bad_batches_raise_naming_the_problem(make, word):
    m = RNNLM(V, H)
    X, Y, state = make(*batch())
    with pytest.raises(CharrnnError, match=word):
        m.loss_and_grads(X, Y, state)
    with pytest.raises(CharrnnError, match=word):
        m.forward_loss(X, Y, state)


def test_bad_step_input():
    m = RNNLM(V, H)
    with pytest.raises(CharrnnError, match="token_ids"):
        m.step(np.array([[1]]))
    with pytest.raises(CharrnnError, match=f"token id {V}"):
        m.step(np.array([V]))
    with pytest.raises(CharrnnError, match="state"):
        m.step(np.array([1, 2]), np.zeros((1, H)))


# ------------------------------------------------------------------ files


def test_save_load_round_trip_with_extras(tmp_path):
    m = scaled_model("linear", dtype="float32", seed=3)
    path = tmp_path / "m.npz"
    vocab = np.array([1, 2, 3], np.int32)
    save_model(m, path, extra_arrays={"vocab": vocab}, extra_meta={"epoch": 4})
    loaded, arrays, meta = load_model_with_extras(path)
    assert (loaded.vocab_size, loaded.num_hiddens, loaded.activation, loaded.dtype) == (
        V, H, "linear", np.float32)
    assert all(np.array_equal(loaded.params[k], m.params[k]) for k in PARAM_NAMES)
    assert set(arrays) == {"vocab"} and np.array_equal(arrays["vocab"], vocab)
    assert meta == {"epoch": 4}
    X, Y = batch()
    assert loaded.loss_and_grads(X, Y)[0] == m.loss_and_grads(X, Y)[0]
    assert load_model(path).activation == "linear"
    _, raw_meta = load_npz(path)
    assert raw_meta["format"] == "charrnn-model" and raw_meta["format_version"] == 2
    assert (raw_meta["cell"], raw_meta["num_layers"], raw_meta["dropout"]) == ("rnn", 1, 0.0)
    with zipfile.ZipFile(path) as z:  # pickle-free: every member is a plain .npy array
        assert all(name.endswith(".npy") for name in z.namelist())


def test_save_refuses_extras_that_shadow_the_model(tmp_path):
    m = RNNLM(V, H)
    with pytest.raises(CharrnnError, match="W_hh"):
        save_model(m, tmp_path / "a.npz", extra_arrays={"W_hh": np.zeros(1)})
    with pytest.raises(CharrnnError, match="dtype"):
        save_model(m, tmp_path / "b.npz", extra_meta={"dtype": "float64"})


def tampered(tmp_path, arrays_fn=None, meta_fn=None):
    """Save a good model, then rewrite it with modified arrays or metadata."""
    path = tmp_path / "m.npz"
    save_model(RNNLM(V, H, dtype="float32"), path)
    arrays, meta = load_npz(path)
    if arrays_fn:
        arrays_fn(arrays)
    if meta_fn:
        meta_fn(meta)
    save_npz(path, arrays, meta)
    return path


@pytest.mark.parametrize("arrays_fn, meta_fn, word", [
    (lambda a: a.pop("b_q"), None, "no array 'b_q'"),
    (lambda a: a.update(W_hh=np.zeros((H, H + 1), np.float32)), None, "W_hh is float32"),
    (lambda a: a.update(W_xh=a["W_xh"].astype(np.float64)), None, "W_xh is float64"),
    (lambda a: a.update(W_xh=a["W_xh"].astype(np.int32)), None, "W_xh is int32"),
    (lambda a: a["b_h"].__setitem__(0, np.nan), None, "non-finite"),
    (None, lambda m: m.update(format="something-else"), "not a charrnn model"),
    (None, lambda m: m.pop("format"), "not a charrnn model"),
    (None, lambda m: m.update(format_version=3), "format_version"),
    (None, lambda m: m.update(format_version=0), "format_version"),
    (None, lambda m: m.update(format_version=True), "format_version"),
    (None, lambda m: m.update(format_version=1.0), "format_version"),
    (None, lambda m: m.update(vocab_size="7"), "vocab_size"),
    (None, lambda m: m.update(vocab_size=7.0), "vocab_size"),
    (None, lambda m: m.update(num_hiddens=0), "num_hiddens"),
    (None, lambda m: m.update(num_hiddens=H + 1), "W_xh is float32"),
    (None, lambda m: m.update(activation="relu"), "activation"),
    (None, lambda m: m.update(dtype="float64"), "expected float64"),
    (None, lambda m: m.update(dtype="int8"), "dtype"),
])
def test_load_refuses_bad_files(tmp_path, arrays_fn, meta_fn, word):
    path = tampered(tmp_path, arrays_fn, meta_fn)
    with pytest.raises(CharrnnError, match=word) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_load_refuses_non_model_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CharrnnError):
        load_model(text)
    with pytest.raises(CharrnnError):
        load_model(tmp_path / "missing.npz")
    plain = tmp_path / "plain.npz"
    save_npz(plain, {"x": np.zeros(2)}, {"note": json.dumps([1])})
    with pytest.raises(CharrnnError, match="not a charrnn model"):
        load_model(plain)
