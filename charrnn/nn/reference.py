"""The language models of RNNLM written plainly: one step at a time, one layer at a time, in
float64, forward and backward, with no buffers, no fused work across steps and no halved σ
blocks. One function, `loss_and_grads(cell, ...)`, for the three cells.

This is what RNNLM computes (d2l §9.4 for the rnn, PyTorch's GRU for the gru, d2l §10.1 for the
lstm; the loss of eq. 9.7.2 and BPTT of §9.7), slow and easy to read. The fast code (cells.py,
model.RNNLM) says in its comments which lines below each of its blocks computes;
tests/test_cells.py checks that both give the same loss, state and gradients. The labels, the
lstm's first (x: the one-hot token for layer 0, else m ⊙ h of the layer below):

    forward, layer l at step t
      F1  a = x W_xh + b_h + h_{t-1} W_hh               the four gates' pre-activations [i|f|g|o]
      F2  i, f, o = σ(a_i, a_f, a_o),  g = tanh(a_g)
      F3  c_t = f ⊙ c_{t-1} + i ⊙ g
      F4  h_t = o ⊙ tanh(c_t)
    output, at step t (every cell)
      F5  o_t = (m ⊙ h_t^(L-1)) W_hq + b_q,  p_t = softmax(o_t)
      F6  L = -(1/N) Σ_t Σ_b log p_t[b, y_t[b]]           (eq. 9.7.2, N = B·T)
    backward, steps from last to first, layers from top to bottom (eqs. 9.7.12-9.7.16)
      B1  dL/do_t = (p_t - onehot(y_t)) / N                                   (every cell)
      B2  dW_hq += (m ⊙ h_t)ᵀ dL/do_t,  db_q += Σ_b dL/do_t                   (every cell)
      B3  dh from above = (dL/do_t W_hqᵀ) ⊙ m  (top layer), (δ^(l+1) W_xh^(l+1)ᵀ) ⊙ m (others)
      B4  dh = dh from above + dh_next                                        (every cell)
      B5  dc = dc_next + dh ⊙ o ⊙ (1 - tanh² c_t)
      B6  δ_o = dh ⊙ tanh(c_t) ⊙ o(1 - o)
      B7  δ_i = dc ⊙ g ⊙ i(1 - i),  δ_f = dc ⊙ c_{t-1} ⊙ f(1 - f),  δ_g = dc ⊙ i ⊙ (1 - g²)
      B8  dW_hh += h_{t-1}ᵀ δ,  dW_xh += xᵀ δ,  db_h += Σ_b δ      (δ = [δ_i|δ_f|δ_g|δ_o])
      B9  dh_next = δ W_hhᵀ,  dc_next = dc ⊙ f                       (into step t-1)

The rnn (φ = tanh, or the identity for activation "linear"), with the same F5-F6, B1-B4, B8:

      R1  a = x W_xh + b_h + h_{t-1} W_hh
      R2  h_t = φ(a)
      R5  δ = dh ⊙ φ'(a)  (1 - h_t² for tanh, 1 for the identity)
      R9  dh_next = δ W_hhᵀ

The gru (gates [r|z|n]; h W_hn + b_hn inside r ⊙ (·)), with the same F5-F6, B1-B4, and B8 split
into its input side (δ) and its recurrent side (δ_rec):

      G1  r = σ(x W_xr + b_r + h_{t-1} W_hr),  z = σ(x W_xz + b_z + h_{t-1} W_hz)
      G2  n = tanh(x W_xn + b_n + r ⊙ (h_{t-1} W_hn + b_hn))
      G3  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
      G5  δ_n = dh ⊙ (1 - z) ⊙ (1 - n²)
      G6  δ_z = dh ⊙ (h_{t-1} - n) ⊙ z(1 - z)
      G7  δ_r = δ_n ⊙ (h_{t-1} W_hn + b_hn) ⊙ r(1 - r)
      G8  δ = [δ_r|δ_z|δ_n] (dW_xh, db_h);  δ_rec = [δ_r|δ_z|δ_n ⊙ r] (dW_hh);  db_hn += Σ_b δ_n ⊙ r
      G9  dh_next = δ_rec W_hhᵀ + dh ⊙ z

Full BPTT only (no truncation): the dropout masks m, if any, are given.
"""
import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def suffix(layer):
    return "" if layer == 0 else f"_l{layer}"


