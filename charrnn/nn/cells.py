"""The recurrent cells of RNNLM: vanilla RNN (d2l §9.4), GRU (§10.2) and LSTM (§10.1), each a
forward step and a backward step side by side, in the row-vector convention of the textbook.

Parameter layout (the one place it is written down)
---------------------------------------------------
G gates per cell: 1 (rnn), 3 (gru), 4 (lstm). Layer 0 reads the one-hot token (V inputs),
layer l >= 1 reads layer l-1's h (H inputs); layer l's names carry the suffix "" for l = 0 and
"_l{l}" otherwise (W_xh, W_xh_l1, ...):

    W_xh{suffix} (V or H, G·H)   input weights, the G gate blocks side by side
    W_hh{suffix} (H, G·H)        recurrent weights, the same blocks
    b_h{suffix}  (G·H,)          bias, the same blocks
    b_hn{suffix} (H,)            GRU only: the candidate's hidden-side bias (inside r ⊙ (·))
    W_hq (H, V), b_q (V,)        output layer, reading the top layer's h

Gate order inside a fused matrix is PyTorch's: GRU [r | z | n], LSTM [i | f | g | o]. Export to
PyTorch's nn.RNN/nn.GRU/nn.LSTM is therefore a transpose: weight_ih_l{l} = W_xh{suffix}ᵀ,
weight_hh_l{l} = W_hh{suffix}ᵀ, bias_ih_l{l} = b_h{suffix}, bias_hh_l{l} = 0 except the GRU's
n block, which is b_hn{suffix}. A one-layer rnn has exactly the textbook's W_xh (V,H),
W_hh (H,H), b_h (H,), W_hq, b_q.

The cells (x the layer's input row, h = h_{t-1}, σ the logistic function)
--------------------------------------------------------------------------
rnn:  h_t = φ(x W_xh + b_h + h W_hh),  φ = tanh or identity                      (d2l 9.4.5)
gru:  r = σ(x W_xr + b_r + h W_hr),  z = σ(x W_xz + b_z + h W_hz),
      n = tanh(x W_xn + b_n + r ⊙ (h W_hn + b_hn)),  h_t = (1 − z) ⊙ n + z ⊙ h
      This is PyTorch's GRU (and Cho et al. 2014's original form). d2l's scratch GRU (eq. 10.2.2)
      resets the state *before* the product, tanh(x W_xh + (r ⊙ h) W_hh + b_h), and has no b_hn;
      the two are different functions of the same-shaped weights, not a reparametrisation.
      Here r ⊙ (h W_hn) lets the whole recurrent part be one product h W_hh per step.
lstm: i, f, o = σ(x W_x· + b_· + h W_h·),  g = tanh(x W_xg + b_g + h W_hg),        (d2l 10.1)
      c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)   (no peepholes); state (h, c).

Sigmoids are computed as σ(a) = ½ tanh(a/2) + ½ (no overflow): the σ blocks of the working
copies of W_xh, W_hh, b_h are scaled by ½ per call (exact in binary floating point), so one tanh
covers every gate of a step.

Initialisation: rnn, the textbook's: every W ~ N(0, 0.01²), biases 0. gru and lstm: the weights
of the recurrent layers ~ U(−1/√H, 1/√H), PyTorch's nn.GRU/nn.LSTM default (pre-activations of
size ~1 whatever H: the gates start neither saturated nor all at ½, as N(0, 0.01²) would leave them); the
biases 0 except the LSTM forget gate's b_f = 1, so that c is kept by default at the start
(Gers et al. 2000; Jozefowicz et al. 2015, who found it closes the LSTM's gap to the GRU); the
output layer as the rnn's, N(0, 0.01²) and 0, so the first loss is log V. Drawn in float64 from
numpy.random.default_rng(seed) in the parameter order above (layer 0, 1, ..., output), then cast.

A training run then sets the output bias from its data (init_output_bias, TrainConfig.output_bias
"unigram", the default): b_q = log p(v), the add-one smoothed unigram of the training split
(charrnn.data.baselines), so the first loss is the unigram's cross-entropy instead of log V. Without
it, the largest and most consistent part of every early gradient reaching the recurrent layers
is the unigram's mismatch, Σ_t (softmax(o_t) − y_t) W_hqᵀ averaged to (p̄ − ȳ) W_hqᵀ: the same
direction at every step and position, whatever the input. Adam normalises each parameter's
steps, so that small but consistent signal moves every recurrent weight and bias by ~lr per
step in a coherent direction, and within a few dozen steps a layer's tanh units and gates
saturate to a constant state that carries the letter frequencies to the output layer. A
saturated unit passes almost no gradient (1 − h², z(1 − z) ≈ 0), and the run stays at the
unigram's perplexity: the 2-layer networks with dropout did so for some seeds on every text
tried (docs/learning.md). With the frequencies in b_q from the start, no
such constant signal exists and the layers learn from their inputs. "zero" keeps the
textbook's b_q = 0.

The previous state h_{t-1} (c_{t-1}) a step reads is layer.hp_t[t] (cp_t[t]), and the backward
factors read layer.hp (cp): hs[:-1] (cs[:-1]) themselves, or, where records start inside the
window, ρ_t ⊙ h_{t-1} with the reset mask ρ_t (workspace.Workspace.set_resets, charrnn.data.records).

Backward steps take dh (and dc) = the total gradient reaching the step's output state and leave
in d_state the gradient reaching the previous state, dh_next (and dc_next), unless the path is
cut (keep False). The per-step multipliers that do not depend on the gradient are formed for all
steps at once beforehand (`prepare_backward`), so a step is a handful of operations.

Also here: the one rule of possible networks (network_problem) and layer 0's token gradient
(token_grads). The buffers the steps work in are workspace.py's. reference.py is the LSTM
written plainly, step by step in float64, forward and backward: read it first; LSTMCell's
comments name its lines.
"""
import math

