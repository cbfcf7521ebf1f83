"""The buffers the cells' steps work in: a Workspace per (batch, steps) shape of a model, a
Layer (the views one layer's steps read and write), and a gated model's WorkingWeights.
Everything is time-major, (T, B, ·), allocated once and reused: the forward buffers at once,
the backward ones on the first backward call, the dropout ones on the first training call.
"""
import numpy as np


class Layer:
    """What a cell's steps read and write for one layer over a window of T steps, batch B: views
    into the model's workspace, and this call's weights.

    hs (T+1, B, H): h_0..h_T.  cs (T+1, B, H): c_0..c_T (lstm, else None).
    A (T, B, G·H): the input part x_t W_xh + b_h (σ blocks halved), then the activated gates
    (rnn: A is hs[1:], the pre-activation becoming h_t in place).
    aux (T, B, H): gru h W_hn + b_hn, lstm tanh c_t; after prepare_backward, a factor of the
    backward step (see the cell).  W_hh (H, G·H): working recurrent matrix (σ blocks halved);
    W_hh_T: the parameter W_hhᵀ; b_hn: the GRU's.  Shared by all layers: dA (T, B, G·H) δ_t,
    dL/d(pre-activation), recurrent side (rnn: dA is dH); dH (T, B, H) the gradient reaching h_t
    from above (output layer or next layer), made the total dL/dh_t by the backward steps;
    M (T, B, G·H) per-step factors of the backward step; tmp (B, G·H), tmp_h (B, H) scratch.
    hp (T, B, H), cp (lstm): the previous state as step t reads it, ρ_t ⊙ h_{t-1} (and
    ρ_t ⊙ c_{t-1}) with ρ_t the reset mask of records (charrnn.data.records); without resets they are
    hs[:-1] and cs[:-1] themselves, the same views, so the numbers are those of a plain stream.
    The steps read each array X through X_t, the list of its per-step views (X_t[t] is X[t]),
    made once: indexing a list costs a fraction of making a view at every step.
    """

    def __init__(self, hs, cs, A, aux, tmp, tmp_h):
        self.hs, self.cs, self.A, self.aux, self.tmp, self.tmp_h = hs, cs, A, aux, tmp, tmp_h
        self.hs_t, self.A_t = list(hs), list(A)
        self.cs_t = None if cs is None else list(cs)
        self.use_prev(None, None)
        self.aux_t = None if aux is None else list(aux)
        self.dA = self.dH = self.M = self.dA_t = self.dH_t = self.M_t = None
        self.W_hh = self.W_hh_T = self.b_hn = None

    def use_prev(self, hp, cp) -> None:
        """The previous states the steps read: hp, cp (T, B, H) buffers, or None for hs[:-1], cs[:-1]."""
        self.hp = self.hs[:-1] if hp is None else hp
        self.cp = (None if self.cs is None else self.cs[:-1]) if cp is None else cp
        self.hp_t = self.hs_t if hp is None else list(hp)
        self.cp_t = self.cs_t if cp is None else list(cp)

    def set_backward(self, dA, dH, M) -> None:
        """Attach the backward buffers (shared by all layers)."""
        self.dA, self.dH, self.M = dA, dH, M
        self.dA_t, self.dH_t, self.M_t = list(dA), list(dH), list(M)


