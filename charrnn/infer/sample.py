"""Text generation: warm the hidden state up on a prefix, then draw one token at a time.

As the textbook's `predict` (d2l §9.5): the prefix is fed token by token, updating the state
h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h) (eq. 9.4.5) without producing anything; after it,
each token is chosen from the output distribution softmax(o_t / temperature) and fed back in.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np

from charrnn.data.text import preprocess_text
from charrnn.nn import fused
from charrnn.nn.workspace import Workspace
from charrnn.base.errors import CharrnnError, CharrnnWarning


def next_token(logits, rng, temperature=1.0, top_k=None, greedy=False):
    """logits: (V,) float64 -> a token id: argmax if greedy, else drawn from softmax(logits / T)
    restricted to the top_k largest logits.

    The draw inverts the cumulative distribution at one uniform number, u * total < total, so
    a token of probability zero is never drawn (rng.choice with p= costs ~5x more a token).
    """
    if greedy:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):  # a tiny temperature sends all but the largest to -inf
        z = (logits - logits.max()) / temperature
    if top_k is not None and top_k < len(z):
        z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
    cumulative = np.exp(z, out=z).cumsum(out=z)  # unnormalised; methods skip NumPy's wrappers
    total = float(cumulative[-1])
    if not math.isfinite(total):
        raise CharrnnError("the model's outputs are not finite numbers; it cannot generate text")
    return int(cumulative.searchsorted(rng.random() * total, side="right"))


def stepper(model):
    """-> advance(token: int, state) -> (logits (1, V), next state): model.step() for one row,
    unchecked, with the per-call tables formed once, so the same numbers at a fraction of
    the cost, for generation. Valid while the parameters stay as they are; the logits
    buffer is overwritten by the next call."""
    ws = Workspace(model, 1, 1)
    model.prepare(ws)
    tokens = np.zeros((1, 1), np.intp)
    logits = np.empty((1, model.vocab_size), model.dtype)
    if model.cell == "rnn" and model.num_layers == 1:  # the common case, at today's speed:
        recur, rows, W_hh, tmp = fused.step_functions(model)[0], ws.xb, model.params["W_hh"], ws.tmp

        def advance_rnn(token, h):  # a new row of the table becomes the next state in place
            a = rows[token:token + 1].copy()
            recur(a, np.zeros_like(a) if h is None else h, W_hh, tmp)
            return model.logits(a, out=logits), a

        return advance_rnn
    shape, public = (model.num_layers, model.num_states, 1, model.num_hiddens), model.state_shape(1)
    first, last = [ws.hs[:, 0]], [ws.hs[:, 1]]  # h (and c) of every layer, before and after
    if ws.cs is not None:
        first.append(ws.cs[:, 0])
        last.append(ws.cs[:, 1])
    top = ws.top[0]
    steps = list(zip(range(model.num_layers), fused.step_functions(model)[1], ws.layers))  # the model's kernel

    def advance(token, state):
        for k, start in enumerate(first):
            start[...] = 0 if state is None else state.reshape(shape)[:, k]
        tokens[0, 0] = token
        for l, forward_step, layer in steps:  # forward_segment's work for one step, its loops unrolled
            model.input_part(tokens, ws, l)
            forward_step(layer, 0)
        new_state = np.empty(shape, model.dtype)
        for k, end in enumerate(last):
            new_state[:, k] = end
        return model.logits(top, out=logits), new_state.reshape(public)

    return advance


def generate(model, prefix_ids, length, rng, temperature=1.0, top_k=None, greedy=False, banned=None):
    """prefix_ids: (n,) int, n >= 1 -> (length,) int32: the ids generated after the prefix.

    banned: a token id never generated (the vocabulary's <unk>, which stands for no real token).
    """
    state = None
    for token in prefix_ids:  # model.step checks the prefix's ids
        logits, state = model.step(np.array([token]), state)
    advance = stepper(model)  # step()'s numbers without its checks: drawn ids are valid
    generated = np.empty(length, dtype=np.int32)
    for i in range(length):
        scores = logits[0].astype(np.float64)
        if banned is not None:
            scores[banned] = -np.inf
        token = next_token(scores, rng, temperature, top_k, greedy)
        generated[i] = token
        logits, state = advance(token, state)
    return generated


@dataclass
class Sample:
    """A continuation: `text` is the prefix as preprocessed (`prefix`) and what followed it;
    `unknown` the distinct prefix tokens outside the vocabulary (read as <unk>), `unknown_count`
    how often they occur."""

    text: str
    prefix: str
    unknown: list
    unknown_count: int


def encode_prefix(vocab, prefix, level, preprocess):
    """A prefix as the training text was read -> (ids (n,) int32, preprocessed prefix, unknown,
    unknown_count); a prefix without tokens -> CharrnnError."""
    preprocessed = preprocess_text(prefix, preprocess)
    ids, unknown = vocab.encode(preprocessed, level)
    if len(ids) == 0:
        raise CharrnnError(f"the prefix {prefix!r} holds no tokens to start from"
                           + (f" after {preprocess!r} preprocessing" if preprocessed != prefix else ""))
    return ids, preprocessed, unknown, int(np.count_nonzero(ids == vocab.unk))


def continue_text(model, vocab, prefix, length, level, preprocess, temperature=1.0, top_k=None,
                  greedy=False, seed=0) -> Sample:
    """The prefix (preprocessed as the training text was: `level`, `preprocess`) followed by
    `length` generated tokens, never <unk>."""
    prefix_ids, preprocessed, unknown, unknown_count = encode_prefix(vocab, prefix, level, preprocess)
    generated = generate(model, prefix_ids, length, np.random.default_rng(seed),
                         temperature, top_k, greedy, banned=vocab.unk)
    separator = " " if level == "word" and length else ""
    return Sample(preprocessed + separator + vocab.decode(generated, level), preprocessed, unknown, unknown_count)


def sample_text(checkpoint, prefix, length=200, temperature=1.0, top_k=None, greedy=False, seed=0) -> Sample:
    """Continue `prefix` with a trained model, reading it as its training text was read.

    checkpoint: a charrnn.training.checkpoint.Checkpoint (load_checkpoint), a TrainResult, or anything
    with .model, .vocab and .config (level and preprocess are taken from the config).
    Warns (CharrnnWarning) when preprocessing changes the prefix or tokens of it are unknown.
    """
    cfg = checkpoint.config
    sample = continue_text(checkpoint.model, checkpoint.vocab, prefix, length, cfg.level, cfg.preprocess,
                           temperature, top_k, greedy, seed)
    warn_prefix(prefix, sample.prefix, sample.unknown, sample.unknown_count, cfg.preprocess)
    return sample


def next_token_probs(checkpoint, prefix, top=10) -> list:
    """The `top` most likely tokens after `prefix` -> [(token, probability)], most likely first.

    The probabilities are softmax(o_t) of the model's output after the last prefix token; <unk>
    is listed like any token (it stands for every token outside the vocabulary).
    """
    cfg = checkpoint.config
    ids, preprocessed, unknown, unknown_count = encode_prefix(checkpoint.vocab, prefix, cfg.level, cfg.preprocess)
    warn_prefix(prefix, preprocessed, unknown, unknown_count, cfg.preprocess)
    state = None
    for token in ids:
        logits, state = checkpoint.model.step(np.array([token]), state)
    z = logits[0].astype(np.float64)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:top]
    return [(checkpoint.vocab.to_tokens(int(i)), float(probs[i])) for i in order]


def warn_prefix(prefix, preprocessed, unknown, unknown_count, preprocess) -> None:
    """CharrnnWarnings: a prefix that preprocessing changed, tokens of it outside the vocabulary."""
    if preprocessed != prefix:
        warnings.warn(f"{preprocess!r} preprocessing changed the prefix {prefix!r} to {preprocessed!r}",
                      CharrnnWarning, stacklevel=3)
    if unknown:
        warnings.warn(f"{unknown_summary(unknown, unknown_count)} of the prefix are not in the vocabulary "
                      f"and were read as <unk>", CharrnnWarning, stacklevel=3)


def unknown_summary(unknown, count, shown=10) -> str:
    """'3 occurrences of 2 distinct tokens ('x', 'y')': what was read as <unk>, in words."""
    listed = ", ".join(repr(token) for token in unknown[:shown]) + (", ..." if len(unknown) > shown else "")
    return (f"{count:,} occurrence{'s' * (count != 1)} of {len(unknown):,} distinct "
            f"token{'s' * (len(unknown) != 1)} ({listed})")


def text_prefix(vocab, ids, level, max_chars=20) -> str:
    """The first words of a text given as ids, as a default prefix: at most max_chars characters
    (char level, cut after a whole word where there is one) or two words (word level)."""
    if level == "word":
        return vocab.decode(ids[:2], level)
    text = vocab.decode(ids[: max_chars * 4], level).lstrip()[:max_chars]
    cut = max(text.rfind(" "), text.rfind("\n"))
    return (text[:cut] if cut > 0 else text).strip() or text
