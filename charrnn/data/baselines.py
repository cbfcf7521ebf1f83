"""What a network must beat: the unigram and bigram models of a text, counted on its training
split and scored on its validation split, and the unigram's log-probabilities that start a
network's output bias.

Both are maximum-likelihood counts with add-one (Laplace) smoothing over the vocabulary V:

    unigram:  p(v)     = (n(v) + 1) / (N + V)
    bigram:   p(v | u) = (n(u, v) + 1) / (n(u, ·) + V)

with n the counts of tokens and of adjacent pairs in the training split. Their perplexity on
the validation split, exp(-(1/M) Σ_t log p(x_t | x_{t-1})) over its M adjacent pairs (eq.
9.3.2 of d2l with the counted model for the network), is the level a character model reaches
by knowing letter frequencies (unigram) or letter pairs (bigram): a network still above the
bigram's after an epoch is not learning from its inputs.

Long texts are counted on their first MAX_COUNTED training tokens and scored on the first
MAX_SCORED validation tokens (streamed in pieces, so memory stays bounded by V² and a
piece); the bigram is skipped (None) for vocabularies over MAX_BIGRAM_VOCAB, whose V² table
would not fit comfortably (word-level vocabularies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MAX_COUNTED = 1 << 26  # training tokens counted (64 Mi)
MAX_SCORED = 1 << 24  # validation tokens scored (16 Mi)
MAX_BIGRAM_VOCAB = 2048  # a V² table of int64 counts: 32 MiB at this size
PIECE = 1 << 22  # tokens read from the (memory-mapped) ids at a time


@dataclass(frozen=True)
class Baselines:
    """The unigram and bigram perplexities of a text's validation split (bigram None when its
    vocabulary is too large to count pairs), how many tokens each side used, and the unigram's
    log-probabilities (the output bias a run starts from)."""

    unigram: float
    bigram: float | None
    counted: int  # training tokens counted
    scored: int  # validation tokens scored
    log_unigram: np.ndarray = field(repr=False, compare=False, default=None)

    def as_dict(self) -> dict:
        return {"unigram_ppl": self.unigram, "bigram_ppl": self.bigram,
                "baseline_train_tokens": self.counted, "baseline_val_tokens": self.scored}


def _pieces(ids, limit, overlap=0):
    """Consecutive pieces of ids[:limit] as int64, each starting `overlap` tokens before the
    previous one ended (1 for pairs)."""
    stop = min(len(ids), limit)
    for start in range(0, max(stop - overlap, 0), PIECE):
        yield np.asarray(ids[start:min(start + PIECE + overlap, stop)], dtype=np.int64)


def token_counts(ids, vocab_size, limit=MAX_COUNTED) -> np.ndarray:
    """n(v) over ids[:limit] -> (V,) int64."""
    counts = np.zeros(vocab_size, np.int64)
    for piece in _pieces(ids, limit):
        counts += np.bincount(piece, minlength=vocab_size)
    return counts


def pair_counts(ids, vocab_size, limit=MAX_COUNTED) -> np.ndarray:
    """n(u, v) over the adjacent pairs of ids[:limit] -> (V, V) int64."""
    counts = np.zeros(vocab_size * vocab_size, np.int64)
    for piece in _pieces(ids, limit, overlap=1):
        counts += np.bincount(piece[:-1] * vocab_size + piece[1:], minlength=counts.size)
    return counts.reshape(vocab_size, vocab_size)


def unigram_log_probs(counts) -> np.ndarray:
    """log p(v) = log (n(v) + 1) / (N + V), add-one smoothed: (V,) float64."""
    counts = np.asarray(counts, dtype=np.float64) + 1.0
    return np.log(counts) - math.log(counts.sum())


def ngram_baselines(train, val, vocab_size) -> Baselines:
    """The unigram and bigram perplexities of `val` under the models counted on `train` (module
    docstring); train, val: (n,) token ids (memory maps are read a piece at a time)."""
    if len(val) < 2:
        raise ValueError("a validation split of fewer than 2 tokens has no pair to score")
    log_uni = unigram_log_probs(token_counts(train, vocab_size))
    log_bi = None
    if vocab_size <= MAX_BIGRAM_VOCAB:
        pairs = pair_counts(train, vocab_size).astype(np.float64) + 1.0
        log_bi = np.log(pairs) - np.log(pairs.sum(axis=1, keepdims=True))
    uni_sum = bi_sum = 0.0
    scored = 0
    for piece in _pieces(val, MAX_SCORED, overlap=1):  # scored: the targets x_1 .. x_{M}
        targets = piece[1:]
        uni_sum += float(log_uni[targets].sum())
        if log_bi is not None:
            bi_sum += float(log_bi[piece[:-1], targets].sum())
        scored += len(targets)
    bigram = None if log_bi is None else math.exp(-bi_sum / scored)
    return Baselines(math.exp(-uni_sum / scored), bigram, min(len(train), MAX_COUNTED), scored, log_uni)


def not_learning(baselines, val_ppl, config, epochs):
    """The "not learning" warning's text when the validation perplexity `val_ppl` of a run of
    `config` is still above the bigram's (the unigram's where no bigram was counted) after
    `epochs` epochs (0: at the end of a shorter budget), naming what to try; else None."""
    level, name = (baselines.bigram, "bigram") if baselines.bigram is not None else (baselines.unigram, "unigram")
    if not math.isfinite(val_ppl) or val_ppl <= level:  # a non-finite run is told so elsewhere
        return None
    tries = [f"--lr {config.lr / 4:g}"]
    if config.dropout:
        tries.append("--dropout 0")
    if config.num_layers > 1 or config.num_hiddens > 128:
        tries.append("a smaller network (--num-layers 1 --num-hiddens 128)")
    tries.append("a larger budget")
    when = "at the end of its budget" if epochs < 1 else f"after {epochs} epoch{'s' if epochs > 1 else ''}"
    return (f"not learning: validation perplexity {val_ppl:.4g} is still above the {name} model's "
            f"{level:.4g} {when}; try {', '.join(tries)}")
