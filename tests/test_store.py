"""Tests of charrnn.data.stream and charrnn.data.store: streamed tokenization into a memory-mapped store."""
import errno
import io
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from charrnn.data import corpus as data
from charrnn.data import store as store_module
from charrnn.data import stream
from charrnn.data.corpus import load_corpus
from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.data.store import open_store, read_store
from charrnn.data.stream import IdFile
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig

LEVELS_AND_MODES = [("char", "d2l"), ("char", "raw"), ("word", "d2l"), ("word", "raw")]


def write(path: Path, content) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def assert_same_as_in_memory(path, level, preprocess, cache_dir, piece_bytes, **limits):
    """The store of `path` holds the ids and vocabulary that charrnn.data.corpus.load_corpus gives."""
    store = open_store(path, level, preprocess, cache_dir=cache_dir, piece_bytes=piece_bytes, **limits)
    ids, vocab = load_corpus(path, level, preprocess)
    if limits:  # load_corpus knows no limits: renumber its ids into the limited vocabulary
        vocab_limited = data.Vocab(dict(vocab.token_freqs), min_freq=limits.get("min_freq", 0),
                                   max_size=limits.get("max_vocab"))
        ids = np.array(vocab_limited[vocab.to_tokens(ids.tolist())])
        vocab = vocab_limited
    assert store.vocab.idx_to_token == vocab.idx_to_token
    assert [tuple(pair) for pair in store.vocab.token_freqs] == vocab.token_freqs
    assert store.ids.dtype == stream.id_dtype(len(vocab))
    np.testing.assert_array_equal(store.ids, ids)
    store.verify()
    return store


# ----------------------------------------------------------------------------- piece boundaries

BOUNDARY_TEXTS = {
    "2-, 3- and 4-byte characters": "aé€😀b é€😀\n😀€éa",
    "a word across pieces": "the timemachine traveller\tsaid  \n",
    "shorter than a piece": "hi",
    "an empty piece after d2l": "ab" + ",.;:!?-" * 5 + "cd 1234567890 e",
    "whitespace runs at the ends": "  \n\t x  y \n",
    "universal newlines": "a\r\nb\rc\r\n\r\r\nd\r",
}


@pytest.mark.filterwarnings("ignore::charrnn.base.errors.CharrnnWarning")  # d2l drops é (tested below)
@pytest.mark.parametrize("text", BOUNDARY_TEXTS.values(), ids=BOUNDARY_TEXTS.keys())
@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 1 << 20])
@pytest.mark.parametrize("level, preprocess", LEVELS_AND_MODES)
def test_every_piece_size_gives_the_in_memory_tokens(tmp_path, text, piece_bytes, level, preprocess):
    path = write(tmp_path / "t.txt", text)
    assert_same_as_in_memory(path, level, preprocess, tmp_path / "cache", piece_bytes)


def test_characters_cut_by_every_boundary_are_whole():
    text = "é€😀" * 3  # 2-, 3- and 4-byte characters: every cut position of each occurs
    for piece_bytes in range(1, 10):
        pieces = list(stream.utf8_pieces(stream.byte_pieces(io.BytesIO(text.encode()), "t", piece_bytes), "t"))
        assert "".join(piece_text for _, piece_text in pieces) == text
        assert all(piece_bytes_.decode() == piece_text for piece_bytes_, piece_text in pieces)


@pytest.mark.filterwarnings("ignore::charrnn.base.errors.CharrnnWarning")  # d2l drops é (tested below)
@settings(max_examples=60, deadline=None)
@given(text=st.text(st.sampled_from("ab Z\n\r\t\u00a0\u2003é€😀,."), min_size=1, max_size=80),
       piece_bytes=st.integers(1, 9), level_mode=st.sampled_from(LEVELS_AND_MODES))
def test_streamed_tokenization_equals_in_memory(text, piece_bytes, level_mode):
    level, preprocess = level_mode
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "t.txt", text)
        try:
            expected = load_corpus(path, level, preprocess)
        except CharrnnError as err:  # nothing but whitespace: the store refuses it the same way
            with pytest.raises(CharrnnError, match="nothing but whitespace"):
                open_store(path, level, preprocess, cache_dir=Path(tmp) / "c", piece_bytes=piece_bytes)
            assert "nothing but whitespace" in str(err)
            return
        store = open_store(path, level, preprocess, cache_dir=Path(tmp) / "c", piece_bytes=piece_bytes)
        assert store.vocab.idx_to_token == expected[1].idx_to_token
        assert store.ids.tolist() == expected[0].tolist()


