"""Gradient checks: RNNLM.loss_and_grads against finite differences, closed forms and statistics.

All checks run a float64 model whose parameters are drawn at a scale where tanh is nonlinear
and W_hh's spectral radius is near 1, so that the long gradient paths matter (the training
initialisation, N(0, 0.01²), would make every check easy to pass). Every cell (rnn, gru, lstm),
any number of layers, and dropout: with dropout the masks are held fixed, every evaluation of
the loss drawing the same masks for the same steps of the window from a Generator seeded
anew (`MaskStream`), so the loss is a deterministic function of the parameters.

An entry's relative error, analytic a against reference b, is

    |a - b| / max(|a| + |b|, REL_ERR_FLOOR)

so entries whose true gradient is (nearly) zero are measured against the floor instead of
dividing round-off by nothing. Finite differences are fourth-order central differences, whose
error (~1e-12 absolute here) is far below the floor times the tolerance.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from charrnn.base.checks import check_int
from charrnn.nn.model import RNNLM
from charrnn.nn.truncation import parse_truncation

FD_STEP = 1e-3
FD_TOLERANCE = 1e-6  # max relative error against finite differences
ROUNDOFF_TOLERANCE = 1e-10  # max relative error between two exact computations
REL_ERR_FLOOR = 1e-5
STANDARD_ERRORS = 5.0  # bound on |mean of draws - full| in standard errors of the mean


class GradcheckRow(NamedTuple):
    """One check of one parameter; `passed` by that check's criterion (see the check's name)."""

    check: str
    param: str
    max_abs_err: float
    max_rel_err: float
    passed: bool


@dataclass
class GradcheckReport:
    """rows: GradcheckRow per (check, parameter); settings: the arguments it ran with;
    z_scores: for the statistical checks, (check, parameter) -> the largest |mean - reference|
    in standard errors of the mean, the measure such a check bounds."""

    rows: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    z_scores: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.passed for row in self.rows)


def run_gradcheck(vocab_size=8, num_hiddens=6, batch_size=3, num_steps=10, activation="tanh",
                  truncation="full", seed=0, with_state=True, max_entries=200,
                  num_draws=2000, cell="rnn", num_layers=1, dropout=0.0, records=0) -> GradcheckReport:
    """Check loss_and_grads on a random float64 model and minibatch -> GradcheckReport.

    Always: every parameter against finite differences of the loss ("full"); at most
    max_entries entries per parameter, a random subset when it has more. Linear activation
    (one layer, no dropout): also against the closed forms 9.7.15/9.7.16. "regular:K": each
    chunk against finite differences from its start state held constant, and the chunks' sum
    against the strategy. "randomized:P": P=1 against full, and the mean of num_draws draws
    against full. cell, num_layers, dropout: the network, as RNNLM's. records: record starts
    per row inside the window, at steps drawn from the seed (charrnn.data.records: the state reset
    and the gradient cut there), in every check.
    """
    kind, value = parse_truncation(truncation)
    for name, number, least in (("batch_size", batch_size, 1), ("num_steps", num_steps, 1),
                                ("max_entries", max_entries, 1), ("num_draws", num_draws, 2)):
        check_int(number, name, minimum=least)
    model, X, Y, state = make_problem(vocab_size, num_hiddens, batch_size, num_steps,
                                      activation, seed, with_state, cell, num_layers, dropout)
    check_int(records, "records", minimum=0)
    masks = MaskStream(model, batch_size, seed, record_starts(batch_size, num_steps, records, seed))
    rng = np.random.default_rng((seed, 1))
    entries = {name: pick_entries(p.shape, max_entries, rng) for name, p in model.params.items()}
    settings = dict(cell=cell, num_layers=num_layers, dropout=dropout, vocab_size=vocab_size,
                    num_hiddens=num_hiddens, batch_size=batch_size, num_steps=num_steps,
                    activation=activation, truncation=truncation, seed=seed,
                    with_state=with_state, max_entries=max_entries, records=records)
    report = GradcheckReport(settings=settings)
    full = masks.loss_and_grads(X, Y, state)[1]

    def loss():
        return masks.loss(X, Y, state)

    report.rows += compare("full vs finite differences", full,
                           finite_difference_grads(loss, model.params, entries),
                           FD_TOLERANCE, entries)
    if activation == "linear" and num_layers == 1 and dropout == 0 and not records:
        report.rows += compare("full vs closed form 9.7.15/9.7.16", full,
                               linear_closed_form_grads(model.params, X, Y, state),
                               ROUNDOFF_TOLERANCE)
    if kind == "regular":
        report.rows += regular_rows(masks, X, Y, state, value, entries)
    if kind == "randomized":
        report.settings["num_draws"] = num_draws
        rows, report.z_scores = randomized_rows(masks, X, Y, state, value, num_draws, rng, full)
        report.rows += rows
    return report


class MaskStream:
    """model.loss_and_grads with the dropout masks held fixed: a call on the steps
    [start, start + T) of the window draws the masks of those steps, from a Generator seeded
    (seed, 2) anew and advanced past the masks of the steps before `start` (masks are drawn
    time-major, see model.py). Without dropout, plain loss_and_grads / forward_loss."""

    def __init__(self, model, batch_size, seed, resets=None):
        self.model, self.seed, self.resets = model, seed, resets
        self.per_step = model.num_layers * batch_size * model.num_hiddens

    def part(self, start, num_steps):
        """The record starts of steps [start, start + num_steps), or None."""
        return None if self.resets is None else self.resets[:, start:start + num_steps]

    def generator(self, start=0):
        rng = np.random.default_rng((self.seed, 2))
        if start:
            rng.random(start * self.per_step)
        return rng

    def loss_and_grads(self, X, Y, state, truncation="full", rng=None, start=0) -> tuple:
        return self.model.loss_and_grads(X, Y, state, truncation, rng, dropout_rng=self.generator(start),
                                         resets=self.part(start, X.shape[1]))

    def loss(self, X, Y, state, start=0) -> float:
        """The mean loss over X, Y, the masks of its steps applied."""
        if self.model.dropout == 0:
            return self.model.forward_loss(X, Y, state, self.part(start, X.shape[1]))[0] / X.size
        return self.loss_and_grads(X, Y, state, start=start)[0]


def record_starts(batch_size, num_steps, count, seed):
    """(batch, num_steps) bool: `count` record starts per row at distinct steps in [1, num_steps),
    drawn from (seed, 3); None when count is 0."""
    if count == 0:
        return None
    if count > num_steps - 1:
        raise ValueError(f"{count} record starts do not fit inside a window of {num_steps} steps")
    rng = np.random.default_rng((seed, 3))
    resets = np.zeros((batch_size, num_steps), bool)
    for row in resets:
        row[1 + rng.choice(num_steps - 1, count, replace=False)] = True
    return resets


def make_problem(vocab_size, num_hiddens, batch_size, num_steps, activation, seed, with_state,
                 cell="rnn", num_layers=1, dropout=0.0):
    """-> (float64 model, X, Y (batch, num_steps), state (model.state_shape) or None), all
    from seed. Weights of layer 0's W_xh ~ N(0, 1) (one-hot inputs), other weights
    N(0, 1/H), biases N(0, 0.1²)."""
    model = RNNLM(vocab_size, num_hiddens, activation, "float64", seed, cell, num_layers, dropout)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        scale = 1.0 if name == "W_xh" else num_hiddens ** -0.5 if name[0] == "W" else 0.1
        p[...] = rng.standard_normal(p.shape) * scale
    X = rng.integers(0, vocab_size, (batch_size, num_steps))
    Y = rng.integers(0, vocab_size, (batch_size, num_steps))
    state = np.tanh(rng.standard_normal(model.state_shape(batch_size))) if with_state else None
    return model, X, Y, state


def pick_entries(shape, max_entries, rng) -> tuple:
    """Index arrays of all entries of `shape`, or of max_entries of them chosen by rng."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= max_entries else np.sort(rng.choice(size, max_entries, False))
    return np.unravel_index(flat, shape)


