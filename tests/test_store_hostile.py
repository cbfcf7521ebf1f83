"""Hostile and unlucky token stores: a store is read as carefully
as a checkpoint. Its header is capped, parsed with limits and checked against a schema; its ids
are verified; a FIFO or device in its place never blocks; what a killed build leaves is cleared.
Anything wrong is rebuilt (or refused in one line naming the file), never used; then a
hypothesis fuzz of a real store's bytes finds no traceback, hang or memory blow-up."""
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.base.errors import CharrnnError
from charrnn.base.io import MAX_META_BYTES
from charrnn.data import store as store_module
from charrnn.data.store import open_store, read_store

LIMIT_SECONDS, LIMIT_BYTES = 1.0, 100 * 2**20
TEXT = "the time machine traveller said we go into the future " * 40


def write(path: Path, content) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.fixture
def built(tmp_path):
    """-> (text path, cache dir, the store's bytes, its header, offset of its ids)."""
    text, cache = write(tmp_path / "t.txt", TEXT), tmp_path / "cache"
    store = open_store(text, "char", "raw", cache_dir=cache)
    content = store.path.read_bytes()
    return text, cache, store.path, content, dict(store.header), len(content) - store.ids.nbytes


def store_bytes(header, ids: bytes, raw_header: bytes | None = None) -> bytes:
    """A store file as charrnn lays one out, with any header (a dict, or raw bytes)."""
    data = raw_header if raw_header is not None else json.dumps(header, sort_keys=True).encode()
    prefix = store_module.MAGIC + len(data).to_bytes(8, "little") + data
    return prefix + bytes(-len(prefix) % store_module.ALIGN) + ids


def reopened(text, cache):
    """open_store again, in this process: must rebuild what it cannot use, in one line if not."""
    return open_store(text, "char", "raw", cache_dir=cache)


