"""Exact state-to-state Jacobians of every cell and depth, by forward-mode differentiation of the
recurrence in float64 (for analysis: small models, short windows).

The state s_t of a network is every layer's recurrent state, layer by layer: s = (h⁰, h¹, ...)
for rnn and gru, s = (h⁰, c⁰, h¹, c¹, ...) for the LSTM, whose cell state c carries the
gradient as much as h does; N = L·H or 2·L·H numbers per batch row. One step s_{t-1} -> s_t
(x_t the token, fixed) has the Jacobian J_t = ∂s_t/∂s_{t-1} (N x N); in the row convention of
the model, a change ds_{t-1} (a row) moves s_t by ds_{t-1} J_t, so J_t[j, k] = ∂s_t[k]/∂s_{t-1}[j]
and ∂s_t/∂s_0 = J_1 J_2 ... J_t (eq. 9.7.7 with the full state), with the same singular values
as the column-convention product.

`Recurrence.step` runs one step of the network on values and, beside each value, on tangents:
a tangent is a (B, K, ·) array of K directions per row, pushed through the differential of each
equation (for the rnn, dh_t = φ'(a_t) ⊙ (dx W_xh + dh_{t-1} W_hh)). With K = N directions
starting at the identity it returns J_t; started at a product, it multiplies it by J_t. Layer
l >= 1 reads layer l-1's new h_t, so its input tangent is that layer's output tangent; the
token's tangent is zero. The equations are those of charrnn.nn.cells (PyTorch's GRU; the LSTM
without peepholes); dropout is off (evaluation). The model is read, never changed.
"""
import numpy as np

from charrnn.nn.cells import layer_suffix


def sigmoid(a):
    """σ(a) = ½ tanh(a/2) + ½, without overflow."""
    return 0.5 * np.tanh(0.5 * a) + 0.5


def _rnn_step(weights, tanh, x_part, dx_part, states, tangents):
    """h_t = φ(a), a = x W_xh + b_h + h W_hh;  dh_t = φ'(a) ⊙ da."""
    (h,), (dh,) = states, tangents
    a = x_part + h @ weights["W_hh"]
    da = dx_part + dh @ weights["W_hh"]
    if not tanh:
        return [a], [da]
    h_new = np.tanh(a)
    return [h_new], [(1 - h_new * h_new)[:, None] * da]


def _gru_step(weights, tanh, x_part, dx_part, states, tangents):
    """r, z = σ(·), hn = h W_hn + b_hn, n = tanh(x W_xn + b_n + r ⊙ hn), h_t = n + z ⊙ (h - n);
    dh_t = dn + dz ⊙ (h - n) + z ⊙ (dh - dn), dn = (1 - n²) ⊙ (dx W_xn + dr ⊙ hn + r ⊙ dhn)."""
    (h,), (dh,) = states, tangents
    H = h.shape[-1]
    h_part, dh_part = h @ weights["W_hh"], dh @ weights["W_hh"]
    r, z = (sigmoid(x_part[:, k * H:(k + 1) * H] + h_part[:, k * H:(k + 1) * H]) for k in (0, 1))
    dr, dz = ((gate * (1 - gate))[:, None] * (dx_part[..., k * H:(k + 1) * H] + dh_part[..., k * H:(k + 1) * H])
              for k, gate in ((0, r), (1, z)))
    hn, dhn = h_part[:, 2 * H:] + weights["b_hn"], dh_part[..., 2 * H:]
    n = np.tanh(x_part[:, 2 * H:] + r * hn)
    dn = (1 - n * n)[:, None] * (dx_part[..., 2 * H:] + dr * hn[:, None] + r[:, None] * dhn)
    h_new = n + z * (h - n)
    return [h_new], [dn + dz * (h - n)[:, None] + z[:, None] * (dh - dn)]


def _lstm_step(weights, tanh, x_part, dx_part, states, tangents):
    """i, f, o = σ(·), g = tanh(·), c_t = f ⊙ c + i ⊙ g, h_t = o ⊙ tanh(c_t);
    dc_t = df ⊙ c + f ⊙ dc + di ⊙ g + i ⊙ dg, dh_t = do ⊙ tanh(c_t) + o ⊙ (1 - tanh²c_t) ⊙ dc_t."""
    (h, c), (dh, dc) = states, tangents
    H = h.shape[-1]
    a = x_part + h @ weights["W_hh"]
    da = dx_part + dh @ weights["W_hh"]
    i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    di, df, dg, do = (slope[:, None] * da[..., k * H:(k + 1) * H]
                      for k, slope in enumerate((i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o))))
    c_new = f * c + i * g
    dc_new = df * c[:, None] + f[:, None] * dc + di * g[:, None] + i[:, None] * dg
    tanh_c = np.tanh(c_new)
    dh_new = do * tanh_c[:, None] + (o * (1 - tanh_c * tanh_c))[:, None] * dc_new
    return [o * tanh_c, c_new], [dh_new, dc_new]