import numpy as np

from charrnn.base.checks import is_finite, is_integer

CELLS = ("rnn", "gru", "lstm")
ACTIVATIONS = ("tanh", "linear")  # the rnn cell's φ; gated cells have their own
INIT_SCALE = 0.01  # the textbook's N(0, 0.01²) for the rnn and every output layer
LSTM_FORGET_BIAS = 1.0
OUTPUT_BIASES = ("unigram", "zero")  # a run's output bias at the start (init_output_bias)


def layer_suffix(layer) -> str:
    return "" if layer == 0 else f"_l{layer}"


class RNNCell:
    """h_t = φ(a_t), a_t = x_t W_xh + b_h + h_{t-1} W_hh; φ = tanh or identity."""

    gates, num_states = 1, 1
    saturates = False  # φ' = 1 − h² is 0 or >= 2^-24 in float32: no tiny δ but by long vanishing

    def __init__(self, num_hiddens, activation, dtype):
        self.num_hiddens, self.tanh = num_hiddens, activation == "tanh"
        self.gate_scale = None  # no σ blocks

    def forward_step(self, layer, t):
        """layer.hs[t+1] (= A[t]) holds x_t W_xh + b_h and becomes h_t."""
        self.recur(layer.hs_t[t + 1], layer.hp_t[t], layer.W_hh, layer.tmp)

    def recur(self, a, h_prev, W_hh, tmp):
        """a <- φ(a + h_prev W_hh) in place, a (B, H) holding x_t W_xh + b_h; tmp (B, H) scratch."""
        np.matmul(h_prev, W_hh, out=tmp)
        a += tmp
        if self.tanh:
            np.tanh(a, out=a)

    def prepare_backward(self, layer):
        """M[t] = φ'(a_t) = 1 − h_t² (tanh; the identity needs none)."""
        if self.tanh:
            np.multiply(layer.hs[1:], layer.hs[1:], out=layer.M)
            np.subtract(1, layer.M, out=layer.M)

    def backward_step(self, layer, t, d_state, keep):
        """δ_t = (dh + dh_next) ⊙ φ'(a_t), in place in dA[t] = dH[t]; dh_next = δ_t W_hhᵀ."""
        delta = layer.dA_t[t]
        delta += d_state[0]
        if self.tanh:
            delta *= layer.M_t[t]
        if keep:
            np.matmul(delta, layer.W_hh_T, out=d_state[0])

    def finish_backward(self, layer):
        """-> the cell's extra gradients: none; dA is δ for the input side too."""
        return {}