# ---------------------------------------------------------------- one step of each cell
# forward(p, l, a_x, state, activation): a_x = x W_xh + b_h of layer l, state = [h_{t-1}] or
# [h_{t-1}, c_{t-1}] -> (the new state, what the backward step needs).
# backward(p, l, saved, dh, d_next, activation): dh from B4, d_next = [dh_next, dc_next] ->
# (δ, δ_rec, [dh_next, (dc_next)] into step t-1, extra gradients by name).

def rnn_forward(p, l, a_x, state, activation):
    h_prev = state[0]
    a = a_x + h_prev @ p[f"W_hh{suffix(l)}"]                                           # R1
    h = np.tanh(a) if activation == "tanh" else a                                      # R2
    return [h], (h_prev, h)


def rnn_backward(p, l, saved, dh, d_next, activation):
    h_prev, h = saved
    delta = dh * (1 - h * h) if activation == "tanh" else dh                          # R5
    return delta, delta, [delta @ p[f"W_hh{suffix(l)}"].T], {}                         # R9


def gru_forward(p, l, a_x, state, activation):
    h_prev, H = state[0], state[0].shape[1]
    hw = h_prev @ p[f"W_hh{suffix(l)}"]
    r = sigmoid(a_x[:, :H] + hw[:, :H])                                                # G1
    z = sigmoid(a_x[:, H:2 * H] + hw[:, H:2 * H])
    hn = hw[:, 2 * H:] + p[f"b_hn{suffix(l)}"]
    n = np.tanh(a_x[:, 2 * H:] + r * hn)                                               # G2
    h = (1 - z) * n + z * h_prev                                                       # G3
    return [h], (h_prev, r, z, n, hn)


def gru_backward(p, l, saved, dh, d_next, activation):
    h_prev, r, z, n, hn = saved
    d_n = dh * (1 - z) * (1 - n * n)                                                   # G5
    d_z = dh * (h_prev - n) * z * (1 - z)                                              # G6
    d_r = d_n * hn * r * (1 - r)                                                       # G7
    delta = np.concatenate([d_r, d_z, d_n], axis=1)                                    # G8
    delta_rec = np.concatenate([d_r, d_z, d_n * r], axis=1)
    extra = {f"b_hn{suffix(l)}": (d_n * r).sum(axis=0)}
    dh_next = delta_rec @ p[f"W_hh{suffix(l)}"].T + dh * z                             # G9
    return delta, delta_rec, [dh_next], extra


def lstm_forward(p, l, a_x, state, activation):
    (h_prev, c_prev), H = state, state[0].shape[1]
    a = a_x + h_prev @ p[f"W_hh{suffix(l)}"]                                           # F1
    i, f, o = (sigmoid(a[:, k * H:(k + 1) * H]) for k in (0, 1, 3))                    # F2
    g = np.tanh(a[:, 2 * H:3 * H])
    c = f * c_prev + i * g                                                             # F3
    h = o * np.tanh(c)                                                                 # F4
    return [h, c], (h_prev, c_prev, i, f, g, o, c)


def lstm_backward(p, l, saved, dh, d_next, activation):
    h_prev, c_prev, i, f, g, o, c = saved
    dc = d_next[1] + dh * o * (1 - np.tanh(c) ** 2)                                    # B5
    d_o = dh * np.tanh(c) * o * (1 - o)                                                # B6
    d_i, d_f, d_g = dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g)  # B7
    delta = np.concatenate([d_i, d_f, d_g, d_o], axis=1)
    return delta, delta, [delta @ p[f"W_hh{suffix(l)}"].T, dc * f], {}                # B9


