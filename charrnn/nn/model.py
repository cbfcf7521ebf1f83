"""The recurrent language model of d2l §9.7 and §10.1-10.3 and its exact backward pass through
time, in NumPy: a stack of rnn, GRU or LSTM layers (cells.py: the cells and the parameter
layout) under one output layer.

Row-vector convention, as in the textbook's code (eq. 9.7.1 made concrete), for L layers:

    h_t^(0..L-1) = cell(x_t^(l), state_{t-1}^(l)),  x_t^(0) = one-hot token,
    x_t^(l) = m_t^(l-1) ⊙ h_t^(l-1) (l >= 1),  o_t = (m_t^(L-1) ⊙ h_t^(L-1)) W_hq + b_q

and the loss of eq. 9.7.2: the mean over batch and steps of the natural-log cross-entropy of
softmax(o_t) against y_t. A one-layer rnn is h_t = φ(x_t W_xh + h_{t-1} W_hh + b_h), today's
network bit for bit.

Dropout (Zaremba et al. 2014, as char-rnn): m_t^(l) is inverted dropout, entries 0 with
probability P, else 1/(1-P), on each layer's output h_t^(l) where it feeds the next layer or the
output layer, never on the recurrent path (state_{t-1} -> state_t). Only loss_and_grads with a
`dropout_rng` drops (training); forward_loss, step and sample.stepper use m = 1. The masks of a window
are drawn time-major, dropout_rng.random((T, L, B, H)) >= P, so a window's masks are the
concatenation of its segments' (recompute.py relies on it).

Truncation (d2l §9.7.1) acts on the recurrent path of the whole state. The state of layer l is
h^(l) (rnn, gru) or (h^(l), c^(l)) (lstm). With ξ_t the per-step, per-row scale of path_scales
(1 kept, 0 cut, randomized 0 or 1/P), the backward pass carries

    dL/dstate_{t-1}^(l) |_through step t = ξ_t · ∂state_t^(l)/∂state_{t-1}^(l)ᵀ dL/dstate_t^(l)

for h and c of every layer l with the same ξ_t. Every path from a loss term at step s >= t to a
quantity before step t crosses from step t to t-1 exactly once, in one layer, so it is scaled by
ξ_t exactly once: a cut at step t stops all gradient from steps >= t reaching steps < t, and
randomized:P keeps the estimate unbiased (eq. 9.7.9). The gradient between layers at the same
step (x_t^(l) = m ⊙ h_t^(l-1)) is never truncated.

State format: `state` holds every layer's recurrent state as an array (L, S, B, H) with S = 1
(rnn, gru: h) or 2 (lstm: h, c), except that a model with L·S = 1 (a one-layer rnn or gru)
takes and returns today's (B, H). `None` means zeros. model.state_shape(B) gives the shape.
The state is a constant: no gradient flows into it.

Internally everything is time-major: a window of T steps and batch B lives in contiguous
(T, B, ·) arrays held in a per-model Workspace reused while (B, T) repeats. The only Python
loops run over time and layers, one forward and one backward (backward_segment, for every cell
and truncation); each step of a layer is one fused product with W_hh for all its gates, and the
input part of a layer is one product (or a row lookup) for all steps at once. The pieces work on
a segment that starts from any state and takes the gradient flowing in from after its end, so
that a recomputing (checkpointed) backward pass can reuse them.

Public API beyond loss_and_grads/forward_loss/step (used by recompute.py, analysis.py, sample.py):
check_batch, workspace, forward_segment, softmax_cross_entropy, output_grads, backward_segment,
segment_grads, final_state, last_state, prepare, input_part, check_dropout_rng, with_dropout,
state_shape, param_shapes. sample.stepper is step() for one row at generation speed.
"""
import copy

import numpy as np

from charrnn.nn import fused
from charrnn.nn.cells import (CELL_CLASSES, TINY_DELTA, flush_tiny, init_params, layer_suffix, network_problem,
                              param_shapes, token_grads)
from charrnn.base.checks import check_int
from charrnn.base.errors import CharrnnError
from charrnn.nn.recompute import DEFAULT_MEMORY_BUDGET, choose_bptt_memory, loss_and_grads_recompute
from charrnn.nn.truncation import CUT, KEEP, path_scales, with_resets
from charrnn.nn.workspace import Workspace, WorkingWeights