class GRUCell:
    """PyTorch's GRU; gates [r | z | n] (see the module docstring)."""

    gates, num_states = 3, 1
    saturates = True  # σ' of a saturated gate makes tiny δ (flush_tiny)

    def __init__(self, num_hiddens, activation, dtype):
        H = self.num_hiddens = num_hiddens
        self.gate_scale = np.concatenate([np.full(2 * H, 0.5), np.ones(H)]).astype(dtype)

    def forward_step(self, layer, t):
        """A[t] holds [x W_xr + b_r | x W_xz + b_z] / 2 and x W_xn + b_n; becomes [r | z | n]."""
        H, tmp = self.num_hiddens, layer.tmp
        h_prev, a = layer.hp_t[t], layer.A_t[t]
        np.matmul(h_prev, layer.W_hh, out=tmp)             # [h W_hr / 2 | h W_hz / 2 | h W_hn]
        rz = a[:, :2 * H]
        rz += tmp[:, :2 * H]
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5                                           # r, z = σ(·) = ½ tanh(·/2) + ½
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        hn = layer.aux_t[t]
        np.add(tmp[:, 2 * H:], layer.b_hn, out=hn)          # h W_hn + b_hn
        np.multiply(r, hn, out=tmp[:, 2 * H:])
        n += tmp[:, 2 * H:]
        np.tanh(n, out=n)                                   # n = tanh(x W_xn + b_n + r ⊙ hn)
        h = layer.hs_t[t + 1]
        np.subtract(h_prev, n, out=h)
        h *= z
        h += n                                              # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

    def prepare_backward(self, layer):
        """M[t] = ∂(δ_t, recurrent side)/∂(dh) per block: [(1−z)(1−n²) hn r(1−r) |
        (h_{t−1} − n) z(1−z) | (1−z)(1−n²) r]; aux becomes (1−z)(1−n²) = ∂h_t/∂(n's argument)."""
        H, A, M, hn = self.num_hiddens, layer.A, layer.M, layer.aux
        r, z, n = A[..., :H], A[..., H:2 * H], A[..., 2 * H:]
        M_r, M_z, M_n = M[..., :H], M[..., H:2 * H], M[..., 2 * H:]
        np.subtract(1, r, out=M_r)
        M_r *= r
        M_r *= hn                                           # hn r(1−r)
        np.subtract(1, z, out=M_n)
        np.subtract(layer.hp, n, out=M_z)
        M_z *= z
        M_z *= M_n                                          # (h_{t−1} − n) z(1−z)
        np.multiply(n, n, out=hn)
        np.subtract(1, hn, out=hn)
        hn *= M_n                                           # aux = (1−z)(1−n²)
        np.multiply(hn, r, out=M_n)
        M_r *= hn

    def backward_step(self, layer, t, d_state, keep):
        """dh = dH[t] + dh_next; δ_t (recurrent side) = dh ⊙ M[t] per block into dA[t];
        dh_next = δ_t W_hhᵀ + dh ⊙ z (the direct path z ⊙ h_{t−1})."""
        H = self.num_hiddens
        B = len(d_state[0])
        dh, dh_next = layer.dH_t[t], d_state[0]
        dh += dh_next
        delta = layer.dA_t[t]
        np.multiply(dh[:, None, :], layer.M_t[t].reshape(B, 3, H), out=delta.reshape(B, 3, H))
        if keep:
            np.matmul(delta, layer.W_hh_T, out=dh_next)
            np.multiply(dh, layer.A_t[t][:, H:2 * H], out=layer.tmp_h)
            dh_next += layer.tmp_h

    def finish_backward(self, layer):
        """dA's n block holds δ_n ⊙ r, the recurrent side: db_hn = Σ of it; then it becomes the
        input side δ_n = dh ⊙ (1−z)(1−n²). Call after dW_hh is taken from dA -> {"b_hn": db_hn}."""
        d_n = layer.dA[..., 2 * self.num_hiddens:]
        db_hn = d_n.sum(axis=(0, 1))
        np.multiply(layer.dH, layer.aux, out=d_n)
        return {"b_hn": db_hn}


