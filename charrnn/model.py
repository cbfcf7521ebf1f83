"""The recurrent language model of d2l §9.7 and its exact backward pass through time, in NumPy.

Row-vector convention, as in the textbook's code (eq. 9.7.1 made concrete):

    h_t = φ(x_t W_xh + h_{t-1} W_hh + b_h),    o_t = h_t W_hq + b_q,    φ = tanh or identity

with x_t one-hot (so x_t W_xh is a row lookup) and the loss of eq. 9.7.2: the mean over batch
and steps of the natural-log cross-entropy of softmax(o_t) against y_t.

Internally everything is time-major: a window of T steps and batch B lives in contiguous
(T, B, H) arrays, held in a per-model workspace that is reused while (B, T) repeats. The only
Python loops run over time, one forward and one backward; the rest is one operation over all
steps. The pieces work on a segment that starts from any h_0 and takes the gradient flowing in
from after its end, so that a recomputing (checkpointed) backward pass can reuse them.

Initialisation (the textbook's): W_xh, W_hh, W_hq ~ N(0, 0.01²), biases zero, drawn in float64
from numpy.random.default_rng(seed) in that order and then cast, so the same seed gives the
same model (and a float32 model is the rounded float64 one).
"""
import math

import numpy as np

from .checks import check_choice, check_int
from .errors import CharrnnError

ACTIVATIONS = ("tanh", "linear")
DTYPES = ("float32", "float64")
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
INIT_SCALE = 0.01
EVAL_CHUNK_STEPS = 256  # forward-only evaluation runs long windows in chunks of this many steps
MAX_WORKSPACES = 4

