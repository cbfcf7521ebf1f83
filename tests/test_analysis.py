"""Gradient analysis against independent computations: finite differences, explicit products;
and the `charrnn analyze` command."""
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training import start as training
from charrnn.analysis.gradients import (analysis_window, analyze, flat_grad, hidden_grad_norms, jacobian_norms,
                              recurrence_spectrum, truncation_error)
from charrnn.data.corpus import load_corpus
from charrnn.base.errors import CharrnnError
from charrnn.nn.model import RNNLM
from charrnn.analysis.plot import check_plot_path, sparkline
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig

V, H, B, T = 5, 4, 2, 7


def scaled_model(activation="tanh", scale=0.8, seed=0):
    model = RNNLM(V, H, activation=activation, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed + 1)
    for param in model.params.values():
        param[...] = rng.standard_normal(param.shape) * scale
    return model


def window(seed=0, batch_size=B, num_steps=T):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (2, batch_size, num_steps))


def reference_run(model, X, Y, h0, bump_step=None, bump=None):
    """Loss and states by a plain loop; `bump` (B, H) is added to h_{bump_step} once computed
    (bump_step 0: to h_0)."""
    p = model.params
    phi = np.tanh if model.activation == "tanh" else (lambda a: a)
    h = h0 + (bump if bump_step == 0 else 0)
    states, total = [], 0.0
    for t in range(X.shape[1]):
        h = phi(p["W_xh"][X[:, t]] + h @ p["W_hh"] + p["b_h"])
        if bump_step == t + 1:
            h = h + bump
        states.append(h)
        o = h @ p["W_hq"] + p["b_q"]
        log_softmax = o - o.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        total -= log_softmax[np.arange(len(X)), Y[:, t]].sum()
    return total / X.size, states


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_hidden_grad_norms_match_finite_differences(activation):
    model = scaled_model(activation, scale=0.6 if activation == "linear" else 0.8)
    X, Y = window()
    h0 = np.random.default_rng(5).standard_normal((B, H)) * 0.5
    eps = 1e-6
    expected = []
    for t in range(1, T + 1):
        grad = np.zeros((B, H))
        for index in np.ndindex(B, H):
            bump = np.zeros((B, H))
            bump[index] = eps
            up = reference_run(model, X, Y, h0, t, bump)[0]
            down = reference_run(model, X, Y, h0, t, -bump)[0]
            grad[index] = (up - down) / (2 * eps)
        expected.append(np.linalg.norm(grad))
    np.testing.assert_allclose(hidden_grad_norms(model, X, Y, h0), expected, rtol=1e-6)


def test_jacobian_norms_match_finite_differences_for_tanh():
    model = scaled_model("tanh", scale=1.2)
    X, Y = window(1)
    h0 = np.random.default_rng(6).standard_normal((B, H)) * 0.3
    eps = 1e-6
    jacobians = np.zeros((T, B, H, H))  # [t-1, row, component of h_t, component of h_0]
    for row, j in np.ndindex(B, H):
        bump = np.zeros((B, H))
        bump[row, j] = eps
        up = np.array(reference_run(model, X, Y, h0, 0, bump)[1])
        down = np.array(reference_run(model, X, Y, h0, 0, -bump)[1])
        jacobians[:, row, :, j] = (up - down)[:, row, :] / (2 * eps)
    expected = np.linalg.norm(jacobians, 2, axis=(2, 3)).max(axis=1)
    np.testing.assert_allclose(jacobian_norms(model, X, h0), expected, rtol=1e-6)


def test_linear_jacobian_is_the_power_of_w_hh():
    model = scaled_model("linear", scale=0.6)
    X, _ = window(2, num_steps=12)
    W = model.params["W_hh"]
    expected = [np.linalg.norm(np.linalg.matrix_power(W, t), 2) for t in range(1, 13)]
    np.testing.assert_allclose(jacobian_norms(model, X), expected, rtol=1e-10)