class LSTMCell:
    """LSTM without peepholes; gates [i | f | g | o], state (h, c) (see the module docstring).

    reference.py computes the same step plainly, in float64; the comments "Fn" and "Bn" below
    name the lines of it each block computes (the input part x W_xh + b_h of F1 and the weight
    gradients of B8 are RNNLM's, for all steps at once)."""

    gates, num_states = 4, 2
    saturates = True

    def __init__(self, num_hiddens, activation, dtype):
        H = self.num_hiddens = num_hiddens
        half = np.full(H, 0.5)
        self.gate_scale = np.concatenate([half, half, np.ones(H), half]).astype(dtype)
        self.gate_shift = np.concatenate([half, half, np.zeros(H), half]).astype(dtype)

    def forward_step(self, layer, t):
        """A[t] holds the input part (σ blocks halved) and becomes [i | f | g | o]; writes c_t, h_t."""
        H, a = self.num_hiddens, layer.A_t[t]
        np.matmul(layer.hp_t[t], layer.W_hh, out=layer.tmp)
        a += layer.tmp                                      # F1: + h_{t−1} W_hh (σ blocks halved)
        np.tanh(a, out=a)
        a *= self.gate_scale
        a += self.gate_shift                                # F2: i, f, o = σ(·) = ½ tanh(·/2) + ½, g = tanh(·)
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c = layer.cs_t[t + 1]
        np.multiply(f, layer.cp_t[t], out=c)
        np.multiply(i, g, out=layer.tmp_h)
        c += layer.tmp_h                                    # F3: c_t = f ⊙ c_{t−1} + i ⊙ g
        tanh_c = layer.aux_t[t]
        np.tanh(c, out=tanh_c)
        np.multiply(o, tanh_c, out=layer.hs_t[t + 1])          # F4: h_t = o ⊙ tanh(c_t)

    def prepare_backward(self, layer):
        """M[t] per block: [g i(1−i) | c_{t−1} f(1−f) | i(1−g²) | tanh(c_t) o(1−o)], the factors
        that turn dc (i, f, g blocks) or dh (o) into δ_t; aux becomes o(1 − tanh²c_t) = ∂h_t/∂c_t."""
        H, A, M, tanh_c = self.num_hiddens, layer.A, layer.M, layer.aux
        i, g, o = A[..., :H], A[..., 2 * H:3 * H], A[..., 3 * H:]
        M_i, M_f, M_g, M_o = (M[..., k * H:(k + 1) * H] for k in range(4))
        np.subtract(1, A, out=M)
        M *= A                                              # σ' = s(1 − s) in the i, f, o blocks
        M_i *= g                                            # B7's g i(1 − i)
        M_f *= layer.cp                                     # B7's c_{t−1} f(1 − f)
        np.multiply(g, g, out=M_g)
        np.subtract(1, M_g, out=M_g)
        M_g *= i                                            # B7's i (1 − g²)
        M_o *= tanh_c                                       # B6's tanh(c_t) o(1 − o)
        np.multiply(tanh_c, tanh_c, out=tanh_c)
        np.subtract(1, tanh_c, out=tanh_c)
        tanh_c *= o                                         # B5's o (1 − tanh² c_t)

    def backward_step(self, layer, t, d_state, keep):
        """dh = dH[t] + dh_next; dc = dc_next + dh ⊙ o(1 − tanh²c_t);
        δ_t = [dc | dc | dc | dh] ⊙ M[t]; dc_next = dc ⊙ f; dh_next = δ_t W_hhᵀ."""
        H = self.num_hiddens
        B = len(d_state[0])
        (dh_next, dc), dh = d_state, layer.dH_t[t]
        dh += dh_next                                       # B4 (dH[t]: B3's gradient from above)
        np.multiply(dh, layer.aux_t[t], out=layer.tmp_h)
        dc += layer.tmp_h                                   # B5
        delta, M_t = layer.dA_t[t], layer.M_t[t]
        np.multiply(dc[:, None, :], M_t.reshape(B, 4, H)[:, :3], out=delta.reshape(B, 4, H)[:, :3])  # B7
        np.multiply(dh, M_t[:, 3 * H:], out=delta[:, 3 * H:])  # B6
        if keep:
            dc *= layer.A_t[t][:, H:2 * H]                  # B9: dc_next = dc ⊙ f
            np.matmul(delta, layer.W_hh_T, out=dh_next)      # B9: dh_next = δ W_hhᵀ

    def finish_backward(self, layer):
        return {}