def test_first_tokenization_shows_a_progress_bar_in_bytes_only_when_asked(tmp_path, capsys):
    path = write(tmp_path / "t.txt", "some text " * 100)
    open_store(path, cache_dir=tmp_path / "quiet")
    assert capsys.readouterr().err == ""  # stderr is no terminal here
    open_store(path, cache_dir=tmp_path / "shown", progress=True)
    assert "tokenizing t.txt" in capsys.readouterr().err
    open_store(path, cache_dir=tmp_path / "shown", progress=True)  # made already: no bar
    assert capsys.readouterr().err == ""


def test_the_letters_d2l_drops_are_warned_about_on_every_use(tmp_path):
    path = write(tmp_path / "t.txt", "Ёжик в тумане, the hedgehog in the fog; café " * 5)
    with pytest.warns(CharrnnWarning) as in_memory:
        load_corpus(path, "char", "d2l")
    for _ in range(2):  # made now, then read from the store
        with pytest.warns(CharrnnWarning) as streamed:
            open_store(path, "char", "d2l", cache_dir=tmp_path / "c", piece_bytes=3)
        assert [str(w.message) for w in streamed] == [str(w.message) for w in in_memory]
    assert "dropped 60 letters" in str(in_memory[0].message)  # Ёжик в тумане, é: 12 letters x 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_store(path, "char", "raw", cache_dir=tmp_path / "c")  # raw drops nothing
        open_store(path, "char", "d2l", cache_dir=tmp_path / "c", warn_dropped=False)


def test_ids_widen_from_uint8_when_the_vocabulary_outgrows_it(tmp_path, monkeypatch):
    monkeypatch.setattr(IdFile, "CHUNK", 7)  # widening in place runs over several chunks
    text = "ab" * 50 + "".join(map(chr, range(0x400, 0x400 + 300)))  # 302 distinct, most late
    path = write(tmp_path / "cyrillic.txt", text)
    store = assert_same_as_in_memory(path, "char", "raw", tmp_path / "c", piece_bytes=4)
    assert store.ids.dtype == np.uint16 and len(store.vocab) == 303


def test_id_file_widens_to_uint32_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(IdFile, "CHUNK", 1000)
    with open(tmp_path / "scratch", "w+b") as f:
        ids = IdFile(f)
        ids.append(np.arange(200), 200)
        ids.append(np.arange(200, 3000), 3000)
        ids.append(np.arange(3000, 70_000), 70_000)
        assert ids.dtype == np.uint32
        assert np.concatenate(list(ids.chunks())).tolist() == list(range(70_000))


# ----------------------------------------------------------------------------- the book

@pytest.mark.parametrize("level, preprocess, tokens, vocab_size", [
    ("char", "d2l", 173428, 28), ("char", "raw", 178979, None), ("word", "d2l", 32775, 4580)])
def test_book_store_holds_the_textbook_numbers(data_dir, tmp_path, level, preprocess, tokens, vocab_size):
    store = open_store("timemachine", level, preprocess, data_dir=data_dir, cache_dir=tmp_path)
    assert len(store) == tokens and store.built
    assert vocab_size is None or len(store.vocab) == vocab_size
    ids, vocab = load_corpus("timemachine", level, preprocess, data_dir=data_dir)
    assert store.vocab.idx_to_token == vocab.idx_to_token
    np.testing.assert_array_equal(store.ids, ids)
    again = open_store("timemachine", level, preprocess, data_dir=data_dir, cache_dir=tmp_path)
    assert not again.built and isinstance(again.ids.base.obj, mmap.mmap) and not again.ids.flags.writeable
    assert again.ids.dtype == (np.uint8 if level == "char" else np.uint16)


# ----------------------------------------------------------------------------- invalidation

@pytest.mark.parametrize("edit", ["abd abd abc", "abc abc abd x"], ids=["same length", "longer"])
def test_an_edited_text_is_tokenized_again(tmp_path, edit):
    path = write(tmp_path / "t.txt", "abc abc abd")
    first = open_store(path, "word", "raw", cache_dir=tmp_path / "c")
    write(path, edit)  # at once: the same coarse mtime tick as the first version is possible
    second = open_store(path, "word", "raw", cache_dir=tmp_path / "c")
    assert second.built and second.path == first.path
    assert second.vocab.to_tokens(second.ids.tolist()) == path.read_text().split()


def test_store_is_per_text_level_and_limits(tmp_path):
    path = write(tmp_path / "t.txt", "a b a c a b")
    names = {open_store(path, level, "raw", min_freq, max_vocab, cache_dir=tmp_path / "c").path.name
             for level in ("char", "word") for min_freq, max_vocab in [(0, None), (2, None), (0, 1)]}
    assert len(names) == 6


