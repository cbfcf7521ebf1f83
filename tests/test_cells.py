"""GRU, LSTM, stacked layers and dropout: the equations, exact gradients, truncation of the whole
state, recomputation, the state format and the parameter layout."""
import numpy as np
import pytest

from charrnn.nn.cells import CELLS, TINY_DELTA, flush_tiny
from charrnn.training.checkpoint import load_model, save_model
from charrnn.base.errors import CharrnnError
from charrnn.base.io import load_npz, save_npz
from charrnn.analysis.gradcheck import FD_TOLERANCE, run_gradcheck
from charrnn.nn import model as model_module
from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import loss_and_grads_recompute
from charrnn.nn.reference import lstm_loss_and_grads
from charrnn.infer.sample import stepper
from charrnn.nn.workspace import Workspace
from test_recompute import peak_bytes

V, H, B, T = 7, 5, 3, 8
NETWORKS = [(cell, layers) for cell in CELLS for layers in (1, 2)]


def batch(seed=0, num_steps=T):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, V, (B, num_steps)).astype(np.int32),
            rng.integers(0, V, (B, num_steps)).astype(np.int32))


def scaled_model(cell, num_layers=1, dropout=0.0, dtype="float64", seed=0):
    """A model with weights large enough for the gates and the recurrence to matter."""
    m = RNNLM(V, H, dtype=dtype, seed=seed, cell=cell, num_layers=num_layers, dropout=dropout)
    rng = np.random.default_rng(seed + 100)
    for p in m.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.6
    return m


def random_state(m, seed=1):
    return np.random.default_rng(seed).standard_normal(m.state_shape(B)) * 0.5


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def reference_forward(m, X, Y, state=None, masks=None):
    """Mean cross-entropy and last state (L, S, B, H) by plain per-step loops in float64, written
    from the equations in cells.py, independent of the model's code. masks: (T, L, B, H) or None."""
    p = {k: v.astype(np.float64) for k, v in m.params.items()}
    L, Hn = m.num_layers, m.num_hiddens
    S = 2 if m.cell == "lstm" else 1
    s = np.zeros((L, S, len(X), Hn)) if state is None else np.asarray(state, np.float64).reshape(L, S, len(X), Hn).copy()
    total = 0.0
    for t in range(X.shape[1]):
        for l in range(L):
            suffix = "" if l == 0 else f"_l{l}"
            if l == 0:
                xw = p["W_xh"][X[:, t]]
            else:
                x = s[l - 1, 0] * (1 if masks is None else masks[t, l - 1])
                xw = x @ p[f"W_xh{suffix}"]
            xw = xw + p[f"b_h{suffix}"]
            h = s[l, 0]
            hw = h @ p[f"W_hh{suffix}"]
            if m.cell == "rnn":
                s[l, 0] = np.tanh(xw + hw)
            elif m.cell == "gru":
                r = sigmoid(xw[:, :Hn] + hw[:, :Hn])
                z = sigmoid(xw[:, Hn:2 * Hn] + hw[:, Hn:2 * Hn])
                n = np.tanh(xw[:, 2 * Hn:] + r * (hw[:, 2 * Hn:] + p[f"b_hn{suffix}"]))
                s[l, 0] = (1 - z) * n + z * h
            else:
                a = xw + hw
                i, f, g, o = (a[:, k * Hn:(k + 1) * Hn] for k in range(4))
                s[l, 1] = sigmoid(f) * s[l, 1] + sigmoid(i) * np.tanh(g)
                s[l, 0] = sigmoid(o) * np.tanh(s[l, 1])
        top = s[L - 1, 0] * (1 if masks is None else masks[t, L - 1])
        o = top @ p["W_hq"] + p["b_q"]
        log_softmax = o - o.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        total -= log_softmax[np.arange(len(X)), Y[:, t]].sum()
    return total / X.size, s


