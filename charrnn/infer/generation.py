"""The Python API of generation and scoring: charrnn.sample(...) and charrnn.score(...), which the
`sample` and `score` commands call (decoding.py does the work; docs/records.md shows both).

A records model (trained with --records) generates whole records: each starts after <s> (and
the prefix, if one is given) and ends at </s> or after `length` tokens. A stream model continues
its prefix for `length` tokens, or up to and including the first `stop` string.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.data.novelty import hash_sequences, novelty_index
from charrnn.data.records import END, START, is_records_vocab, open_records, record_vocab
from charrnn.data.store import open_store
from charrnn.infer.decoding import beam_search, generate_rows, text_score
from charrnn.infer.sample import encode_prefix, warn_prefix


@dataclass
class Generated:
    """One sample: its text (the prefix included), its log-probability in nats under the model
    (temperature 1) of the tokens generated (</s> included), how many, whether it ended at </s>
    or the stop string, and where it was found: "train", "val" or "new" (None: not checked)."""

    text: str
    log_prob: float
    tokens: int
    ended: bool
    found: str | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_prob / self.tokens) if self.tokens else math.nan


@dataclass
class Score:
    """log p(text) in nats over `tokens` targets (a record's </s> included)."""

    text: str
    nats: float
    tokens: int

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)


def _prefix_ids(ckpt, prefix):
    if not prefix:
        return np.empty(0, np.int32), ""
    ids, preprocessed, unknown, unknown_count = encode_prefix(ckpt.vocab, prefix, ckpt.config.level,
                                                              ckpt.config.preprocess)
    warn_prefix(prefix, preprocessed, unknown, unknown_count, ckpt.config.preprocess)
    return ids, preprocessed


def sample(checkpoint, n=1, length=200, prefix=None, temperature=1.0, top_k=None, top_p=None, greedy=False, beam=None,
           stop=None, seed=0, novelty=False, only_new=False, data_dir=None, cache_dir=None, on_step=None) -> list:
    """n samples of a trained model, drawn as rows of one batch -> [Generated].

    checkpoint: a trained model with its vocabulary and configuration: a Checkpoint
    (charrnn.load_checkpoint("runs/names")) or the TrainResult of charrnn.train. prefix: text to
    start from (a records model: the start of every record; a stream model: required, default
    its run's sample prefix). top_p: nucleus sampling; greedy: the most likely token; beam: K
    for beam search (n must be 1). stop: a stream model's samples end after this string.
    novelty: look every record up in the training and held-out records (Generated.found);
    only_new: keep only the new ones (fewer than n may remain).
    """
    ckpt = checkpoint
    vocab, level = ckpt.vocab, ckpt.config.level
    if not isinstance(n, int) or n < 1:
        raise CharrnnError(f"n must be a whole number >= 1, got {n!r}")
    records = is_records_vocab(vocab)
    if (novelty or only_new) and not records:
        raise CharrnnError("novelty is for a model trained on records (--records)")
    if stop is not None and records:
        raise CharrnnError("a records model ends its samples at </s>; --stop is for stream models")
    if beam is not None and n != 1:
        raise CharrnnError("beam search gives one sequence; use n = 1 with a beam")
    if prefix is None and not records:
        prefix = ckpt.config.sample_prefix or vocab.token_freqs[0][0]
    prefix_ids, preprocessed = _prefix_ids(ckpt, prefix)
    if not records and len(prefix_ids) == 0:
        raise CharrnnError("a stream model needs a prefix with at least one token to start from")
    start = [vocab.token_to_idx[START], *prefix_ids.tolist()] if records else prefix_ids.tolist()
    end_id = vocab.token_to_idx[END] if records else None
    banned = [vocab.unk, vocab.token_to_idx[START]] if records else vocab.unk
    stop_ids = None
    newline = vocab.token_to_idx.get("\n")
    if records and newline is not None:  # a sample never runs into a second record
        if (ckpt.config.records or "lines") == "lines":
            banned.append(newline)
        else:
            stop_ids = np.array([newline, newline])
    if stop:
        stop_ids, _, _, unknown = encode_prefix(vocab, stop, level, ckpt.config.preprocess)
        if unknown:
            raise CharrnnError(f"the stop string {stop!r} holds tokens outside the vocabulary")
    if beam is not None:
        seq, log_prob, count = beam_search(ckpt.model, start, beam, length, end_id, banned)
        seqs, scores, ended = [seq], np.array([log_prob]), np.array([count > len(seq)])
    else:
        seqs, scores, ended = generate_rows(ckpt.model, start, n, length, np.random.default_rng(seed), temperature,
                                            top_k, top_p, greedy, end_id, banned, stop_ids, on_step)
    separator = " " if level == "word" and preprocessed else ""
    if records and stop_ids is not None:  # a paragraph that reached a blank line ends there
        seqs = [seq[:-2] if end and len(seq) >= 2 and seq[-1] == newline == seq[-2] else seq
                for seq, end in zip(seqs, ended)]
    out = [Generated(preprocessed + separator + vocab.decode(seq, level), float(score), len(seq) + int(end and records),
                     bool(end)) for seq, score, end in zip(seqs, scores, ended)]
    if novelty or only_new:
        found = record_novelty(ckpt, [np.concatenate([prefix_ids, seq]) for seq in seqs], data_dir, cache_dir)
        for item, where in zip(out, found):
            item.found = where
        if only_new:
            out = [item for item in out if item.found == "new"]
    return out