CELL_CLASSES = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}


TINY_DELTA = {"float32": 2.0 ** -63}  # a saturating cell's float32 δ below this becomes 0 (flush_tiny)


def flush_tiny(delta, scratch):
    """Set the entries of δ (float32) smaller in magnitude than TINY_DELTA to zero, in place;
    scratch: an array of δ's shape, overwritten. float64 is left as it is.

    A saturated gate's σ' = s(1 − s) is as small as 2^-25, and a product of a few of them
    makes δ of 1e-20 and less (54% of an LSTM's top-layer δ after 13 minibatches on the book,
    benchmarks/bench_tiny_deltas.py). A product of two such numbers falls below float32's
    smallest normal number (2^-126), which a CPU computes ~100x slower (a microcode assist per
    operation), mostly in the weight gradients Σ_t h_{t-1}ᵀ δ_t: that minibatch's backward pass
    took 1.6-2.1x as long. 2^-63 is the square root of 2^-126: the entries kept make no such product
    with numbers of size 2^-63 or more. A term dropped is below 2^-63 · |h| <= 2^-63 in size, far
    below float32's resolution of any gradient an optimizer step can see (docs/bptt-and-cells.md,
    "Tiny δ in float32"). The gradient checks run in float64, where nothing is flushed.
    """
    smallest = TINY_DELTA.get(delta.dtype.name)
    if smallest is None:
        return
    np.abs(delta, out=scratch)
    np.greater_equal(scratch, smallest, out=scratch)
    delta *= scratch  # × 1 keeps an entry exactly, × 0 drops it


MAX_LAYERS = 256  # a checkpoint's arrays (3-4 a layer, and the optimizer's) stay within charrnn.base.io's MAX_MEMBERS


def network_problem(cell, num_layers, dropout, activation):
    """The one place of the rules a network's settings meet -> None, or (setting, message) for
    the first one broken: cell in CELLS, activation in ACTIVATIONS and "tanh" unless the cell is
    rnn (gated cells have their own nonlinearities), num_layers an integer in [1, MAX_LAYERS],
    dropout a number in [0, 1)."""
    if cell not in CELLS:
        return "cell", f"unknown cell {cell!r} (choose from {', '.join(CELLS)})"
    if activation not in ACTIVATIONS:
        return "activation", f"unknown activation {activation!r} (choose from {', '.join(ACTIVATIONS)})"
    if cell != "rnn" and activation != "tanh":
        return "activation", (f"activation {activation!r} is for the rnn cell only; the {cell} cell has "
                              f"its own nonlinearities (use cell rnn, or activation tanh)")
    if not is_integer(num_layers) or not 1 <= num_layers <= MAX_LAYERS:
        return "num_layers", f"num_layers must be an integer in [1, {MAX_LAYERS}], got {num_layers!r}"
    if not is_finite(dropout) or not 0 <= dropout < 1:
        return "dropout", f"dropout must be a number in [0, 1), got {dropout!r}"
    return None


