"""Texts made of records: names, titles, lines, one per line (`--records lines`) or separated by
a blank line (`--records paragraphs`).

Records
-------
A record r = (r_1 .. r_n) is trained as a sequence of its own: the input is <s> r_1 .. r_n and
the target r_1 .. r_n </s> (START, END: two tokens appended to the text's vocabulary), from a
zero state. A minibatch packs whole records: row b holds one record after another, and where a
record starts at step t the state the step reads is reset,

    state_{t-1} <- ρ_t ⊙ state_{t-1},   ρ_t[b] = 0 where row b starts a record at step t, else 1,

for h (and c) of every layer (model.forward_segment, workspace.Workspace.set_resets). The
backward pass multiplies the gradient crossing from step t to t-1 by the same ρ_t
(truncation.with_resets, the cut ξ_t = 0 of truncated BPTT), so neither the state nor the
gradient crosses a record boundary, and BPTT is exact within a record inside a window. A record
longer than what is left of a window goes on in the same row of the next minibatch from the
carried state (as the sequential sampler's rows do), its gradient cut at the window's start as
every stream's is. The loss is the mean over the window's B·T targets (eq. 9.7.2): the ends
(</s>) are targets, the starts (<s>) only inputs. An epoch takes the training records in an
order drawn from its Generator; the last minibatch, which the remaining records do not fill, is
left out (as the stream samplers leave out their last tokens).

Validation holds out the last val_fraction of the records, whole. The record index (the start
and end of every record in the token store's ids) is kept beside the store
(`<store>.<mode>.<ids sha1>.starts.npy` and so on, memory-mapped), and so is the sorted 64-bit hash of every training and
held-out record that `--novelty` looks generated records up in (novelty.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.data.baselines import token_counts, unigram_log_probs
from charrnn.data.corpus import Vocab

RECORD_MODES = ("lines", "paragraphs")
START, END = "<s>", "</s>"
MAX_RECORD_WINDOWS = 1000  # a record longer than num_steps · this is refused
_CHUNK = 1 << 24  # ids scanned at a time
INDEX_PARTS = ("starts", "ends", "lines")


def record_vocab(vocab: Vocab) -> Vocab:
    """The vocabulary with START and END appended (kept where it has them already, e.g. a
    records model's vocabulary fine-tuned on)."""
    missing = [token for token in (START, END) if token not in vocab.token_to_idx]
    if not missing:
        return vocab
    return Vocab.from_dict({"idx_to_token": [*vocab.idx_to_token, *missing],
                            "token_freqs": [[t, c] for t, c in vocab.token_freqs]})


def is_records_vocab(vocab: Vocab) -> bool:
    return START in vocab.token_to_idx and END in vocab.token_to_idx


@dataclass
class RecordSet:
    """Records of a token sequence: record k is ids[starts[k]:ends[k]] (n_k tokens); trained as
    n_k + 1 inputs (<s> first) and n_k + 1 targets (</s> last). line: the first line of each."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    start_id: int
    end_id: int

    def __len__(self) -> int:
        """Targets of one pass over the records: Σ (n_k + 1)."""
        return int((self.ends - self.starts).sum()) + len(self.starts)

    @property
    def num_records(self) -> int:
        return len(self.starts)

    def part(self, first, stop) -> "RecordSet":
        sl = slice(first, stop)
        return RecordSet(self.ids, self.starts[sl], self.ends[sl], self.lines[sl], self.start_id, self.end_id)

    def record(self, k) -> np.ndarray:
        return np.asarray(self.ids[self.starts[k]:self.ends[k]])

    def sequence(self, k) -> tuple:
        """Record k as (x, y): (<s> r, r </s>), int32."""
        r = self.record(k).astype(np.int32)
        return np.concatenate([[self.start_id], r]).astype(np.int32), np.concatenate([r, [self.end_id]]).astype(np.int32)


def find_records(ids, newline_id, mode, max_length=None, name="the text") -> tuple:
    """-> (starts, ends, lines): the records of `ids` (int64 arrays), scanned _CHUNK ids at a time.

    lines: records are the runs between newline tokens; paragraphs: the runs between two or
    more newlines in a row (single newlines stay inside). Empty records are left out. A text
    without a newline -> CharrnnError; a record longer than max_length -> CharrnnError naming
    its line.
    """
    if mode not in RECORD_MODES:
        raise CharrnnError(f"unknown records mode {mode!r} (use {' or '.join(RECORD_MODES)})")
    positions = [np.flatnonzero(np.asarray(ids[i:i + _CHUNK]) == newline_id) + i
                 for i in range(0, len(ids), _CHUNK)] if newline_id is not None else []
    breaks = np.concatenate(positions) if positions else np.empty(0, np.int64)
    if len(breaks) == 0:
        raise CharrnnError(f"--records {mode}: {name} has no line breaks; it must hold one record "
                           f"per {'line' if mode == 'lines' else 'paragraph (separated by a blank line)'}")
    line_of_break = np.arange(len(breaks), dtype=np.int64) + 2  # the line after break k is k + 2
    if mode == "paragraphs":  # a separator: 2+ newlines in a row; keep the first and last of each run
        run_start = np.ones(len(breaks), bool)
        run_start[1:] = breaks[1:] != breaks[:-1] + 1
        run_id = np.cumsum(run_start) - 1
        run_len = np.bincount(run_id)
        separator = run_len[run_id] >= 2
        first = run_start & separator
        last = np.zeros(len(breaks), bool)
        last[:-1] = run_start[1:]
        last[-1] = True
        last &= separator
        ends_at, starts_after, line_of_break = breaks[first], breaks[last], line_of_break[last]
    else:
        ends_at, starts_after = breaks, breaks
    starts = np.concatenate([[0], starts_after + 1]).astype(np.int64)
    ends = np.concatenate([ends_at, [len(ids)]]).astype(np.int64)
    lines = np.concatenate([[1], line_of_break]).astype(np.int64)
    if mode == "paragraphs":  # a lone newline at a paragraph's edge is not part of it
        starts, ends = _strip_newline(ids, starts, ends, newline_id)
    keep = ends > starts
    starts, ends, lines = starts[keep], ends[keep], lines[keep]
    if len(starts) == 0:
        raise CharrnnError(f"--records {mode}: {name} holds no record (only line breaks)")
    if max_length is not None:
        too_long = np.flatnonzero(ends - starts > max_length)
        if len(too_long):
            k = too_long[0]
            raise CharrnnError(f"--records {mode}: the record at line {lines[k]} of {name} is "
                               f"{ends[k] - starts[k]:,} tokens long, more than {max_length:,} "
                               f"(num_steps x {MAX_RECORD_WINDOWS}); is it a text of records?")
    return starts, ends, lines


def _strip_newline(ids, starts, ends, newline_id) -> tuple:
    starts, ends = starts.copy(), ends.copy()
    for array, at, step in ((starts, starts, 1), (ends, ends - 1, -1)):
        inside = ends > starts
        edge = inside.copy()
        edge[inside] = np.asarray(ids)[np.clip(at[inside], 0, len(ids) - 1)] == newline_id
        array[edge] += step
    return starts, ends


def open_records(store, mode, num_steps, vocab=None, ids=None, name=None) -> RecordSet:
    """The RecordSet of a token store (charrnn.store.TokenStore), its index read from beside
    the store or made now (and written there). vocab: the model's (default: the store's with
    START and END); ids: the store's ids in the model's numbering (default: the store's)."""
    vocab = record_vocab(store.vocab if vocab is None else vocab)
    newline_id = store.vocab.token_to_idx.get("\n")
    path = index_path(store, mode)
    index = _read_index(path)
    if index is None:
        index = find_records(store.ids, newline_id, mode, name=name or store.header.get("text", "the text"))
        _write_index(path, index)
    starts, ends, lines = index
    longest = int((ends - starts).max())
    if longest > num_steps * MAX_RECORD_WINDOWS:  # checked on every open: num_steps may differ
        find_records(store.ids, newline_id, mode, num_steps * MAX_RECORD_WINDOWS,
                     name=name or store.header.get("text", "the text"))
    return RecordSet(store.ids if ids is None else ids, starts, ends, lines,
                     vocab.token_to_idx[START], vocab.token_to_idx[END])


def index_path(store, mode) -> Path:
    """Where the record index of a store is kept: `<store>.<mode>.<ids sha1>.{starts,ends,lines}.npy`."""
    return store.path.with_name(f"{store.path.name}.{mode}.{store.header['ids_sha1'][:16]}")


def _read_index(path):
    """The index's three arrays, memory-mapped (a large text's index is read only where used)."""
    try:
        return tuple(np.load(f"{path}.{part}.npy", mmap_mode="r") for part in INDEX_PARTS)
    except (OSError, ValueError):
        return None


def _write_index(path, index) -> None:
    for part, array in zip(INDEX_PARTS, index):
        save_npy(Path(f"{path}.{part}.npy"), array)


def save_npy(path: Path, array) -> None:
    """np.save to `path` atomically; an unwritable place is left alone (the array is made again)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def split_records(records: RecordSet, val_fraction) -> tuple:
    """(train, val): the last int(val_fraction · num_records) records are held out, whole."""
    n = records.num_records
    num_train = n - int(n * val_fraction)
    return records.part(0, num_train), records.part(num_train, n)


def packed_batches(records: RecordSet, batch_size, num_steps, rng=None, pad=False):
    """The minibatches of one epoch of packed records -> iterator of (X, Y, resets), each
    (batch_size, num_steps); resets[b, t]: row b starts a record at step t (module docstring).

    rng: the epoch's Generator, drawing the order of the records (None: their order). Row b
    takes the next record of the order where its record ends, rows filled in turn; the epoch
    ends at the first minibatch the remaining records do not fill. pad: go on until every record
    is in, filling the rest with zeros, and yield (X, Y, resets, mask) with mask False there
    (evaluation)."""
    order = np.arange(records.num_records) if rng is None else rng.permutation(records.num_records)
    rows = [None] * batch_size  # (x, y, position) of the record each row is in
    taken = 0
    while True:
        X = np.empty((batch_size, num_steps), np.int32)
        Y = np.empty((batch_size, num_steps), np.int32)
        resets = np.zeros((batch_size, num_steps), bool)
        mask = np.ones((batch_size, num_steps), bool)
        if pad and taken == len(order) and all(row is None or row[2] == len(row[0]) for row in rows):
            return
        for b in range(batch_size):
            t = 0
            while t < num_steps:
                if rows[b] is None or rows[b][2] == len(rows[b][0]):
                    if taken == len(order) and pad:
                        X[b, t:] = Y[b, t:] = 0
                        mask[b, t:] = False
                        resets[b, t] = True
                        break
                    if taken == len(order):
                        return
                    rows[b] = (*records.sequence(order[taken]), 0)
                    taken += 1
                    resets[b, t] = True
                x, y, pos = rows[b]
                n = min(num_steps - t, len(x) - pos)
                X[b, t:t + n], Y[b, t:t + n] = x[pos:pos + n], y[pos:pos + n]
                rows[b] = (x, y, pos + n)
                t += n
        yield (X, Y, resets, mask) if pad else (X, Y, resets)


def stream_ids(data) -> np.ndarray:
    """The ids a RecordSet's records lie in (separators included), for the n-gram baselines;
    any other data as it is."""
    if not isinstance(data, RecordSet):
        return data
    return data.ids[int(data.starts[0]):int(data.ends[-1])]


def records_log_unigram(train: RecordSet, vocab: Vocab, mode) -> np.ndarray:
    """The add-one smoothed unigram of the targets of training records (cells.init_output_bias):
    the tokens counted in the text, </s> once per record, and (lines) no newline."""
    counts = token_counts(stream_ids(train), len(vocab))
    counts[train.end_id] = train.num_records
    newline = vocab.token_to_idx.get("\n")
    if newline is not None and mode == "lines":
        counts[newline] = 0
    return unigram_log_probs(counts)

