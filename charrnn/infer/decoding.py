"""Generation many rows at a time, and the log-probability of given texts.

Every row is one sample: the state (L, S, N, H) of N rows advances one token per step with one
product per layer for all of them (BatchStepper), so `-n 1000` costs a little more than one
sample, not 1000 times. A token is drawn from softmax(o_t / temperature) restricted to the top_k
most likely and to the nucleus of top_p (Holtzman et al. 2020: the fewest most likely tokens
whose probabilities sum to at least P), by inverting each row's cumulative distribution at one
uniform number. A records model's sample starts after <s> and ends at </s> or after `length`
tokens; a stream model's at `length`, or after the first occurrence of a stop string.

Scores: log p(text) = Σ_t log softmax(o_t)[y_t] (eq. 9.7.2's terms, negated, at temperature 1),
in nats, of the tokens generated (the end token included), whatever temperature drew them.

Beam search keeps the K sequences of highest log-probability at each step (Σ_t log p), batched
as K rows; a finished sequence (</s>, or the length reached) is ranked by its length-normalised
score log p / n (n: its tokens, the end token included). The greedy sequence is one more row,
so that the beam's answer never ranks below greedy's, and K = 1 is greedy exactly.
"""
from __future__ import annotations

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.nn.workspace import Workspace

COMPACT_SHARE = 0.75  # generation computes only the unfinished rows once they are this share or fewer


class BatchStepper:
    """model.step for N rows at generation speed: the per-call tables formed once, the state kept
    internal (L, S, N, H). Valid while the parameters stay as they are."""

    def __init__(self, model, num_rows):
        self.model, self.ws = model, Workspace(model, num_rows, 1)
        model.prepare(self.ws)
        self.tokens = np.zeros((1, num_rows), np.intp)
        self.shape = (model.num_layers, model.num_states, num_rows, model.num_hiddens)

    def __call__(self, tokens, state):
        """tokens (N,) int, state (L, S, N, H) or None -> (log-probabilities (N, V) float64, state)."""
        ws, model = self.ws, self.model
        ws.set_state(state)
        self.tokens[0] = tokens
        for l, (cell, layer) in enumerate(zip(model.cells, ws.layers)):
            model.input_part(self.tokens, ws, l)
            cell.forward_step(layer, 0)
        return log_softmax(model.logits(ws.top[0])), ws.last_state()


