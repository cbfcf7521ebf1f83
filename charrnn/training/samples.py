"""The sample a run shows at each evaluation: the continuation of its sample prefix, or for a
records run one record from <s> to </s>, drawn at sample_temperature (0: greedy, as the
textbook's predict) from default_rng([seed, SAMPLE_STREAM, step]) — a generator of its own, so
that showing samples changes no number of training and a resumed run shows the same ones.
"""
from __future__ import annotations

import warnings

import numpy as np

from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.data.records import END, START
from charrnn.data.text import preprocess_text
from charrnn.infer.decoding import generate_rows
from charrnn.infer.sample import continue_text
from charrnn.training.state import SAMPLE_STREAM


def warn_about_the_sample_prefix(config):
    """A CharrnnWarning if preprocessing changes the prefix continued at each evaluation."""
    prefix, preprocess = config.sample_prefix, config.preprocess
    if prefix is not None and preprocess_text(prefix, preprocess) != prefix:
        warnings.warn(f"{preprocess!r} preprocessing changes the sample prefix {prefix!r} to "
                      f"{preprocess_text(prefix, preprocess)!r}", CharrnnWarning, stacklevel=2)


def evaluation_sample(model, vocab, config, step):
    """The text shown at the evaluation after `step` minibatches (module docstring), or None
    when there is none to show (a prefix without tokens, a model without finite outputs)."""
    temperature, greedy = config.sample_temperature or 1.0, config.sample_temperature == 0
    seed = [config.seed, SAMPLE_STREAM, step]
    try:
        if not config.records:
            return continue_text(model, vocab, config.sample_prefix or "", config.sample_length, level=config.level,
                                 preprocess=config.preprocess, temperature=temperature, greedy=greedy,
                                 seed=seed).text
        seqs, _, _ = generate_rows(model, [vocab.token_to_idx[START]], 1, config.sample_length,
                                   np.random.default_rng(seed),
                                   temperature=temperature, greedy=greedy, end_id=vocab.token_to_idx[END],
                                   banned=vocab.unk)
        return vocab.decode(seqs[0], config.level)
    except CharrnnError:
        return None
