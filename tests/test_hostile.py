"""Hostile checkpoints: crafted metadata, zip tricks and size bombs. Each class of
attack is refused with one line, in under a second and under 100 MB, before anything is built;
then a hypothesis fuzz of a real checkpoint's bytes finds no traceback, hang or memory blow-up."""
import copy
import json
import shutil
import struct
import time
import tracemalloc
import warnings
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.base import io as charrnn_io
from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.base.io import META_KEY, load_npz
from charrnn.infer.sample import sample_text
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig
from test_cli import assert_error, assert_ok, invoke

TINY = ["--num-hiddens", "12", "--batch-size", "4", "--num-steps", "8", "--sample-length", "10",
        "--eval-every", "512", "--truncation", "randomized:0.5"]
LIMIT_SECONDS, LIMIT_BYTES = 1.0, 100 * 2**20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, write_words):
    """A tiny run stopped inside an epoch: Adam's slots, a carried state, an RNG drawn."""
    text = write_words(tmp_path_factory.mktemp("text") / "words.txt", 2000, seed=5)
    out = tmp_path_factory.mktemp("run") / "run"
    assert_ok(invoke("train", text, *TINY, "--max-tokens", 1000, "--out", out))
    return out


@pytest.fixture(scope="module")
def good(run_dir):
    """(bytes, arrays, meta) of the run's checkpoint."""
    path = run_dir / CHECKPOINT
    return (path.read_bytes(), *load_npz(path))


def write_npz(path, arrays, meta, compress=False):
    """An .npz as charrnn writes it, but with metadata of any bytes (or any JSON value)."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode("utf-8", "surrogatepass")
    save = np.savez_compressed if compress else np.savez
    with open(path, "wb") as f:
        save(f, **{META_KEY: np.frombuffer(raw, np.uint8)}, **arrays)
    return path


def refused_quickly(path, says=""):
    """load_checkpoint refuses `path` with one line, within the time and memory limits."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CharrnnError) as err:
            load_checkpoint(path)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and says in message, message
    assert seconds < LIMIT_SECONDS and peak < LIMIT_BYTES, (seconds, peak)
    return message


def edited(good, path, edit, compress=False):
    _, arrays, meta = good
    arrays, meta = copy.deepcopy(arrays), copy.deepcopy(meta)
    edit(arrays, meta)
    return write_npz(path, arrays, meta, compress)


