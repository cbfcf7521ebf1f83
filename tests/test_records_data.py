"""Finding, packing and holding out records (charrnn.data.records), and the bad texts refused."""
import numpy as np
import pytest

from charrnn.data.corpus import Vocab
from charrnn.base.errors import CharrnnError
from charrnn.data.records import (END, START, RecordSet, find_records, packed_batches, record_vocab, split_records)


def ids_of(text):
    vocab = Vocab(list(text))
    return np.array([vocab[c] for c in text], np.uint8), vocab


def records_of(text, mode="lines", max_length=None):
    ids, vocab = ids_of(text)
    starts, ends, lines = find_records(ids, vocab["\n"], mode, max_length)
    return ["".join(vocab.to_tokens(ids[s:e].tolist())) for s, e in zip(starts, ends)], lines.tolist()


def test_lines_are_records_and_empty_lines_are_skipped():
    assert records_of("Ada\nBo\n\nCyd") == (["Ada", "Bo", "Cyd"], [1, 2, 4])
    assert records_of("Ada\nBo\n") == (["Ada", "Bo"], [1, 2])


def test_paragraphs_are_separated_by_blank_lines_and_keep_their_line_breaks():
    text = "roses are red\nviolets blue\n\n\nsugar is sweet\n\nand so\nare you\n"
    assert records_of(text, "paragraphs") == (["roses are red\nviolets blue", "sugar is sweet", "and so\nare you"],
                                              [1, 5, 7])


def test_a_text_without_line_breaks_is_refused_saying_so():
    with pytest.raises(CharrnnError, match="has no line breaks"):
        records_of("one long line of text")


def test_a_record_too_long_is_refused_with_its_line_number():
    with pytest.raises(CharrnnError, match="line 3 .* 12 tokens long"):
        records_of("ab\ncd\n" + "x" * 12 + "\nef", max_length=10)


def test_the_vocabulary_gains_start_and_end_tokens_once():
    vocab = record_vocab(Vocab(list("abc")))
    assert vocab.idx_to_token[-2:] == [START, END]
    assert record_vocab(vocab) is vocab


def make_set(lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids, starts = [], []
    for n in lengths:
        starts.append(len(ids))
        ids += rng.integers(1, 5, n).tolist() + [9]
    starts = np.array(starts)
    return RecordSet(np.array(ids), starts, starts + np.array(lengths), np.arange(len(lengths)) + 1, 7, 8)


def test_packed_rows_hold_whole_records_each_starting_with_a_reset():
    records = make_set([3, 1, 7, 2, 5, 4, 6, 2, 2, 9, 1, 3], seed=1)
    seen = []
    rows = {}
    for X, Y, resets in packed_batches(records, 3, 5, np.random.default_rng(0)):
        assert np.array_equal(resets, X == 7)  # a reset exactly where <s> is read
        for b in range(3):
            rows.setdefault(b, []).append((X[b], Y[b]))
    for b, parts in rows.items():
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        cuts = np.flatnonzero(x == 7).tolist() + [len(x)]
        assert cuts[0] == 0
        for s, e in zip(cuts[:-1], cuts[1:]):
            if e - s > 1 and y[e - 1] == 8:  # a whole record: <s> r / r </s>
                assert np.array_equal(x[s + 1:e], y[s:e - 1])
                seen.append(tuple(x[s + 1:e].tolist()))
    whole = {tuple(records.record(k).tolist()) for k in range(records.num_records)}
    assert set(seen) <= whole and len(seen) >= records.num_records // 2


def test_the_held_out_records_are_the_last_ones_whole():
    train, val = split_records(make_set([2] * 10), 0.25)
    assert (train.num_records, val.num_records) == (8, 2)
    assert val.starts[0] == train.ends[-1] + 1
