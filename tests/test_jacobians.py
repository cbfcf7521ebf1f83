"""Full-state Jacobians and ‖∂L/∂h_t‖ of every cell and depth, checked against
finite differences of the model's own forward recurrence (its public step/evaluate/logits)."""
import numpy as np
import pytest

from charrnn.analysis.gradients import analyze, hidden_grad_norms, jacobian_norms
from charrnn.analysis.jacobians import Recurrence
from charrnn.nn.model import RNNLM

V, H, B, T = 7, 3, 2, 5
CASES = [(cell, layers) for cell in ("rnn", "gru", "lstm") for layers in (1, 2)]


def scrambled(cell, num_layers, scale=0.8, seed=0):
    model = RNNLM(V, H, dtype="float64", seed=seed, cell=cell, num_layers=num_layers)
    rng = np.random.default_rng(seed + 10)
    for array in model.params.values():
        array[...] = rng.normal(0.0, scale, array.shape)
    return model


def window(seed, steps=T):
    tokens = np.random.default_rng(seed).integers(0, V, (B, steps + 1))
    return tokens[:, :-1], tokens[:, 1:]


def internal(model, state):
    """The model's state format -> (L, S, B, H)."""
    return np.reshape(state, (model.num_layers, model.num_states, B, H))


def flat(model, state):
    """(L, S, B, H) -> the analysis' full state (B, N): layer by layer, h then c."""
    return internal(model, state).transpose(2, 0, 1, 3).reshape(B, -1)


def unflat(model, s):
    return s.reshape(B, model.num_layers, model.num_states, H).transpose(1, 2, 0, 3).reshape(model.state_shape(B))


def model_states(model, X, state):
    """s_1..s_T (T, B, N) by the model's own step()."""
    states = []
    for t in range(X.shape[1]):
        _, state = model.step(X[:, t], state)
        states.append(flat(model, state))
    return np.array(states)


@pytest.mark.parametrize("cell,num_layers", CASES)
def test_the_float64_recurrence_is_the_models_forward_pass(cell, num_layers):
    model = scrambled(cell, num_layers)
    X, Y = window(1)
    state = np.random.default_rng(2).normal(0, 0.5, model.state_shape(B))
    recurrence, s = Recurrence(model), flat(model, state)
    for t, expected in enumerate(model_states(model, X, state)):
        s, _ = recurrence.step(X[:, t], s)
        np.testing.assert_allclose(s, expected, rtol=1e-12, atol=1e-14)
    assert recurrence.loss(X, Y, flat(model, state)) == pytest.approx(model.loss_and_grads(X, Y, state)[0], rel=1e-12)


@pytest.mark.parametrize("cell,num_layers", CASES)
def test_jacobian_norms_match_finite_differences_of_the_models_recurrence(cell, num_layers):
    """‖∂s_t/∂s_0‖₂ on the full state, s = every layer's h (and the LSTM's c), by central
    differences of the model's step() in each component of s_0."""
    model = scrambled(cell, num_layers, scale=1.0)
    X, _ = window(3)
    s0 = np.random.default_rng(4).normal(0, 0.5, (B, num_layers * model.num_states * H))
    eps = 1e-6
    N = s0.shape[1]
    jacobians = np.zeros((T, B, N, N))  # [t-1, row, component of s_t, component of s_0]
    for j in range(N):
        bump = np.zeros_like(s0)
        bump[:, j] = eps  # rows do not interact: bump every row at once
        up = model_states(model, X, unflat(model, s0 + bump))
        down = model_states(model, X, unflat(model, s0 - bump))
        jacobians[..., j] = (up - down) / (2 * eps)
    expected = np.linalg.norm(jacobians, 2, axis=(2, 3)).max(axis=1)
    np.testing.assert_allclose(jacobian_norms(model, X, unflat(model, s0)), expected, rtol=1e-6)