def token_grads(X_tm, dA, scratch, vocab_size) -> tuple:
    """-> (dW_xh, db_h) of layer 0, whose input is a one-hot token, from δ_t in dA (T, B, G·H)
    (eq. 9.7.16): dW_xh[v] = Σ_{x_t = v} δ_t by a sorted segment sum; db_h = Σ_v dW_xh[v].
    scratch: (T, B, G·H), overwritten.

    The segment sum adds each token's block of sorted rows with one vectorised reduction
    per distinct token of the window (at most min(V, T*B) of them): np.add.reduceat runs
    column by column over rows this wide, ~30x slower at H = 1024.
    """
    T, B, GH = dA.shape
    ids = X_tm.reshape(-1)
    sorted_dA = np.take(dA.reshape(T * B, GH), np.argsort(ids, kind="stable"), axis=0,
                        out=scratch.reshape(T * B, GH), mode="clip")
    counts = np.bincount(ids, minlength=vocab_size)
    tokens = np.flatnonzero(counts)
    ends = np.cumsum(counts)[tokens]
    dW_xh = np.zeros((vocab_size, GH), dA.dtype)
    for token, start, end in zip(tokens.tolist(), (ends - counts[tokens]).tolist(), ends.tolist()):
        np.add.reduce(sorted_dA[start:end], axis=0, out=dW_xh[token])
    return dW_xh, dW_xh.sum(axis=0)


def param_shapes(cell, vocab_size, num_hiddens, num_layers) -> dict:
    """Parameter name -> shape in the fixed order: layer 0, ..., layer L−1, then W_hq, b_q."""
    V, H = vocab_size, num_hiddens
    GH = CELL_CLASSES[cell].gates * H
    shapes = {}
    for layer in range(num_layers):
        s = layer_suffix(layer)
        shapes[f"W_xh{s}"] = (V if layer == 0 else H, GH)
        shapes[f"W_hh{s}"] = (H, GH)
        shapes[f"b_h{s}"] = (GH,)
        if cell == "gru":
            shapes[f"b_hn{s}"] = (H,)
    shapes["W_hq"], shapes["b_q"] = (H, V), (V,)
    return shapes


def init_params(cell, shapes, num_hiddens, rng, dtype) -> dict:
    """Draw every parameter in float64 from rng in the order of `shapes`, then cast (see the
    module docstring for the distributions)."""
    bound = 1.0 / math.sqrt(num_hiddens)
    params = {}
    for name, shape in shapes.items():
        weight = name[0] == "W"
        if cell == "rnn" or name == "W_hq":
            value = rng.standard_normal(shape) * INIT_SCALE if weight else np.zeros(shape)
        elif weight:
            value = rng.uniform(-bound, bound, shape)
        else:
            value = np.zeros(shape)
            if cell == "lstm" and name.startswith("b_h"):
                value[num_hiddens:2 * num_hiddens] = LSTM_FORGET_BIAS
        params[name] = value.astype(dtype)
    return params


def init_output_bias(params, log_probs) -> None:
    """b_q <- log p(v) (the training split's unigram, charrnn.data.baselines.unigram_log_probs), in
    place, in the parameters' dtype: the network's first output is the unigram model (module
    docstring, "A training run then sets the output bias")."""
    b_q = params["b_q"]
    if b_q.shape != np.shape(log_probs):
        raise ValueError(f"log-probabilities of shape {np.shape(log_probs)} for b_q {b_q.shape}")
    b_q[...] = log_probs
