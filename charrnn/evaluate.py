"""Perplexity of a model on a token stream: one contiguous forward pass, hidden state carried.

Perplexity is exp of the mean cross-entropy per token (d2l §9.3); the mean is the loss
L = (1/T) sum_t l(o_t, y_t) of eq. 9.7.2 taken over a whole text instead of a minibatch.
"""
import math
from dataclasses import dataclass

import numpy as np

from .data import preprocess_text, read_text, split_corpus, warn_dropped_letters
from .errors import CharrnnError
from .model import EVAL_CHUNK_STEPS

EVAL_ROWS = 32  # parallel streams the evaluated text is cut into
MAX_UNKNOWN_FRACTION = 0.25  # a text with more tokens outside the vocabulary is refused


def contiguous_batches(corpus, num_rows=EVAL_ROWS, num_steps=EVAL_CHUNK_STEPS):
    """Cut `corpus` into `num_rows` contiguous rows read left to right, `num_steps` at a time.

    Yields X, Y: (rows, <= num_steps) int32 with Y the next token of X. Chunk i+1 of a row
    continues where chunk i ended, so the hidden state can be carried. Every token except the
    first of each row and at most num_rows - 1 at the end is a target exactly once.
    """
    if len(corpus) < 2:
        raise CharrnnError(f"a text of {len(corpus)} tokens is too short to evaluate")
    num_rows = min(num_rows, len(corpus) - 1)
    row_len = (len(corpus) - 1) // num_rows
    X = np.asarray(corpus[: num_rows * row_len], dtype=np.int32).reshape(num_rows, row_len)
    Y = np.asarray(corpus[1 : num_rows * row_len + 1], dtype=np.int32).reshape(num_rows, row_len)
    for start in range(0, row_len, num_steps):
        yield X[:, start : start + num_steps], Y[:, start : start + num_steps]


def mean_loss(model, corpus):
    """Mean cross-entropy (nats per token) of `model` on `corpus`: (n,) int; forward only."""
    total, count, state = 0.0, 0, None
    for X, Y in contiguous_batches(corpus):
        loss_sum, n, state = model.forward_loss(X, Y, state)
        total += float(loss_sum)
        count += int(n)
    return total / count


def perplexity(loss):
    """exp(mean cross-entropy); inf when that overflows, nan stays nan."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class Evaluation:
    """The perplexity of a model on a text, and which tokens it could not read."""

    source: str  # what was evaluated
    tokens: int
    loss: float  # mean cross-entropy, nats per token
    perplexity: float
    unknown: list  # distinct tokens of the text outside the vocabulary (read as <unk>)
    unknown_count: int = 0  # their occurrences


def evaluate_text(model, vocab, config, corpus=None, data_dir=None):
    """Perplexity of `model` on a text read as `config` (level, preprocess) says.

    corpus None: the validation split of the training corpus (config.corpus, val_fraction);
    else the whole of that text. Tokens outside `vocab` are read as <unk>; a text with more
    than MAX_UNKNOWN_FRACTION of them is refused as not matching the vocabulary.
    """
    name = config.corpus if corpus is None else corpus
    text = read_text(name, data_dir=data_dir)
    if config.preprocess == "d2l" and corpus is not None:  # (the training text was reported on in training)
        warn_dropped_letters(text, name)
    text = preprocess_text(text, config.preprocess)
    ids, unknown = vocab.encode(text, config.level)
    if corpus is None:
        ids = split_corpus(ids, config.val_fraction)[1]
        source = f"{name} (validation split, last {config.val_fraction:g})"
    else:
        source = str(name)
    unknown_count = int(np.count_nonzero(ids == vocab.unk))
    unknown_fraction = unknown_count / max(len(ids), 1)
    if unknown and unknown_fraction > MAX_UNKNOWN_FRACTION:
        raise CharrnnError(f"{name}: {unknown_fraction:.0%} of its tokens are outside the checkpoint's "
                           f"vocabulary of {len(vocab)} (level {config.level}, preprocess {config.preprocess})")
    loss = mean_loss(model, ids)
    return Evaluation(source, len(ids), loss, perplexity(loss), list(unknown), unknown_count)
