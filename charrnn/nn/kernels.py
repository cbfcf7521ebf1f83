"""Compiled (numba) per-step elementwise work of the cells: each step's whole elementwise part
in one pass over the gate block, where cells.py's readable steps make a NumPy pass per operation.

Every kernel computes, for one time step t of one layer, exactly the operations of the cells.py
step it names, in the same order and with the same roundings (one IEEE operation each: no
fused multiply-add, numba's default), reading and writing the same Workspace arrays, except:

- tanh: float64 calls the C library's tanh; float32 uses `tanh32`, a rational approximation
  (Eigen's, vectorised by the compiler), at most 7 ulp (mean 1 ulp) from the exact tanh
  against NumPy's 1.4 ulp. NumPy's own SIMD tanh cannot be called from compiled code.
- backward: the per-step factors that cells.py's prepare_backward forms for all steps at once
  (M, and the LSTM's/GRU's new aux) are formed inside the step from A, cs, aux and hs instead,
  by the same operations in the same order (so the factors and δ are the same numbers); M is
  not written.

Shapes, per layer and window (workspace.Layer): A (T, B, G·H) the input part, then the gates;
hs, cs (T+1, B, H); aux (T, B, H); tmp (B, G·H) = h_{t−1} W_hh of this step; dH (T, B, H);
dA (T, B, G·H); dh_next, dc (B, H). Gate blocks along the last axis in cells.py's order.
The Python drivers and the choice of path are fused.py's.
"""
import math

import numba
import numpy as np

JIT = {"cache": True, "error_model": "numpy", "nogil": True}  # "numpy": x/0 is inf, no check per division

# tanh32: Eigen's rational approximation of tanh for float32 (p(x)/q(x), odd/even polynomials
# of degree 13/6), exact to float32 rounding up to |x| = CLAMP, where tanh rounds to ±1.
_F = np.float32
CLAMP = _F(7.90531110763549805)
ALPHA = tuple(_F(c) for c in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                              5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                              -2.76076847742355e-16))
BETA = tuple(_F(c) for c in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                             1.19825839466702e-06))
A1, A3, A5, A7, A9, A11, A13 = ALPHA
B0, B2, B4, B6 = BETA
NEG_CLAMP = -CLAMP


def tanh(x):
    """tanh in compiled code: math.tanh for float64, tanh32 for float32 (overloaded below)."""
    return math.tanh(x)


@numba.njit(inline="always", **JIT)
def tanh32(x):
    """tanh(x) for a float32 x by Eigen's rational approximation; NaN stays NaN."""
    x = x if x < CLAMP else CLAMP  # selects, not min/max, so that the loop vectorises
    x = x if x > NEG_CLAMP else NEG_CLAMP
    x2 = x * x
    p = x2 * A13 + A11
    p = x2 * p + A9
    p = x2 * p + A7
    p = x2 * p + A5
    p = x2 * p + A3
    p = x2 * p + A1
    p = x * p
    q = x2 * B6 + B4
    q = x2 * q + B2
    q = x2 * q + B0
    return p / q


@numba.extending.overload(tanh, jit_options=JIT)
def _tanh_overload(x):
    if x == numba.types.float32:
        return lambda x: tanh32(x)
    return lambda x: math.tanh(x)


# ---------------------------------------------------------------- forward steps

@numba.njit(**JIT)
def rnn_forward(a, tmp, use_tanh):
    """RNNCell.recur after its product: a <- φ(a + tmp), a (B, H) holding x_t W_xh + b_h (the
    step's hs[t+1]), tmp = h_{t−1} W_hh."""
    a_flat, tmp_flat = a.reshape(-1), tmp.reshape(-1)
    for k in range(a_flat.size):
        v = a_flat[k] + tmp_flat[k]
        a_flat[k] = tanh(v) if use_tanh else v


@numba.njit(**JIT)
def gru_forward(t, A, tmp, aux, hs, b_hn):
    """GRUCell.forward_step after its product: r, z = ½ tanh(a + tmp) + ½ (σ blocks halved);
    hn = tmp_n + b_hn into aux[t]; n = tanh(a_n + r ⊙ hn); h_t = (h_{t−1} − n) ⊙ z + n.
    Loops of few arrays each, which the compiler vectorises (one loop over all would not be)."""
    a, hn, h_prev, h = A[t], aux[t], hs[t], hs[t + 1]
    B, H = h.shape
    half = A.dtype.type(0.5)  # typed: a Python float would make the arithmetic float64
    for b in range(B):
        ab, tb, hnb, hb, hpb = a[b], tmp[b], hn[b], h[b], h_prev[b]
        for j in range(2 * H):
            ab[j] = tanh(ab[j] + tb[j]) * half + half
        for j in range(H):
            hn_j = tb[2 * H + j] + b_hn[j]
            hnb[j] = hn_j
            ab[2 * H + j] = ab[2 * H + j] + ab[j] * hn_j
        for j in range(2 * H, 3 * H):
            ab[j] = tanh(ab[j])
        for j in range(H):
            n = ab[2 * H + j]
            hb[j] = (hpb[j] - n) * ab[H + j] + n