STEPS = {"rnn": (rnn_forward, rnn_backward), "gru": (gru_forward, gru_backward),
         "lstm": (lstm_forward, lstm_backward)}


# ---------------------------------------------------------------- the network

def loss_and_grads(cell, params, X, Y, state=None, masks=None, activation="tanh"):
    """The loss (F6), its gradients (B1-B9 and the cell's lines) and the last state of a stack
    of `cell` ("rnn", "gru", "lstm") layers.

    params: the model's parameters by name (cells.py's layout, any dtype: read as float64);
    X, Y: (B, T) int token ids; state: (L, S, B, H) the state each layer starts from (S = 2, h
    and c, for the lstm, else 1), or None for zeros; masks: (T, L, B, H) the dropout masks m
    (entries 0 or 1/(1-P)), or None; activation: the rnn's φ, "tanh" or "linear".
    -> (loss, grads by name in float64, last state (L, S, B, H)).
    """
    forward, backward = STEPS[cell]
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    B, T = X.shape
    H = p["W_hh"].shape[0]
    L = sum(1 for name in p if name.startswith("W_hh"))
    S = 2 if cell == "lstm" else 1
    states = [[np.zeros((B, H)) if state is None else np.array(state[l, s], np.float64) for s in range(S)]
              for l in range(L)]
    mask = (lambda t, l: 1.0) if masks is None else (lambda t, l: masks[t, l])
    tape = []  # per step: per layer (x, saved), then the output's (top, p)
    loss = 0.0
    for t in range(T):
        layers = []
        for l in range(L):
            x = X[:, t] if l == 0 else states[l - 1][0] * mask(t, l - 1)
            xw = p["W_xh"][x] if l == 0 else x @ p[f"W_xh{suffix(l)}"]
            states[l], saved = forward(p, l, xw + p[f"b_h{suffix(l)}"], states[l], activation)  # F1-F4
            layers.append((x, saved))
        top = states[L - 1][0] * mask(t, L - 1)
        logits = top @ p["W_hq"] + p["b_q"]                                            # F5
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        loss -= np.log(probs[np.arange(B), Y[:, t]]).sum() / X.size                    # F6
        tape.append((layers, top, probs))

    grads = {name: np.zeros_like(value) for name, value in p.items()}
    d_next = [[np.zeros((B, H)) for _ in range(S)] for _ in range(L)]
    for t in range(T - 1, -1, -1):
        layers, top, probs = tape[t]
        d_logits = probs.copy()
        d_logits[np.arange(B), Y[:, t]] -= 1
        d_logits /= X.size                                                             # B1
        grads["W_hq"] += top.T @ d_logits                                              # B2
        grads["b_q"] += d_logits.sum(axis=0)
        from_above = (d_logits @ p["W_hq"].T) * mask(t, L - 1)                         # B3
        for l in range(L - 1, -1, -1):
            x, saved = layers[l]
            dh = from_above + d_next[l][0]                                             # B4
            delta, delta_rec, d_next[l], extra = backward(p, l, saved, dh, d_next[l], activation)  # B5-B7, B9
            grads[f"W_hh{suffix(l)}"] += saved[0].T @ delta_rec                        # B8 (saved[0]: h_{t-1})
            grads[f"b_h{suffix(l)}"] += delta.sum(axis=0)
            for name, grad in extra.items():
                grads[name] += grad
            if l == 0:  # layer 0's input is the one-hot token: x_tᵀ δ_t as for the layers above
                grads["W_xh"] += np.eye(len(grads["W_xh"]))[x].T @ delta
            else:
                grads[f"W_xh{suffix(l)}"] += x.T @ delta
                from_above = (delta @ p[f"W_xh{suffix(l)}"].T) * mask(t, l - 1)        # B3, the layer below
    last = np.stack([np.stack(states[l]) for l in range(L)])
    return loss, grads, last
