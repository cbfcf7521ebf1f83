"""Gradient checks: they pass on the model, and they fail on deliberately wrong gradients."""
import numpy as np
import pytest

from charrnn.nn import model as model_module
from charrnn.base.errors import CharrnnError
from charrnn.analysis.gradcheck import (FD_TOLERANCE, REL_ERR_FLOOR, GradcheckReport, errors,
                               finite_difference_grads, make_problem, pick_entries,
                               run_gradcheck)
from charrnn.nn.truncation import CUT, KEEP, parse_truncation
from charrnn.nn.model import PARAM_NAMES, RNNLM
from charrnn.nn.truncation import path_scales


def checks(report):
    return {row.check for row in report.rows}


def failed(report):
    return {(row.check, row.param) for row in report.rows if not row.passed}


@pytest.mark.parametrize("activation", ["tanh", "linear"])
@pytest.mark.parametrize("with_state", [True, False])
def test_full_gradients_pass(activation, with_state):
    report = run_gradcheck(activation=activation, with_state=with_state, seed=1)
    assert isinstance(report, GradcheckReport) and report.passed
    expected = {"full vs finite differences"}
    if activation == "linear":
        expected.add("full vs closed form 9.7.15/9.7.16")
    assert checks(report) == expected
    assert len(report.rows) == 5 * len(expected)
    for check, param, abs_err, rel_err, passed in report.rows:
        assert param in PARAM_NAMES and passed and 0 <= rel_err < FD_TOLERANCE
    closed = [row for row in report.rows if "closed form" in row.check]
    assert all(row.max_rel_err < 1e-12 for row in closed)  # float64 round-off


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_regular_truncation_chunks_pass(activation):
    report = run_gradcheck(activation=activation, truncation="regular:4", num_steps=10)
    assert report.passed
    assert {"regular:4 chunks vs finite differences", "regular:4 vs sum of chunks"} <= checks(report)


def test_randomized_truncation_passes():
    report = run_gradcheck(truncation="randomized:0.5", num_draws=400)
    assert report.passed
    assert "randomized:1 vs full (exactly)" in checks(report)
    exact = [row for row in report.rows if "exactly" in row.check]
    assert [row.max_abs_err for row in exact] == [0.0] * 5
    assert report.settings["num_draws"] == 400


def test_large_model_checks_a_random_subset():
    report = run_gradcheck(vocab_size=30, num_hiddens=40, num_steps=5, max_entries=15)
    assert report.passed and report.settings["max_entries"] == 15
    rows, cols = pick_entries((40, 40), 15, np.random.default_rng(0))
    assert len(rows) == 15 and len(set(zip(rows, cols))) == 15
    assert len(pick_entries((4, 3), 15, np.random.default_rng(0))[0]) == 12


def perturb_grad(monkeypatch, name, factor):
    original = RNNLM.loss_and_grads

    def wrong(self, *args, **kwargs):
        loss, grads, state = original(self, *args, **kwargs)
        grads[name] = grads[name] * factor
        return loss, grads, state

    monkeypatch.setattr(RNNLM, "loss_and_grads", wrong)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_a_slightly_wrong_gradient_fails(monkeypatch, name):
    perturb_grad(monkeypatch, name, 1 + 1e-4)
    report = run_gradcheck(activation="linear")
    assert not report.passed
    assert failed(report) == {("full vs finite differences", name),
                              ("full vs closed form 9.7.15/9.7.16", name)}


def test_wrong_chunk_boundaries_fail(monkeypatch):
    original = path_scales

    def one_step_late(truncation, *args):
        kind, value = parse_truncation(truncation)
        return original(f"regular:{value + 1}" if kind == "regular" else truncation, *args)

    monkeypatch.setattr(model_module, "path_scales", one_step_late)
    report = run_gradcheck(truncation="regular:3", num_steps=9)
    assert {check for check, _ in failed(report)} == {"regular:3 vs sum of chunks"}


def test_unbiasedness_check_catches_a_missing_1_over_p(monkeypatch):
    original = path_scales

    def unscaled(*args):
        return [s if s is CUT or s is KEEP else (s > 0).astype(s.dtype) for s in original(*args)]

    monkeypatch.setattr(model_module, "path_scales", unscaled)
    report = run_gradcheck(truncation="randomized:0.5", num_draws=400)
    assert {param for _, param in failed(report)} == {"W_xh", "W_hh", "b_h"}


def test_finite_differences_are_fourth_order_and_restore_parameters():
    """Exact up to round-off on a quartic, where a second-order stencil errs by ~h² w."""
    params = {"w": np.array([0.3, -1.2, 2.0])}
    before = params["w"].copy()

    def loss():
        return float(np.sum(params["w"] ** 4))

    grads = finite_difference_grads(loss, params, {"w": (np.arange(3),)})
    assert np.array_equal(params["w"], before)
    np.testing.assert_allclose(grads["w"], 4 * before ** 3, rtol=1e-9)


def test_relative_error_definition():
    abs_err, rel_err = errors(np.array([1.0, 0.0, 2e-7]), np.array([1.001, 1e-12, 1e-7]))
    np.testing.assert_allclose(abs_err, [1e-3, 1e-12, 1e-7])
    np.testing.assert_allclose(rel_err, [1e-3 / 2.001, 1e-12 / REL_ERR_FLOOR, 1e-7 / REL_ERR_FLOOR])


def test_problem_is_deterministic_and_float64():
    first, second = make_problem(5, 4, 2, 6, "tanh", 3, True), make_problem(5, 4, 2, 6, "tanh", 3, True)
    assert first[0].dtype == np.float64
    for a, b in zip(first[1:], second[1:]):
        assert np.array_equal(a, b)
    assert all(np.array_equal(first[0].params[k], second[0].params[k]) for k in PARAM_NAMES)
    assert make_problem(5, 4, 2, 6, "tanh", 3, False)[3] is None


@pytest.mark.parametrize("kwargs, word", [
    (dict(batch_size=0), "batch_size"), (dict(num_steps=2.0), "num_steps"),
    (dict(max_entries=0), "max_entries"), (dict(num_draws=1), "num_draws"),
    (dict(truncation="regular:0"), "regular:0"), (dict(activation="relu"), "relu"),
    (dict(num_hiddens=0), "num_hiddens"),
])
def test_bad_settings_raise(kwargs, word):
    with pytest.raises(CharrnnError, match=word):
        run_gradcheck(**kwargs)