def finite_difference_grads(loss, params, entries) -> dict:
    """Fourth-order central differences of loss() in params[name][entries[name]] -> name -> values:
    (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / 12h with h = FD_STEP; params are restored."""
    grads = {}
    for name, index in entries.items():
        p = params[name]
        values = []
        for i in zip(*index):
            original = p[i]
            f = []
            for k in (-2, -1, 1, 2):
                p[i] = original + k * FD_STEP
                f.append(loss())
            p[i] = original
            values.append((f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * FD_STEP))
        grads[name] = np.array(values)
    return grads


def compare(check, analytic, reference, tolerance, entries=None) -> list:
    """Rows comparing analytic[name] (at entries[name] if given) with reference[name]."""
    rows = []
    for name in reference:
        a = analytic[name] if entries is None else analytic[name][entries[name]]
        abs_err, rel_err = errors(a, reference[name])
        rows.append(GradcheckRow(check, name, float(abs_err.max()), float(rel_err.max()),
                                 bool(rel_err.max() <= tolerance)))
    return rows


def errors(a, b) -> tuple:
    """-> (|a - b|, |a - b| / max(|a| + |b|, REL_ERR_FLOOR)) entry by entry."""
    abs_err = np.abs(a - b)
    return abs_err, abs_err / np.maximum(np.abs(a) + np.abs(b), REL_ERR_FLOOR)


