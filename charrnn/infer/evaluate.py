"""Perplexity of a model on a token stream: one contiguous forward pass, hidden state carried.

Perplexity is exp of the mean cross-entropy per token (d2l §9.3); the mean is the loss
L = (1/T) sum_t l(o_t, y_t) of eq. 9.7.2 taken over a whole text instead of a minibatch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.data.samplers import batches_per_release, memory_map_of, release_pages, split_corpus
from charrnn.data.store import open_store
from charrnn.nn.model import EVAL_CHUNK_STEPS

EVAL_ROWS = 32  # parallel streams the evaluated text is cut into
MAX_UNKNOWN_FRACTION = 0.25  # a text with more tokens outside the vocabulary is refused
UNKNOWN_CHUNK = 1 << 22  # ids counted at a time


def contiguous_batches(corpus, num_rows=EVAL_ROWS, num_steps=EVAL_CHUNK_STEPS, id_map=None):
    """Cut `corpus` into `num_rows` contiguous rows read left to right, `num_steps` at a time.

    Yields X, Y: (rows, <= num_steps) int32 with Y the next token of X. Chunk i+1 of a row
    continues where chunk i ended, so the hidden state can be carried. Every token except the
    first of each row and at most num_rows - 1 at the end is a target exactly once.
    corpus may be a memory map of narrower ids: only the chunk at hand is read and converted,
    through `id_map` ((n,) int array: corpus id -> model id) when one is given.
    """
    corpus = np.asarray(corpus)  # of a memory map: a view of the same pages, nothing read
    if len(corpus) < 2:
        raise CharrnnError(f"a text of {len(corpus)} tokens is too short to evaluate")
    num_rows = min(num_rows, len(corpus) - 1)
    row_len = (len(corpus) - 1) // num_rows
    X = corpus[: num_rows * row_len].reshape(num_rows, row_len)  # views, no copy
    Y = corpus[1 : num_rows * row_len + 1].reshape(num_rows, row_len)
    table = None if id_map is None else np.asarray(id_map, dtype=np.int32)
    mapping, release_every = memory_map_of(corpus), batches_per_release(num_steps, corpus.itemsize)
    for i, start in enumerate(range(0, row_len, num_steps), 1):
        X_chunk, Y_chunk = X[:, start : start + num_steps], Y[:, start : start + num_steps]
        if table is None:  # copies: the map's pages may be released below
            yield X_chunk.astype(np.int32), Y_chunk.astype(np.int32)
        else:
            yield table[X_chunk], table[Y_chunk]
        if mapping is not None and i % release_every == 0:
            release_pages(mapping)


class EvaluationStopped(Exception):
    """mean_loss gave up because should_stop() said so."""


def mean_loss(model, corpus, id_map=None, should_stop=None):
    """Mean cross-entropy (nats per token) of `model` on `corpus`: (n,) int; forward only.
    id_map: as in contiguous_batches. should_stop(): asked before each chunk of EVAL_ROWS x
    EVAL_CHUNK_STEPS tokens; true -> EvaluationStopped (a signal is honoured within a chunk,
    not after the whole pass)."""
    total, count, state = 0.0, 0, None
    for X, Y in contiguous_batches(corpus, id_map=id_map):
        if should_stop is not None and should_stop():
            raise EvaluationStopped
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
    records: int | None = None  # a records model's: the records evaluated (tokens: their targets, </s> included)

    @property
    def nats_per_record(self):
        return None if not self.records else self.loss * self.tokens / self.records


def evaluate_text(model, vocab, config, corpus=None, data_dir=None, cache_dir=None):
    """Perplexity of `model` on a text read as `config` (level, preprocess) says.

    corpus None: the validation split of the training corpus (config.corpus, val_fraction),
    read from the token store training used (the config's vocabulary limits too); else the
    whole of that text, from a store with its whole vocabulary (charrnn.data.store; cache_dir as
    there). The store's ids are mapped to `vocab`'s chunk by chunk, tokens outside `vocab`
    to <unk>; a text with more than MAX_UNKNOWN_FRACTION of those is refused as not matching.
    """
    name = config.corpus if corpus is None else corpus
    if getattr(config, "records", None):
        from charrnn.infer.records_eval import evaluate_records
        return evaluate_records(model, vocab, config, corpus, data_dir, cache_dir)
    limits = (config.min_freq, config.max_vocab) if corpus is None else (0, None)
    # the d2l warning for another text; the training text's was given in training
    store = open_store(name, config.level, config.preprocess, *limits, data_dir=data_dir, cache_dir=cache_dir,
                       warn_dropped=corpus is not None)
    ids = store.ids
    if corpus is None:
        ids = split_corpus(ids, config.val_fraction)[1]
        source = f"{name} (validation split, last {config.val_fraction:g})"
    else:
        source = str(name)
    id_map = np.array(vocab[store.vocab.idx_to_token], dtype=np.int32)  # store id -> model id
    unknown = sorted(token for token in store.vocab.idx_to_token[1:] if token not in vocab.token_to_idx)
    unknown_count = int(sum(np.count_nonzero(id_map[ids[start:start + UNKNOWN_CHUNK]] == vocab.unk)
                            for start in range(0, len(ids), UNKNOWN_CHUNK)))
    unknown_fraction = unknown_count / max(len(ids), 1)
    if unknown and unknown_fraction > MAX_UNKNOWN_FRACTION:
        raise CharrnnError(f"{name}: {unknown_fraction:.0%} of its tokens are outside the checkpoint's "
                           f"vocabulary of {len(vocab)} (level {config.level}, preprocess {config.preprocess})")
    loss = mean_loss(model, ids, id_map)
    return Evaluation(source, len(ids), loss, perplexity(loss), unknown, unknown_count)
