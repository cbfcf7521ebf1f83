"""Gradient analysis of BPTT on one window of text (d2l §9.7, §10.1-10.3): why gradients vanish
or explode, what gating changes, and what truncating them costs.

With the model's row vectors, a one-layer rnn has h_t = φ(a_t), a_t = x_t W_xh + h_{t-1} W_hh +
b_h, and the Jacobian of one step is ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hhᵀ in the textbook's
column convention (the model applies its transpose, W_hh diag(φ'(a_t)), to row vectors; both
have the same singular values). The gradient of an early state is a product of these
(eqs. 9.7.5-9.7.7), so its size goes like the powers of W_hh: for the linear network
∂h_t/∂h_0 = (W_hhᵀ)^t, which grows or vanishes like ρ(W_hh)^t (eq. 9.7.15); for tanh, |φ'| <= 1
bounds it by σ_max(W_hh)^t.

For every cell and depth the same quantities are taken on the full recurrent state s_t (every
layer's h_t, and the LSTM's c_t too; jacobians.py): the Jacobian product is ∂s_t/∂s_0 =
J_1 ⋯ J_t with J_t = ∂s_t/∂s_{t-1} the full-state Jacobian of one step, and ‖∂L/∂h_t‖ is taken
over every layer's h_t. The LSTM's c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t gives J_t a diagonal block
diag(f_t) on the c path, which keeps the product from vanishing while the forget gates stay
near 1, where the rnn's product shrinks like the powers of W_hh.

Everything here is computed in float64 from the model's parameters (evaluation: no dropout),
and prints nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn.base.checks import check_int
from charrnn.base.errors import CharrnnError
from charrnn.analysis.jacobians import Recurrence, state_grads
from charrnn.nn.truncation import parse_truncation

DEFAULT_WINDOW = 100
DEFAULT_REGULAR_STEPS = 10
DEFAULT_KEEP_PROB = 0.9  # a cut every 1/(1 - P) = K steps on average, as regular truncation's
DEFAULT_TRUNCATIONS = (f"regular:{DEFAULT_REGULAR_STEPS}", f"randomized:{DEFAULT_KEEP_PROB:g}")
DEFAULT_DRAWS = 100


def analysis_window(corpus, num_steps=DEFAULT_WINDOW, batch_size=1, offset=0) -> tuple:
    """(X, Y): (batch_size, num_steps) int32, consecutive rows of corpus (n,) int from `offset`,
    Y the next token of X."""
    check_int(num_steps, "the window's num_steps", minimum=1)
    check_int(batch_size, "the window's batch_size", minimum=1)
    check_int(offset, "the window's offset", minimum=0)
    tokens = batch_size * num_steps
    if offset + tokens + 1 > len(corpus):
        raise CharrnnError(f"a window of {batch_size} x {num_steps} tokens from offset {offset} "
                           f"does not fit in a text of {len(corpus)} tokens")
    X = np.asarray(corpus[offset:offset + tokens], np.int32).reshape(batch_size, num_steps)
    Y = np.asarray(corpus[offset + 1:offset + tokens + 1], np.int32).reshape(batch_size, num_steps)
    return X, Y


def recurrence_spectrum(W_hh) -> tuple:
    """W_hh (H, H) -> (spectral radius ρ = max |eigenvalue|, largest singular value σ_max)."""
    W = np.asarray(W_hh, np.float64)
    return float(np.abs(np.linalg.eigvals(W)).max()), float(np.linalg.norm(W, 2))


def hidden_grad_norms(model, X, Y, state=None) -> np.ndarray:
    """‖∂L/∂h_t‖ for t = 1..T -> (T,) float64, the norm taken over the batch and every layer's h_t.

    Full (untruncated) gradient by the recursion behind eq. 9.7.15 on the full state s_t:
    ∂L/∂s_t = (∂L/∂o_t W_hqᵀ in the top layer's h) + J_{t+1} ∂L/∂s_{t+1}, J the one-step
    Jacobian (for a one-layer rnn, ∂L/∂h_t = ∂L/∂o_t W_hqᵀ + (∂L/∂h_{t+1} ⊙ φ'(a_{t+1})) W_hhᵀ).
    """
    recurrence, X, Y, s0 = _start(model, X, Y, state)
    grads = state_grads(recurrence, X, Y, s0)[1:]
    return np.sqrt(np.sum(grads[..., recurrence.hidden_mask()] ** 2, axis=(1, 2)))


def jacobian_norms(model, X, state=None) -> np.ndarray:
    """‖∂s_t/∂s_0‖₂ for t = 1..T -> (T,) float64: the largest singular value of the product of
    the one-step Jacobians of the full state (eq. 9.7.7; a one-layer rnn: Π diag(φ'(a_j)) W_hhᵀ,
    s = h; the LSTM: s = (h, c) of every layer); with several rows, the largest over rows.

    The product is rescaled to norm 1 at every step and its scale kept as a logarithm, so it
    neither overflows nor underflows; a norm below ~1e-308 comes back as 0, above ~1e308 as inf.
    """
    recurrence, X, _, s = _start(model, X, X, state)
    B, T = X.shape
    N = recurrence.state_size
    product = np.broadcast_to(np.eye(N), (B, N, N))  # row convention: ds_t = ds_0 product
    log_norm = np.zeros(B)
    log_norms = np.empty(T)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for t in range(T):
            s, product = recurrence.step(X[:, t], s, product)
            step_norm = _spectral_norms(product)
            log_norm += np.log(step_norm)
            product /= np.where(step_norm > 0, step_norm, 1.0)[:, None, None]
            log_norms[t] = log_norm.max()
        return np.exp(log_norms)


@dataclass
class TruncationError:
    """How a truncated gradient g̃ differs from the full one g, all parameters flattened.

    For randomized truncation, over num_draws draws of ξ: mean_error = ‖mean(g̃) - g‖, which is
    zero up to sampling error (eq. 9.7.9), whose size is mean_error_stderr = √(tr Cov(g̃) / n);
    spread = √(tr Cov(g̃)), the typical distance of one draw from the mean. For regular
    truncation (deterministic): mean_error = ‖g̃ - g‖, the bias, and no spread.
    """

    truncation: str
    num_draws: int
    full_norm: float
    mean_error: float
    mean_error_stderr: float
    spread: float

    @property
    def relative_bias(self) -> float:
        return self.mean_error / self.full_norm

    @property
    def relative_spread(self) -> float:
        return self.spread / self.full_norm

    @property
    def relative_rms_error(self) -> float:
        """√E‖g̃ - g‖² / ‖g‖ for one estimate: bias and spread together."""
        return math.hypot(self.mean_error, self.spread) / self.full_norm


def flat_grad(grads) -> np.ndarray:
    """A grads dict -> one float64 vector, in the dict's order (the model's parameter order)."""
    return np.concatenate([np.asarray(grad, np.float64).ravel() for grad in grads.values()])


def truncation_error(model, X, Y, truncation, state=None, num_draws=DEFAULT_DRAWS, seed=0,
                     full_grad=None) -> TruncationError:
    """Compare the gradient under `truncation` with the full one on window X, Y: (B, T) int.

    Randomized truncation (P < 1) is drawn num_draws times from default_rng(seed); the mean and
    total variance are accumulated by Welford's method. full_grad: flat_grad of the full
    gradient, when already computed.
    """
    kind, value = parse_truncation(truncation)
    if full_grad is None:
        full_grad = flat_grad(model.loss_and_grads(X, Y, state)[1])
    random = kind == "randomized" and value < 1
    draws = num_draws if random else 1
    if draws < 2 and random:
        raise CharrnnError(f"num_draws must be at least 2 to measure a spread, got {num_draws}")
    rng = np.random.default_rng(seed)
    mean = np.zeros_like(full_grad)
    sum_sq = 0.0  # Σ_i (g̃_i - mean_{i-1})·(g̃_i - mean_i) = Σ_i ‖g̃_i - mean‖²
    for i in range(1, draws + 1):
        grad = flat_grad(model.loss_and_grads(X, Y, state, truncation=truncation, rng=rng)[1])
        delta = grad - mean
        mean += delta / i
        sum_sq += float(delta @ (grad - mean))
    variance = sum_sq / (draws - 1) if draws > 1 else 0.0
    return TruncationError(truncation, draws, float(np.linalg.norm(full_grad)),
                           float(np.linalg.norm(mean - full_grad)), math.sqrt(variance / draws),
                           math.sqrt(variance))


@dataclass
class GradientAnalysis:
    """Everything `analyze` measures on one window; arrays are indexed by t - 1, t = 1..T."""

    activation: str
    batch_size: int
    num_steps: int
    loss: float
    hidden_grad_norms: np.ndarray  # ‖∂L/∂h_t‖, every layer's h_t
    jacobian_norms: np.ndarray  # ‖∂s_t/∂s_0‖₂, the full state (h; the LSTM's h and c)
    spectral_radius: float | None  # ρ(W_hh), one-layer rnn only (else None)
    largest_singular_value: float | None  # σ_max(W_hh), one-layer rnn only (else None)
    truncations: list  # TruncationError per truncation compared
    cell: str = "rnn"
    num_layers: int = 1

    @property
    def network(self) -> str:
        """In words: "tanh rnn", "lstm, 2 layers", ..."""
        name = f"{self.activation} rnn" if self.cell == "rnn" else self.cell
        return name if self.num_layers == 1 else f"{name}, {self.num_layers} layers"

    @property
    def full_state(self) -> bool:
        """Whether the Jacobian product is that of more than one h: a gated or stacked network."""
        return self.cell == "lstm" or self.num_layers > 1

    @property
    def state_description(self) -> str:
        if self.cell == "lstm":
            return "h_t and c_t of every layer" if self.num_layers > 1 else "(h_t, c_t)"
        return "h_t of every layer" if self.num_layers > 1 else "h_t"

    def jacobian_name(self, final=False) -> str:
        """‖∂h_t/∂h_0‖, or ‖∂s_t/∂s_0‖ for the full state of a gated or stacked network."""
        step = "T" if final else "t"
        symbol = "s" if self.full_state else "h"
        return f"‖∂{symbol}_{step}/∂{symbol}_0‖"

    @property
    def predicted_norms(self) -> np.ndarray | None:
        """ρ(W_hh)^t, the growth eq. 9.7.15 predicts for ‖∂h_t/∂h_0‖ of the linear network
        (None where no single matrix's powers predict it: gated or stacked networks)."""
        if self.spectral_radius is None:
            return None
        return self.spectral_radius ** np.arange(1, self.num_steps + 1, dtype=np.float64)

    @property
    def singular_bound(self) -> np.ndarray | None:
        """σ_max(W_hh)^t, an upper bound on ‖∂h_t/∂h_0‖₂ of a one-layer rnn, tanh or linear."""
        if self.largest_singular_value is None:
            return None
        return self.largest_singular_value ** np.arange(1, self.num_steps + 1, dtype=np.float64)

    @property
    def growth_rate(self) -> float:
        """The measured mean factor per step, ‖∂h_T/∂h_0‖^(1/T) (→ ρ for the linear network)."""
        return float(self.jacobian_norms[-1] ** (1.0 / self.num_steps))


def analyze(model, X, Y, state=None, truncations=DEFAULT_TRUNCATIONS, num_draws=DEFAULT_DRAWS,
            seed=0) -> GradientAnalysis:
    """All of the above on window X, Y: (batch, T) int, from `state` (the model's format) or zeros;
    the network as evaluation runs it (no dropout)."""
    model = model.with_dropout(0.0)
    loss, grads, _ = model.loss_and_grads(X, Y, state)
    full_grad = flat_grad(grads)
    errors = [truncation_error(model, X, Y, truncation, state, num_draws, seed, full_grad)
              for truncation in truncations]
    rho = sigma = None
    if model.cell == "rnn" and model.num_layers == 1:
        rho, sigma = recurrence_spectrum(model.params["W_hh"])
    batch_size, num_steps = np.shape(X)
    return GradientAnalysis(model.activation, batch_size, num_steps, loss,
                            hidden_grad_norms(model, X, Y, state), jacobian_norms(model, X, state),
                            rho, sigma, errors, model.cell, model.num_layers)


def _start(model, X, Y, state) -> tuple:
    """-> (Recurrence of the model, X, Y checked by the model, s_0 (B, N) float64 from the
    state (L, S, B, H) in the model's format, or zeros)."""
    X, Y, state = model.check_batch(X, Y, state)
    recurrence = Recurrence(model)
    if state is None:
        return recurrence, X, Y, np.zeros((len(X), recurrence.state_size))
    L, S, B, H = state.shape
    return recurrence, X, Y, np.asarray(state, np.float64).transpose(2, 0, 1, 3).reshape(B, L * S * H)


def _spectral_norms(matrices) -> np.ndarray:
    """Largest singular values of (B, H, H) matrices of norm ~1, as √λ_max(MᵀM): the top of a
    symmetric eigenproblem, accurate to round-off and faster than an SVD."""
    gram = np.swapaxes(matrices, 1, 2) @ matrices
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))