def refused_quickly(path):
    """read_store refuses `path` with one line naming it, within 1 s and 100 MB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CharrnnError) as err:
            read_store(path)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value) and str(path) in str(err.value), err.value
    assert seconds < LIMIT_SECONDS and peak < LIMIT_BYTES, (seconds, peak)
    return str(err.value)


# ----------------------------------------------------------------------------- the header's schema

HEADER_EDITS = {
    "a lone surrogate token": lambda h: h["vocab"]["idx_to_token"].__setitem__(1, "\ud800"),
    "a lone surrogate in the counts": lambda h: h["vocab"]["token_freqs"][0].__setitem__(0, "\udfff"),
    "a count past int64": lambda h: h["vocab"]["token_freqs"][0].__setitem__(1, 2**64),
    "num_tokens past int64": lambda h: h.__setitem__("num_tokens", 2**70),
    "a text size past int64": lambda h: h["text"].__setitem__("size", 2**63),
    "an unknown field": lambda h: h.__setitem__("extra", 1),
    "a missing field": lambda h: h.pop("dropped_letters"),
    "a level of the wrong type": lambda h: h.__setitem__("level", ["char"]),
    "a vocabulary without <unk> first": lambda h: h["vocab"]["idx_to_token"].reverse(),
    "a float count": lambda h: h["vocab"]["token_freqs"][0].__setitem__(1, 1.5),
}


@pytest.mark.parametrize("edit", HEADER_EDITS.values(), ids=HEADER_EDITS.keys())
def test_a_header_that_fails_the_checkpoint_schema_is_refused_and_rebuilt(built, edit):
    text, cache, path, content, header, offset = built
    edit(header)
    write(path, store_bytes(header, content[offset:]))
    refused_quickly(path)
    store = reopened(text, cache)
    assert store.built and path.read_bytes() == content


def test_training_on_a_store_with_a_surrogate_token_retrains_from_a_clean_store(built, tmp_path):
    from test_cli import assert_ok, invoke
    text, cache, path, content, header, offset = built
    header["vocab"]["idx_to_token"][1] = "\ud800"
    write(path, store_bytes(header, content[offset:]))
    out = tmp_path / "run"
    assert_ok(invoke("train", text, "--preprocess", "raw", "--cache-dir", cache, "--num-hiddens", 8,
                     "--batch-size", 2, "--num-steps", 4, "--max-tokens", 64, "--eval-every", 64, "--out", out))
    assert_ok(invoke("sample", out, "--length", 5))
    assert path.read_bytes() == content


# ----------------------------------------------------------------------------- the ids

def swapped(content, offset):
    """The store with two different ids (the first at `offset`) swapped in place: length, header
    and id counts intact."""
    damaged = bytearray(content)
    ids = np.frombuffer(content, np.uint8, offset=offset)
    i = 0
    j = int(np.flatnonzero(ids != ids[i])[0])
    damaged[offset + i], damaged[offset + j] = damaged[offset + j], damaged[offset + i]
    return bytes(damaged)


def test_ids_swapped_in_place_are_seen_and_the_store_rebuilt(built):
    text, cache, path, content, header, offset = built
    write(path, swapped(content, offset))
    store = reopened(text, cache)
    assert store.built and path.read_bytes() == content


def test_an_id_past_the_vocabulary_is_seen_and_the_store_rebuilt(built):
    text, cache, path, content, header, offset = built
    damaged = bytearray(content)
    damaged[-1] = 250
    write(path, bytes(damaged))
    store = reopened(text, cache)
    assert store.built and path.read_bytes() == content


def test_evaluate_and_resume_never_use_altered_ids(tmp_path, write_words):
    from test_cli import assert_ok, invoke
    text = write_words(tmp_path / "words.txt", 600, seed=2)
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["--cache-dir", cache, "--num-hiddens", 8, "--batch-size", 2, "--num-steps", 8, "--eval-every", 256]
    assert_ok(invoke("train", text, *args, "--max-tokens", 256, "--out", out))
    before = invoke("evaluate", out, "--json", "--cache-dir", cache)
    assert_ok(before)
    (path,) = cache.glob("*.tokens")
    content = path.read_bytes()
    damaged = swapped(content, len(content) - 40)  # ids at the end: the validation split
    write(path, damaged)
    after = invoke("evaluate", out, "--json", "--cache-dir", cache)
    assert_ok(after)
    assert json.loads(after.stdout) == json.loads(before.stdout) and path.read_bytes() == content
    write(path, damaged)
    assert_ok(invoke("train", "--resume", out, "--max-tokens", 512, "--cache-dir", cache))
    assert path.read_bytes() == content


def test_a_verified_store_is_not_read_again_until_it_changes(built, monkeypatch):
    text, cache, path, content, header, offset = built
    from charrnn.data import storeids
    passes = []
    original = storeids.verify_ids
    monkeypatch.setattr(storeids, "verify_ids", lambda *a: (passes.append(1), original(*a))[1])
    reopened(text, cache)
    assert passes == []  # the builder vouched for it
    os.utime(path, ns=(0, 0))  # any change of the file (its ctime moves): read it again, once
    reopened(text, cache)
    reopened(text, cache)
    assert passes == [1]


# ----------------------------------------------------------------------------- the header's size

def test_a_header_over_the_cap_is_refused_unparsed_and_rebuilt(built):
    text, cache, path, content, header, offset = built
    header["padding"] = "x" * MAX_META_BYTES
    write(path, store_bytes(header, content[offset:]))
    assert "header" in refused_quickly(path)
    assert reopened(text, cache).built and path.read_bytes() == content


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"num_tokens": ' + b"9" * 5000 + b"}",
                                 b'{"x": NaN}', b"[[]," * 200_000 + b"[]" + b"]" * 200_000,
                                 b'{"x": [' + b'"ab",' * 400_000 + b'"ab"]}'],
                         ids=["nested 100,000 deep", "a 5,000-digit integer", "NaN", "200,000 lists",
                              "400,000 strings"])
def test_a_hostile_header_is_refused_in_bounded_time_and_memory_and_rebuilt(built, raw):
    text, cache, path, content, header, offset = built
    write(path, store_bytes(None, content[offset:], raw))
    refused_quickly(path)
    assert reopened(text, cache).built and path.read_bytes() == content


def test_a_header_length_past_the_file_is_refused_without_reading(built):
    text, cache, path, content, header, offset = built
    damaged = bytearray(content)
    damaged[len(store_module.MAGIC):len(store_module.MAGIC) + 8] = (1 << 30).to_bytes(8, "little")
    write(path, bytes(damaged))
    refused_quickly(path)
    assert reopened(text, cache).built


def test_a_vocabulary_too_large_for_a_header_is_one_line_when_built(tmp_path):
    words = " ".join(f"w{i:07d}" for i in range(200_000))
    text = write(tmp_path / "many.txt", words)
    with pytest.raises(CharrnnError, match="200,000 distinct tokens.*--level char") as err:
        open_store(text, "word", "raw", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and not list((tmp_path / "cache").glob("*.tokens"))
    assert open_store(text, "char", "raw", cache_dir=tmp_path / "cache").built


# ----------------------------------------------------------------------------- FIFOs and devices

OPEN = """
import sys
from charrnn.base.errors import CharrnnError
from charrnn.data.store import open_store
try:
    store = open_store(sys.argv[1], "char", "raw", cache_dir=sys.argv[2])
    print("built" if store.built else "reused")
except CharrnnError as err:
    print("Error:", err)