def leaves(value, where=()):
    """(path, value) of every number, string, bool and null in a JSON value (lists: first 2 items)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:2]):
            yield from leaves(item, (*where, i))
    else:
        yield where, value


def set_at(meta, where, value):
    target = meta
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value


# ---------------------------------------------------------------------------- the metadata's values

def test_every_number_in_the_metadata_too_large_for_a_float_is_refused(tmp_path, good):
    """10^400 (and -10^400) in each numeric field: progress, config, optimizer, RNG, model, counts."""
    numeric = [where for where, value in leaves(good[2]) if isinstance(value, (int, float)) and not isinstance(value, bool)]
    assert {("progress", "elapsed"), ("progress", "interval_loss"), ("config", "lr"), ("optimizer", "steps"),
            ("progress", "epoch"), ("rng", "state", "state"), ("num_hiddens",)} <= set(numeric)
    for where in numeric:
        for huge in (10**400, -10**400):
            refused_quickly(edited(good, tmp_path / "huge.npz", lambda a, m: set_at(m, where, huge)))


@pytest.mark.parametrize("where, value", [
    (("rng", "state", "state"), -1), (("rng", "state", "inc"), 2**300), (("rng", "uinteger"), 2**40),
    (("rng", "has_uint32"), 2), (("rng", "bit_generator"), "MT19937"), (("rng",), []),
])
def test_an_impossible_random_generator_state_is_refused(tmp_path, good, where, value):
    refused_quickly(edited(good, tmp_path / "rng.npz", lambda a, m: set_at(m, where, value)), says="rng")


def test_a_value_of_the_wrong_type_anywhere_is_refused_or_harmless(tmp_path, good, run_dir):
    """Every leaf replaced by every JSON type: load_checkpoint refuses (one line) or returns a
    checkpoint whose config fields have the types TrainConfig declares; a string where a string
    belongs (sample_prefix) is the only kind of edit that loads."""
    replacements = ["x", 5, 1.5, None, True, [], {}, "\ud800"]
    loaded = []
    for where, original in leaves(good[2]):
        for value in replacements:
            if type(value) is type(original) and value == original:
                continue
            path = edited(good, tmp_path / "typed.npz", lambda a, m: set_at(m, where, value))
            try:
                ckpt = load_checkpoint(path)
            except CharrnnError as err:
                assert "\n" not in str(err)
                continue
            loaded.append((where, value))
            for name, declared in TrainConfig.__annotations__.items():
                kinds = declared.replace("float", "float | int")  # a JSON integer is a float's value
                field = getattr(ckpt.config, name)
                assert field is None or type(field).__name__ in kinds, (where, value, name, field)
    assert ("config", "sample_prefix") not in {w for w, v in loaded if not isinstance(v, (str, type(None)))}
    assert all(not isinstance(v, (list, dict, bool)) for _, v in loaded), loaded


def test_sample_prefix_of_the_wrong_type_is_refused_before_resume_writes_anything(tmp_path, good, run_dir):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    edited(good, out / CHECKPOINT, lambda a, m: set_at(m, ("config", "sample_prefix"), 5))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    assert_error(invoke("train", "--resume", out, "--max-tokens", 2000), says="config.sample_prefix must be a string")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before


@pytest.mark.parametrize("where", [("vocab", "idx_to_token", 3), ("config", "sample_prefix"), ("config", "corpus")])
def test_lone_surrogates_in_tokens_or_texts_are_refused(tmp_path, good, where):
    refused_quickly(edited(good, tmp_path / "surrogate.npz", lambda a, m: set_at(m, where, "a\udc80")),
                    says="lone surrogate")


@pytest.mark.parametrize("raw, says", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"[]," * 200_000, "arrays and objects"),
    (b'{"a": "' + b"x" * (3 << 20) + b'"}', "bytes, over"),
    (b'{"format": NaN}', "corrupt"), (b'{"format": 1e999}', "corrupt"), (b'{"format": Infinity}', "corrupt"),
    (b"\xff\xfe{}", "corrupt"), (b"[1, 2]", "not a JSON object"), (b'{"a": ' + b"9" * 5000 + b"}", "corrupt"),
])
def test_metadata_that_is_not_safe_json_is_refused(tmp_path, good, raw, says):
    refused_quickly(write_npz(tmp_path / "json.npz", good[1], raw), says=says)


@pytest.mark.parametrize("where, value", [(("num_hiddens",), 20_000), (("vocab_size",), 30_000_000),
                                          (("num_hiddens",), 2**31), (("vocab_size",), 2**62)])
def test_metadata_claiming_a_huge_model_is_refused_before_any_allocation(tmp_path, good, where, value):
    """The old reader drew the full initialisation first: 4.7-5.7 GB and 15 s for these."""
    def claim(arrays, meta):
        set_at(meta, where, value)
        if where == ("num_hiddens",):
            meta["config"]["num_hiddens"] = value
    refused_quickly(edited(good, tmp_path / "huge.npz", claim))


def test_a_gated_stack_is_read_and_claims_about_its_network_are_refused(tmp_path, write_words):
    """A 2-layer LSTM with dropout: its carried state is (layers, 2, batch, hidden) and its dropout
    Generator is restored; metadata naming another cell, more layers or an impossible dropout is
    refused before anything is built."""
    text = write_words(tmp_path / "words.txt", 600, seed=3)
    out = tmp_path / "run"
    assert_ok(invoke("train", text, *TINY, "--cell", "lstm", "--num-layers", 2, "--dropout", 0.2,
                     "--max-tokens", 256, "--out", out))
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt.training.carried.shape == (2, 2, 4, 12) and ckpt.training.dropout_rng is not None
    good = (None, *load_npz(out / CHECKPOINT))
    for where, value in [(("cell",), "gru"), (("cell",), "rnn"), (("num_layers",), 3), (("num_layers",), 10**6),
                         (("dropout",), 1.5), (("dropout",), "0.2"), (("dropout_rng", "state", "inc"), -1)]:
        refused_quickly(edited(good, tmp_path / "claim.npz", lambda a, m: set_at(m, where, value)))


# ---------------------------------------------------------------------------- the zip around it

def patch_headers(data, name, flag=None, method=None):
    """Set the flag bits / compression method of member `name` in its local and central headers."""
    data = bytearray(data)
    encoded = name.encode()
    for signature, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at: at + name_at + len(encoded)] == encoded:
                if flag is not None:
                    struct.pack_into("<H", data, at + flag_at, flag)
                if method is not None:
                    struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    return bytes(data)


def test_zip_tricks_are_one_line_errors(tmp_path, good):
    path = tmp_path / "zip.npz"
    compressed = edited(good, tmp_path / "compressed.npz", lambda a, m: None, compress=True).read_bytes()
    load_checkpoint(tmp_path / "compressed.npz")  # savez_compressed files are read
    with zipfile.ZipFile(tmp_path / "compressed.npz") as archive:
        info = archive.getinfo("W_hh.npy")
    corrupt = bytearray(compressed)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    corrupt[start + 10: start + 30] = b"\xff" * 20
    cases = {
        "zlib error": (bytes(corrupt), ""),
        "unsupported compression": (patch_headers(good[0], "W_hh.npy", method=99), "compression method 99"),
        "bzip2": (patch_headers(good[0], "W_hh.npy", method=12), "compression method 12"),
        "encrypted": (patch_headers(good[0], "W_hh.npy", flag=1), "encrypted"),
    }
    for name, (data, says) in cases.items():
        path.write_bytes(data)
        refused_quickly(path, says=says)


def test_a_zip64_end_record_announcing_a_billion_members_is_refused(tmp_path, good, monkeypatch):
    """zipfile believes a zip64 end record over the plain one: its counts are checked too."""
    path = tmp_path / "zip64.npz"
    with monkeypatch.context() as patched:
        patched.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # makes zipfile write a zip64 end record
        write_npz(path, good[1], good[2])
    load_checkpoint(path)
    data = bytearray(path.read_bytes())
    record = data.rfind(b"PK\x06\x06")
    struct.pack_into("<Q", data, record + 32, 10**9)  # entries in total
    path.write_bytes(bytes(data))
    refused_quickly(path, says="1,000,000,000 members")


def add_member(source, path, name, payload, compress=True):
    shutil.copy(source, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        with archive.open(name, "w", force_zip64=True) as f:
            f.write(payload)
    return path


def npy_header(shape, dtype="<f4"):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_a_zip_bomb_in_an_extra_member_is_refused_unread(tmp_path, run_dir):
    """64 MiB of zeros (64 kB compressed) beside a valid checkpoint: never decompressed."""
    zeros = npy_header((1 << 24,)) + bytes(64 << 20)
    bomb = add_member(run_dir / CHECKPOINT, tmp_path / "bomb.npz", "bomb.npy", zeros)
    assert bomb.stat().st_size < 1 << 20
    refused_quickly(bomb, says="'bomb'")


def rebuilt(source, path, name, payload):
    """`source` with member `name` replaced by `payload` (deflated, as savez_compressed writes)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, payload if info.filename == name else old.read(info))
    return path


