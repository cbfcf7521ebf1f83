"""The statistics of a comparison over seeds: means with confidence intervals, paired differences
and a verdict that claims no more than its intervals.

Runs of two strategies from the same seed see the same data in the same order (the seed of the
data order is shared, charrnn.training.config.TrainConfig.data_seed), so they are compared seed by seed:
d_s = x_s - y_s, and the paired t-test asks whether the mean of the d_s differs from zero
(Student 1908). Its interval is d̄ ± t_{n-1, (1+c)/2} · s_d / √n, with s_d the standard deviation
of the d_s. The arithmetic is scipy.stats', imported when a statistic is first computed: importing
charrnn or its CLI loads no second BLAS library (scipy brings its own) and stays quick.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its confidence interval (None for a single value)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self):
        return None if self.low is None else (self.high - self.low) / 2

    def excludes_zero(self):
        return self.low is not None and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class PairedDifference:
    """`strategy` minus `baseline`, seed by seed, on the seeds both have."""

    strategy: str
    baseline: str
    difference: Estimate
    p_value: float | None  # two-sided paired t-test; None when it is undefined (n < 2, no spread)
    seeds: tuple


def mean_interval(values, confidence=CONFIDENCE) -> Estimate:
    """Mean of `values` and its Student-t confidence interval, mean ± t_{n-1} · s / √n."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to average")
    from scipy import stats

    mean = float(values.mean())
    if values.size == 1:
        return Estimate(mean, None, None, 1)
    if np.all(values == values[0]):  # no spread: the interval is the point (scipy would give nan)
        return Estimate(mean, mean, mean, values.size)
    low, high = stats.t.interval(confidence, values.size - 1, loc=mean, scale=stats.sem(values))
    return Estimate(mean, float(low), float(high), values.size)


def paired_difference(strategy, baseline, by_seed, baseline_by_seed, confidence=CONFIDENCE):
    """by_seed, baseline_by_seed: {seed: value} -> PairedDifference on their common seeds."""
    from scipy import stats

    seeds = tuple(sorted(set(by_seed) & set(baseline_by_seed)))
    if not seeds:
        raise ValueError(f"{strategy} and {baseline} have no seed in common")
    x = np.array([by_seed[s] for s in seeds], dtype=np.float64)
    y = np.array([baseline_by_seed[s] for s in seeds], dtype=np.float64)
    d = x - y
    if len(seeds) < 2 or np.all(d == d[0]):
        return PairedDifference(strategy, baseline, mean_interval(d, confidence), None, seeds)
    with warnings.catch_warnings():  # differences equal but for round-off: scipy warns of lost
        warnings.simplefilter("ignore", RuntimeWarning)  # precision, the interval is as good as shown
        test = stats.ttest_rel(x, y)
        interval = test.confidence_interval(confidence)
    estimate = Estimate(float(d.mean()), float(interval.low), float(interval.high), len(seeds))
    return PairedDifference(strategy, baseline, estimate, float(test.pvalue), seeds)


def describe(estimate, digits=2) -> str:
    """'6.41 ± 0.12' (mean ± half the interval), or '6.41' for a single value."""
    if estimate.low is None:
        return f"{estimate.mean:.{digits}f}"
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"


def clause(diff, digits=2) -> str:
    """What one paired difference supports (lower is better), in words."""
    d, a, b = diff.difference, diff.strategy, diff.baseline
    if d.n < 2:
        return f"{a} against {b}: one seed, no interval (use --seeds 2 or more)"
    if d.half_width == 0:
        return (f"{a} and {b} are identical in every seed" if d.mean == 0 else
                f"{a} differs from {b} by exactly {d.mean:+.{digits}f} in every seed")
    p = "" if diff.p_value is None else f", p {format_p(diff.p_value) if diff.p_value < 0.001 else '= ' + format_p(diff.p_value)}"
    if d.excludes_zero():
        better = "better" if d.mean < 0 else "worse"
        return f"{a} is {better} than {b} by {abs(d.mean):.{digits}f} ± {d.half_width:.{digits}f}{p}"
    return f"no difference between {a} and {b} is detectable ({d.mean:+.{digits}f} ± {d.half_width:.{digits}f}{p})"


def verdict(differences, what="final validation perplexity", confidence=CONFIDENCE) -> str:
    """One sentence: each paired difference as far as its interval supports, no further."""
    if not differences:
        return "Nothing to compare: one strategy only."
    sizes = sorted({diff.difference.n for diff in differences})
    seeds = " or ".join(str(n) for n in sizes)
    return (f"With {seeds} seed{'s' if sizes != [1] else ''}, at {confidence:.0%} confidence on the "
            f"{what}: " + "; ".join(clause(diff) for diff in differences) + ".")


def format_p(p) -> str:
    """A p-value in two significant digits, or "< 0.001"."""
    return "-" if p is None else (f"{p:.2g}" if p >= 0.001 else "< 0.001")


def mean_curve(curves, confidence=CONFIDENCE):
    """curves: one {x: value} per seed -> (xs, means, lows, highs) at the x every curve has.

    lows and highs are nan where a single curve leaves no interval.
    """
    if not curves:
        return [], [], [], []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    points = [mean_interval([c[x] for c in curves], confidence) for x in common]
    nan = math.nan
    return (common, [p.mean for p in points], [nan if p.low is None else p.low for p in points],
            [nan if p.high is None else p.high for p in points])