def record_novelty(ckpt, seqs, data_dir=None, cache_dir=None) -> list:
    """"train" | "val" | "new" for each generated record (ids of its tokens, no <s> or </s>)."""
    cfg = ckpt.config
    store = open_store(cfg.corpus, cfg.level, cfg.preprocess, cfg.min_freq, cfg.max_vocab,
                       data_dir=data_dir, cache_dir=cache_dir, warn_dropped=False)
    mode = cfg.records or "lines"

    def records():  # numbered as the model's vocabulary (a fine-tuned model's differs from the store's)
        id_map = np.array(ckpt.vocab[store.vocab.idx_to_token], dtype=np.min_scalar_type(len(ckpt.vocab) - 1))
        same = np.array_equal(id_map, np.arange(len(id_map)))
        return open_records(store, mode, cfg.num_steps, record_vocab(ckpt.vocab),
                            store.ids if same else id_map[store.ids], name=cfg.corpus)

    numbering = hashlib.sha1("\n".join(ckpt.vocab.idx_to_token).encode()).hexdigest()
    index = novelty_index(store, mode, cfg.val_fraction, numbering, records)
    in_train, in_val = index.contains(hash_sequences(seqs))
    return ["train" if t else "val" if v else "new" for t, v in zip(in_train.tolist(), in_val.tolist())]


def score(checkpoint, texts, prefix=None, records=None) -> list:
    """log p of each text under a trained model -> [Score].

    records (default: whether the model was trained on records): each text a record, <s> text
    </s>, its characters and </s> scored; else, after the prefix, every token of the text (from
    the start state without one: the tokens after the first). prefix: text read before.
    """
    ckpt = checkpoint
    vocab, level = ckpt.vocab, ckpt.config.level
    records = is_records_vocab(vocab) if records is None else records
    if records and not is_records_vocab(vocab):
        raise CharrnnError("this model was not trained on records (it has no <s> and </s>)")
    prefix_ids, _ = _prefix_ids(ckpt, prefix)
    out = []
    for text in texts:
        ids, preprocessed, _, _ = encode_prefix(vocab, text, level, ckpt.config.preprocess) if text else (
            np.empty(0, np.int32), "", [], 0)
        if records:
            nats, count = text_score(ckpt.model, ids, prefix_ids, vocab.token_to_idx[START], vocab.token_to_idx[END])
        else:
            nats, count = text_score(ckpt.model, ids, prefix_ids)
        out.append(Score(text, -nats, count))
    return out
