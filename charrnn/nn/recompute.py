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
import copy
import math

import numpy as np

from charrnn.base.checks import check_choice, check_int
from charrnn.nn.truncation import path_scales, with_resets

BPTT_MEMORY_MODES = ("auto", "store", "recompute")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of BPTT buffers above which "auto" recomputes


def default_segment_steps(num_steps) -> int:
    """round(√T), at least 1: the segment length that minimises T/S + S."""
    return max(1, round(math.sqrt(num_steps)))


def segment_bounds(num_steps, segment_steps) -> list:
    """[(start, stop), ...] covering range(num_steps) in pieces of segment_steps (the last shorter)."""
    return [(start, min(start + segment_steps, num_steps)) for start in range(0, num_steps, segment_steps)]


def bptt_memory_bytes(batch_size, num_steps, num_hiddens, vocab_size, dtype="float32",
                      segment_steps=None, cell="rnn", num_layers=1, dropout=0.0) -> int:
    """Predicted bytes of the buffers one BPTT call holds (model.Workspace and checkpoints).

    segment_steps None: plain BPTT, a workspace for the whole window; else recomputation with
    segments of that many steps: the checkpoints and a workspace for one segment. With G gates
    (1 rnn, 3 gru, 4 lstm), S states (2 lstm, else 1), L layers, a workspace of T steps holds
    in floats: L(T+1)BH states h (and as many c for the lstm), TB(2H + V) + BGH + LSBH + VGH
    (M, dH, logits, tmp, carry, the token table) and, for gated cells, LTB(GH + H) (gates,
    extras), TBGH (dA) and BH (tmp_h), with
    dropout 2LTBH (masks and dropped states); plus TB row indices (8 bytes each).
    """
    itemsize = np.dtype(dtype).itemsize
    B, H, V, L = batch_size, num_hiddens, vocab_size, num_layers
    G, S = {"rnn": (1, 1), "gru": (3, 1), "lstm": (4, 2)}[cell]
    GH = G * H

    def workspace(T):
        floats = L * (T + 1) * B * H * S + T * B * (GH + H + V) + B * GH + L * S * B * H + V * GH
        if cell != "rnn":
            floats += L * T * B * (GH + H) + T * B * GH + B * H
        if dropout > 0:
            floats += 2 * L * T * B * H
        return itemsize * floats + 8 * T * B

    if segment_steps is None:
        return workspace(num_steps)
    num_segments = math.ceil(num_steps / segment_steps)
    return workspace(min(segment_steps, num_steps)) + itemsize * (num_segments + 1) * L * S * B * H


def choose_bptt_memory(bptt_memory, model, batch_size, num_steps,
                       memory_budget_bytes=DEFAULT_MEMORY_BUDGET) -> str:
    """"store" | "recompute" for a window: "auto" recomputes when plain BPTT's buffers
    (bptt_memory_bytes) would exceed memory_budget_bytes."""
    check_choice(bptt_memory, BPTT_MEMORY_MODES, "bptt_memory mode")
    if bptt_memory != "auto":
        return bptt_memory
    stored = bptt_memory_bytes(batch_size, num_steps, model.num_hiddens, model.vocab_size, model.dtype,
                               cell=model.cell, num_layers=model.num_layers, dropout=model.dropout)
    return "store" if stored <= memory_budget_bytes else "recompute"


def loss_and_grads_recompute(model, X, Y, state=None, truncation="full", rng=None,
                             segment_steps=None, dropout_rng=None, resets=None) -> tuple:
    """Mean cross-entropy (eq. 9.7.2) and its BPTT gradient, recomputing states per segment.

    Same arguments and result as RNNLM.loss_and_grads (X, Y: (batch, num_steps) int; state as
    there; truncation and rng as there, the same ξ drawn from rng; dropout_rng drawing the same
    masks) -> (loss, grads, state). segment_steps: steps between checkpoints, default
    round(√num_steps). The dropout masks are drawn segment by segment in time order (the same
    numbers as one draw for the window); a recomputed segment redraws its masks from a copy of
    dropout_rng's state saved at the segment's start. resets: record starts, as there; each
    segment takes its steps' share.
    """
    X, Y, state0 = model.check_batch(X, Y, state)
    B, T = X.shape
    segment_steps = default_segment_steps(T) if segment_steps is None else segment_steps
    check_int(segment_steps, "segment_steps", minimum=1)
    resets = model.check_resets(resets, X.shape)
    scales = with_resets(path_scales(truncation, T, B, rng, model.dtype), resets, model.dtype)
    dropout_rng = model.check_dropout_rng(dropout_rng)
    X_tm, Y_tm = X.T, Y.T
    bounds = segment_bounds(T, int(segment_steps))
    checkpoints, rng_states = _checkpoint_states(model, X_tm, state0, bounds, dropout_rng, resets)

    grads = {name: np.zeros_like(value) for name, value in model.params.items()}
    carry = np.zeros_like(checkpoints[0])  # dL/dstate at the end of the segment
    loss_sum = 0.0
    for k in range(len(bounds) - 1, -1, -1):
        start, stop = bounds[k]
        ws = model.workspace(B, stop - start)
        model.forward_segment(X_tm[start:stop], checkpoints[k], ws, _generator_at(rng_states[k], dropout_rng),
                              _part(resets, start, stop))
        if k == len(bounds) - 1:
            final_state = model.final_state(ws)
        segment_loss, segment_grads = model.segment_grads(
            X_tm[start:stop], Y_tm[start:stop], scales[start:stop], carry, X.size, ws)
        loss_sum += segment_loss
        for name, grad in segment_grads.items():
            grads[name] += grad
    return loss_sum / X.size, grads, final_state


def _part(resets, start, stop):
    """The (stop - start, B) steps of time-major resets, or None."""
    return None if resets is None else resets[start:stop]


def _checkpoint_states(model, X_tm, state0, bounds, dropout_rng, resets=None) -> tuple:
    """The forward pass alone over all but the last segment -> (checkpoints (num_segments, L, S,
    B, H): the state at each segment's start (state0, or zeros when None); the state of
    dropout_rng's bit generator at each segment's start, None for the last, which is drawn
    from dropout_rng itself, and when there is no dropout)."""
    B = X_tm.shape[1]
    L, S, H = model.num_layers, model.num_states, model.num_hiddens
    checkpoints = np.zeros((len(bounds), L, S, B, H), model.dtype)
    rng_states = [None] * len(bounds)
    if state0 is not None:
        checkpoints[0] = state0
    for k, (start, stop) in enumerate(bounds[:-1]):
        if dropout_rng is not None:
            rng_states[k] = dropout_rng.bit_generator.state
        ws = model.workspace(B, stop - start)
        model.forward_segment(X_tm[start:stop], checkpoints[k], ws, dropout_rng, _part(resets, start, stop))
        checkpoints[k + 1] = model.last_state(ws)
    return checkpoints, rng_states


def _generator_at(bit_state, dropout_rng):
    """A Generator that draws what dropout_rng drew from the saved `bit_state`; dropout_rng
    itself when there is no saved state."""
    if bit_state is None:
        return dropout_rng
    generator = copy.deepcopy(dropout_rng)  # of the same kind (charrnn.training.parallel's RowShare keeps its rows)
    generator.bit_generator.state = bit_state
    return generator