@pytest.mark.parametrize("damage", ["truncated", "one byte more", "garbage", "header cut", "foreign magic",
                                    "wrong dtype"])
def test_a_damaged_store_is_refused_and_rebuilt(tmp_path, damage):
    path = write(tmp_path / "t.txt", "the time machine " * 20)
    built = open_store(path, "char", "raw", cache_dir=tmp_path / "c")
    content = built.path.read_bytes()
    header_end = content.index(b"}") + 1
    damaged = {"truncated": content[:-3], "one byte more": content + b"\0", "garbage": os.urandom(500),
               "header cut": content[:header_end - 10], "foreign magic": b"X" + content[1:],
               "wrong dtype": content.replace(b'"dtype": "uint8"', b'"dtype": "uint16"')}[damage]
    assert damaged != content
    write(built.path, damaged)
    with pytest.raises(CharrnnError) as excinfo:
        read_store(built.path)
    assert str(built.path) in str(excinfo.value) and "\n" not in str(excinfo.value)
    rebuilt = open_store(path, "char", "raw", cache_dir=tmp_path / "c")
    assert rebuilt.built and rebuilt.path.read_bytes() == content


def test_verify_reads_every_id(tmp_path):
    path = write(tmp_path / "t.txt", "abcabcabc")
    store = open_store(path, "char", "raw", cache_dir=tmp_path / "c")
    content = bytearray(store.path.read_bytes())
    content[-1] ^= 1  # an id changed, the length and header intact
    write(store.path, bytes(content))
    with pytest.raises(CharrnnError, match="corrupt"):
        read_store(store.path).verify()


# ----------------------------------------------------------------------------- bad input

def test_binary_is_refused_on_its_first_block(tmp_path):
    class Counting(io.BytesIO):
        read_total = 0

        def read(self, size=-1):
            chunk = super().read(size)
            Counting.read_total += len(chunk)
            return chunk
    f = Counting(b"\x89PNG\r\n\x1a\n\x00" + bytes(10 << 20))
    with pytest.raises(CharrnnError, match="binary"):
        list(stream.byte_pieces(f, "x.png", piece_bytes=1 << 20))
    assert Counting.read_total <= 1 << 20


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"fine text\n" * 1000 + b"caf\xe9", "not UTF-8 text (byte 0xe9 at offset 10003)"),
    (b"ends inside a character \xe2\x82", "not UTF-8 text (byte 0xe2 at offset 24)"),
    (b"text\n" * 5000 + b"\x00\x01", "binary (it contains NUL bytes)"),
])
def test_bad_text_one_line_error_like_in_memory(tmp_path, content, fragment):
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(CharrnnError) as excinfo:
        open_store(path, "char", "raw", cache_dir=tmp_path / "c", piece_bytes=7)
    message = str(excinfo.value)
    assert fragment in message and str(path) in message and "\n" not in message
    with pytest.raises(CharrnnError) as in_memory:
        load_corpus(path, "char", "raw")
    assert str(in_memory.value) == message
    assert not list((tmp_path / "c").glob("*.tokens"))


@pytest.mark.parametrize("stage", ["tokenizing", "writing the store"])
def test_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch, stage):
    path = write(tmp_path / "t.txt", "the time machine " * 50)
    cache = tmp_path / "cache"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    if stage == "tokenizing":
        monkeypatch.setattr(IdFile, "append", full)
    else:
        original = store_module._write_header
        monkeypatch.setattr(store_module, "_write_header", lambda out, header: (original(out, header), full()))
    with pytest.raises(CharrnnError) as excinfo:
        open_store(path, "char", "raw", cache_dir=cache)
    message = str(excinfo.value)
    assert str(cache) in message and "No space left" in message and "--cache-dir" in message
    assert "\n" not in message
    assert [p.suffix for p in cache.iterdir()] == [".lock"]  # no store, no scratch, no temporary file


def test_an_unwritable_cache_dir_is_one_line(tmp_path):
    path = write(tmp_path / "t.txt", "abc")
    blocker = write(tmp_path / "file", "not a directory")
    with pytest.raises(CharrnnError) as excinfo:
        open_store(path, cache_dir=blocker / "cache")
    assert str(blocker / "cache") in str(excinfo.value) and "--cache-dir" in str(excinfo.value)
    with pytest.raises(CharrnnError, match="NUL"):
        open_store(path, cache_dir=tmp_path / "a\0b")


# ----------------------------------------------------------------------------- concurrency