# Entries of a path-scale list: what happens to the gradient path h_t -> h_{t-1} at step t.
KEEP = None  # kept as it is
CUT = False  # cut: no gradient reaches h_{t-1} from step t
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
    """Per-step fate of the gradient path h_t -> h_{t-1}, for t = 0..num_steps-1 (d2l §9.7.1).

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


class Workspace:
    """Buffers for one (batch_size, num_steps) shape, reused across calls.

    hs: (T+1, B, H) hidden states, hs[0] = h_0; dA: (T, B, H) gradients (dL/dh_t, then dL/da_t);
    scratch: (T, B, H) the tanh derivative, then sorted dA rows; logits: (V, T*B);
    carry, tmp: (B, H); xb: (V, H) = W_xh + b_h; rows: (T*B,) = arange.
    """

    def __init__(self, batch_size, num_steps, num_hiddens, vocab_size, dtype):
        steps_hidden = (num_steps, batch_size, num_hiddens)
        self.hs = np.empty((num_steps + 1, batch_size, num_hiddens), dtype)
        self.dA = np.empty(steps_hidden, dtype)
        self.scratch = np.empty(steps_hidden, dtype)
        self.logits = np.empty((vocab_size, num_steps * batch_size), dtype)
        self.carry = np.empty((batch_size, num_hiddens), dtype)
        self.tmp = np.empty((batch_size, num_hiddens), dtype)
        self.xb = np.empty((vocab_size, num_hiddens), dtype)
        self.rows = np.arange(num_steps * batch_size)


class RNNLM:
    """Character-level RNN language model: params "W_xh" (V,H), "W_hh" (H,H), "b_h" (H,),
    "W_hq" (H,V), "b_q" (V,), updated in place by the optimizers."""

    def __init__(self, vocab_size, num_hiddens, activation="tanh", dtype="float32", seed=0):
        self.vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        self.num_hiddens = check_int(num_hiddens, "num_hiddens", minimum=1)
        self.activation = check_choice(activation, ACTIVATIONS, "activation")
        self.dtype = _check_dtype(dtype)
        check_int(seed, "seed", minimum=0)
        self.params = self._init_params(np.random.default_rng(seed))
        self._workspaces = {}

    def _init_params(self, rng) -> dict:
        params = {}
        for name, shape in self.param_shapes().items():
            weights = rng.standard_normal(shape) * INIT_SCALE if name[0] == "W" else np.zeros(shape)
            params[name] = weights.astype(self.dtype)
        return params

    def param_shapes(self) -> dict:
        """Parameter name -> shape, in PARAM_NAMES order (W_xh, W_hh, b_h, W_hq, b_q)."""
        V, H = self.vocab_size, self.num_hiddens
        return {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}

    # ---------------------------------------------------------------- public API

    def loss_and_grads(self, X, Y, state=None, truncation="full", rng=None) -> tuple:
        """Mean cross-entropy (eq. 9.7.2) and its gradient by BPTT -> (loss, grads, state).

        X, Y: (batch, num_steps) int; state: (batch, H) or None for zeros, a constant (no
        gradient flows into it). truncation: "full" (every term of eq. 9.7.7), "regular:K"
        or "randomized:P" (see `path_scales`; rng draws ξ). grads: a fresh dict shaped like
        params; state: a copy of the last hidden state (batch, H).
        """
        X, Y, h0 = self._check_batch(X, Y, state)
        B, T = X.shape
        scales = path_scales(truncation, T, B, rng, self.dtype)
        X_tm = X.T
        ws = self._workspace(B, T)
        self._set_initial_state(ws, h0)
        self._forward_states(X_tm, ws)
        ws.carry.fill(0)
        loss_sum, grads = self._segment_grads(X_tm, Y.T, scales, ws.carry, X.size, ws)
        return loss_sum / X.size, grads, ws.hs[-1].copy()

    def forward_loss(self, X, Y, state=None) -> tuple:
        """Forward only -> (loss_sum: float, count: int, state (batch, H)).

        loss_sum is the summed cross-entropy in nats over count = batch * num_steps tokens;
        windows longer than EVAL_CHUNK_STEPS run in chunks, so memory does not grow with them.
        """
        X, Y, h = self._check_batch(X, Y, state)
        B, T = X.shape
        loss_sum = 0.0
        for start in range(0, T, EVAL_CHUNK_STEPS):
            X_tm = X[:, start:start + EVAL_CHUNK_STEPS].T
            ws = self._workspace(B, len(X_tm))
            self._set_initial_state(ws, h)
            self._forward_states(X_tm, ws)
            loss_sum += self._softmax_cross_entropy(Y[:, start:start + len(X_tm)].T.reshape(-1), ws)
            h = ws.hs[-1]
        return loss_sum, X.size, h.copy()

    def step(self, token_ids, state=None) -> tuple:
        """One step of the recurrence: token_ids (batch,) int -> (logits (batch, V), state (batch, H))."""
        ids = self._check_ids("token_ids", token_ids, ndim=1)
        h_prev = self._check_state(state, len(ids))
        h = self.params["W_xh"][ids]
        h += self.params["b_h"]
        self._cell(h, np.zeros_like(h) if h_prev is None else h_prev, np.empty_like(h))
        return self._logits(h), h

    # ---------------------------------------------------------------- one row at a time

    def _stepper(self):
        """-> advance(token: int, h (1, H)) -> (logits (1, V), next h (1, H)): step() for one row,
        unchecked and with x W_xh + b_h formed once for every token (the same float32 sums), so
        the same numbers at about half the cost, for generation. Valid while the parameters stay
        as they are; the logits buffer is overwritten by the next call."""
        rows = self.params["W_xh"] + self.params["b_h"]
        tmp = np.empty((1, self.num_hiddens), self.dtype)
        logits = np.empty((1, self.vocab_size), self.dtype)

        def advance(token, h):
            a = rows[token:token + 1].copy()
            self._cell(a, h, tmp)
            return self._logits(a, out=logits), a

        return advance

    def _logits(self, h, out=None) -> np.ndarray:
        """o = h W_hq + b_q (eq. 9.7.1's output): h (B, H) -> (B, V), into `out` if given."""
        out = np.matmul(h, self.params["W_hq"], out=out)
        out += self.params["b_q"]
        return out

    # ---------------------------------------------------------------- segment pieces

    def _cell(self, a, h_prev, tmp) -> None:
        """a <- φ(a + h_prev W_hh) in place, a (B, H) holding x_t W_xh + b_h; tmp (B, H) scratch."""
        np.matmul(h_prev, self.params["W_hh"], out=tmp)
        a += tmp
        if self.activation == "tanh":
            np.tanh(a, out=a)

    def _forward_states(self, X_tm, ws) -> None:
        """Fill ws.hs[1:] with h_1..h_T from h_0 = ws.hs[0] (eq. 9.7.1). X_tm: (T, B) int."""
        p, hs = self.params, ws.hs
        np.add(p["W_xh"], p["b_h"], out=ws.xb)
        np.take(ws.xb, X_tm, axis=0, out=hs[1:], mode="clip")
        for t in range(len(X_tm)):
            self._cell(hs[t + 1], hs[t], ws.tmp)

    def _segment_grads(self, X_tm, Y_tm, scales, carry, count, ws) -> tuple:
        """Loss and gradients of a segment whose states ws.hs already holds -> (loss_sum, grads).

        X_tm, Y_tm: (T, B) int; scales: path_scales for its steps; carry as in _backward_states;
        count: tokens of the whole window, whose mean loss is differentiated (eq. 9.7.2).
        loss_sum: this segment's summed cross-entropy; grads: its share, keyed as params.
        """
        y = Y_tm.reshape(-1)
        loss_sum = self._softmax_cross_entropy(y, ws)
        dW_hq, db_q = self._output_grads(y, 1.0 / count, ws)
        self._backward_states(scales, carry, ws)
        dW_xh, dW_hh, db_h = self._input_grads(X_tm, ws)
        return loss_sum, {"W_xh": dW_xh, "W_hh": dW_hh, "b_h": db_h, "W_hq": dW_hq, "b_q": db_q}

    def _softmax_cross_entropy(self, y, ws) -> float:
        """Σ_i -log softmax(o_i)[y_i] over all N = T*B outputs (the sum in eq. 9.7.2), as a float
        summed in float64; leaves softmax(o) in ws.logits, stored (V, N) so that every reduction
        over the vocabulary runs along contiguous rows. y: (N,) int, time-major."""
        logits = ws.logits
        np.matmul(self.params["W_hq"].T, ws.hs[1:].reshape(len(y), -1).T, out=logits)
        logits += self.params["b_q"][:, None]
        logits -= logits.max(axis=0)
        target = logits.reshape(-1)[_target_index(y, ws)]
        np.exp(logits, out=logits)
        total = logits.sum(axis=0)
        logits /= total
        return float(np.sum(np.log(total) - target, dtype=np.float64))

    def _output_grads(self, y, scale, ws) -> tuple:
        """dL/do = scale * (softmax - onehot(y)) (eq. 9.7.12), formed in place in ws.logits
        -> (dW_hq (H,V), db_q (V,)) (eq. 9.7.13); fills ws.dA with dL/do_t W_hqᵀ, the outputs'
        share of dL/dh_t."""
        d_logits = ws.logits
        d_logits.reshape(-1)[_target_index(y, ws)] -= 1
        d_logits *= scale
        hs_out = ws.hs[1:].reshape(len(y), -1)
        np.matmul(d_logits.T, self.params["W_hq"].T, out=ws.dA.reshape(len(y), -1))
        dW_hq = np.ascontiguousarray((d_logits @ hs_out).T)  # this order runs BLAS ~1.3x faster
        return dW_hq, d_logits.sum(axis=1)

    def _backward_states(self, scales, carry, ws) -> None:
        """Backward through time over the segment: ws.dA becomes dL/da_t, a_t the pre-activation.

        Implements eq. 9.7.15 as a recurrence (with diag(1 - h_t²) per step for tanh):
        dL/dh_t = dL/do_t W_hqᵀ + dL/da_{t+1} W_hhᵀ, scaled or cut per `scales` (path_scales).
        carry (B, H): on entry the gradient reaching h_T from after the segment, on exit the
        gradient reaching h_0 (zero if scales[0] is CUT).
        """
        dA, W_hh_T = ws.dA, self.params["W_hh"].T
        derivative = None
        if self.activation == "tanh":
            derivative = ws.scratch
            np.multiply(ws.hs[1:], ws.hs[1:], out=derivative)
            np.subtract(1, derivative, out=derivative)
        for t in range(len(dA) - 1, -1, -1):
            dA_t = dA[t]
            dA_t += carry
            if derivative is not None:
                dA_t *= derivative[t]
            scale = scales[t]
            if scale is CUT:
                carry.fill(0)
                continue
            np.matmul(dA_t, W_hh_T, out=carry)
            if scale is not KEEP:
                carry *= scale

    def _input_grads(self, X_tm, ws) -> tuple:
        """-> (dW_xh, dW_hh, db_h) from ws.dA (eq. 9.7.16): dW_hh = Σ_t h_{t-1}ᵀ dL/da_t as one
        product; dW_xh[v] = Σ_{x_t = v} dL/da_t by a sorted segment sum; db_h = Σ_v dW_xh[v].

        The segment sum adds each token's block of sorted rows with one vectorised reduction
        per distinct token of the window (at most min(V, T*B) of them): np.add.reduceat runs
        column by column over rows this wide, ~30x slower at H = 1024.
        """
        T, B, H = ws.dA.shape
        dA = ws.dA.reshape(T * B, H)
        dW_hh = ws.hs[:-1].reshape(T * B, H).T @ dA
        ids = X_tm.reshape(-1)
        sorted_dA = np.take(dA, np.argsort(ids, kind="stable"), axis=0,
                            out=ws.scratch.reshape(T * B, H), mode="clip")
        counts = np.bincount(ids, minlength=self.vocab_size)
        tokens = np.flatnonzero(counts)
        ends = np.cumsum(counts)[tokens]
        dW_xh = np.zeros((self.vocab_size, H), self.dtype)
        for token, start, end in zip(tokens.tolist(), (ends - counts[tokens]).tolist(), ends.tolist()):
            np.add.reduce(sorted_dA[start:end], axis=0, out=dW_xh[token])
        return dW_xh, dW_hh, dW_xh.sum(axis=0)

    # ---------------------------------------------------------------- helpers

    def _workspace(self, batch_size, num_steps) -> Workspace:
        key = (batch_size, num_steps)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= MAX_WORKSPACES:
                self._workspaces.clear()
            ws = Workspace(batch_size, num_steps, self.num_hiddens, self.vocab_size, self.dtype)
            self._workspaces[key] = ws
        return ws

    @staticmethod
    def _set_initial_state(ws, h0) -> None:
        if h0 is None:
            ws.hs[0].fill(0)
        else:
            ws.hs[0] = h0

    def _check_batch(self, X, Y, state) -> tuple:
        """Validate a minibatch -> (X, Y, state or None)."""
        X = self._check_ids("X", X, ndim=2)
        Y = self._check_ids("Y", Y, ndim=2)
        if X.shape != Y.shape:
            raise CharrnnError(f"X and Y must have the same shape, got {X.shape} and {Y.shape}")
        return X, Y, self._check_state(state, X.shape[0])

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
        if state is None:
            return None
        state = np.asarray(state)
        if state.shape != (batch_size, self.num_hiddens):
            raise CharrnnError(
                f"state must have shape {(batch_size, self.num_hiddens)}, got {state.shape}")
        return state.astype(self.dtype, copy=False)


    # ---------------------------------------------------------------- the pieces other modules build on
    # charrnn.recompute runs segments, charrnn.analysis measures inside the backward pass and
    # charrnn.sample generates one row at a time with these; they call them by these names.
    check_batch = _check_batch
    workspace = _workspace
    set_initial_state = _set_initial_state
    forward_states = _forward_states
    segment_grads = _segment_grads
    softmax_cross_entropy = _softmax_cross_entropy
    output_grads = _output_grads
    stepper = _stepper


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