def test_members_that_lie_about_their_size_or_repeat_are_refused(tmp_path, run_dir, good):
    source = run_dir / CHECKPOINT
    shape = good[1]["W_hh"].shape
    lies = {  # W_hh whose declared size and header disagree, or that is no array
        "longer than its header": npy_header(shape) + bytes(4 * shape[0] * shape[1] + (32 << 20)),
        "shorter than its header": npy_header((1 << 28,)) + bytes(1024),
        "not an array": b"\x80\x04K\x01.",
    }
    for name, payload in lies.items():
        refused_quickly(rebuilt(source, tmp_path / "lie.npz", "W_hh.npy", payload), says="W_hh")
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = add_member(source, tmp_path / "twice.npz", "W_hh.npy", npy_header(shape) + bytes(4 * shape[0] * shape[1]))
    refused_quickly(twice, says="appears twice")
    many = tmp_path / "many.npz"
    write_npz(many, {f"a{i}": np.zeros(1) for i in range(charrnn_io.MAX_MEMBERS + 1)}, good[2])
    refused_quickly(many, says="members")


def test_a_truncated_checkpoint_is_refused_at_every_length(tmp_path, good):
    path = tmp_path / "cut.npz"
    for length in np.linspace(0, len(good[0]) - 1, 40).astype(int):
        path.write_bytes(good[0][:length])
        refused_quickly(path)


