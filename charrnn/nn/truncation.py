"""Truncated backpropagation through time (d2l §9.7.1): which gradient paths back in time a
window keeps, as one scale per step and batch row that model.backward_segment applies to the
whole recurrent state (see model.py's docstring for the equation).
"""
import math

import numpy as np

from charrnn.base.errors import CharrnnError

# Entries of a path-scale list: what happens to the gradient path state_{t-1} <- state_t at step t.
KEEP = None  # kept as it is
CUT = False  # cut: no gradient reaches state_{t-1} from step t
# otherwise a (B, 1) array of per-row multipliers (randomized truncation's ξ_t)


def parse_truncation(truncation) -> tuple:
    """"full" | "regular:K" | "randomized:P" -> ("full", None) | ("regular", K) | ("randomized", P).

    K is an integer >= 1, P a number in (0, 1]; anything else raises CharrnnError naming it.
    """
    if not isinstance(truncation, str):
        raise CharrnnError(f"truncation must be a string, got {truncation!r}")
    kind, _, value = truncation.strip().partition(":")
    if truncation.strip() == "full":
        return "full", None
    if kind == "regular":
        try:
            steps = int(value)
        except ValueError:
            steps = 0
        if steps < 1:
            raise CharrnnError(f"truncation {truncation!r}: K must be an integer >= 1")
        return "regular", steps
    if kind == "randomized":
        try:
            keep_prob = float(value)
        except ValueError:
            keep_prob = math.nan
        if not 0.0 < keep_prob <= 1.0:
            raise CharrnnError(f"truncation {truncation!r}: P must be a number in (0, 1]")
        return "randomized", keep_prob
    raise CharrnnError(
        f"unknown truncation {truncation!r} (use 'full', 'regular:K' or 'randomized:P')")


def path_scales(truncation, num_steps, batch_size, rng, dtype) -> list:
    """Per-step fate of the gradient path state_t -> state_{t-1} (h, and c for the LSTM, of
    every layer alike), for t = 0..num_steps-1 (d2l §9.7.1).

    Step 0 is always CUT: the initial state is a constant. "regular:K" cuts every K-th step
    from the window start. "randomized:P" draws ξ_t per (step, batch row) from `rng`: 0 with
    probability 1-P, else 1/P (eq. 9.7.8), so E[ξ_t] = 1 and the gradient stays unbiased
    (eq. 9.7.9) with lower variance than one ξ_t shared by the batch. P = 1 draws nothing.
    """
    kind, value = parse_truncation(truncation)
    if kind == "regular":
        return [CUT if t % value == 0 else KEEP for t in range(num_steps)]
    if kind == "randomized" and value < 1.0:
        if not isinstance(rng, np.random.Generator):
            raise CharrnnError(
                f"truncation {truncation!r} needs rng, a numpy.random.Generator, got {rng!r}")
        kept = rng.random((num_steps - 1, batch_size, 1)) < value
        xi = kept.astype(dtype) * (1.0 / value)
        return [CUT, *xi]
    return [CUT] + [KEEP] * (num_steps - 1)


def with_resets(scales, resets, dtype) -> list:
    """path_scales with record boundaries: ξ_t ⊙ ρ_t, where ρ_t[b] = 0 if row b starts a new
    record at step t (resets (T, B) bool), else 1. The forward pass reads ρ_t ⊙ state_{t-1}
    (workspace.Workspace.set_resets), so ∂state_t/∂state_{t-1} carries the factor ρ_t: the
    gradient crossing from step t to t-1 is cut exactly where a record starts, for h and c of
    every layer, and nowhere else. resets None -> scales unchanged."""
    if resets is None:
        return scales
    resets = np.asarray(resets, dtype=bool)
    if resets.ndim != 2 or len(resets) != len(scales):
        raise CharrnnError(f"resets must be a (num_steps, batch) array of bools, got shape {resets.shape}")
    out = list(scales)
    for t in np.flatnonzero(resets.any(axis=1)).tolist():
        if out[t] is CUT:
            continue
        keep = (~resets[t]).astype(dtype)[:, None]
        out[t] = keep if out[t] is KEEP else out[t] * keep
    return out