def linear_closed_form_grads(params, X, Y, state) -> dict:
    """Gradients of the linear network written out from eqs. 9.7.12-9.7.16, in row convention:

    dL/dh_t = Σ_{s>=t} (dL/do_s W_hqᵀ) (W_hhᵀ)^(s-t)  with the powers of W_hhᵀ formed explicitly,
    dW_hh = Σ_t h_{t-1}ᵀ dL/dh_t,  dW_xh = Σ_t x_tᵀ dL/dh_t,  dW_hq = Σ_t h_tᵀ dL/do_t.
    Independent of RNNLM's code: plain loops over steps and batch rows.
    """
    W_xh, W_hh, b_h, W_hq, b_q = (params[name] for name in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"))
    B, T = X.shape
    h = [np.zeros((B, len(W_hh))) if state is None else state]
    d_out = []
    for t in range(T):
        h.append(W_xh[X[:, t]] + h[t] @ W_hh + b_h)
        o = h[t + 1] @ W_hq + b_q
        p = np.exp(o - o.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(B), Y[:, t]] -= 1
        d_out.append(p / (B * T))
    powers = [np.eye(len(W_hh))]
    for _ in range(1, T):
        powers.append(powers[-1] @ W_hh.T)
    d_h = [sum(d_out[s] @ W_hq.T @ powers[s - t] for s in range(t, T)) for t in range(T)]
    dW_xh = np.zeros_like(W_xh)
    for t in range(T):
        for b in range(B):
            dW_xh[X[b, t]] += d_h[t][b]
    return {"W_xh": dW_xh,
            "W_hh": sum(h[t].T @ d_h[t] for t in range(T)),
            "b_h": sum(d.sum(axis=0) for d in d_h),
            "W_hq": sum(h[t + 1].T @ d_out[t] for t in range(T)),
            "b_q": sum(d.sum(axis=0) for d in d_out)}


def regular_rows(masks, X, Y, state, chunk_steps, entries) -> list:
    """"regular:K": each chunk's gradient, start state held constant, against finite
    differences of that chunk's share of the loss; their sum against the strategy's gradient."""
    model = masks.model
    analytic, numeric = {name: [] for name in model.params}, {name: [] for name in model.params}
    chunk_sum = {name: 0.0 for name in model.params}
    for start in range(0, X.shape[1], chunk_steps):
        X_c, Y_c = X[:, start:start + chunk_steps], Y[:, start:start + chunk_steps]
        h_start = state if start == 0 else masks.loss_and_grads(X[:, :start], Y[:, :start], state)[2]
        share = X_c.size / X.size

        def chunk_loss():
            return masks.loss(X_c, Y_c, h_start, start) * share

        grads = masks.loss_and_grads(X_c, Y_c, h_start, start=start)[1]
        fd = finite_difference_grads(chunk_loss, model.params, entries)
        for name in model.params:
            chunk_sum[name] = chunk_sum[name] + grads[name] * share
            analytic[name].append(grads[name][entries[name]] * share)
            numeric[name].append(fd[name])
    strategy = masks.loss_and_grads(X, Y, state, f"regular:{chunk_steps}")[1]
    return (compare(f"regular:{chunk_steps} chunks vs finite differences",
                    {name: np.concatenate(values) for name, values in analytic.items()},
                    {name: np.concatenate(values) for name, values in numeric.items()},
                    FD_TOLERANCE)
            + compare(f"regular:{chunk_steps} vs sum of chunks", strategy, chunk_sum,
                      ROUNDOFF_TOLERANCE))


def randomized_rows(masks, X, Y, state, keep_prob, num_draws, rng, full) -> tuple:
    """"randomized:P": P=1 must equal full exactly; the mean of num_draws draws must lie
    within STANDARD_ERRORS standard errors of full (unbiasedness, eq. 9.7.9) -> (rows, z_scores)."""
    exact = masks.loss_and_grads(X, Y, state, "randomized:1", rng)[1]
    rows = compare("randomized:1 vs full (exactly)", exact, full, 0.0)

    def draw():
        return masks.loss_and_grads(X, Y, state, f"randomized:{keep_prob}", rng)[1]

    mean_rows, z_scores = mean_within_bound(f"randomized:{keep_prob} mean of {num_draws} draws vs full "
                                            f"(±{STANDARD_ERRORS:g} s.e.)", draw, full, num_draws)
    return rows + mean_rows, z_scores


def mean_within_bound(check, draw, reference, num_draws) -> tuple:
    """Rows: is the mean of num_draws calls of draw() (dicts of arrays) within STANDARD_ERRORS
    standard errors of `reference`, entry by entry (plus round-off)? Sums are of draw - reference.
    -> (rows, {(check, parameter): largest |mean - reference| / standard error})."""
    total = {name: np.zeros_like(g) for name, g in reference.items()}
    total_sq = {name: np.zeros_like(g) for name, g in reference.items()}
    for _ in range(num_draws):
        for name, g in draw().items():
            d = g - reference[name]
            total[name] += d
            total_sq[name] += d * d
    rows, z_scores = [], {}
    for name in reference:
        bias = total[name] / num_draws
        variance = np.maximum(total_sq[name] - total[name] * bias, 0.0) / (num_draws - 1)
        bound = (STANDARD_ERRORS * np.sqrt(variance / num_draws)
                 + ROUNDOFF_TOLERANCE * np.abs(reference[name]).max())
        abs_err, rel_err = errors(reference[name] + bias, reference[name])
        passed = np.abs(bias) <= bound
        rows.append(GradcheckRow(check, name, float(abs_err.max()), float(rel_err.max()), bool(np.all(passed))))
        stderr = np.sqrt(variance / num_draws)
        with np.errstate(divide="ignore", invalid="ignore"):  # exact entries: 0 if within round-off
            z = np.where(stderr > 0, np.abs(bias) / stderr, np.where(passed, 0.0, np.inf))
        z_scores[check, name] = float(z.max())
    return rows, z_scores