def test_linear_prediction_rho_to_the_t_and_no_underflow():
    """For a symmetric W_hh, ‖W^t‖₂ = ρ^t exactly: eq. 9.7.15's prediction, down to 1e-200."""
    model = scaled_model("linear")
    Q = np.linalg.qr(np.random.default_rng(3).standard_normal((H, H)))[0]
    model.params["W_hh"][...] = Q @ np.diag([0.1, -0.05, 0.03, 0.01]) @ Q.T
    X, Y = window(3, batch_size=1, num_steps=200)
    result = analyze(model, X, Y, truncations=())
    assert result.spectral_radius == pytest.approx(0.1, rel=1e-12)
    np.testing.assert_allclose(result.jacobian_norms, result.predicted_norms, rtol=1e-9)
    assert result.jacobian_norms[-1] == pytest.approx(1e-200, rel=1e-9)
    assert result.growth_rate == pytest.approx(0.1, rel=1e-9)


def test_recurrence_spectrum_of_a_known_matrix():
    W = np.array([[0.0, 2.0], [0.5, 0.0]])  # eigenvalues ±1, singular values 2 and 0.5
    rho, sigma = recurrence_spectrum(W)
    assert rho == pytest.approx(1.0) and sigma == pytest.approx(2.0)


def test_tanh_jacobian_is_bounded_by_sigma_to_the_t():
    model = scaled_model("tanh", scale=1.5)
    X, Y = window(4, num_steps=30)
    result = analyze(model, X, Y, truncations=())
    assert np.all(result.jacobian_norms <= result.singular_bound * (1 + 1e-12))
    assert result.loss == pytest.approx(reference_run(model, X, Y, np.zeros((B, H)))[0], rel=1e-12)
    assert result.hidden_grad_norms.shape == result.jacobian_norms.shape == (30,)
    assert (result.batch_size, result.num_steps, result.activation) == (B, 30, "tanh")


def test_regular_truncation_bias_is_the_distance_to_the_full_gradient():
    model = scaled_model()
    X, Y = window(5, num_steps=12)
    full = flat_grad(model.loss_and_grads(X, Y)[1])
    truncated = flat_grad(model.loss_and_grads(X, Y, truncation="regular:3")[1])
    error = truncation_error(model, X, Y, "regular:3")
    assert (error.num_draws, error.spread, error.mean_error_stderr) == (1, 0.0, 0.0)
    assert error.mean_error == pytest.approx(np.linalg.norm(truncated - full), rel=1e-12)
    assert error.relative_bias == pytest.approx(np.linalg.norm(truncated - full) / np.linalg.norm(full))
    assert error.mean_error > 1e-3 * error.full_norm  # the test window is long enough to be biased
    assert truncation_error(model, X, Y, "regular:12").mean_error < 1e-14  # cuts only at step 0


def test_randomized_mean_and_spread_match_the_draws_and_the_mean_is_unbiased():
    model = scaled_model()
    X, Y = window(6, num_steps=12)
    full = flat_grad(model.loss_and_grads(X, Y)[1])
    error = truncation_error(model, X, Y, "randomized:0.4", num_draws=400, seed=9)
    rng = np.random.default_rng(9)
    draws = np.array([flat_grad(model.loss_and_grads(X, Y, truncation="randomized:0.4", rng=rng)[1])
                      for _ in range(400)])
    total_variance = draws.var(axis=0, ddof=1).sum()
    assert error.num_draws == 400
    assert error.spread == pytest.approx(np.sqrt(total_variance), rel=1e-9)
    assert error.mean_error_stderr == pytest.approx(np.sqrt(total_variance / 400), rel=1e-9)
    assert error.mean_error == pytest.approx(np.linalg.norm(draws.mean(axis=0) - full), rel=1e-9)
    assert error.spread > 0.05 * error.full_norm
    assert error.mean_error < 4 * error.mean_error_stderr  # zero bias, up to sampling error
    assert error.relative_rms_error == pytest.approx(np.hypot(error.mean_error, error.spread) / error.full_norm)


