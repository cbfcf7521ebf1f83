"""Means with intervals, paired differences and the verdict (charrnn.experiments.stats)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from charrnn.experiments.stats import describe, mean_curve, mean_interval, paired_difference, verdict

T_975_4 = 2.7764451051977987  # the 97.5th percentile of Student's t with 4 degrees of freedom (tables)


def test_the_interval_is_the_mean_plus_minus_t_times_the_standard_error():
    values = [6.1, 6.5, 6.3, 6.0, 6.6]
    estimate = mean_interval(values)
    sem = np.std(values, ddof=1) / math.sqrt(5)
    assert estimate.mean == pytest.approx(6.3) and estimate.n == 5
    assert estimate.low == pytest.approx(6.3 - T_975_4 * sem) and estimate.high == pytest.approx(6.3 + T_975_4 * sem)
    assert describe(estimate) == f"6.30 ± {T_975_4 * sem:.2f}"


def test_one_value_has_no_interval_and_equal_values_a_point():
    one = mean_interval([6.4])
    assert (one.mean, one.low, one.high, one.half_width) == (6.4, None, None, None) and describe(one) == "6.40"
    same = mean_interval([2.0, 2.0, 2.0])
    assert (same.low, same.high, same.half_width) == (2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        mean_interval([])


def test_differences_are_paired_by_seed_on_the_common_seeds():
    strategy = {0: 6.5, 1: 6.9, 2: 6.4, 3: 6.8, 7: 100.0}  # seed 7 has no partner: left out
    baseline = {3: 6.6, 2: 6.1, 1: 6.5, 0: 6.3, 5: 0.0}
    diff = paired_difference("regular:10", "full", strategy, baseline)
    d = np.array([0.2, 0.4, 0.3, 0.2])
    assert diff.seeds == (0, 1, 2, 3)
    assert diff.difference.mean == pytest.approx(d.mean())
    t = d.mean() / (d.std(ddof=1) / 2)  # the paired t statistic, by hand
    assert diff.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 3))
    assert diff.difference.low == pytest.approx(d.mean() - scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2)
    # pairing matters: the same numbers unpaired give a much wider interval
    unpaired = scipy_stats.ttest_ind([6.5, 6.9, 6.4, 6.8], [6.3, 6.5, 6.1, 6.6]).confidence_interval()
    assert diff.difference.half_width < (unpaired.high - unpaired.low) / 2


def test_verdict_words():
    worse = paired_difference("regular:10", "full", {0: 6.5, 1: 6.9, 2: 6.4, 3: 6.8}, {0: 6.3, 1: 6.5, 2: 6.1, 3: 6.6})
    better = paired_difference("randomized:0.9", "full", {0: 6.1, 1: 6.3, 2: 5.8, 3: 6.3}, {0: 6.3, 1: 6.5, 2: 6.1, 3: 6.6})
    unclear = paired_difference("randomized:0.5", "full", {0: 6.5, 1: 6.1, 2: 6.3, 3: 6.4}, {0: 6.3, 1: 6.5, 2: 6.1, 3: 6.6})
    sentence = verdict([worse, better, unclear])
    assert sentence.startswith("With 4 seeds, at 95% confidence on the final validation perplexity: ")
    assert f"regular:10 is worse than full by 0.28 ± {worse.difference.half_width:.2f}" in sentence
    assert "randomized:0.9 is better than full by 0.25" in sentence
    assert "no difference between randomized:0.5 and full is detectable (-0.05 ±" in sentence
    assert sentence.count("; ") == 2 and sentence.endswith(").")  # one sentence, a clause each
    one_seed = paired_difference("regular:10", "full", {0: 6.5}, {0: 6.3})
    assert "one seed, no interval" in verdict([one_seed]) and one_seed.p_value is None
    same = paired_difference("randomized:1", "full", {0: 6.5, 1: 6.1}, {0: 6.5, 1: 6.1})
    assert "identical in every seed" in verdict([same])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 20), st.floats(-3, 3)), min_size=2, max_size=12))
def test_the_verdict_never_claims_what_the_interval_does_not_support(pairs):
    baseline = {seed: b for seed, (b, _) in enumerate(pairs)}
    strategy = {seed: b + d for seed, (b, d) in enumerate(pairs)}
    diff = paired_difference("s", "full", strategy, baseline)
    sentence = verdict([diff])
    low, high = diff.difference.low, diff.difference.high
    if "worse" in sentence:
        assert low > 0
    elif "better" in sentence:
        assert high < 0
    elif "differs" not in sentence and "identical" not in sentence:
        assert low <= 0 <= high and "no difference" in sentence and "detectable" in sentence


def test_mean_curve_with_bands_at_the_points_every_seed_has():
    curves = [{100: 10.0, 200: 8.0, 300: 7.0}, {100: 12.0, 200: 8.0}, {100: 11.0, 200: 9.0, 300: 6.0}]
    xs, means, lows, highs = mean_curve(curves)
    assert xs == [100, 200] and means == pytest.approx([11.0, 25 / 3])
    assert lows[0] == pytest.approx(11 - scipy_stats.t.ppf(0.975, 2) * 1 / math.sqrt(3))
    xs, means, lows, highs = mean_curve(curves[:1])
    assert means == [10.0, 8.0, 7.0] and all(math.isnan(v) for v in lows + highs)


def test_a_tiny_p_value_reads_p_below_a_thousandth():
    diff = paired_difference("randomized:0.1", "full", {s: 10 + 0.01 * s for s in range(6)},
                             {s: 6 + 0.013 * s for s in range(6)})
    assert diff.p_value < 0.001 and ", p < 0.001" in verdict([diff]) and "p = " not in verdict([diff])