# ------------------------------------------------------------------ the networks


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_matches_the_equations(cell, num_layers, with_state):
    m = scaled_model(cell, num_layers)
    X, Y = batch()
    state = random_state(m) if with_state else None
    loss, _, last = m.loss_and_grads(X, Y, state)
    expected_loss, expected_state = reference_forward(m, X, Y, state)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(last.reshape(expected_state.shape), expected_state, rtol=1e-11, atol=1e-13)
    assert m.forward_loss(X, Y, state)[0] / X.size == pytest.approx(expected_loss, rel=1e-12)


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_dropout_masks_are_drawn_time_major_from_the_generator_and_inverted(cell, num_layers):
    """Training drops with masks rng.random((T, L, B, H)) >= P, scaled 1/(1-P), between layers
    and before the output layer; the generator is left just after those draws."""
    P = 0.4
    m = scaled_model(cell, num_layers, dropout=P)
    X, Y = batch()
    state = random_state(m)
    rng = np.random.default_rng(9)
    loss, _, last = m.loss_and_grads(X, Y, state, dropout_rng=rng)
    expected_rng = np.random.default_rng(9)
    masks = (expected_rng.random((T, num_layers, B, H)) >= P) / (1 - P)
    expected_loss, expected_state = reference_forward(m, X, Y, state, masks)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(last.reshape(expected_state.shape), expected_state, rtol=1e-11, atol=1e-13)
    assert rng.random() == expected_rng.random()
    assert loss != pytest.approx(m.forward_loss(X, Y, state)[0] / X.size, rel=1e-6)


def test_dropout_is_the_identity_when_evaluating_and_sampling():
    dropped = scaled_model("lstm", 2, dropout=0.5)
    plain = scaled_model("lstm", 2)
    X, Y = batch()
    (loss, count, state), (plain_loss, plain_count, plain_state) = dropped.forward_loss(X, Y), plain.forward_loss(X, Y)
    assert (loss, count) == (plain_loss, plain_count)
    np.testing.assert_array_equal(state, plain_state)
    np.testing.assert_array_equal(dropped.step(X[:, 0])[0], plain.step(X[:, 0])[0])


def test_with_dropout_shares_the_parameters():
    m = scaled_model("gru", 2, dropout=0.4)
    plain = m.with_dropout(0.0)
    assert plain.dropout == 0.0 and m.dropout == 0.4 and plain.params is m.params
    X, Y = batch()
    loss, grads, _ = plain.loss_and_grads(X, Y)  # no Generator needed: nothing is dropped
    assert loss == pytest.approx(m.forward_loss(X, Y)[0] / X.size, rel=1e-14)
    m.params["W_hq"] *= 2
    assert plain.forward_loss(X, Y)[0] == m.forward_loss(X, Y)[0]
    with pytest.raises(CharrnnError, match="dropout"):
        m.with_dropout(1.0)


def test_dropout_needs_a_generator_to_train():
    m = RNNLM(V, H, cell="gru", dropout=0.3)
    with pytest.raises(CharrnnError, match="dropout_rng"):
        m.loss_and_grads(*batch())
    with pytest.raises(CharrnnError, match="dropout_rng"):
        loss_and_grads_recompute(m, *batch())


def test_same_seeds_same_run_bit_for_bit():
    X, Y = batch()
    runs = []
    for _ in range(2):
        m = RNNLM(V, H, seed=4, cell="lstm", num_layers=2, dropout=0.3)
        rng, drop = np.random.default_rng(1), np.random.default_rng(2)
        runs.append([m.loss_and_grads(X, Y, None, "randomized:0.5", rng, drop) for _ in range(2)])
    for (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) in zip(*runs):
        assert loss_a == loss_b and np.array_equal(state_a, state_b)
        assert all(np.array_equal(grads_a[k], grads_b[k]) for k in grads_a)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float32_model_agrees_with_float64(cell):
    m64 = scaled_model(cell, 2, dropout=0.3)
    m32 = RNNLM(V, H, dtype="float32", cell=cell, num_layers=2, dropout=0.3)
    for name, p in m32.params.items():
        p[...] = m64.params[name]
    X, Y = batch()
    state = random_state(m64)
    loss32, grads32, state32 = m32.loss_and_grads(X, Y, state, dropout_rng=np.random.default_rng(0))
    loss64, grads64, _ = m64.loss_and_grads(X, Y, state, dropout_rng=np.random.default_rng(0))
    assert state32.dtype == np.float32 and loss32 == pytest.approx(loss64, rel=1e-5)
    for name in grads64:
        assert grads32[name].dtype == np.float32
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=1e-3, atol=1e-5)