@pytest.mark.parametrize("cell,num_layers", CASES)
def test_hidden_grad_norms_match_finite_differences_of_the_models_loss(cell, num_layers):
    """‖∂L/∂h_t‖ over every layer's h_t: bump h_t of the state after step t, then the loss is
    the steps before (fixed), step t's output (the model's logits of the top h_t) and the rest
    of the window run by the model's forward_loss() from the bumped state."""
    model = scrambled(cell, num_layers)
    X, Y = window(5)
    state = np.random.default_rng(6).normal(0, 0.5, model.state_shape(B))
    states = model_states(model, X, state)
    top = (num_layers - 1) * model.num_states * H  # where the top layer's h starts in s

    def loss_from(t, s):  # the terms of B*T*L that depend on s_t
        logits = model.logits(s[:, top:top + H])
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        total = float(np.sum(log_z - logits[np.arange(B), Y[:, t - 1]]))
        if t < T:
            total += model.forward_loss(X[:, t:], Y[:, t:], unflat(model, s))[0]
        return total / X.size

    eps, expected = 1e-6, []
    hidden = [k for k in range(states.shape[2]) if (k // H) % model.num_states == 0]
    for t in range(1, T + 1):
        grad = np.zeros((B, len(hidden)))
        for row in range(B):
            for i, k in enumerate(hidden):
                bump = np.zeros_like(states[t - 1])
                bump[row, k] = eps
                grad[row, i] = (loss_from(t, states[t - 1] + bump) - loss_from(t, states[t - 1] - bump)) / (2 * eps)
        expected.append(np.linalg.norm(grad))
    np.testing.assert_allclose(hidden_grad_norms(model, X, Y, state), expected, rtol=1e-5)


def test_lstm_keeps_the_gradient_where_the_rnn_loses_it():
    """Forget gates open (b_f = 5, f ≈ 0.993), input gates shut: c carries ∂s_t/∂s_0 over 100
    steps at ~f^t, while a tanh rnn with the same small recurrent weights loses it like σ_max^t."""
    X, Y = window(7, steps=100)
    rnn, lstm = scrambled("rnn", 1, scale=0.3), scrambled("lstm", 1, scale=0.3)
    lstm.params["b_h"][:H] = -5   # i ≈ 0
    lstm.params["b_h"][H:2 * H] = 5  # f ≈ 1
    rnn_result, lstm_result = (analyze(m, X, Y, truncations=(), num_draws=2) for m in (rnn, lstm))
    assert rnn_result.jacobian_norms[-1] <= rnn_result.singular_bound[-1] < 1e-10
    assert lstm_result.jacobian_norms[-1] > 0.3
    assert lstm_result.predicted_norms is None and lstm_result.jacobian_name() == "‖∂s_t/∂s_0‖"


def test_analyze_command_on_a_fresh_lstm_and_two_checkpoints_side_by_side(tmp_path, write_words):
    from click.testing import CliRunner

    from charrnn import cli
    from charrnn.training.config import TrainConfig
    from charrnn.training.start import train

    text = write_words(tmp_path / "words.txt", 300, seed=4)
    small = ["--window", "20", "--draws", "2", "--regular", "5"]
    result = CliRunner().invoke(cli.main, ["analyze", "--corpus", str(text), "--preprocess", "raw", "--cell", "lstm",
                                           "--num-layers", "2", "--num-hiddens", "4", *small])
    assert result.exit_code == 0, result.output
    assert "lstm, 2 layers" in result.output and "‖∂s_t/∂s_0‖" in result.output
    assert "h_t and c_t of every layer" in result.output and "ρ(W_hh)" not in result.output
    runs = []
    for cell in ("rnn", "gru"):
        runs.append(tmp_path / cell)
        train(TrainConfig(corpus=str(text), preprocess="raw", cell=cell, num_hiddens=4, batch_size=4, num_steps=8,
                          epochs=1, eval_every=10_000, sample_length=0), runs[-1])
    result = CliRunner().invoke(cli.main, ["analyze", *map(str, runs), *small])
    assert result.exit_code == 0, result.output
    assert "tanh rnn" in result.output and "ρ(W_hh)" in result.output and ", gru" in result.output
    result = CliRunner().invoke(cli.main, ["analyze", str(runs[0]), "--cell", "lstm"])
    assert result.exit_code == 2 and "--cell describe a fresh model" in result.output
