"""next_token: its draws follow softmax(logits / T) restricted to the top k, and never pick a
token of probability zero."""
import warnings

import numpy as np
import pytest

from charrnn.base.errors import CharrnnError
from charrnn.infer.sample import next_token

DRAWS = 10_000


def frequencies(logits, **options):
    rng = np.random.default_rng(0)
    draws = [next_token(np.array(logits, np.float64), rng, **options) for _ in range(DRAWS)]
    return np.bincount(draws, minlength=len(logits)) / DRAWS


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, None), (2.0, 2)])
def test_draws_follow_the_tempered_softmax(temperature, top_k):
    logits = np.array([1.0, -0.5, 0.3, 2.0, -np.inf])
    z = logits / temperature
    if top_k is not None:
        z[np.argsort(z)[:-top_k]] = -np.inf
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    observed = frequencies(logits, temperature=temperature, top_k=top_k)
    std = np.sqrt(expected * (1 - expected) / DRAWS)
    assert np.all(np.abs(observed - expected) <= 5 * std + 1e-12)
    assert observed[expected == 0].sum() == 0  # banned (-inf) and cut tokens are never drawn


def test_zero_probability_at_either_end_is_never_drawn():
    observed = frequencies([-np.inf, 0.0, -np.inf, 0.0, -np.inf])
    assert observed[0] == observed[2] == observed[4] == 0
    assert abs(observed[1] - 0.5) < 0.02


def test_greedy_takes_the_argmax_and_non_finite_outputs_raise():
    assert next_token(np.array([0.1, 3.0, -1.0]), np.random.default_rng(0), greedy=True) == 1
    for bad in ([0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [-np.inf, -np.inf]):
        with pytest.raises(CharrnnError, match="not finite"), np.errstate(invalid="ignore"):
            next_token(np.array(bad), np.random.default_rng(0))


def test_a_tiny_temperature_draws_the_most_likely_token_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would reach the user's terminal
        observed = frequencies([0.5, 2.0, 1.0, -np.inf], temperature=5e-324)
    assert observed[1] == 1