class Workspace:
    """Buffers for one (batch_size, num_steps) shape of one model, reused across calls.

    Forward: hs (L, T+1, B, H) hidden states, hs[l, 0] = h_0; cs the same for the LSTM's c,
    else None; A (L, T, B, G·H) gated cells' input parts, then gates (rnn: None, hs[l, 1:] plays
    A); aux (L, T, B, H) gated cells' per-step extras; logits (V, T*B); tmp (B, G·H), tmp_h
    (B, H) (gated); xb (V, G·H) layer 0's x W_xh + b_h table; rows (T*B,) = arange. With dropout, made by the first
    training call: masks (T, L, B, H) the m_t^(l), dropped (L, T, B, H) = m ⊙ h_t^(l).
    Backward, made by the first backward call (`for_backward`), so that forward-only work holds
    none of them: M (T, B, G·H) backward factors, then sorted δ rows; dH (T, B, H) dL/dh_t of
    the layer being differentiated; dA (T, B, G·H) δ_t (rnn: dA is dH); carry (L, S, B, H).
    layers: a Layer per layer, viewing these.
    """

    def __init__(self, model, batch_size, num_steps):
        B, T, H, V, L = batch_size, num_steps, model.num_hiddens, model.vocab_size, model.num_layers
        G, S, dtype, gated = model.gates, model.num_states, model.dtype, model.cell != "rnn"
        self.shape, self.gated, self.num_layers, self.dropout_shape = (T, B, H, G, S), gated, L, (T, L, B, H)
        self.hs = np.empty((L, T + 1, B, H), dtype)
        self.cs = np.empty((L, T + 1, B, H), dtype) if S == 2 else None
        self.A = np.empty((L, T, B, G * H), dtype) if gated else None
        self.aux = np.empty((L, T, B, H), dtype) if gated else None
        self.logits = np.empty((V, T * B), dtype)
        self.tmp = np.empty((B, G * H), dtype)
        self.tmp_h = np.empty((B, H), dtype) if gated else None
        self.xb = np.empty((V, G * H), dtype)
        self.rows = np.arange(num_steps * batch_size)
        self.masks = self.dropped = None
        self.M = self.dH = self.dA = self.carry = None
        self.prev = self.prev_c = self.resets = None  # made by the first call with record resets
        self.training = False
        self.layers = [Layer(self.hs[l], None if S == 1 else self.cs[l],
                             self.hs[l, 1:] if not gated else self.A[l], None if not gated else self.aux[l],
                             self.tmp, self.tmp_h) for l in range(L)]
        self.inputs = [self.hs[l, 1:] for l in range(L)]  # what layer l+1 / the output reads
        self.top = self.inputs[-1]

    def for_backward(self) -> "Workspace":
        """Make the backward buffers on first use -> self."""
        if self.M is None:
            (T, B, H, G, S), L, dtype = self.shape, self.num_layers, self.hs.dtype
            self.M = np.empty((T, B, G * H), dtype)
            self.dH = np.empty((T, B, H), dtype)
            self.dA = np.empty((T, B, G * H), dtype) if self.gated else self.dH
            self.carry = np.empty((L, S, B, H), dtype)
            for layer in self.layers:
                layer.set_backward(self.dA, self.dH, self.M)
        return self

    def use_dropout(self, training) -> None:
        """Point the inputs of layers 1.. and of the output layer at the dropped states (training)
        or at the states themselves."""
        if training and self.masks is None:
            self.masks = np.empty(self.dropout_shape, self.hs.dtype)
            T, L, B, H = self.dropout_shape
            self.dropped = np.empty((L, T, B, H), self.hs.dtype)
        self.training = training
        self.inputs = [self.dropped[l] if training else self.hs[l, 1:] for l in range(self.num_layers)]
        self.top = self.inputs[-1]

    def set_resets(self, resets) -> None:
        """Record boundaries of this call: resets (T, B) bool, True where row b starts a new record
        at step t (its state before step t is zero), or None. Points each layer's previous states
        at the masked buffers hp, cp (made on first use), or back at hs[:-1], cs[:-1]."""
        if resets is None:
            if self.resets is not None:
                for layer in self.layers:
                    layer.use_prev(None, None)
            self.resets = None
            return
        (T, B, H, G, S), L, dtype = self.shape, self.num_layers, self.hs.dtype
        if self.prev is None:
            self.prev = np.empty((L, T, B, H), dtype)
            self.prev_c = np.empty((L, T, B, H), dtype) if S == 2 else None
            self.keep = np.empty((T, B, 1), dtype)
        np.logical_not(resets, out=self.keep[..., 0], casting="unsafe")
        if self.resets is None:
            for l, layer in enumerate(self.layers):
                layer.use_prev(self.prev[l], None if S == 1 else self.prev_c[l])
        self.resets = resets

    def mask_prev(self, layer, t) -> None:
        """hp[t] = ρ_t ⊙ hs[t] (and cp[t] = ρ_t ⊙ cs[t]) of a layer, before its step t: the reset
        of the rows that start a record at step t. ×1 keeps an entry exactly."""
        keep = self.keep[t]
        np.multiply(layer.hs_t[t], keep, out=layer.hp_t[t])
        if layer.cs is not None:
            np.multiply(layer.cs_t[t], keep, out=layer.cp_t[t])

    def set_state(self, state) -> None:
        """h_0 (and c_0) of every layer from state (L, S, B, H), or zeros when None."""
        if state is None:
            self.hs[:, 0].fill(0)
            if self.cs is not None:
                self.cs[:, 0].fill(0)
            return
        self.hs[:, 0] = state[:, 0]
        if self.cs is not None:
            self.cs[:, 0] = state[:, 1]

    def last_state(self) -> np.ndarray:
        """A copy of the last state of the window, (L, S, B, H)."""
        T, B, H, G, S = self.shape
        state = np.empty((self.num_layers, S, B, H), self.hs.dtype)
        state[:, 0] = self.hs[:, -1]
        if S == 2:
            state[:, 1] = self.cs[:, -1]
        return state

    @staticmethod
    def forward_bytes_per_step(model, batch_size) -> int:
        """Bytes the forward-only buffers grow by per step of the window (no dropout)."""
        H, L, G = model.num_hiddens, model.num_layers, model.gates
        floats = L * model.num_states * H + model.vocab_size
        if model.cell != "rnn":
            floats += L * (G * H + H)
        return batch_size * (model.dtype.itemsize * floats + 8)


class WorkingWeights:
    """A gated model's working copies of its recurrent weights, refreshed by every call and held
    once by the model: W_hh (L, H, G·H), W_xh and b_x for layers 1.. ((L-1, H, G·H), (L-1, G·H))
    with the σ blocks halved, and W_hh_T (L, G·H, H), W_hhᵀ contiguous for the backward products."""

    def __init__(self, model):
        H, L, GH, dtype = model.num_hiddens, model.num_layers, model.gates * model.num_hiddens, model.dtype
        self.W_hh = np.empty((L, H, GH), dtype)
        self.W_xh = np.empty((L - 1, H, GH), dtype)
        self.b_x = np.empty((L - 1, GH), dtype)
        self.W_hh_T = np.empty((L, GH, H), dtype)