def test_randomized_with_p_1_is_the_full_gradient():
    model = scaled_model()
    X, Y = window(7)
    error = truncation_error(model, X, Y, "randomized:1")
    assert error.num_draws == 1 and error.mean_error == 0.0
    with pytest.raises(CharrnnError, match="num_draws"):
        truncation_error(model, X, Y, "randomized:0.5", num_draws=1)


def test_analysis_window_rows_and_errors():
    corpus = np.arange(100, dtype=np.int32)
    X, Y = analysis_window(corpus, num_steps=10, batch_size=3, offset=5)
    assert X.shape == Y.shape == (3, 10) and X.dtype == np.int32
    assert X[0, 0] == 5 and X[2, -1] == 34 and np.array_equal(Y, X + 1)
    with pytest.raises(CharrnnError, match="does not fit"):
        analysis_window(corpus, num_steps=100)
    with pytest.raises(CharrnnError, match="window"):
        analysis_window(corpus, num_steps=0)


# ---------------------------------------------------------------------------- the command line

def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 200, seed=2)


def test_analyze_a_fresh_model(text_file):
    result = invoke("analyze", "--corpus", text_file, "--num-hiddens", 6, "--activation", "linear",
                    "--window", 12, "--draws", 5, "--regular", 4, "--randomized", 0.5, "--model-seed", 3)
    assert result.exit_code == 0, result.output
    ids, vocab = load_corpus(str(text_file))
    rho, sigma = recurrence_spectrum(RNNLM(len(vocab), 6, activation="linear", seed=3).params["W_hh"])
    assert f"{rho:.4g}" in result.output and f"{sigma:.4g}" in result.output
    assert "regular:4" in result.output and "randomized:0.5" in result.output and "linear" in result.output


def test_analyze_a_checkpoint_on_its_own_text(tmp_path, text_file):
    config = TrainConfig(corpus=str(text_file), num_hiddens=7, batch_size=2, num_steps=10,
                                  max_tokens=100, sample_length=0)
    run = training.train(config, tmp_path / "run")
    result = invoke("analyze", run.out_dir, "--window", 15, "--offset", 3, "--draws", 4)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(run.out_dir)
    X, Y = analysis_window(load_corpus(str(text_file))[0], 15, 1, 3)
    assert f"{ckpt.model.loss_and_grads(X, Y)[0]:.4f}" in result.output
    assert "‖∂h_t/∂h_0‖" in result.output
    refused = invoke("analyze", run.out_dir, "--num-hiddens", 5)
    assert refused.exit_code == 2 and "--num-hiddens" in refused.output
    too_long = invoke("analyze", run.out_dir, "--window", 10_000)
    assert too_long.exit_code == 1 and "does not fit" in too_long.output and "Traceback" not in too_long.output


def test_plot_errors_are_one_line_and_come_first(tmp_path, text_file, monkeypatch):
    fresh = ["--corpus", text_file, "--num-hiddens", 4, "--window", 5]
    bad_name = invoke("analyze", *fresh, "--plot", tmp_path / "figure.txt")
    assert bad_name.exit_code == 1 and ".png, .pdf or .svg" in bad_name.output
    no_folder = invoke("analyze", *fresh, "--plot", tmp_path / "missing" / "figure.png")
    assert no_folder.exit_code == 1 and "no folder" in no_folder.output
    assert "Gradient analysis" not in no_folder.output  # refused before any work
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(CharrnnError, match=r"pip install -e '\.\[plot\]'"):
        check_plot_path("figure.png")
    missing = invoke("analyze", *fresh, "--plot", tmp_path / "figure.png")
    assert missing.exit_code == 1 and "matplotlib" in missing.output and "Traceback" not in missing.output
    assert "Gradient analysis" not in missing.output  # refused before any work


def test_sparkline_shares_a_scale():
    assert sparkline([1, 10, 100]) == "▁▅█"
    assert sparkline([1, 10], scale_with=[[1, 10], [1, 1000]]) == "▁▃"
    assert sparkline([3, 1, 2], log=False) == "█▁▅"
    assert sparkline([0.0, 1.0, 10.0]) == " ▁█"
    assert len(sparkline(np.arange(1, 500), width=40)) == 40