def log_softmax(logits) -> np.ndarray:
    """(N, V) -> log softmax in float64, row by row."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def warm_up(model, prefix_ids, num_rows):
    """The state after the prefix and the log-probabilities of the next token, for num_rows
    rows alike -> (log_probs (N, V), state (L, S, N, H)); the prefix runs once, on one row."""
    step = BatchStepper(model, 1)
    state = None
    for token in prefix_ids:
        log_probs, state = step(np.array([token]), state)
    return np.repeat(log_probs, num_rows, axis=0), np.repeat(state, num_rows, axis=2)


def filtered_probs(log_probs, temperature=1.0, top_k=None, top_p=None, banned=None) -> np.ndarray:
    """Unnormalised probabilities to draw from (N, V): softmax(log p / T) with only the top_k
    most likely and the nucleus of top_p kept; banned: a token id never drawn."""
    z = log_probs / temperature
    if banned is not None:
        z[:, banned] = -np.inf
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    V = probs.shape[1]
    if top_k is not None and top_k < V:
        kth = np.partition(probs, V - top_k, axis=1)[:, V - top_k][:, None]
        probs[probs < kth] = 0
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        cumulative = np.cumsum(sorted_p, axis=1)
        before = cumulative - sorted_p  # the mass of the more likely tokens
        outside = before >= top_p * cumulative[:, -1:]  # the first token to reach P stays in
        drop = np.zeros_like(outside)
        np.put_along_axis(drop, order, outside, axis=1)
        probs[drop] = 0
    return probs


def draw(probs, rng) -> np.ndarray:
    """One token per row, by inverting its cumulative distribution at u·total: a token of
    probability zero is never drawn."""
    cumulative = np.cumsum(probs, axis=1)
    total = cumulative[:, -1]
    if not np.all(np.isfinite(total)) or not np.all(total > 0):
        raise CharrnnError("the model's outputs are not finite numbers; it cannot generate text")
    target = rng.random(len(probs)) * total
    return np.minimum((cumulative <= target[:, None]).sum(axis=1), probs.shape[1] - 1)


def generate_rows(model, prefix_ids, num_rows, length, rng=None, temperature=1.0, top_k=None, top_p=None,
                  greedy=False, end_id=None, banned=None, stop_ids=None, on_step=None) -> tuple:
    """num_rows samples at once -> (sequences: list of (n_i,) int32 arrays, log_probs: (num_rows,)
    float64, ended: (num_rows,) bool, True where a sequence ended at end_id or stop_ids).

    prefix_ids: what the rows start from (<s> and the prefix for a records model). A row ends
    at end_id (included in its score, not in its sequence), after the stop_ids sequence
    (included), or after `length` tokens. on_step(tokens (N,), done (N,)): after each step.
    The finished rows are left out of the batch whenever they are a quarter of it or more, so
    the work grows with the tokens generated, not with n × the longest sample.
    """
    log_probs, state = warm_up(model, prefix_ids, num_rows)
    step = BatchStepper(model, num_rows)
    out = np.zeros((num_rows, length), np.int32)
    lengths = np.full(num_rows, length)
    scores = np.zeros(num_rows)
    done = np.zeros(num_rows, bool)
    ended = np.zeros(num_rows, bool)
    live = np.arange(num_rows)  # the rows computed: all, less the finished ones at each compaction
    for i in range(length):
        if greedy:
            scored = log_probs.copy()
            if banned is not None:
                scored[:, banned] = -np.inf
            tokens = np.argmax(scored, axis=1)
        else:
            tokens = draw(filtered_probs(log_probs, temperature, top_k, top_p, banned), rng)
        active = ~done[live]
        scores[live] += np.where(active, log_probs[np.arange(len(live)), tokens], 0.0)
        out[live, i] = tokens
        finishing = active & (tokens == end_id) if end_id is not None else np.zeros(len(live), bool)
        lengths[live[finishing]] = i
        if stop_ids is not None and i + 1 >= len(stop_ids):
            stopped = active & ~finishing & np.all(out[live, i + 1 - len(stop_ids):i + 1] == stop_ids, axis=1)
            lengths[live[stopped]] = i + 1
            finishing |= stopped
        ended[live[finishing]] = True
        done[live[finishing]] = True
        if on_step is not None:
            on_step(out[:, i], done)
        if done.all():
            break
        keep = ~done[live]
        if keep.sum() <= COMPACT_SHARE * len(live):  # drop the finished rows: the work follows Σ n_i
            live, tokens, state = live[keep], tokens[keep], state[:, :, keep]
            step = BatchStepper(model, len(live))
        log_probs, state = step(tokens, state)
    return [out[r, :lengths[r]].copy() for r in range(num_rows)], scores, ended


def beam_search(model, prefix_ids, beam, length, end_id=None, banned=None) -> tuple:
    """The best sequence of a beam of K = `beam` rows (module docstring) -> (sequence (n,) int32,
    log-probability in nats, its tokens n scored, the end token included)."""
    K = int(beam)
    if K < 1:
        raise CharrnnError(f"the beam must hold at least 1 sequence, got {beam}")
    greedy, greedy_score, greedy_ended = generate_rows(model, prefix_ids, 1, length, greedy=True,
                                                       end_id=end_id, banned=banned)
    best = (greedy_score[0] / max(len(greedy[0]) + greedy_ended[0], 1), greedy[0], greedy_score[0], greedy_ended[0])
    log_probs, state = warm_up(model, prefix_ids, 1)
    step = BatchStepper(model, K)
    seqs = np.zeros((1, 0), np.int32)
    totals = np.zeros(1)
    for i in range(length):
        scores = log_probs.copy()
        if banned is not None:
            scores[:, banned] = -np.inf
        candidates = (totals[:, None] + scores).reshape(-1)
        V = scores.shape[1]
        order = np.argsort(-candidates, kind="stable")[:K]  # a finished one takes a place: K = 1 is greedy
        kept, parents, tokens = [], [], []
        for flat in order.tolist():
            parent, token = divmod(flat, V)
            total = candidates[flat]
            if not np.isfinite(total):
                break
            if token == end_id or i == length - 1:
                ended = token == end_id
                seq = seqs[parent] if ended else np.append(seqs[parent], token).astype(np.int32)
                n = len(seqs[parent]) + 1
                if total / n > best[0]:
                    best = (total / n, seq, total, ended)
                continue
            kept.append(total)
            parents.append(parent)
            tokens.append(token)
        if not kept:
            break
        pad = K - len(kept)
        parents_a = np.array(parents + parents[:1] * pad)
        tokens_a = np.array(tokens + tokens[:1] * pad, np.intp)
        totals = np.array(kept + [-np.inf] * pad)
        seqs = np.concatenate([seqs[parents_a], tokens_a[:, None].astype(np.int32)], axis=1)
        if state.shape[2] != K:
            state = np.repeat(state, K, axis=2)
        log_probs, state = step(tokens_a, state[:, :, parents_a])
    return best[1], float(best[2]), len(best[1]) + int(best[3])


def sequence_log_probs(model, inputs, targets, state=None) -> np.ndarray:
    """log p of each target given the inputs before it: inputs, targets (n,) int -> (n,) float64,
    one row from `state` (None: zeros)."""
    step = BatchStepper(model, 1)
    out = np.empty(len(inputs))
    for t, (x, y) in enumerate(zip(inputs, targets)):
        log_probs, state = step(np.array([x]), state)
        out[t] = log_probs[0, y]
    return out


def text_score(model, ids, prefix_ids=None, start_id=None, end_id=None) -> tuple:
    """log p(text) in nats -> (nats, tokens scored). A records model (start_id, end_id): the
    record <s> [prefix] text </s>, the text and </s> scored. A stream model: after the prefix,
    every token of the text; without one, from the start state, the tokens after the first."""
    ids = np.asarray(ids, np.int64)
    prefix = np.asarray([] if prefix_ids is None else prefix_ids, np.int64)
    if start_id is not None:
        seq = np.concatenate([[start_id], prefix, ids, [end_id]])
        first = 1 + len(prefix)
    else:
        seq = np.concatenate([prefix, ids])
        first = max(len(prefix), 1)
    if len(seq) - first < 1:
        return 0.0, 0
    log_p = sequence_log_probs(model, seq[:-1], seq[1:])
    return float(log_p[first - 1:].sum()), len(seq) - first