# ---------------------------------------------------------------------------- every command

def test_every_command_refuses_a_hostile_checkpoint_in_one_line(tmp_path, run_dir, good):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    path = out / CHECKPOINT
    write_npz(path, good[1], b"[" * 100_000 + b"]" * 100_000)
    for args in (["sample", path], ["evaluate", path], ["train", "--resume", out, "--max-tokens", 2000]):
        assert_error(invoke(*args), says="nested too deeply")


# ---------------------------------------------------------------------------- fuzz

HOSTILE_VALUES = [10**400, -10**400, 2**64, 2**300, -1, 0, 1e308, -0.0, "", "\ud800", "x", [], {}, [[[]]],
                  None, True, {"bit_generator": "PCG64"}]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


def mutations(good_bytes, meta):
    """Random damage to a real checkpoint: flipped bytes, a cut, or an edited JSON value (a leaf,
    or a whole part of the metadata), the values biased towards the hostile."""
    flips = st.lists(st.tuples(st.integers(0, len(good_bytes) - 1), st.integers(1, 255)), min_size=1, max_size=8)
    values = st.one_of(st.sampled_from(HOSTILE_VALUES), st.sampled_from(HOSTILE_VALUES), json_values)
    paths = st.sampled_from([w for w, _ in leaves(meta)] + [(key,) for key in meta])
    edits = st.tuples(st.just("edit"), st.tuples(paths, values))
    return st.one_of(
        st.tuples(st.just("flip"), flips),
        st.tuples(st.just("cut"), st.integers(0, len(good_bytes) - 1)),
        edits, edits, edits,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_checkpoint_bytes_never_crash_hang_or_blow_up(tmp_path, good, data):
    kind, change = data.draw(mutations(good[0], good[2]))
    path = tmp_path / "fuzzed.npz"
    if kind == "flip":
        damaged = bytearray(good[0])
        for offset, mask in change:
            damaged[offset] ^= mask
        path.write_bytes(bytes(damaged))
    elif kind == "cut":
        path.write_bytes(good[0][:change])
    else:
        where, value = change
        edited(good, path, lambda a, m: set_at(m, where, value))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        use(load_checkpoint(path))
    except CharrnnError as err:
        assert "\n" not in str(err)
    finally:
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < LIMIT_SECONDS and peak < LIMIT_BYTES, (kind, seconds, peak)


def use(ckpt):
    """What sample and train --resume do first with a checkpoint they accepted: a greedy sample of
    the configured prefix, printable; the config and progress saved again as strict JSON."""
    cfg = ckpt.config
    prefix = cfg.sample_prefix or ckpt.vocab.token_freqs[0][0]  # as `charrnn sample` chooses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CharrnnWarning)  # a prefix changed by preprocessing
        sample_text(ckpt, prefix, 5, greedy=True).text.encode("utf-8")
    json.dumps([asdict(cfg.resumed({})), asdict(ckpt.progress)], allow_nan=False)
