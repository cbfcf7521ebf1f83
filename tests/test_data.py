"""Tests of charrnn.data.corpus: corpus files, preprocessing, tokens, Vocab and the samplers."""
import hashlib
import json
import re
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from charrnn.data import corpus as data
from charrnn.data import samplers
from charrnn.data.corpus import Vocab, count_tokens, load_corpus, read_text, tokenize
from charrnn.data.samplers import (num_minibatches, seq_data_iter_random, seq_data_iter_sequential,
                                   split_corpus)
from charrnn.data.text import preprocess_text
from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.data.samplers import KeyedPermutation

SAMPLERS = [seq_data_iter_random, seq_data_iter_sequential]


def write(path: Path, content) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails as it would offline."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)


# ----------------------------------------------------------------------------- the real book

def test_registry_entry_is_the_book(data_dir):
    entry = data.load_registry()["timemachine"]
    book = (data_dir / entry["filename"]).read_bytes()
    assert len(book) == entry["size"] == 178979
    assert hashlib.sha1(book).hexdigest() == entry["sha1"]


def test_book_d2l_char_level_has_the_textbook_numbers(data_dir, no_network):
    corpus, vocab = load_corpus("timemachine", "char", "d2l", data_dir=data_dir)
    assert corpus.dtype == np.int32 and corpus.shape == (173428,)
    assert len(vocab) == 28
    assert vocab.idx_to_token[:6] == ["<unk>", " ", "e", "t", "a", "i"]
    assert sorted(vocab.idx_to_token[1:]) == [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert vocab.token_freqs[0] == (" ", 32775)
    assert vocab.decode(corpus, "char") == preprocess_text(read_text("timemachine", data_dir), "d2l")


def test_book_d2l_word_level_has_the_textbook_numbers(data_dir, no_network):
    corpus, vocab = load_corpus("timemachine", "word", "d2l", data_dir=data_dir)
    assert corpus.shape == (32775,) and len(vocab) == 4580
    assert vocab.token_freqs[:3] == [("the", 2261), ("i", 1267), ("and", 1245)]
    assert vocab.idx_to_token[1:4] == ["the", "i", "and"]


def test_book_raw_char_level_keeps_every_character(data_dir, no_network):
    corpus, vocab = load_corpus("timemachine", "char", "raw", data_dir=data_dir)
    assert corpus.shape == (178979,)
    assert vocab.decode(corpus, "char") == (data_dir / "timemachine.txt").read_text("utf-8")


def test_book_is_found_through_charrnn_data_dir(data_dir, no_network, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(data_dir))
    assert len(read_text("timemachine")) == 178979


# ----------------------------------------------------------------------------- downloads

@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A source checkout whose registry holds one corpus, 'tiny', served from a file:// URL.
    Returns a function (served bytes, registered bytes) -> the default data directory."""
    corpora = tmp_path / "checkout" / "corpora"
    corpora.mkdir(parents=True)
    served = tmp_path / "server" / "tiny.txt"
    served.parent.mkdir()
    monkeypatch.setattr(data, "SOURCE_CORPORA", corpora)
    monkeypatch.delenv("CHARRNN_DATA_DIR", raising=False)

    def make(served_bytes, registered_bytes=None):
        registered_bytes = served_bytes if registered_bytes is None else registered_bytes
        served.write_bytes(served_bytes)
        entry = {"filename": "tiny.txt", "url": served.as_uri(), "size": len(registered_bytes),
                 "sha1": hashlib.sha1(registered_bytes).hexdigest()}
        (corpora / "registry.json").write_text(json.dumps({"tiny": entry}))
        return corpora
    return make


def test_download_lands_in_the_default_data_dir(registry, capsys):
    corpora = registry(b"hello time machine\n")
    assert data.default_data_dir() == corpora
    assert read_text("tiny") == "hello time machine\n"
    assert sorted(p.name for p in corpora.iterdir()) == ["registry.json", "tiny.txt"]
    assert "downloading tiny.txt" in capsys.readouterr().err
    assert read_text("tiny", data_dir=corpora.parent) == "hello time machine\n"


@pytest.mark.parametrize("served", [b"", b"hello time machinE\n", b"hello time machine\nand more\n"],
                         ids=["empty", "corrupt", "too-long"])
def test_bad_download_leaves_no_file(registry, served):
    corpora = registry(served, registered_bytes=b"hello time machine\n")
    with pytest.raises(CharrnnError) as excinfo:
        read_text("tiny")
    assert_one_line_error(excinfo, "corrupt", "nothing was saved", "19 bytes")
    assert [p.name for p in corpora.iterdir()] == ["registry.json"]


def test_offline_error_says_where_it_looked_and_what_to_do(registry, no_network, tmp_path):
    corpora = registry(b"text\n")
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(CharrnnError) as excinfo:
        read_text("tiny", data_dir=elsewhere)
    assert_one_line_error(excinfo, "'tiny'", str(elsewhere), str(corpora), "network is unreachable",
                          "CHARRNN_DATA_DIR", "path")
    assert [p.name for p in corpora.iterdir()] == ["registry.json"]


def test_local_copy_is_preferred_and_checked(registry, no_network, tmp_path):
    registry(b"the registered text\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    write(mine / "tiny.txt", "the registered text\n")
    assert read_text("tiny", data_dir=mine) == "the registered text\n"
    write(mine / "tiny.txt", "an edited text\n")
    with pytest.raises(CharrnnError) as excinfo:
        read_text("tiny", data_dir=mine)
    assert_one_line_error(excinfo, str(mine / "tiny.txt"), "SHA-1", "delete or replace")


def test_cache_dir_outside_a_source_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SOURCE_CORPORA", tmp_path / "site-packages" / "corpora")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_data_dir() == tmp_path / "cache" / "charrnn"
    assert data.load_registry() == {}


# ----------------------------------------------------------------------------- bad input files

@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"caf\xe9 au lait\n", "not UTF-8 text (byte 0xe9 at offset 3)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary (it contains NUL bytes)"),
    (bytes(range(1, 32)) * 4 + b"some text", "% of its bytes are control characters"),
])
def test_bad_files_get_one_line_errors(tmp_path, content, fragment):
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(CharrnnError) as excinfo:
        load_corpus(path)
    assert_one_line_error(excinfo, str(path), fragment)


def test_missing_path_and_unknown_name_list_the_registry(tmp_path):
    for value in [str(tmp_path / "nope.txt"), "no-such-corpus"]:
        with pytest.raises(CharrnnError) as excinfo:
            read_text(value)
        assert_one_line_error(excinfo, repr(value), "timemachine")


def test_directory_is_rejected(tmp_path):
    with pytest.raises(CharrnnError) as excinfo:
        read_text(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "directory")


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path / "locked.txt", "secret")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(CharrnnError) as excinfo:
        read_text(path)
    assert_one_line_error(excinfo, "cannot read", str(path), "Permission denied")


def test_byte_order_mark_is_dropped(tmp_path):
    assert read_text(write(tmp_path / "bom.txt", b"\xef\xbb\xbfhi")) == "hi"


def test_d2l_on_a_text_without_ascii_letters_suggests_raw(tmp_path):
    path = write(tmp_path / "ru.txt", "Машина времени, 1895.\n")
    with pytest.raises(CharrnnError) as excinfo, pytest.warns(CharrnnWarning, match="dropped 13 letters"):
        load_corpus(path, preprocess="d2l")
    assert_one_line_error(excinfo, str(path), "'raw'")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"level": "byte"}, "unknown level 'byte'"),
    ({"preprocess": "lower"}, "unknown preprocess mode 'lower'"),
])
def test_bad_level_or_preprocess(tmp_path, kwargs, fragment):
    with pytest.raises(CharrnnError) as excinfo:
        load_corpus(write(tmp_path / "a.txt", "abc"), **kwargs)
    assert_one_line_error(excinfo, fragment)


# ----------------------------------------------------------------------------- text and tokens

def test_d2l_preprocessing_example():
    text = "The Time-Machine, by H. G. Wells [1898]\n\n\nI\n"
    assert preprocess_text(text, "d2l") == "the time machine by h g wells i "
    assert preprocess_text("  «Ёж» ok", "d2l") == " ok"
    assert preprocess_text(text, "raw") is text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_d2l_preprocessing_is_the_textbook_regex(text):
    assert preprocess_text(text, "d2l") == re.sub("[^A-Za-z]+", " ", text).lower()


def test_raw_unicode_corpus_round_trips(tmp_path):
    text = "Машина времени.\nЁж — ёж!\n"
    corpus, vocab = load_corpus(write(tmp_path / "ru.txt", text), "char", "raw")
    assert len(corpus) == len(text)
    assert vocab.decode(corpus, "char") == text
    assert vocab.token_freqs[:7] == [(" ", 3), ("\n", 2), ("а", 2), ("е", 2), ("ж", 2), ("и", 2), ("н", 2)]
    words, word_vocab = load_corpus(tmp_path / "ru.txt", "word", "raw")
    assert word_vocab.to_tokens(words.tolist()) == text.split()


def test_tokenize_levels():
    chars = tokenize("héllo\nwörld", "char")
    assert chars.dtype == np.dtype("<U1") and chars.tolist() == list("héllo\nwörld")
    assert tokenize(" the  time\tmachine\n", "word") == ["the", "time", "machine"]


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.sampled_from("ab c\n\tжé\x00"), max_size=60), level=st.sampled_from(["char", "word"]))
def test_work_in_pieces_equals_work_on_the_whole_text(text, level):
    tokens = list(text) if level == "char" else text.split()
    vocab = Vocab(tokens)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "_PIECE_CHARS", 3)  # so that the texts span many pieces
        assert count_tokens(text, level) == Counter(tokens)
        ids, unknown = vocab.encode(text, level)
    assert ids.dtype == np.int32 and ids.tolist() == [vocab.token_to_idx[t] for t in tokens]
    assert unknown == []


# ----------------------------------------------------------------------------- Vocab

def test_vocab_order_min_freq_and_reserved_tokens():
    tokens = "b a c a b d".split()
    assert Vocab(tokens).idx_to_token == ["<unk>", "a", "b", "c", "d"]
    assert Vocab(tokens).token_freqs == [("a", 2), ("b", 2), ("c", 1), ("d", 1)]
    rare_dropped = Vocab(tokens, min_freq=2)
    assert rare_dropped.idx_to_token == ["<unk>", "a", "b"]
    assert rare_dropped["d"] == rare_dropped.unk == 0
    reserved = Vocab(tokens, reserved_tokens=["<bos>", "c", "<unk>", "<bos>"])
    assert reserved.idx_to_token == ["<unk>", "<bos>", "c", "a", "b", "d"]
    assert Vocab().idx_to_token == ["<unk>"] and Vocab(Counter(tokens)).idx_to_token == Vocab(tokens).idx_to_token


def test_vocab_lookups():
    vocab = Vocab(list("hello world"))
    assert vocab["l"] == 1 and vocab["?"] == 0
    assert vocab[["h", "?", "l"]] == [vocab["h"], 0, 1]
    assert vocab.to_tokens(1) == "l" and vocab.to_tokens(np.array([1, 0])) == ["l", "<unk>"]
    ids, unknown = vocab.encode("held?!", "char")
    assert ids.tolist() == vocab[list("held")] + [0, 0] and unknown == ["!", "?"]
    assert vocab.decode(ids, "char") == "held<unk><unk>"
    words = Vocab("the time the machine".split())
    ids, unknown = words.encode("the new time  machine new", "word")
    assert words.decode(ids, "word") == "the <unk> time machine <unk>" and unknown == ["new"]


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_char_vocab_encode_decode(text, other):
    vocab = Vocab(tokenize(text, "char"))
    assert vocab.idx_to_token == Vocab(list(text)).idx_to_token
    ids, unknown = vocab.encode(text, "char")
    assert vocab.decode(ids, "char") == text and unknown == []
    ids, unknown = vocab.encode(other, "char")
    assert unknown == sorted(set(other) - set(text))
    assert ids.tolist() == [vocab.token_to_idx.get(c, 0) for c in other]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1), max_size=30), st.integers(0, 3))
def test_vocab_json_round_trip(tokens, min_freq):
    vocab = Vocab(tokens, min_freq=min_freq, reserved_tokens=["<bos>"])
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.idx_to_token == vocab.idx_to_token
    assert again.token_freqs == vocab.token_freqs
    assert again[tokens] == vocab[tokens]


def test_vocab_save_load(tmp_path):
    vocab = Vocab(list("ёжик в тумане"))
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.to_dict() == vocab.to_dict()
    assert loaded.encode("ёж", "char")[0].tolist() == vocab[["ё", "ж"]]


@pytest.mark.parametrize("bad, fragment", [
    ([], "JSON object"),
    ({"token_freqs": []}, "list of strings"),
    ({"idx_to_token": ["<unk>", 3], "token_freqs": []}, "list of strings"),
    ({"idx_to_token": ["a", "<unk>"], "token_freqs": []}, "start with '<unk>'"),
    ({"idx_to_token": [], "token_freqs": []}, "start with '<unk>'"),
    ({"idx_to_token": ["<unk>", "a", "a"], "token_freqs": []}, "'a' 2 times"),
    ({"idx_to_token": ["<unk>"]}, "token_freqs"),
    ({"idx_to_token": ["<unk>"], "token_freqs": [["a", -1]]}, "token_freqs"),
    ({"idx_to_token": ["<unk>"], "token_freqs": [["a", True]]}, "token_freqs"),
])
def test_malformed_vocab_dicts_are_rejected(bad, fragment):
    with pytest.raises(CharrnnError) as excinfo:
        Vocab.from_dict(bad)
    assert_one_line_error(excinfo, fragment)


def test_unreadable_vocab_files_name_the_path(tmp_path):
    for content in [b"{not json", json.dumps({"idx_to_token": ["x"], "token_freqs": []}).encode()]:
        path = write(tmp_path / "vocab.json", content)
        with pytest.raises(CharrnnError) as excinfo:
            Vocab.load(path)
        assert_one_line_error(excinfo, str(path))


def test_bad_min_freq():
    with pytest.raises(CharrnnError) as excinfo:
        Vocab(["a"], min_freq=-1)
    assert_one_line_error(excinfo, "min_freq", "-1")


# ----------------------------------------------------------------------------- samplers

@st.composite
def sampler_args(draw):
    batch_size, num_steps = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    corpus_len = batch_size * num_steps + 1 + draw(st.integers(0, 300))
    return corpus_len, batch_size, num_steps, draw(st.integers(0, 2**32 - 1))


def epoch(sampler, corpus_len, batch_size, num_steps, seed):
    """All minibatches of one epoch over the corpus 0, 1, ..., so that ids are positions."""
    corpus = np.arange(corpus_len, dtype=np.int64)
    return list(sampler(corpus, batch_size, num_steps, np.random.default_rng(seed)))


@settings(max_examples=80, deadline=None)
@given(args=sampler_args(), sampler=st.sampled_from(SAMPLERS))
def test_sampler_properties(args, sampler):
    corpus_len, batch_size, num_steps, seed = args
    batches = epoch(sampler, *args)
    most = num_minibatches(corpus_len, batch_size, num_steps)
    assert max(most - 1, 1) <= len(batches) <= most
    for X, Y in batches:
        assert X.shape == Y.shape == (batch_size, num_steps)
        assert X.dtype == Y.dtype == np.int32 and X.flags.c_contiguous and Y.flags.c_contiguous
        np.testing.assert_array_equal(X, X[:, :1] + np.arange(num_steps))  # runs of the corpus
        np.testing.assert_array_equal(Y, X + 1)
        assert X.min() >= 0 and Y.max() < corpus_len
    positions = np.concatenate([X.ravel() for X, _ in batches])
    assert len(np.unique(positions)) == len(positions)  # each position at most once per epoch
    again = epoch(sampler, *args)
    assert all(np.array_equal(X, X2) and np.array_equal(Y, Y2) for (X, Y), (X2, Y2) in zip(batches, again))


@settings(max_examples=50, deadline=None)
@given(args=sampler_args())
def test_sequential_rows_continue_across_minibatches(args):
    batches = epoch(seq_data_iter_sequential, *args)
    for (X, _), (X_next, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(X_next[:, 0], X[:, -1] + 1)


@settings(max_examples=50, deadline=None)
@given(args=sampler_args())
def test_random_subsequences_are_cut_at_one_offset(args):
    num_steps = args[2]
    starts = np.concatenate([X[:, 0] for X, _ in epoch(seq_data_iter_random, *args)])
    assert len(set((starts % num_steps).tolist())) == 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_offsets_cover_zero_to_num_steps(sampler):
    offsets = {int(epoch(sampler, 500, 2, 4, seed)[0][0].min() % 4) for seed in range(40)}
    assert offsets == {0, 1, 2, 3}


def test_random_sampler_shuffles():
    starts = [int(X[0, 0]) for X, _ in epoch(seq_data_iter_random, 1001, 1, 10, seed=0)]
    assert len(starts) >= 99 and starts != sorted(starts)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_corpus_of_exactly_one_minibatch(sampler):
    for seed in range(5):
        [(X, Y)] = epoch(sampler, 3 * 4 + 1, 3, 4, seed)
        assert sorted(X.ravel().tolist()) == list(range(12))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("corpus, batch_size, num_steps, fragment", [
    (np.arange(12), 3, 4, "too short for one minibatch of batch_size=3 x num_steps=4 (needs at least 13"),
    (np.arange(100), 0, 4, "batch_size must be an integer >= 1, got 0"),
    (np.arange(100), 2, -3, "num_steps must be an integer >= 1, got -3"),
    (np.arange(100), 2.0, 3, "batch_size must be an integer >= 1, got 2.0"),
    (np.zeros((10, 10), np.int32), 2, 3, "1-D integer array"),
    (np.zeros(100), 2, 3, "1-D integer array"),
])
def test_sampler_errors(sampler, corpus, batch_size, num_steps, fragment):
    with pytest.raises(CharrnnError) as excinfo:
        sampler(corpus, batch_size, num_steps, np.random.default_rng(0))
    assert_one_line_error(excinfo, fragment)


def test_split_corpus_holds_out_the_tail():
    corpus = np.arange(100, dtype=np.int32)
    train, val = split_corpus(corpus)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split_corpus(corpus, val_fraction=0.0)
    assert len(train) == 100 and len(val) == 0
    for bad in [-0.1, 1.0, float("nan")]:
        with pytest.raises(CharrnnError) as excinfo:
            split_corpus(corpus, bad)
        assert_one_line_error(excinfo, "val_fraction", repr(bad))


# ----------------------------------------------------------------------------- samplers on a memory map

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_read_a_memory_map_of_narrow_ids_as_int32(tmp_path, sampler):
    ids = np.random.default_rng(0).integers(0, 200, size=5000).astype(np.uint8)
    ids.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint8, mode="r")
    for (X, Y), (X32, Y32) in zip(sampler(mapped, 4, 7, np.random.default_rng(1)),
                                  sampler(ids.astype(np.int32), 4, 7, np.random.default_rng(1)), strict=True):
        assert X.dtype == Y.dtype == np.int32 and type(X) is np.ndarray
        np.testing.assert_array_equal(X, X32)
        np.testing.assert_array_equal(Y, Y32)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 1000, 4099])
def test_keyed_permutation_is_a_permutation(n):
    order = KeyedPermutation(n, np.random.default_rng(n))
    values = np.concatenate([order.take(slice(start, start + 5)) for start in range(0, n, 5)])
    assert sorted(values.tolist()) == list(range(n))
    if n >= 16:
        other = KeyedPermutation(n, np.random.default_rng(n + 1)).take(slice(0, n))
        assert not np.array_equal(values, other) and not np.array_equal(values, np.arange(n))


@settings(max_examples=30, deadline=None)
@given(args=sampler_args())
def test_random_sampler_beyond_the_in_memory_shuffle_keeps_its_properties(args):
    corpus_len, batch_size, num_steps, seed = args
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(samplers, "_SHUFFLE_IN_MEMORY", 0)  # every order by KeyedPermutation
        batches = epoch(seq_data_iter_random, *args)
    most = num_minibatches(corpus_len, batch_size, num_steps)
    assert max(most - 1, 1) <= len(batches) <= most
    for X, Y in batches:
        np.testing.assert_array_equal(X, X[:, :1] + np.arange(num_steps))
        np.testing.assert_array_equal(Y, X + 1)
    positions = np.concatenate([X.ravel() for X, _ in batches])
    assert len(np.unique(positions)) == len(positions)
    assert len(set((positions[::num_steps] % num_steps).tolist())) == 1


def test_contiguous_batches_of_a_memory_map_through_an_id_map(tmp_path):
    from charrnn.infer.evaluate import contiguous_batches
    ids = np.random.default_rng(2).integers(0, 5, size=999).astype(np.uint8)
    ids.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint8, mode="r")
    id_map = np.array([0, 4, 3, 2, 1])
    chunks = list(contiguous_batches(mapped, num_rows=4, num_steps=10, id_map=id_map))
    expected = list(contiguous_batches(id_map[ids], num_rows=4, num_steps=10))
    assert len(chunks) == len(expected) == 25
    for (X, Y), (X_expected, Y_expected) in zip(chunks, expected):
        assert X.dtype == np.int32
        np.testing.assert_array_equal(X, X_expected)
        np.testing.assert_array_equal(Y, Y_expected)