@numba.njit(**JIT)
def lstm_forward(t, A, tmp, cs, aux, hs):
    """LSTMCell.forward_step after its product: a <- tanh(a + tmp) over the whole gate block
    (one flat loop), then i, f, o = ½ a + ½ (σ blocks halved), g = a; c_t = f ⊙ c_{t−1} + i ⊙ g;
    aux[t] = tanh(c_t) (one flat loop); h_t = o ⊙ tanh(c_t). (The reference's g × 1 + 0 is left
    out: it changes nothing but the sign of a zero.)"""
    a, c_prev, c, tanh_c, h = A[t], cs[t], cs[t + 1], aux[t], hs[t + 1]
    B, H = h.shape
    half = A.dtype.type(0.5)
    a_flat, tmp_flat = a.reshape(-1), tmp.reshape(-1)
    for k in range(a_flat.size):
        a_flat[k] = tanh(a_flat[k] + tmp_flat[k])
    for b in range(B):
        ab, cpb, cb = a[b], c_prev[b], c[b]
        for j in range(2 * H):
            ab[j] = ab[j] * half + half
        for j in range(3 * H, 4 * H):
            ab[j] = ab[j] * half + half
        for j in range(H):
            cb[j] = ab[H + j] * cpb[j] + ab[j] * ab[2 * H + j]
    c_flat, tanh_c_flat = c.reshape(-1), tanh_c.reshape(-1)
    for k in range(c_flat.size):
        tanh_c_flat[k] = tanh(c_flat[k])
    for b in range(B):
        ab, tcb, hb = a[b], tanh_c[b], h[b]
        for j in range(H):
            hb[j] = ab[3 * H + j] * tcb[j]


# ---------------------------------------------------------------- backward steps

@numba.njit(**JIT)
def rnn_backward(t, dH, dh_next, hs, use_tanh):
    """RNNCell.prepare_backward and backward_step but the product: δ_t = (dH[t] + dh_next) ⊙
    (1 − h_t²), in place in dH[t] (the rnn's dA)."""
    delta, h = dH[t], hs[t + 1]
    B, H = delta.shape
    one = dH.dtype.type(1)
    for b in range(B):
        for j in range(H):
            d = delta[b, j] + dh_next[b, j]
            if use_tanh:
                d *= one - h[b, j] * h[b, j]
            delta[b, j] = d


@numba.njit(**JIT)
def gru_backward(t, dH, dh_next, A, aux, hs, dA, dh_z):
    """GRUCell.prepare_backward (step t) and backward_step but the product: dh = dH[t] + dh_next
    (kept in dH[t]); δ = dh ⊙ [hn r(1−r)(1−z)(1−n²) | (h_{t−1} − n) z(1−z) | (1−z)(1−n²) r] into
    dA[t]; aux[t] <- (1−z)(1−n²); dh_z = dh ⊙ z, the direct path, added after the product."""
    a, hn, h_prev, dh_t, delta = A[t], aux[t], hs[t], dH[t], dA[t]
    B, H = h_prev.shape
    one = A.dtype.type(1)
    for b in range(B):
        for j in range(H):
            r, z, n = a[b, j], a[b, H + j], a[b, 2 * H + j]
            one_z = one - z
            d_n = (one - n * n) * one_z
            m_r = (one - r) * r * hn[b, j] * d_n
            m_z = (h_prev[b, j] - n) * z * one_z
            dh = dh_t[b, j] + dh_next[b, j]
            dh_t[b, j], hn[b, j] = dh, d_n
            delta[b, j], delta[b, H + j], delta[b, 2 * H + j] = dh * m_r, dh * m_z, dh * (d_n * r)
            dh_z[b, j] = dh * z


@numba.njit(**JIT)
def lstm_backward(t, dH, dh_next, dc, A, cs, aux, dA, keep):
    """LSTMCell.prepare_backward (step t) and backward_step but the product: dh = dH[t] + dh_next
    (kept in dH[t]); dc += dh ⊙ o(1 − tanh²c_t); δ = [dc ⊙ g i(1−i) | dc ⊙ c_{t−1} f(1−f) |
    dc ⊙ i(1−g²) | dh ⊙ tanh(c_t) o(1−o)] into dA[t]; dc <- dc ⊙ f if keep (the path to c_{t−1})."""
    a, c_prev, tanh_c, dh_t, delta = A[t], cs[t], aux[t], dH[t], dA[t]
    B, H = c_prev.shape
    one = A.dtype.type(1)
    for b in range(B):
        for j in range(H):
            i, f, g, o = a[b, j], a[b, H + j], a[b, 2 * H + j], a[b, 3 * H + j]
            tc = tanh_c[b, j]
            dh = dh_t[b, j] + dh_next[b, j]
            dh_t[b, j] = dh
            d_c = dc[b, j] + dh * ((one - tc * tc) * o)
            delta[b, j] = d_c * ((one - i) * i * g)
            delta[b, H + j] = d_c * ((one - f) * f * c_prev[b, j])
            delta[b, 2 * H + j] = d_c * ((one - g * g) * i)
            delta[b, 3 * H + j] = dh * ((one - o) * o * tc)
            dc[b, j] = d_c * f if keep else d_c


@numba.njit(**JIT)
def flush_tiny(delta, smallest):
    """cells.flush_tiny in one pass: an entry x with not |x| >= smallest becomes x × 0 (the
    reference's product with its mask, so that −x keeps its sign and NaN stays NaN)."""
    flat, zero = delta.reshape(-1), delta.dtype.type(0)
    for k in range(flat.size):
        x = flat[k]
        if not abs(x) >= smallest:
            flat[k] = x * zero