DTYPES = ("float32", "float64")
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
EVAL_CHUNK_STEPS = 256  # forward-only evaluation runs long windows in chunks of this many steps,
FORWARD_MEMORY_BUDGET = 16 << 20  # or fewer, so that their buffers stay within this many bytes
MAX_WORKSPACES = 4


class RNNLM:
    """Character-level recurrent language model: `cell` "rnn", "gru" or "lstm", `num_layers`
    stacked, inverted `dropout` P between layers and before the output layer while training.
    params: see cells.py for names and shapes (a one-layer rnn: "W_xh" (V,H), "W_hh" (H,H),
    "b_h" (H,), "W_hq" (H,V), "b_q" (V,)), updated in place by the optimizers."""

    def __init__(self, vocab_size, num_hiddens, activation="tanh", dtype="float32", seed=0,
                 cell="rnn", num_layers=1, dropout=0.0, kernel="auto"):
        self.vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        self.num_hiddens = check_int(num_hiddens, "num_hiddens", minimum=1)
        problem = network_problem(cell, num_layers, dropout, activation)
        if problem:
            raise CharrnnError(problem[1])
        self.num_layers = int(num_layers)
        self.activation, self.cell, self.dropout = activation, cell, float(dropout)
        self.dtype = _check_dtype(dtype)
        check_int(seed, "seed", minimum=0)
        cell_class = CELL_CLASSES[cell]
        self.gates, self.num_states = cell_class.gates, cell_class.num_states
        self.cells = [cell_class(self.num_hiddens, activation, self.dtype) for _ in range(self.num_layers)]
        self.params = init_params(cell, self.param_shapes(), self.num_hiddens,
                                  np.random.default_rng(seed), self.dtype)
        self._working = None if cell == "rnn" else WorkingWeights(self)
        self.kernel = fused.check_kernel(kernel)  # the time loop's steps: charrnn.nn.fused
        self._workspaces = {}
        self._forward_ws = None

    def param_shapes(self) -> dict:
        """Parameter name -> shape, in the order of cells.param_shapes (layers, then W_hq, b_q)."""
        return param_shapes(self.cell, self.vocab_size, self.num_hiddens, self.num_layers)

    def with_dropout(self, dropout) -> "RNNLM":
        """This network with another dropout probability, sharing these parameters (the same
        arrays, no copy): with_dropout(0) differentiates the network as evaluation runs it."""
        problem = network_problem(self.cell, self.num_layers, dropout, self.activation)
        if problem:
            raise CharrnnError(problem[1])
        other = copy.copy(self)
        other.dropout, other._workspaces, other._forward_ws = float(dropout), {}, None
        return other

    def state_shape(self, batch_size) -> tuple:
        """(B, H) for a one-layer rnn or gru, else (num_layers, S, B, H), S = 2 for the lstm."""
        if self.num_layers * self.num_states == 1:
            return (batch_size, self.num_hiddens)
        return (self.num_layers, self.num_states, batch_size, self.num_hiddens)

    # ---------------------------------------------------------------- public API

    def loss_and_grads(self, X, Y, state=None, truncation="full", rng=None, dropout_rng=None,
                       bptt_memory="store", memory_budget_bytes=DEFAULT_MEMORY_BUDGET, resets=None) -> tuple:
        """Mean cross-entropy (eq. 9.7.2) and its gradient by BPTT -> (loss, grads, state).

        X, Y: (batch, num_steps) int; state: see the module docstring (None: zeros), a
        constant. truncation: "full" (every term of eq. 9.7.7), "regular:K" or "randomized:P"
        (see `path_scales`; rng draws ξ). dropout_rng: a numpy Generator drawing the dropout
        masks, required when the model's dropout > 0 (unused otherwise). grads: a fresh dict
        shaped like params; state: a copy of the last state. resets: None (one stream per row),
        or (batch, num_steps) bool, True where a row starts a new record at that step: its state
        is zero before the step and no gradient crosses back over it (charrnn.data.records).

        bptt_memory: "store" keeps every state of the window for the backward pass (below);
        "recompute" keeps one per segment of ~√T steps and recomputes the rest
        (recompute.loss_and_grads_recompute: the same terms in O(√T) memory); "auto"
        recomputes when the stored buffers would exceed memory_budget_bytes (choose_bptt_memory).
        """
        shape = np.shape(X)  # the call chosen checks X, Y and state; a bad X goes to the stored one
        if bptt_memory != "store" and len(shape) == 2 and \
                choose_bptt_memory(bptt_memory, self, *shape, memory_budget_bytes) == "recompute":
            return loss_and_grads_recompute(self, X, Y, state, truncation=truncation, rng=rng,
                                            dropout_rng=dropout_rng, resets=resets)
        X, Y, state0 = self.check_batch(X, Y, state)
        B, T = X.shape
        resets = self.check_resets(resets, X.shape)
        scales = with_resets(path_scales(truncation, T, B, rng, self.dtype), resets, self.dtype)
        dropout_rng = self.check_dropout_rng(dropout_rng)
        X_tm = X.T
        ws = self.workspace(B, T)
        self.forward_segment(X_tm, state0, ws, dropout_rng, resets)
        ws.for_backward().carry.fill(0)
        loss_sum, grads = self.segment_grads(X_tm, Y.T, scales, ws.carry, X.size, ws)
        return loss_sum / X.size, grads, self.final_state(ws)

    def forward_loss(self, X, Y, state=None, resets=None) -> tuple:
        """Forward only, no dropout -> (loss_sum: float, count: int, state). resets: as in
        loss_and_grads.

        loss_sum is the summed cross-entropy in nats over count = batch * num_steps tokens;
        windows longer than EVAL_CHUNK_STEPS steps, or than fit in FORWARD_MEMORY_BUDGET, run in
        chunks, so memory does not grow with them.
        """
        X, Y, state = self.check_batch(X, Y, state)
        B, T = X.shape
        resets = self.check_resets(resets, X.shape)
        per_step = Workspace.forward_bytes_per_step(self, B)
        chunk = max(1, min(EVAL_CHUNK_STEPS, FORWARD_MEMORY_BUDGET // per_step))
        loss_sum = 0.0
        for start in range(0, T, chunk):
            X_tm = X[:, start:start + chunk].T
            ws = self._forward_workspace(B, len(X_tm))
            self.forward_segment(X_tm, state, ws, None, None if resets is None else resets[start:start + chunk])
            loss_sum += self.softmax_cross_entropy(Y[:, start:start + len(X_tm)].T.reshape(-1), ws)
            state = self.last_state(ws)
        return loss_sum, X.size, self.final_state(ws)

    def step(self, token_ids, state=None) -> tuple:
        """One step of the network: token_ids (batch,) int -> (logits (batch, V), state)."""
        ids = self._check_ids("token_ids", token_ids, ndim=1)
        state = self._check_state(state, len(ids))
        ws = self.workspace(len(ids), 1)
        self.forward_segment(ids[None, :], state, ws)
        return self.logits(ws.top[0]), self.final_state(ws)

    # ---------------------------------------------------------------- segment pieces (public)

    def workspace(self, batch_size, num_steps) -> Workspace:
        """The model's cached Workspace for (batch_size, num_steps), made on first use."""
        key = (batch_size, num_steps)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= MAX_WORKSPACES:
                self._workspaces.clear()
            ws = Workspace(self, batch_size, num_steps)
            self._workspaces[key] = ws
        return ws

    def prepare(self, ws) -> None:
        """This call's tables from the parameters: layer 0's lookup (W_xh + b_h) ⊙ s, gated
        cells' working W_hh ⊙ s, W_xh ⊙ s, b_h ⊙ s (s halves the σ blocks, exactly), the
        cells' views of the parameters."""
        p = self.params
        for l, (cell, layer) in enumerate(zip(self.cells, ws.layers)):
            suffix, scale = layer_suffix(l), cell.gate_scale
            layer.b_hn = p.get(f"b_hn{suffix}")
            if l == 0:
                np.add(p["W_xh"], p["b_h"], out=ws.xb)
                if scale is not None:
                    ws.xb *= scale
            if scale is None:
                layer.W_hh = p[f"W_hh{suffix}"]
                continue
            work = self._working
            layer.W_hh = np.multiply(p[f"W_hh{suffix}"], scale, out=work.W_hh[l])
            if l > 0:
                np.multiply(p[f"W_xh{suffix}"], scale, out=work.W_xh[l - 1])
                np.multiply(p[f"b_h{suffix}"], scale, out=work.b_x[l - 1])

    def forward_segment(self, X_tm, state, ws, dropout_rng=None, resets=None) -> None:
        """Run the network over X_tm: (T, B) int from `state` ((L, S, B, H) or None for zeros):
        fills ws (states h_0..h_T of every layer, gates, the output layer's input ws.top).
        With dropout > 0 and a dropout_rng, draws this segment's masks from it (training);
        else no dropout. resets: None, or (T, B) bool (time-major): row b's state is zero
        before step t where resets[t, b] (state_{t-1} <- ρ_t ⊙ state_{t-1}, charrnn.data.records)."""
        self.prepare(ws)
        ws.set_state(state)
        ws.set_resets(resets)
        training = self.dropout > 0 and dropout_rng is not None
        ws.use_dropout(training)
        if training:  # step by step: the same numbers as one draw (T, L, B, H), in a fraction of the memory
            for masks_t in ws.masks:
                np.greater_equal(dropout_rng.random(masks_t.shape), self.dropout, out=masks_t)
            ws.masks *= self.dtype.type(1.0 / (1.0 - self.dropout))
        self._run_forward(X_tm, ws)

    def _run_forward(self, X_tm, ws) -> None:
        """forward_segment after its set-up: layer by layer, the input part of all steps at once,
        then the cell's steps (the recurrence)."""
        T, use_fused = len(X_tm), fused.uses_fused(self.kernel, self.dtype, self.cell)
        for l, (cell, layer) in enumerate(zip(self.cells, ws.layers)):
            self.input_part(X_tm, ws, l)
            if use_fused and ws.resets is None:  # record resets run NumPy's steps (ws.mask_prev)
                fused.forward_steps(cell, layer, T)
            elif ws.resets is None:
                forward_step = cell.forward_step
                for t in range(T):
                    forward_step(layer, t)
            else:
                forward_step = cell.forward_step
                for t in range(T):
                    ws.mask_prev(layer, t)
                    forward_step(layer, t)
            if ws.training:
                np.multiply(layer.hs[1:], ws.masks[:, l], out=ws.dropped[l])

    def input_part(self, X_tm, ws, l) -> None:
        """Layer l's x_t W_xh + b_h for every step into its A: a row of the table for layer 0,
        one product with the (dropped) states of layer l-1 for the others."""
        layer = ws.layers[l]
        if l == 0:
            ws.xb.take(X_tm, axis=0, out=layer.A, mode="clip")
            return
        A = layer.A.reshape(X_tm.size, -1)
        W_xh, b_x = self._input_weights(l)
        np.matmul(ws.inputs[l - 1].reshape(X_tm.size, -1), W_xh, out=A)
        A += b_x

    def softmax_cross_entropy(self, y, ws) -> float:
        """Σ_i -log softmax(o_i)[y_i] over all N = T*B outputs (the sum in eq. 9.7.2; F5-F6 of
        reference.py), as a float
        summed in float64; leaves softmax(o) in ws.logits, stored (V, N) so that every reduction
        over the vocabulary runs along contiguous rows. y: (N,) int, time-major."""
        logits = ws.logits
        np.matmul(self.params["W_hq"].T, ws.top.reshape(len(y), -1).T, out=logits)
        logits += self.params["b_q"][:, None]
        logits -= logits.max(axis=0)
        target = logits.reshape(-1)[_target_index(y, ws)]
        np.exp(logits, out=logits)
        total = logits.sum(axis=0)
        logits /= total
        return float(np.sum(np.log(total) - target, dtype=np.float64))

    def output_grads(self, y, scale, ws) -> tuple:
        """After softmax_cross_entropy (reference.py's B1-B3): dL/do = scale * (softmax - onehot(y))
        (eq. 9.7.12), formed in place
        in ws.logits -> (dW_hq (H,V), db_q (V,)) (eq. 9.7.13); fills ws.dH with the outputs' share
        of dL/dh_t of the top layer, (dL/do_t W_hqᵀ) ⊙ m_t."""
        d_logits = ws.for_backward().logits
        d_logits.reshape(-1)[_target_index(y, ws)] -= 1
        d_logits *= scale
        np.matmul(d_logits.T, self.params["W_hq"].T, out=ws.dH.reshape(len(y), -1))
        if ws.training:
            ws.dH *= ws.masks[:, -1]
        dW_hq = np.ascontiguousarray((d_logits @ ws.top.reshape(len(y), -1)).T)  # BLAS ~1.3x faster
        return dW_hq, d_logits.sum(axis=1)

    def backward_segment(self, X_tm, scales, carry, ws) -> dict:
        """Backward through time and layers over the segment (eqs. 9.7.15-9.7.16 as a recurrence):
        the one BPTT loop, for every cell and truncation -> the recurrent layers' gradients.

        On entry ws.dH holds the output layer's share of dL/dh_t of the top layer; carry
        (L, S, B, H) the gradient reaching each layer's last state from after the segment. Top
        layer first, each step's cell.backward_step turns dh (+ dh_next, dc_next) into δ_t and
        the gradient into the previous state, which scales[t] keeps, cuts or scales by ξ_t (the
        same for h and c of every layer). Then the layer's weight gradients, dW_hh = Σ_t
        h_{t-1}ᵀ δ_t as one product, and the gradient into the layer below (δ_t W_xhᵀ) ⊙ m_t
        (for the LSTM, reference.py's B4-B9 and B3 between layers).
        On exit carry holds the gradient reaching the segment's start state (zero if scales[0]
        is CUT). A saturating cell's float32 δ below 2^-63 is set to zero after its steps
        (cells.flush_tiny: such tiny numbers make the weight products ~40x slower).
        """
        T, B = X_tm.shape
        ws.for_backward()
        for l, layer in enumerate(ws.layers):
            W_hh = self.params[f"W_hh{layer_suffix(l)}"]
            if self._working is None:  # the rnn: the view, whose products are today's to the last bit
                layer.W_hh_T = W_hh.T
            else:  # a contiguous W_hhᵀ runs the backward products ~1.5x faster than the view
                layer.W_hh_T = self._working.W_hh_T[l]
                np.copyto(layer.W_hh_T, W_hh.T)
        grads, use_fused = {}, fused.uses_fused(self.kernel, self.dtype, self.cell)
        for l in range(self.num_layers - 1, -1, -1):
            cell, layer, d_state = self.cells[l], ws.layers[l], carry[l]
            if use_fused and ws.resets is None:  # the same steps, prepare_backward and flush_tiny compiled
                fused.backward_steps(cell, layer, scales, d_state,
                                     TINY_DELTA.get(self.dtype.name) if cell.saturates else None)
            else:
                self._backward_steps(cell, layer, scales, d_state, ws)
            suffix = layer_suffix(l)
            dA = ws.dA.reshape(T * B, -1)
            grads[f"W_hh{suffix}"] = layer.hp.reshape(T * B, -1).T @ dA  # h'_{t-1} = ρ_t ⊙ h_{t-1}
            for name, grad in cell.finish_backward(layer).items():
                grads[name + suffix] = grad
            if l == 0:
                grads["W_xh"], grads["b_h"] = token_grads(X_tm, ws.dA, ws.M, self.vocab_size)
                continue
            grads[f"W_xh{suffix}"] = ws.inputs[l - 1].reshape(T * B, -1).T @ dA
            grads[f"b_h{suffix}"] = dA.sum(axis=0)
            below = ws.M.reshape(-1)[:ws.dH.size].reshape(T * B, -1)  # M is free here
            np.matmul(dA, self.params[f"W_xh{suffix}"].T, out=below)
            if not ws.training:
                np.copyto(ws.dH.reshape(T * B, -1), below)
            else:
                np.multiply(below.reshape(ws.dH.shape), ws.masks[:, l - 1], out=ws.dH)
        return grads

    @staticmethod
    def _backward_steps(cell, layer, scales, d_state, ws) -> None:
        """backward_segment's time loop in cells.py's readable steps: T backward steps of one
        layer, last to first, the path scaled by scales[t]; then flush_tiny of a saturating cell."""
        cell.prepare_backward(layer)
        backward_step, d_views = cell.backward_step, tuple(d_state)  # (dh_next[, dc_next])
        for t in range(len(scales) - 1, -1, -1):
            scale = scales[t]
            backward_step(layer, t, d_views, scale is not CUT)
            if scale is CUT:
                d_state.fill(0)
            elif scale is not KEEP:
                d_state *= scale
        if cell.saturates:
            flush_tiny(ws.dA, ws.M)  # M is free until the next layer's prepare_backward

    def segment_grads(self, X_tm, Y_tm, scales, carry, count, ws) -> tuple:
        """Loss and gradients of a segment whose forward pass ws already holds -> (loss_sum, grads).

        X_tm, Y_tm: (T, B) int; scales: path_scales for its steps; carry as in backward_segment;
        count: tokens of the whole window, whose mean loss is differentiated (eq. 9.7.2).
        loss_sum: this segment's summed cross-entropy; grads: its share, keyed as params.
        """
        y = Y_tm.reshape(-1)
        loss_sum = self.softmax_cross_entropy(y, ws)
        dW_hq, db_q = self.output_grads(y, 1.0 / count, ws)
        grads = self.backward_segment(X_tm, scales, carry, ws)
        grads["W_hq"], grads["b_q"] = dW_hq, db_q
        return loss_sum, {name: grads[name] for name in self.params}

    @staticmethod
    def last_state(ws) -> np.ndarray:
        """A copy of the segment's last state, (L, S, B, H) (Workspace.last_state)."""
        return ws.last_state()

    def final_state(self, ws) -> np.ndarray:
        """last_state in the public format (module docstring): (B, H) when L·S = 1."""
        return ws.last_state().reshape(self.state_shape(ws.hs.shape[2]))

    def logits(self, h, out=None) -> np.ndarray:
        """o = h W_hq + b_q (eq. 9.7.1's output): h (B, H) -> (B, V), into `out` if given."""
        out = np.matmul(h, self.params["W_hq"], out=out)
        out += self.params["b_q"]
        return out

    def check_dropout_rng(self, dropout_rng):
        """The Generator a training call draws dropout masks from -> it, or None without dropout;
        a model with dropout and no Generator -> CharrnnError."""
        if self.dropout == 0:
            return None
        if not isinstance(dropout_rng, np.random.Generator):
            raise CharrnnError(f"a model with dropout {self.dropout:g} needs dropout_rng, a "
                               f"numpy.random.Generator, to train; got {dropout_rng!r}")
        return dropout_rng

    @staticmethod
    def check_resets(resets, shape):
        """resets (batch, num_steps) bool or None -> time-major (num_steps, batch) bool, or None
        when there are none."""
        if resets is None:
            return None
        resets = np.asarray(resets)
        if resets.shape != shape or resets.dtype != bool:
            raise CharrnnError(f"resets must be a {shape} array of bools, got {resets.dtype} {resets.shape}")
        return resets.T if resets.any() else None

    def check_batch(self, X, Y, state) -> tuple:
        """Validate a minibatch -> (X, Y, state as (L, S, B, H) or None)."""
        X = self._check_ids("X", X, ndim=2)
        Y = self._check_ids("Y", Y, ndim=2)
        if X.shape != Y.shape:
            raise CharrnnError(f"X and Y must have the same shape, got {X.shape} and {Y.shape}")
        return X, Y, self._check_state(state, X.shape[0])

    # ---------------------------------------------------------------- helpers

    def _forward_workspace(self, batch_size, num_steps) -> Workspace:
        """forward_loss's Workspace, apart from the cache of the training shapes: one, replaced
        when the shape changes (the chunks of long windows vary and can be large)."""
        ws = self._forward_ws
        if ws is None or ws.hs.shape[1:3] != (num_steps + 1, batch_size):
            self._forward_ws = None  # freed before the next is made
            ws = self._forward_ws = Workspace(self, batch_size, num_steps)
        return ws

    def _input_weights(self, l) -> tuple:
        """Layer l >= 1's (W_xh, b_h) for the forward pass (working copies for gated cells)."""
        if self._working is None:
            return self.params[f"W_xh_l{l}"], self.params[f"b_h_l{l}"]
        return self._working.W_xh[l - 1], self._working.b_x[l - 1]

    def _check_ids(self, name, ids, ndim) -> np.ndarray:
        ids = np.asarray(ids)
        shape = "(batch, num_steps)" if ndim == 2 else "(batch,)"
        if ids.ndim != ndim or ids.size == 0:
            raise CharrnnError(f"{name} must be a non-empty {shape} array, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise CharrnnError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.view(f"u{ids.itemsize}").max() >= self.vocab_size:  # one pass: read unsigned,
            low, high = ids.min(), ids.max()                          # a negative id is huge
            bad = low if low < 0 else high
            raise CharrnnError(f"{name} holds token id {bad}, outside [0, {self.vocab_size})")
        return ids

    def _check_state(self, state, batch_size):
        """state in the public format -> (L, S, B, H) in the model's dtype, or None."""
        if state is None:
            return None
        state = np.asarray(state)
        shape = self.state_shape(batch_size)
        if state.shape != shape:
            raise CharrnnError(f"state must have shape {shape}, got {state.shape}")
        internal = (self.num_layers, self.num_states, batch_size, self.num_hiddens)
        return state.astype(self.dtype, copy=False).reshape(internal)


def _target_index(y, ws) -> np.ndarray:
    """Flat indices of the targets y (N,) in the (V, N) logits."""
    return np.multiply(y, len(y), dtype=np.intp) + ws.rows


def _check_dtype(dtype) -> np.dtype:
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise CharrnnError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved
