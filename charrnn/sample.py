"""Text generation: warm the hidden state up on a prefix, then draw one token at a time.

As the textbook's `predict` (d2l §9.5): the prefix is fed token by token, updating the state
h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h) (eq. 9.4.5) without producing anything; after it,
each token is chosen from the output distribution softmax(o_t / temperature) and fed back in.
"""
import math

import numpy as np

from .data import preprocess_text
from .errors import CharrnnError


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


def generate(model, prefix_ids, length, rng, temperature=1.0, top_k=None, greedy=False, banned=None):
    """prefix_ids: (n,) int, n >= 1 -> (length,) int32: the ids generated after the prefix.

    banned: a token id never generated (the vocabulary's <unk>, which stands for no real token).
    """
    state = None
    for token in prefix_ids:  # model.step checks the prefix's ids
        logits, state = model.step(np.array([token]), state)
    advance = model.stepper()  # step()'s numbers without its checks: drawn ids are valid
    generated = np.empty(length, dtype=np.int32)
    for i in range(length):
        scores = logits[0].astype(np.float64)
        if banned is not None:
            scores[banned] = -np.inf
        token = next_token(scores, rng, temperature, top_k, greedy)
        generated[i] = token
        logits, state = advance(token, state)
    return generated


def sample_text(model, vocab, prefix, length, level="char", preprocess="d2l",
                temperature=1.0, top_k=None, greedy=False, seed=0):
    """The prefix (preprocessed as the training text was) followed by `length` generated tokens,
    never <unk>.

    -> (text, unknown): `unknown` lists the prefix's tokens outside `vocab`, read as <unk>.
    """
    prefix = preprocess_text(prefix, preprocess)
    prefix_ids, unknown = vocab.encode(prefix, level)
    if len(prefix_ids) == 0:
        raise CharrnnError(f"the prefix {prefix!r} holds no tokens to start from")
    generated = generate(model, prefix_ids, length, np.random.default_rng(seed),
                         temperature, top_k, greedy, banned=vocab.unk)
    separator = " " if level == "word" and length else ""
    return prefix + separator + vocab.decode(generated, level), unknown
