"""Backpropagation through time in O(√T) memory, by recomputation (Chen et al. 2016, "Training
deep nets with sublinear memory cost"; Gruslys et al. 2016, "Memory-efficient backpropagation
through time").

Plain BPTT (RNNLM.loss_and_grads) keeps every hidden state h_1..h_T and the T softmax outputs
for the backward pass: memory ~ T·B·(3H + V). Here the window is cut into segments of S ≈ √T
steps. The forward pass runs the recurrence only (eq. 9.7.1) and keeps h at each segment start
(a checkpoint). The backward pass takes the segments last to first: it recomputes a segment's
states from its checkpoint, its outputs and loss (eq. 9.7.2), and backpropagates through it
(eqs. 9.7.12-9.7.16) with the gradient carried in from the segment after it. Memory: T/S
checkpoints plus one segment's workspace, ~ (T/S + S)·B·H + S·B·V; extra time: one more pass of
the recurrence. The terms are those of plain BPTT, summed per segment, so the result equals it
up to floating-point summation order (exactly, when one segment covers the window).
"""
import math

import numpy as np

from .checks import check_choice, check_int
from .model import path_scales

BPTT_MEMORY_MODES = ("auto", "store", "recompute")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of BPTT buffers above which "auto" recomputes


def default_segment_steps(num_steps) -> int:
    """round(√T), at least 1: the segment length that minimises T/S + S."""
    return max(1, round(math.sqrt(num_steps)))


def segment_bounds(num_steps, segment_steps) -> list:
    """[(start, stop), ...] covering range(num_steps) in pieces of segment_steps (the last shorter)."""
    return [(start, min(start + segment_steps, num_steps)) for start in range(0, num_steps, segment_steps)]


def bptt_memory_bytes(batch_size, num_steps, num_hiddens, vocab_size, dtype="float32",
                      segment_steps=None) -> int:
    """Predicted bytes of the buffers one BPTT call holds (model.Workspace and checkpoints).

    segment_steps None: plain BPTT, a workspace for the whole window; else recomputation with
    segments of that many steps: the checkpoints and a workspace for one segment. A workspace of
    S steps holds (3S + 3)·B·H + S·B·V + V·H floats and S·B row indices.
    """
    itemsize = np.dtype(dtype).itemsize
    B, H, V = batch_size, num_hiddens, vocab_size

    def workspace(steps):
        return itemsize * ((3 * steps + 3) * B * H + steps * B * V + V * H) + 8 * steps * B

    if segment_steps is None:
        return workspace(num_steps)
    num_segments = math.ceil(num_steps / segment_steps)
    return workspace(min(segment_steps, num_steps)) + itemsize * (num_segments + 1) * B * H


def choose_bptt_memory(bptt_memory, model, batch_size, num_steps,
                       memory_budget_bytes=DEFAULT_MEMORY_BUDGET) -> str:
    """"store" | "recompute" for a window: "auto" recomputes when plain BPTT's buffers
    (bptt_memory_bytes) would exceed memory_budget_bytes."""
    check_choice(bptt_memory, BPTT_MEMORY_MODES, "bptt_memory mode")
    if bptt_memory != "auto":
        return bptt_memory
    stored = bptt_memory_bytes(batch_size, num_steps, model.num_hiddens, model.vocab_size, model.dtype)
    return "store" if stored <= memory_budget_bytes else "recompute"


def loss_and_grads_auto(model, X, Y, state=None, truncation="full", rng=None, bptt_memory="auto",
                        memory_budget_bytes=DEFAULT_MEMORY_BUDGET) -> tuple:
    """RNNLM.loss_and_grads, storing every state or recomputing as `choose_bptt_memory` decides.

    X, Y: (batch, num_steps) int -> (loss, grads, state) as RNNLM.loss_and_grads.
    """
    shape = np.shape(X)  # the call chosen checks X, Y and state; a bad X goes to the plain one
    if len(shape) == 2 and choose_bptt_memory(bptt_memory, model, *shape, memory_budget_bytes) == "recompute":
        return loss_and_grads_recompute(model, X, Y, state, truncation=truncation, rng=rng)
    return model.loss_and_grads(X, Y, state, truncation=truncation, rng=rng)


def loss_and_grads_recompute(model, X, Y, state=None, truncation="full", rng=None,
                             segment_steps=None) -> tuple:
    """Mean cross-entropy (eq. 9.7.2) and its BPTT gradient, recomputing states per segment.

    Same arguments and result as RNNLM.loss_and_grads (X, Y: (batch, num_steps) int; state:
    (batch, H) or None; truncation and rng as there, the same ξ drawn from rng) -> (loss,
    grads, state). segment_steps: steps between checkpoints, default round(√num_steps).
    """
    X, Y, h0 = model.check_batch(X, Y, state)
    B, T = X.shape
    segment_steps = default_segment_steps(T) if segment_steps is None else segment_steps
    check_int(segment_steps, "segment_steps", minimum=1)
    scales = path_scales(truncation, T, B, rng, model.dtype)
    X_tm, Y_tm = X.T, Y.T
    bounds = segment_bounds(T, int(segment_steps))
    checkpoints = _checkpoint_states(model, X_tm, h0, bounds)

    grads = {name: np.zeros_like(value) for name, value in model.params.items()}
    carry = np.zeros((B, model.num_hiddens), model.dtype)  # dL/dh at the end of the segment
    loss_sum = 0.0
    for k in range(len(bounds) - 1, -1, -1):
        start, stop = bounds[k]
        ws = _segment_states(model, X_tm[start:stop], checkpoints[k])
        if k == len(bounds) - 1:
            final_state = ws.hs[-1].copy()
        segment_loss, segment_grads = model.segment_grads(
            X_tm[start:stop], Y_tm[start:stop], scales[start:stop], carry, X.size, ws)
        loss_sum += segment_loss
        for name, grad in segment_grads.items():
            grads[name] += grad
    return loss_sum / X.size, grads, final_state


def _checkpoint_states(model, X_tm, h0, bounds) -> np.ndarray:
    """The recurrence alone over all but the last segment -> (num_segments, B, H): the hidden
    state at each segment's start (h0, or zeros when None)."""
    B = X_tm.shape[1]
    checkpoints = np.zeros((len(bounds), B, model.num_hiddens), model.dtype)
    if h0 is not None:
        checkpoints[0] = h0
    for k, (start, stop) in enumerate(bounds[:-1]):
        checkpoints[k + 1] = _segment_states(model, X_tm[start:stop], checkpoints[k]).hs[-1]
    return checkpoints


def _segment_states(model, X_segment, h_start):
    """Run the recurrence over one segment from h_start -> the model's workspace, states filled."""
    ws = model.workspace(X_segment.shape[1], X_segment.shape[0])
    ws.hs[0] = h_start
    model.forward_states(X_segment, ws)
    return ws