CELL_STEPS = {"rnn": _rnn_step, "gru": _gru_step, "lstm": _lstm_step}


class Recurrence:
    """A model's recurrence in float64 on the full state s (B, N), with tangents (B, K, N)."""

    def __init__(self, model):
        self.cell, self.num_layers, self.num_hiddens = model.cell, model.num_layers, model.num_hiddens
        self.tanh = model.activation == "tanh"
        self.parts = 2 if self.cell == "lstm" else 1  # states per layer: h (and c)
        p = {name: np.asarray(value, np.float64) for name, value in model.params.items()}
        self.layers = [{key: p.get(key + layer_suffix(layer)) for key in ("W_xh", "W_hh", "b_h", "b_hn")}
                       for layer in range(self.num_layers)]
        self.W_hq, self.b_q = p["W_hq"], p["b_q"]

    @property
    def state_size(self) -> int:
        return self.num_layers * self.parts * self.num_hiddens

    def hidden_mask(self) -> np.ndarray:
        """(N,) bool: the entries of s that are some layer's h (not an LSTM's c)."""
        part = np.arange(self.state_size) // self.num_hiddens
        return part % self.parts == 0

    def split(self, s) -> list:
        """s (..., N) -> the per-layer states [h⁰, (c⁰,) h¹, ...], each (..., H) (views)."""
        return np.split(s, self.num_layers * self.parts, axis=-1)

    def step(self, ids, s, ds=None) -> tuple:
        """One step from s = s_{t-1} (B, N) on tokens ids (B,) -> (s_t, ds_t): ds (B, K, N) the
        tangents of s_{t-1}, ds_t = ds J_t (None: no tangents, ds_t is (B, 0, N))."""
        B = len(ids)
        if ds is None:
            ds = np.zeros((B, 0, self.state_size))
        states, tangents = self.split(s), self.split(ds)
        new_states, new_tangents = [], []
        x, dx = None, None
        for layer, weights in enumerate(self.layers):
            if layer == 0:
                x_part = weights["W_xh"][ids] + weights["b_h"]
                dx_part = np.zeros((B, ds.shape[1], x_part.shape[-1]))
            else:
                x_part, dx_part = x @ weights["W_xh"] + weights["b_h"], dx @ weights["W_xh"]
            own = slice(layer * self.parts, (layer + 1) * self.parts)
            values, diffs = CELL_STEPS[self.cell](weights, self.tanh, x_part, dx_part, states[own], tangents[own])
            new_states += values
            new_tangents += diffs
            x, dx = values[0], diffs[0]
        return np.concatenate(new_states, axis=-1), np.concatenate(new_tangents, axis=-1)

    def logits(self, s) -> np.ndarray:
        """o_t = h_t W_hq + b_q from the top layer's h in s (B, N) -> (B, V)."""
        return self.split(s)[(self.num_layers - 1) * self.parts] @ self.W_hq + self.b_q

    def output_grad(self, s, y, scale) -> np.ndarray:
        """-> (B, N): ∂(scale · Σ_rows cross-entropy of o_t against y)/∂s_t through the output
        layer only: (softmax(o_t) - onehot(y)) W_hqᵀ · scale in the top h block, zero elsewhere."""
        o = self.logits(s)
        p = np.exp(o - o.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        grad = np.zeros_like(s)
        self.split(grad)[(self.num_layers - 1) * self.parts][...] = (p @ self.W_hq.T) * scale
        return grad

    def loss(self, X, Y, s0) -> float:
        """Mean cross-entropy over the window X, Y (B, T) from s0 (B, N) (eq. 9.7.2)."""
        total, s = 0.0, s0
        for t in range(X.shape[1]):
            s, _ = self.step(X[:, t], s)
            o = self.logits(s)
            top = o.max(axis=1)
            log_z = top + np.log(np.exp(o - top[:, None]).sum(axis=1))
            total += float(np.sum(log_z - o[np.arange(len(o)), Y[:, t]]))
        return total / X.size


def state_grads(recurrence, X, Y, s0) -> np.ndarray:
    """∂L/∂s_t for t = 0..T -> (T+1, B, N), L the mean cross-entropy over the window: the
    recursion behind eq. 9.7.15 on the full state, ∂L/∂s_{t-1} = ∂L/∂o_{t-1}-part + J_t ∂L/∂s_t
    (column form; J_t formed by one tangent step from the identity, recomputed backwards)."""
    B, T = X.shape
    states = [s0]
    for t in range(T):
        states.append(recurrence.step(X[:, t], states[-1])[0])
    N = s0.shape[1]
    identity = np.broadcast_to(np.eye(N), (B, N, N))
    grads = np.zeros((T + 1, B, N))
    for t in range(T, 0, -1):
        grads[t] += recurrence.output_grad(states[t], Y[:, t - 1], 1.0 / X.size)
        _, jacobian = recurrence.step(X[:, t - 1], states[t - 1], identity)
        grads[t - 1] = np.einsum("bjk,bk->bj", jacobian, grads[t])
    return grads