OPEN_IN_A_PROCESS = """
import json, sys
from charrnn.data.store import open_store
store = open_store(sys.argv[1], "char", "raw", cache_dir=sys.argv[2], piece_bytes=1 << 12)
print(json.dumps({"built": store.built, "ids_sha1": store.header["ids_sha1"], "tokens": len(store)}))
"""


def start(path, cache):
    return subprocess.Popen([sys.executable, "-c", OPEN_IN_A_PROCESS, str(path), str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out)


def test_two_processes_first_using_a_text_build_it_once(tmp_path):
    path = write(tmp_path / "t.txt", "the time machine é€😀\n" * 20_000)
    results = [finish(p) for p in [start(path, tmp_path / "c"), start(path, tmp_path / "c")]]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["ids_sha1"] == results[1]["ids_sha1"] and results[0]["tokens"] == 21 * 20_000


def test_a_second_process_waits_for_the_builder(tmp_path):
    import fcntl
    path = write(tmp_path / "t.txt", "waiting " * 100)
    cache = tmp_path / "c"
    cache.mkdir()
    name = store_module.store_name(path.resolve(), {"level": "char", "preprocess": "raw",
                                                    "min_freq": 0, "max_vocab": None})
    with open(cache / (name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as if another process were building
        waiter = start(path, cache)
        time.sleep(1.5)
        assert waiter.poll() is None and not (cache / name).exists()
    assert finish(waiter) == {"built": True, "ids_sha1": read_store(cache / name).header["ids_sha1"],
                              "tokens": 800}


# ----------------------------------------------------------------------------- settings

def test_min_freq_and_max_vocab_at_word_level(tmp_path):
    path = write(tmp_path / "t.txt", "a a a a b b b c c d e f g " * 3)
    for limits in [{"min_freq": 7}, {"max_vocab": 2}, {"min_freq": 4, "max_vocab": 5}]:
        store = assert_same_as_in_memory(path, "word", "raw", tmp_path / "c", 4, **limits)
        assert store.vocab.idx_to_token[1:3] == ["a", "b"]
    assert len(open_store(path, "word", "raw", max_vocab=2, cache_dir=tmp_path / "c").vocab) == 3
    with pytest.raises(CharrnnError, match="max_vocab"):
        open_store(path, "word", "raw", max_vocab=-1, cache_dir=tmp_path / "c")


def test_cache_dir_follows_the_environment_then_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "mine"))
    assert store_module.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CHARRNN_CACHE_DIR")
    monkeypatch.setattr(data, "SOURCE_CORPORA", tmp_path / "site-packages" / "corpora")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_module.default_cache_dir() == tmp_path / "xdg" / "charrnn" / "tokens"


# ----------------------------------------------------------------------------- the commands on the store

TINY_RUN = ["--num-hiddens", "8", "--batch-size", "2", "--num-steps", "4", "--sample-length", "5",
            "--eval-every", "100000"]


def invoke(*args):
    from click.testing import CliRunner
    from charrnn import cli
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 0 and result.exception is None, result.output
    return result


def test_training_reads_views_of_the_memory_map_not_int32_copies(tmp_path, write_words):
    from charrnn.training import start as training
    path = write_words(tmp_path / "w.txt", 300, seed=1)
    config = TrainConfig(corpus=str(path), num_hiddens=8, batch_size=2, num_steps=4)
    train, val, vocab, data_id = training.load_data(config, None, cache_dir=tmp_path / "c")
    store = open_store(path, cache_dir=tmp_path / "c")
    for split in (train, val):
        assert split.dtype == np.uint8 and not split.flags.owndata and not split.flags.writeable
        assert isinstance(split.base.base.obj, mmap.mmap)  # view <- the store's ids <- the map
    assert len(train) + len(val) == len(store) and vocab.idx_to_token == store.vocab.idx_to_token
    assert data_id == store.split_sha1(len(train)) != store.split_sha1(len(train) - 1)


def test_corpus_command_reports_where_the_store_is(tmp_path, write_words):
    path = write_words(tmp_path / "w.txt", 200, seed=2)
    first = json.loads(invoke("corpus", path, "--json", "--cache-dir", tmp_path / "c").stdout)
    assert Path(first["store"]).parent == tmp_path / "c" and first["dtype"] == "uint8"
    assert first["store_bytes"] == Path(first["store"]).stat().st_size > first["tokens"]
    table = invoke("corpus", path, "--cache-dir", tmp_path / "c").stdout
    assert f"token store: {first['store']} ({first['store_bytes']:,} bytes, uint8 ids)" in table
    assert "made now" not in table


def test_word_level_limits_train_end_to_end_and_stay_with_the_run(tmp_path, write_words):
    path = write_words(tmp_path / "w.txt", 400, seed=3)
    run = tmp_path / "run"
    invoke("train", path, "--level", "word", "--max-vocab", "5", "--min-freq", "2", *TINY_RUN,
           "--max-tokens", "64", "--out", run, "--cache-dir", tmp_path / "c")
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert len(ckpt.vocab) == 6 and ckpt.config.max_vocab == 5 and ckpt.config.min_freq == 2
    assert ckpt.model.params["W_hq"].shape == (8, 6)
    invoke("train", "--resume", run, "--max-tokens", "128", "--cache-dir", tmp_path / "c")
    from click.testing import CliRunner
    from charrnn import cli
    refused = CliRunner().invoke(cli.main, ["train", "--resume", str(run), "--max-vocab", "7",
                                            "--max-tokens", "256"])
    assert refused.exit_code == 2 and "max_vocab" in refused.output


def test_a_run_saved_with_the_int32_data_sha1_still_resumes(tmp_path, write_words):
    from charrnn.training import start as training
    from charrnn.training.checkpoint import legacy_tokens_sha1
    from charrnn.base.io import load_npz, save_npz
    path = write_words(tmp_path / "w.txt", 300, seed=4)
    config = TrainConfig(corpus=str(path), num_hiddens=8, batch_size=2, num_steps=4,
                                  max_tokens=32, sample_length=5)
    training.train(config, tmp_path / "run", cache_dir=tmp_path / "c")
    checkpoint = tmp_path / "run" / CHECKPOINT
    arrays, meta = load_npz(checkpoint)
    train_ids = training.load_data(config, None, cache_dir=tmp_path / "c")[0]
    for saved, resumes in [(legacy_tokens_sha1(train_ids), True), ("0" * 40, False)]:
        save_npz(checkpoint, arrays, {**meta, "data_sha1": saved})
        if resumes:
            training.resume(tmp_path / "run", {"max_tokens": 64}, cache_dir=tmp_path / "c")
            arrays, meta = load_npz(checkpoint)  # the checkpoint the resumed run wrote
        else:
            with pytest.raises(CharrnnError, match="not the text the run"):
                training.resume(tmp_path / "run", {"max_tokens": 96}, cache_dir=tmp_path / "c")


def test_evaluating_another_text_maps_its_ids_to_the_checkpoints(tmp_path):
    from charrnn.training.config import TrainConfig
    from charrnn.infer.evaluate import evaluate_text, mean_loss
    from charrnn.nn.model import RNNLM
    trained_on = write(tmp_path / "a.txt", "abcde abcde abcde " * 20)
    other = write(tmp_path / "b.txt", "edcba xyz edcba " * 20)  # another order, and x y z unknown
    vocab = open_store(trained_on, "char", "raw", cache_dir=tmp_path / "c").vocab
    model = RNNLM(len(vocab), 8, seed=0)
    config = TrainConfig(corpus=str(trained_on), preprocess="raw")
    result = evaluate_text(model, vocab, config, corpus=str(other), cache_dir=tmp_path / "c")
    ids, unknown = vocab.encode(other.read_text(), "char")  # the in-memory reading
    assert result.unknown == unknown == ["x", "y", "z"] and result.tokens == len(ids)
    assert result.loss == pytest.approx(mean_loss(model, ids), rel=1e-12)


def test_samplers_and_evaluation_give_the_maps_pages_back(tmp_path, monkeypatch, write_words):
    from charrnn.infer import evaluate
    from charrnn.data import samplers
    store = open_store(write_words(tmp_path / "w.txt", 2000, seed=5), cache_dir=tmp_path / "c")
    assert samplers.memory_map_of(store.ids[10:-10]) is samplers.memory_map_of(store.ids) is not None
    assert samplers.memory_map_of(np.array(store.ids)) is None
    released = []
    monkeypatch.setattr(samplers, "release_pages", released.append)
    monkeypatch.setattr(evaluate, "release_pages", released.append)
    monkeypatch.setattr(samplers, "RELEASE_BYTES", 3 * 8)  # the sequential rows: every 3 minibatches
    random = list(samplers.seq_data_iter_random(store.ids, 4, 8, np.random.default_rng(0)))
    assert len(released) == len(random) > 10  # scattered reads: after every minibatch
    released.clear()
    sequential = list(samplers.seq_data_iter_sequential(store.ids, 4, 8, np.random.default_rng(0)))
    assert len(released) == len(sequential) // 3
    released.clear()
    chunks = list(evaluate.contiguous_batches(store.ids, num_rows=4, num_steps=8))
    assert len(released) == len(chunks) // 3
    assert all(X.flags.owndata and Y.flags.owndata for X, Y in chunks)  # copies, not views of the map
