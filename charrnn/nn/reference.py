"""The LSTM language model written plainly: one step at a time, one layer at a time, in float64,
forward and backward, with no buffers, no fused gates and no halved σ blocks.

This is what RNNLM computes for cell="lstm" (d2l §10.1, eqs. 10.1.1-10.1.4; the loss of eq.
9.7.2 and BPTT of §9.7), slow and easy to read. The fast code (cells.LSTMCell, model.RNNLM)
says in its comments which lines below each of its blocks computes; tests/test_cells.py checks
that both give the same loss, state and gradients. The labels:

    forward, layer l at step t (x: the one-hot token for l = 0, else m ⊙ h of layer l-1)
      F1  a = x W_xh + b_h + h_{t-1} W_hh               the four gates' pre-activations [i|f|g|o]
      F2  i, f, o = σ(a_i, a_f, a_o),  g = tanh(a_g)
      F3  c_t = f ⊙ c_{t-1} + i ⊙ g
      F4  h_t = o ⊙ tanh(c_t)
    output, at step t
      F5  o_t = (m ⊙ h_t^(L-1)) W_hq + b_q,  p_t = softmax(o_t)
      F6  L = -(1/N) Σ_t Σ_b log p_t[b, y_t[b]]           (eq. 9.7.2, N = B·T)
    backward, steps from last to first, layers from top to bottom (eqs. 9.7.12-9.7.16)
      B1  dL/do_t = (p_t - onehot(y_t)) / N
      B2  dW_hq += (m ⊙ h_t)ᵀ dL/do_t,  db_q += Σ_b dL/do_t
      B3  dh from above = (dL/do_t W_hqᵀ) ⊙ m  (top layer), (δ^(l+1) W_xh^(l+1)ᵀ) ⊙ m (others)
      B4  dh = dh from above + dh_next
      B5  dc = dc_next + dh ⊙ o ⊙ (1 - tanh² c_t)
      B6  δ_o = dh ⊙ tanh(c_t) ⊙ o(1 - o)
      B7  δ_i = dc ⊙ g ⊙ i(1 - i),  δ_f = dc ⊙ c_{t-1} ⊙ f(1 - f),  δ_g = dc ⊙ i ⊙ (1 - g²)
      B8  dW_hh += h_{t-1}ᵀ δ,  dW_xh += xᵀ δ,  db_h += Σ_b δ      (δ = [δ_i|δ_f|δ_g|δ_o])
      B9  dh_next = δ W_hhᵀ,  dc_next = dc ⊙ f                       (into step t-1)

Full BPTT only (no truncation): the dropout masks m, if any, are given.
"""
import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def suffix(layer):
    return "" if layer == 0 else f"_l{layer}"


def lstm_loss_and_grads(params, X, Y, state=None, masks=None):
    """The loss (F6), its gradients (B1-B9) and the last state of an LSTM stack.

    params: the model's parameters by name (cells.py's layout, any dtype: read as float64);
    X, Y: (B, T) int token ids; state: (L, 2, B, H) the h and c each layer starts from, or None
    for zeros; masks: (T, L, B, H) the dropout masks m (entries 0 or 1/(1-P)), or None.
    -> (loss, grads by name in float64, last state (L, 2, B, H)).
    """
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    B, T = X.shape
    H = p["W_hh"].shape[0]
    L = sum(1 for name in p if name.startswith("W_hh"))
    h = [np.zeros((B, H)) if state is None else np.array(state[l, 0], np.float64) for l in range(L)]
    c = [np.zeros((B, H)) if state is None else np.array(state[l, 1], np.float64) for l in range(L)]
    mask = (lambda t, l: 1.0) if masks is None else (lambda t, l: masks[t, l])
    tape = []  # per step: per layer (x, h_prev, c_prev, i, f, g, o, c), then the output's (top, p)
    loss = 0.0
    for t in range(T):
        layers = []
        for l in range(L):
            x = X[:, t] if l == 0 else h[l - 1] * mask(t, l - 1)
            xw = p["W_xh"][x] if l == 0 else x @ p[f"W_xh{suffix(l)}"]
            a = xw + p[f"b_h{suffix(l)}"] + h[l] @ p[f"W_hh{suffix(l)}"]               # F1
            i, f, o = (sigmoid(a[:, k * H:(k + 1) * H]) for k in (0, 1, 3))            # F2
            g = np.tanh(a[:, 2 * H:3 * H])
            c_new = f * c[l] + i * g                                                   # F3
            h_new = o * np.tanh(c_new)                                                 # F4
            layers.append((x, h[l], c[l], i, f, g, o, c_new))
            h[l], c[l] = h_new, c_new
        top = h[L - 1] * mask(t, L - 1)
        logits = top @ p["W_hq"] + p["b_q"]                                            # F5
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        loss -= np.log(probs[np.arange(B), Y[:, t]]).sum() / X.size                    # F6
        tape.append((layers, top, probs))

    grads = {name: np.zeros_like(value) for name, value in p.items()}
    dh_next = [np.zeros((B, H)) for _ in range(L)]
    dc_next = [np.zeros((B, H)) for _ in range(L)]
    for t in range(T - 1, -1, -1):
        layers, top, probs = tape[t]
        d_logits = probs.copy()
        d_logits[np.arange(B), Y[:, t]] -= 1
        d_logits /= X.size                                                             # B1
        grads["W_hq"] += top.T @ d_logits                                              # B2
        grads["b_q"] += d_logits.sum(axis=0)
        from_above = (d_logits @ p["W_hq"].T) * mask(t, L - 1)                         # B3
        for l in range(L - 1, -1, -1):
            x, h_prev, c_prev, i, f, g, o, c_t = layers[l]
            dh = from_above + dh_next[l]                                               # B4
            dc = dc_next[l] + dh * o * (1 - np.tanh(c_t) ** 2)                         # B5
            d_o = dh * np.tanh(c_t) * o * (1 - o)                                      # B6
            d_i, d_f, d_g = dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g)  # B7
            delta = np.concatenate([d_i, d_f, d_g, d_o], axis=1)
            grads[f"W_hh{suffix(l)}"] += h_prev.T @ delta                              # B8
            grads[f"b_h{suffix(l)}"] += delta.sum(axis=0)
            if l == 0:
                np.add.at(grads["W_xh"], x, delta)
            else:
                grads[f"W_xh{suffix(l)}"] += x.T @ delta
                from_above = (delta @ p[f"W_xh{suffix(l)}"].T) * mask(t, l - 1)        # B3, the layer below
            dh_next[l], dc_next[l] = delta @ p[f"W_hh{suffix(l)}"].T, dc * f           # B9
    last = np.stack([np.stack([h[l], c[l]]) for l in range(L)])
    return loss, grads, last