def test_flush_tiny_zeroes_float32_deltas_below_two_to_the_minus_63_and_keeps_the_rest_exactly():
    smallest = TINY_DELTA["float32"]
    values = np.array([[0.5, -1e-30, 2.0 ** -63, -(2.0 ** -63) * 0.99, 1e-45, -3e-19, 0.0, -7.0]], np.float32)
    delta = values.copy()
    flush_tiny(delta, np.empty_like(delta))
    kept = np.abs(values) >= smallest
    assert np.array_equal(delta[kept], values[kept]) and not delta[~kept].any()
    assert kept.tolist() == [[True, False, True, False, False, True, False, True]]
    exact = values.astype(np.float64)
    flush_tiny(exact, np.empty_like(exact))
    assert np.array_equal(exact, values.astype(np.float64))  # float64: untouched


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_saturated_gates_flush_only_what_no_float32_gradient_can_show(cell, monkeypatch):
    """Gates driven into saturation make δ of 1e-20 and less; float32 drops those below 2^-63
    and still agrees with float64 (which flushes nothing) to float32's precision of the gradient
    as a whole; an entry it zeroes sums fewer than T·B such terms."""
    tiny_seen = []

    def counting(delta, scratch):
        tiny_seen.append(np.count_nonzero((np.abs(delta) < TINY_DELTA["float32"]) & (delta != 0)))
        flush_tiny(delta, scratch)

    monkeypatch.setattr(model_module, "flush_tiny", counting)
    m64 = scaled_model(cell, 2)
    for name, p in m64.params.items():
        if name.startswith("b_h"):
            p += 5.0  # gates near saturation, σ' small
    m64.params["W_hq"] *= 1e-9  # and a small gradient from the output: δ of 1e-20 and less
    m32 = RNNLM(V, H, dtype="float32", cell=cell, num_layers=2)
    for name, p in m32.params.items():
        p[...] = m64.params[name]
    X, Y = batch()
    loss32, grads32, _ = m32.loss_and_grads(X, Y)
    loss64, grads64, _ = m64.loss_and_grads(X, Y)
    assert sum(tiny_seen) > 0  # δ this small was there, and went
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    size = max(np.abs(g).max() for g in grads64.values())  # what clipping and the optimizer see
    for name in grads64:
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=1e-4, atol=1e-6 * size)
        assert np.abs(grads64[name][grads32[name] == 0]).max(initial=0) < T * B * TINY_DELTA["float32"]


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
@pytest.mark.parametrize("with_state, dropout", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_gradients_match_finite_differences(cell, num_layers, with_state, dropout):
    report = run_gradcheck(vocab_size=5, num_hiddens=4, batch_size=2, num_steps=6, cell=cell,
                           num_layers=num_layers, dropout=dropout, with_state=with_state,
                           max_entries=40, seed=3)
    assert report.passed
    assert {row.param for row in report.rows} == set(RNNLM(5, 4, cell=cell, num_layers=num_layers).params)
    assert all(row.max_rel_err < FD_TOLERANCE for row in report.rows)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_truncation_checks_pass_for_gated_stacks(cell):
    regular = run_gradcheck(vocab_size=5, num_hiddens=4, batch_size=2, num_steps=6, cell=cell,
                            num_layers=2, dropout=0.3, truncation="regular:4", max_entries=10)
    randomized = run_gradcheck(vocab_size=5, num_hiddens=4, batch_size=2, num_steps=6, cell=cell,
                               num_layers=2, truncation="randomized:0.5", max_entries=5, num_draws=800)
    assert regular.passed and randomized.passed


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_a_cut_stops_the_whole_state_of_every_layer(cell, num_layers):
    """regular:4 on 8 steps = the first 4 steps' gradient plus that of the last 4 started from
    the state after step 4 held constant (h and c of every layer), with the dropout masks of
    those steps."""
    m = scaled_model(cell, num_layers, dropout=0.3)
    X, Y = batch()
    state = random_state(m)
    per_step = num_layers * B * H

    def masks(start):
        rng = np.random.default_rng(5)
        rng.random(start * per_step)
        return rng

    truncated = m.loss_and_grads(X, Y, state, "regular:4", dropout_rng=masks(0))[1]
    _, first, middle = m.loss_and_grads(X[:, :4], Y[:, :4], state, dropout_rng=masks(0))
    second = m.loss_and_grads(X[:, 4:], Y[:, 4:], middle, dropout_rng=masks(4))[1]
    full = m.loss_and_grads(X, Y, state, dropout_rng=masks(0))[1]
    for name in truncated:
        np.testing.assert_allclose(truncated[name], (first[name] + second[name]) / 2, rtol=1e-12, atol=1e-15)
    assert not np.allclose(truncated["W_hh"], full["W_hh"])


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_randomized_one_is_full_and_xi_scales_every_layer(cell, num_layers):
    m = scaled_model(cell, num_layers)
    X, Y = batch()
    full = m.loss_and_grads(X, Y)[1]
    one = m.loss_and_grads(X, Y, truncation="randomized:1", rng=np.random.default_rng(0))[1]
    assert all(np.array_equal(full[k], one[k]) for k in full)
    a = m.loss_and_grads(X, Y, truncation="randomized:0.5", rng=np.random.default_rng(1))[1]
    b = m.loss_and_grads(X, Y, truncation="randomized:0.5", rng=np.random.default_rng(2))[1]
    assert np.array_equal(a["W_hq"], b["W_hq"])  # the output layer has no recurrent path
    for layer in range(num_layers):
        suffix = "" if layer == 0 else f"_l{layer}"
        assert not np.allclose(a[f"W_hh{suffix}"], b[f"W_hh{suffix}"])


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
@pytest.mark.parametrize("truncation", ["full", "regular:3", "randomized:0.5"])
def test_recompute_equals_stored_bptt(cell, num_layers, truncation):
    m = scaled_model(cell, num_layers, dropout=0.25)
    X, Y = batch(num_steps=23)
    state = random_state(m)
    rngs = [(np.random.default_rng(7), np.random.default_rng(8)) for _ in range(2)]
    stored = m.loss_and_grads(X, Y, state, truncation, *rngs[0])
    recomputed = loss_and_grads_recompute(m, X, Y, state, truncation, *rngs[1][:1], segment_steps=5,
                                          dropout_rng=rngs[1][1])
    assert recomputed[0] == pytest.approx(stored[0], rel=1e-12)
    np.testing.assert_array_equal(recomputed[2], stored[2])
    for name, grad in stored[1].items():
        np.testing.assert_allclose(recomputed[1][name], grad, rtol=1e-11, atol=1e-14 * np.abs(grad).max())
    assert rngs[0][1].random() == rngs[1][1].random()  # the same masks drawn, no more


# ------------------------------------------------------------------ state and steps


@pytest.mark.parametrize("cell, num_layers, shape", [
    ("rnn", 1, (B, H)), ("gru", 1, (B, H)), ("lstm", 1, (1, 2, B, H)),
    ("rnn", 2, (2, 1, B, H)), ("gru", 3, (3, 1, B, H)), ("lstm", 2, (2, 2, B, H))])
def test_state_format(cell, num_layers, shape):
    m = scaled_model(cell, num_layers)
    X, Y = batch()
    assert m.state_shape(B) == shape
    assert m.loss_and_grads(X, Y)[2].shape == shape and m.step(X[:, 0])[1].shape == shape
    zeros = m.loss_and_grads(X, Y, np.zeros(shape))
    assert zeros[0] == m.loss_and_grads(X, Y)[0]
    with pytest.raises(CharrnnError, match="state must have shape"):
        m.loss_and_grads(X, Y, np.zeros((B, H + 1)))


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_state_carries_across_minibatches(cell, num_layers):
    m = scaled_model(cell, num_layers)
    X, Y = batch()
    loss_whole, _, state_whole = m.loss_and_grads(X, Y)
    loss_a, _, state_a = m.loss_and_grads(X[:, :3], Y[:, :3])
    loss_b, _, state_b = m.loss_and_grads(X[:, 3:], Y[:, 3:], state_a)
    assert (3 * loss_a + 5 * loss_b) / 8 == pytest.approx(loss_whole, rel=1e-13)
    np.testing.assert_allclose(state_b, state_whole, rtol=1e-12)


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_steps_and_stepper_follow_the_forward_pass(cell, num_layers):
    m = scaled_model(cell, num_layers, dtype="float32", dropout=0.5)
    X, Y = batch()
    state, logits = None, []
    advance, advanced = stepper(m), None
    for t in range(T):
        step_logits, state = m.step(X[:1, t], state)
        advanced_logits, advanced = advance(int(X[0, t]), advanced)
        np.testing.assert_array_equal(advanced_logits, step_logits)
        np.testing.assert_array_equal(advanced, state)
        logits.append(step_logits)
    logits = np.stack(logits, axis=1)  # (1, T, V)
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    step_loss = -np.take_along_axis(log_p, Y[:1, :, None], axis=-1).mean()
    loss_sum, count, forward_state = m.forward_loss(X[:1], Y[:1])
    assert step_loss == pytest.approx(loss_sum / count, rel=1e-5)
    np.testing.assert_allclose(state, forward_state, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ parameters


def test_parameter_layout():
    shapes = {k: p.shape for k, p in RNNLM(V, H, cell="gru", num_layers=2).params.items()}
    assert shapes == {"W_xh": (V, 3 * H), "W_hh": (H, 3 * H), "b_h": (3 * H,), "b_hn": (H,),
                      "W_xh_l1": (H, 3 * H), "W_hh_l1": (H, 3 * H), "b_h_l1": (3 * H,), "b_hn_l1": (H,),
                      "W_hq": (H, V), "b_q": (V,)}
    shapes = {k: p.shape for k, p in RNNLM(V, H, cell="lstm").params.items()}
    assert shapes == {"W_xh": (V, 4 * H), "W_hh": (H, 4 * H), "b_h": (4 * H,), "W_hq": (H, V), "b_q": (V,)}
    assert list(RNNLM(V, H, num_layers=2).params) == ["W_xh", "W_hh", "b_h", "W_xh_l1", "W_hh_l1",
                                                       "b_h_l1", "W_hq", "b_q"]


def test_gated_initialisation():
    """U(-1/√H, 1/√H) recurrent-layer weights, zero biases but the LSTM forget gate's 1, the
    output layer N(0, 0.01²); float64 draws cast, the same seed the same model."""
    Hn = 64
    lstm = RNNLM(30, Hn, cell="lstm", num_layers=2, seed=3)
    bound = 1 / np.sqrt(Hn)
    for name in ("W_xh", "W_hh", "W_xh_l1", "W_hh_l1"):
        w = lstm.params[name]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    for name in ("b_h", "b_h_l1"):
        expected = np.zeros(4 * Hn, np.float32)
        expected[Hn:2 * Hn] = 1
        np.testing.assert_array_equal(lstm.params[name], expected)
    assert abs(lstm.params["W_hq"].std() - 0.01) < 0.002 and not lstm.params["b_q"].any()
    gru = RNNLM(30, Hn, cell="gru", seed=3)
    assert not gru.params["b_h"].any() and not gru.params["b_hn"].any()
    again = RNNLM(30, Hn, cell="lstm", num_layers=2, seed=3, dtype="float64")
    assert all(np.array_equal(lstm.params[k], again.params[k].astype(np.float32)) for k in lstm.params)
    loss = lstm.loss_and_grads(*[np.random.default_rng(0).integers(0, 30, (4, 10))] * 2)[0]
    assert abs(loss - np.log(30)) < 0.05


@pytest.mark.parametrize("kwargs, word", [
    (dict(cell="transformer"), "transformer"),
    (dict(num_layers=0), "num_layers"),
    (dict(num_layers=1.5), "num_layers"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout=True), "dropout"),
    (dict(dropout="0.5"), "dropout"),
    (dict(cell="gru", activation="linear"), "linear"),
    (dict(cell="lstm", activation="linear"), "lstm"),
])
def test_bad_network_arguments(kwargs, word):
    with pytest.raises(CharrnnError, match=word):
        RNNLM(V, H, **kwargs)


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("cell, num_layers", NETWORKS)
def test_model_files_round_trip_every_network(tmp_path, cell, num_layers):
    m = scaled_model(cell, num_layers, dropout=0.25, dtype="float32")
    save_model(m, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert (loaded.cell, loaded.num_layers, loaded.dropout) == (cell, num_layers, 0.25)
    assert all(np.array_equal(loaded.params[k], m.params[k]) for k in m.params)
    X, Y = batch()
    assert loaded.forward_loss(X, Y)[0] == m.forward_loss(X, Y)[0]


def test_a_version_1_file_is_a_one_layer_rnn(tmp_path):
    """Files written before gated cells (format_version 1, no cell/num_layers/dropout) still load."""
    m = scaled_model("rnn", dtype="float32")
    path = tmp_path / "v1.npz"
    save_model(m, path)
    arrays, meta = load_npz(path)
    for key in ("cell", "num_layers", "dropout"):
        del meta[key]
    save_npz(path, arrays, {**meta, "format_version": 1})
    loaded = load_model(path)
    assert (loaded.cell, loaded.num_layers, loaded.dropout) == ("rnn", 1, 0.0)
    assert all(np.array_equal(loaded.params[k], m.params[k]) for k in m.params)
    save_npz(path, arrays, {**meta, "format_version": 1, "cell": "gru"})
    with pytest.raises(CharrnnError, match="version-1"):
        load_model(path)


@pytest.mark.parametrize("saved, claimed", [
    (dict(cell="gru"), dict(cell="lstm")), (dict(cell="lstm"), dict(cell="gru")),
    (dict(cell="gru"), dict(cell="rnn")), (dict(cell="rnn"), dict(cell="gru")),
    (dict(cell="lstm", num_layers=2), dict(num_layers=1)), (dict(cell="rnn"), dict(num_layers=2)),
    (dict(cell="rnn"), dict(cell="cnn")), (dict(cell="rnn"), dict(num_layers=0)),
    (dict(cell="rnn"), dict(dropout=1.0)), (dict(cell="rnn"), dict(dropout="0")),
])
def test_a_file_of_one_network_never_loads_as_another(tmp_path, saved, claimed):
    path = tmp_path / "m.npz"
    save_model(RNNLM(V, H, **saved), path)
    arrays, meta = load_npz(path)
    save_npz(path, arrays, {**meta, **claimed})
    with pytest.raises(CharrnnError) as err:
        load_model(path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ memory


def test_forward_only_work_holds_no_backward_buffers_and_chunks_to_a_budget(monkeypatch):
    """forward_loss makes no backward buffers, and runs a window in chunks small enough for
    FORWARD_MEMORY_BUDGET: the same loss and state as in one piece."""
    from charrnn.nn import model as model_module
    made = []

    def recorded(model, batch_size, num_steps):
        made.append(Workspace(model, batch_size, num_steps))
        return made[-1]

    m = scaled_model("lstm", 2)
    X, Y = batch(num_steps=40)
    whole = m.forward_loss(X, Y)
    per_step = Workspace.forward_bytes_per_step(m, B)
    monkeypatch.setattr(model_module, "FORWARD_MEMORY_BUDGET", 7 * per_step)
    monkeypatch.setattr(model_module.RNNLM, "_forward_workspace", recorded)
    chunked = m.forward_loss(X, Y)
    assert [ws.hs.shape[1] - 1 for ws in made] == [7] * 5 + [5]
    assert all(ws.M is None and ws.dA is None for ws in made)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-13) and chunked[1] == whole[1]
    np.testing.assert_array_equal(chunked[2], whole[2])


def test_recomputation_holds_a_fraction_of_stored_bptt_for_a_gated_stack():
    """O(√T) memory for the LSTM too: the peak allocation of a recomputing pass over 2,048 steps
    is a small fraction of the stored pass's, which holds what bptt_memory_bytes predicts."""
    from charrnn.nn.recompute import bptt_memory_bytes

    rng = np.random.default_rng(0)
    X, Y = rng.integers(0, 20, (2, 2, 2048))
    network = dict(cell="lstm", num_layers=2, dropout=0.2)
    stored = peak_bytes(lambda: RNNLM(20, 16, **network).loss_and_grads(X, Y, dropout_rng=np.random.default_rng(0)))
    recomputed = peak_bytes(lambda: loss_and_grads_recompute(RNNLM(20, 16, **network), X, Y,
                                                             dropout_rng=np.random.default_rng(0)))
    assert stored >= bptt_memory_bytes(2, 2048, 16, 20, "float32", **network)
    assert recomputed < stored / 8


@pytest.mark.parametrize("num_layers, dropout, with_state", [(1, 0.0, False), (2, 0.0, True), (2, 0.4, True), (3, 0.3, True)])
def test_the_lstm_equals_its_plain_reference_forward_and_backward(num_layers, dropout, with_state):
    """RNNLM's fused LSTM gives the loss, every gradient and the last state of reference.py's
    step-by-step float64 LSTM (the same dropout masks), to round-off."""
    m = scaled_model("lstm", num_layers, dropout=dropout)
    X, Y = batch()
    state = random_state(m) if with_state else None
    loss, grads, last = m.loss_and_grads(X, Y, state, dropout_rng=np.random.default_rng(9))
    masks = None if dropout == 0 else (np.random.default_rng(9).random((T, num_layers, B, H)) >= dropout) / (1 - dropout)
    reference_state = None if state is None else np.asarray(state).reshape(num_layers, 2, B, H)
    expected_loss, expected_grads, expected_last = lstm_loss_and_grads(m.params, X, Y, reference_state, masks)
    assert loss == pytest.approx(expected_loss, rel=1e-13)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        np.testing.assert_allclose(grads[name], grad, rtol=1e-11, atol=1e-14 * np.abs(grad).max(), err_msg=name)
    np.testing.assert_allclose(last.reshape(expected_last.shape), expected_last, rtol=1e-12, atol=1e-14)