"""


def open_in_a_process(text, cache):
    """open_store in a child process that must end within 10 s -> its one line of output."""
    done = subprocess.run([sys.executable, "-c", OPEN, str(text), str(cache)], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout.strip()


def test_a_fifo_in_place_of_a_store_is_replaced_not_waited_on(built):
    text, cache, path, content, header, offset = built
    path.unlink()
    os.mkfifo(path)
    assert open_in_a_process(text, cache) == "built"
    assert path.read_bytes() == content


def test_a_fifo_or_device_in_place_of_the_lock_is_one_line_not_a_hang(tmp_path):
    text, cache = write(tmp_path / "t.txt", TEXT), tmp_path / "cache"
    cache.mkdir()
    lock = cache / (store_module.store_name(text.resolve(), {"level": "char", "preprocess": "raw", "min_freq": 0,
                                                             "max_vocab": None}) + ".lock")
    os.mkfifo(lock)
    line = open_in_a_process(text, cache)
    assert line.startswith("Error:") and str(lock) in line and "not a regular file" in line
    lock.unlink()
    lock.symlink_to("/dev/zero")
    assert "not a regular file" in open_in_a_process(text, cache)


def test_a_device_in_place_of_a_store_is_not_read(built):
    text, cache, path, content, header, offset = built
    path.unlink()
    path.symlink_to("/dev/zero")
    refused_quickly(path)


# ----------------------------------------------------------------------------- killed builds

def dead_pid():
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_what_a_killed_build_left_is_removed_by_the_next_build(tmp_path):
    text, cache = write(tmp_path / "t.txt", TEXT), tmp_path / "cache"
    cache.mkdir()
    pid = dead_pid()
    left = [write(cache / f".t.char-raw.abc.tokens.{pid}.scratch", b"\0" * 1000),
            write(cache / f".t.char-raw.abc.tokens.{pid}.tmp", b"\0" * 1000)]
    mine = write(cache / f".t.char-raw.abc.tokens.{os.getpid()}.scratch", b"\0")  # a live process's
    open_store(text, "char", "raw", cache_dir=cache)
    assert not any(p.exists() for p in left) and mine.exists()


SLOW_BUILD = """
import sys, time
from charrnn.data import store
from charrnn.entry import main
tokenize = store.tokenize_stream
def slow(*args, **kwargs):
    print("tokenizing", flush=True)
    time.sleep(60)
    return tokenize(*args, **kwargs)
store.tokenize_stream = slow
sys.argv = ["charrnn", "corpus", sys.argv[1], "--preprocess", "raw", "--cache-dir", sys.argv[2]]
sys.exit(main())
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_tokenizing_says_so_and_leaves_no_scratch(tmp_path, sig, code):
    text, cache = write(tmp_path / "t.txt", TEXT), tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(text), str(cache)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "tokenizing\n"
        process.send_signal(sig)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert err.strip().splitlines() == [f"Interrupted by {signal.Signals(sig).name}."], err
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


# ----------------------------------------------------------------------------- fuzz

HOSTILE_VALUES = [10**400, -1, 0, 2**64, 1e308, "", "\ud800", "x", [], {}, [[[]]], None, True, "uint64"]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


def header_paths(value, where=()):
    """The path of every value in a JSON value (lists: first 2 items), containers included."""
    yield where
    if isinstance(value, dict):
        for key, item in value.items():
            yield from header_paths(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:2]):
            yield from header_paths(item, (*where, i))


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzzed-store")
    text = write(directory / "t.txt", TEXT + "é€😀")
    store = open_store(text, "char", "raw", cache_dir=directory / "cache")
    content = store.path.read_bytes()
    return text, store.path.parent, store.path, content, dict(store.header), len(content) - store.ids.nbytes


def set_at(value, where, new):
    if not where:
        return new
    target = value
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = new
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_store_bytes_are_rebuilt_or_refused_never_used_or_crashing(good_store, data):
    text, cache, path, content, header, offset = good_store
    kind = data.draw(st.sampled_from(["flip", "cut", "edit", "edit", "edit"]))
    if kind == "flip":
        damaged = bytearray(content)
        for at, mask in data.draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(1, 255)),
                                           min_size=1, max_size=8)):
            damaged[at] ^= mask
        damaged = bytes(damaged)
    elif kind == "cut":
        damaged = content[:data.draw(st.integers(0, len(content) - 1))]
    else:
        where = data.draw(st.sampled_from(list(header_paths(header))))
        value = data.draw(st.one_of(st.sampled_from(HOSTILE_VALUES), json_values))
        edited = set_at(json.loads(json.dumps(header)), where, value)
        raw = json.dumps(edited, sort_keys=True).encode("utf-8", "surrogatepass")
        damaged = store_bytes(None, content[offset:], raw)
    write(path, damaged)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        try:
            store = open_store(text, "char", "raw", cache_dir=cache)
        except CharrnnError as err:
            assert "\n" not in str(err)
        else:  # used only if it is the store charrnn would build, or says the same (JSON spacing)
            assert store.built or (store.header == header and store.ids.tobytes() == content[offset:]), kind
            assert store.vocab.idx_to_token == json.loads(json.dumps(header))["vocab"]["idx_to_token"]
            assert int(store.ids.max()) < len(store.vocab)
    finally:
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        write(path, content)
    assert seconds < 2 * LIMIT_SECONDS and peak < LIMIT_BYTES, (kind, seconds, peak)
