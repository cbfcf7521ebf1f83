"""Reliability: interrupted runs, exact resume, blow-ups, untrusted files, bad text,
bad options, a full or read-only disk. Through the CLI, with tiny models."""
import copy
import errno
import json
import os
import pickle
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest

from charrnn import cli
from charrnn.data import corpus as data
from charrnn.base import io as charrnn_io
from charrnn.training import outdir
from charrnn.training import start as training
from charrnn.training import loop as training_loop
from charrnn.base.errors import CharrnnError
from charrnn.base.io import load_npz, save_npz
from charrnn.runtime.lock import LOCK_FILE
from charrnn.cli.options import Clip, Truncation
from charrnn.nn.optim import clip_grad_norm, make_optimizer
from charrnn.training.outdir import BEST, CHECKPOINT
from charrnn.training.outdir import METRICS
from charrnn.training.checkpoint import STATE_KEY, load_checkpoint
from test_cli import assert_error, assert_ok, charrnn_command, invoke
from test_train import assert_same_run

TINY = ["--num-hiddens", "12", "--batch-size", "4", "--num-steps", "8", "--sample-length", "10",
        "--eval-every", "512"]
ON_LINUX = sys.platform.startswith("linux")
# sequential sampler: a state carried, an RNG drawn; these runs change their budget on resume (from
# --max-time to --max-tokens), so their learning rate must not follow the budget: the epoch schedule
INTERRUPTED = [*TINY, "--truncation", "randomized:0.5", "--lr-schedule", "epoch"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    """~14,000 characters of random words: about 400 tiny minibatches an epoch."""
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 2500, seed=11)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file):
    """A tiny run stopped inside an epoch, so its checkpoint holds Adam's state and a carried state."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert_ok(invoke("train", text_file, *TINY, "--max-tokens", 1000, "--out", out))
    assert STATE_KEY in load_npz(out / CHECKPOINT)[0]
    return out


def snapshot(directory):
    """Every file under `directory` -> its bytes, but the run's lock file (which names the PID of
    its last holder)."""
    return {p: p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def wait_for(path, process, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def train_process(text_file, out, *budget):
    """`charrnn train` as a real process: a fresh run, or a resumed one if `out` has a checkpoint."""
    what = (["--resume", out] if (out / CHECKPOINT).exists()
            else [text_file, *INTERRUPTED, "--out", out])
    return subprocess.Popen([charrnn_command(), "train", *map(str, what), *map(str, budget)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_resumes_to_the_straight_run(text_file, interrupted, straight):
    """Resumed to a token budget past its checkpoint, `interrupted` ends bit-identical to a run
    given that budget and never stopped."""
    tokens = load_checkpoint(interrupted / CHECKPOINT).progress.tokens + 1024
    assert_ok(invoke("train", "--resume", interrupted, "--max-tokens", tokens))
    assert_ok(invoke("train", text_file, *INTERRUPTED, "--max-tokens", tokens, "--out", straight))
    assert_same_run(straight, interrupted)


# ---------------------------------------------------------------------------- interrupted runs

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_a_random_moment_then_resume_equals_a_run_never_stopped(tmp_path, text_file, sig, code):
    out = tmp_path / "run"
    process = train_process(text_file, out, "--max-time", 300)
    wait_for(out / METRICS, process)  # the training loop, with its handlers, is running
    time.sleep(random.Random(sig).uniform(0, 0.4))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"Resume with: charrnn train --resume {out}" in stderr and "Traceback" not in stderr
    assert_resumes_to_the_straight_run(text_file, out, tmp_path / "straight")


def test_kill_9_at_random_moments_never_loses_the_last_checkpoint(tmp_path, text_file):
    """Killed with SIGKILL again and again (in start-up, training, evaluation or a write), a run
    always has a loadable checkpoint no older than the one before, resumes from it, and ends as if
    it had never been killed."""
    out, delays, last_step = tmp_path / "run", random.Random(9), -1
    for kill in range(5):
        process = train_process(text_file, out, "--max-time", 300)
        if kill == 0:
            wait_for(out / CHECKPOINT, process)
        time.sleep(delays.uniform(0.2, 1.0))
        process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        step = load_checkpoint(out / CHECKPOINT).progress.step
        assert step >= last_step
        last_step = step
    assert last_step > 0
    assert_resumes_to_the_straight_run(text_file, out, tmp_path / "straight")


def test_torn_and_foreign_lines_in_metrics_are_dropped_on_resume(tmp_path, run_dir):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    step = load_checkpoint(out / CHECKPOINT).progress.step
    kept = (out / METRICS).read_bytes()
    with open(out / METRICS, "ab") as f:
        f.write(b'[1, 2]\n{"step": "7"}\n"text"\n\xff\xfe\n' + b"[" * 100_000 + b"]" * 100_000 +
                b'\n{"step": 99999, "reason": "interval"}\n{"step": 1')
    assert_ok(invoke("train", "--resume", out, "--max-tokens", 1200))
    lines = (out / METRICS).read_bytes()
    assert lines.startswith(kept)
    records = [json.loads(line) for line in lines[len(kept):].decode("utf-8").splitlines()]
    assert records and all(isinstance(r, dict) and step < r["step"] < 99999 for r in records)


def test_resume_by_epochs_through_the_cli_is_exact(tmp_path, text_file):
    """k epochs, then --resume to N, with options the API tests do not use (sgd, regular:K,
    random sampler, a constant learning rate, which a raised budget leaves as it is): the CLI
    passes only the budget it was given."""
    maths = [text_file, *TINY, "--optimizer", "sgd", "--lr", "0.5", "--truncation", "regular:3",
             "--sampler", "random", "--seed", 4, "--eval-every", 2048, "--lr-schedule", "constant"]
    assert_ok(invoke("train", *maths, "--epochs", 2, "--out", tmp_path / "straight"))
    assert_ok(invoke("train", *maths, "--epochs", 1, "--out", tmp_path / "split"))
    assert_ok(invoke("train", "--resume", tmp_path / "split", "--epochs", 2))
    assert_same_run(tmp_path / "straight", tmp_path / "split")


# ---------------------------------------------------------------------------- numerical blow-ups

def read_metrics(out):
    """metrics.jsonl, parsed strictly: a NaN or Infinity in it fails."""
    def no_constants(name):
        raise AssertionError(f"{name} in metrics.jsonl")
    return [json.loads(line, parse_constant=no_constants)
            for line in (out / METRICS).read_text().splitlines()]


def test_a_real_blow_up_stops_with_the_last_good_checkpoint_and_best_kept(tmp_path, text_file):
    """Linear RNN, SGD at lr 10, no clipping (--clip none), an evaluation every minibatch: a few
    good evaluations, then the loss overflows."""
    out = tmp_path / "run"
    result = invoke("train", text_file, *TINY, "--activation", "linear", "--optimizer", "sgd", "--lr", 10,
                    "--clip", "none", "--eval-every", 32, "--epochs", 1, "--out", out)
    assert_error(result, says="non-finite")
    records = read_metrics(out)
    good = [r for r in records if r["val_ppl"] is not None]
    assert len(good) >= 2 and records[0]["best"]
    checkpoint = load_checkpoint(out / CHECKPOINT)  # refuses non-finite values
    assert checkpoint.progress.step == records[-1]["step"]
    assert f"the last good checkpoint (step {checkpoint.progress.step}) is {out / CHECKPOINT}" in result.stderr
    assert f"charrnn train --resume {out} --on-nonfinite skip" in result.stderr
    best = load_checkpoint(out / BEST)
    assert best.progress.best_val_ppl == min(r["val_ppl"] for r in good)
    assert best.progress.step == max(r["step"] for r in records if r["best"])


def fail_clip_at(monkeypatch, *calls):
    """Make the gradient norm NaN at these 1-based calls of clip_grad_norm (a bad minibatch)."""
    real, count = clip_grad_norm, [0]

    def clip(grads, theta):
        count[0] += 1
        norm = real(grads, theta)
        return float("nan") if count[0] in calls else norm
    monkeypatch.setattr(training_loop, "clip_grad_norm", clip)


def test_a_nonfinite_minibatch_stops_and_the_suggested_skip_command_goes_on(tmp_path, text_file, monkeypatch):
    out = tmp_path / "run"
    fail_clip_at(monkeypatch, 20)
    stopped = invoke("train", text_file, *TINY, "--max-tokens", 1600, "--out", out)
    assert_error(stopped, says="non-finite gradient norm (loss")
    suggested = shlex.split(stopped.stderr.split(": charrnn ")[-1])
    assert suggested[:4] == ["train", "--resume", str(out), "--on-nonfinite"]
    fail_clip_at(monkeypatch, 5)  # the resumed run meets one more bad minibatch, and skips it
    resumed = invoke(*suggested)
    assert_ok(resumed)
    assert "skipped minibatches" in resumed.stdout
    final = load_checkpoint(out / CHECKPOINT)
    assert final.progress.skipped == 1 and final.progress.tokens == 1600
    assert read_metrics(out)[-1]["skipped"] == 1


def test_a_resume_inside_a_run_of_skipped_minibatches_gives_up_where_a_straight_run_does(
        tmp_path, text_file, monkeypatch):
    """Ten bad minibatches in a row end a run with --on-nonfinite skip; a resume after five of
    them must count on from five, not from zero."""
    skip = ["--on-nonfinite", "skip"]
    fail_clip_at(monkeypatch, *range(3, 13))
    straight = invoke("train", text_file, *TINY, *skip, "--max-tokens", 1600, "--out", tmp_path / "straight")
    assert_error(straight, says="the model has diverged")
    out = tmp_path / "resumed"
    fail_clip_at(monkeypatch, *range(3, 8))
    assert_ok(invoke("train", text_file, *TINY, *skip, "--max-tokens", 7 * 32, "--out", out))
    assert load_checkpoint(out / CHECKPOINT).progress.skipped_in_a_row == 5
    fail_clip_at(monkeypatch, *range(1, 6))
    resumed = invoke("train", "--resume", out, "--max-tokens", 1600)
    assert_error(resumed, says="the model has diverged")
    where = ", step 12,"
    assert where in straight.stderr and where in resumed.stderr


def test_nonfinite_parameters_are_never_saved(tmp_path, text_file, monkeypatch):
    """An update that leaves an inf where the loss cannot see it (the row of <unk>, never an
    input) would pass every loss check: no checkpoint, best or not, is written with it."""
    real, updates = make_optimizer, [0]

    def poisoned_optimizer(name, params, lr):
        optimizer = real(name, params, lr)
        step = optimizer.step

        def poisoned_step(grads):
            step(grads)
            updates[0] += 1
            if updates[0] == 3:
                params["W_xh"][0, 0] = np.inf
        optimizer.step = poisoned_step
        return optimizer
    monkeypatch.setattr(training, "make_optimizer", poisoned_optimizer)
    out = tmp_path / "run"
    result = invoke("train", text_file, *TINY, "--eval-every", 32, "--epochs", 1, "--out", out)
    assert_error(result, says="non-finite parameters or optimizer state at step 3")
    assert f"the last good checkpoint (step 2) is {out / CHECKPOINT}" in result.stderr
    assert load_checkpoint(out / CHECKPOINT).progress.step == 2
    assert load_checkpoint(out / BEST).progress.step <= 2


# ---------------------------------------------------------------------------- untrusted files

class CreatesFileWhenUnpickled:
    """Unpickling this opens `marker` for writing: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def edited(change):
    """A variant that edits the arrays/metadata of a good checkpoint and saves it as charrnn would."""
    def write(path, good, arrays, meta, marker):
        arrays, meta = copy.deepcopy(arrays), copy.deepcopy(meta)
        change(arrays, meta)
        save_npz(path, arrays, meta)
    return write


def raw(make_bytes):
    """A variant made from the bytes of a good checkpoint."""
    def write(path, good, arrays, meta, marker):
        path.write_bytes(make_bytes(good))
    return write


def flipped(good):
    """16 bytes inverted, spread over the file."""
    data = bytearray(good)
    for offset in np.linspace(100, len(data) - 100, 16).astype(int):
        data[offset] ^= 0xFF
    return bytes(data)


def pickled_array(path, good, arrays, meta, marker):
    """What np.savez writes for an object array: a pickle inside a .npy member."""
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    evil = np.array([CreatesFileWhenUnpickled(marker)], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, __meta__=meta_bytes, **{**arrays, "W_hh": evil})


def pickle_member(path, good, arrays, meta, marker):
    """A zip whose member is a bare pickle, not a .npy array."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__meta__.npy", pickle.dumps(CreatesFileWhenUnpickled(marker)))


def set_in(*keys, value):
    def change(arrays, meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value
    return change


def replace_array(name, make):
    def change(arrays, meta):
        key = name if name in arrays else sorted(k for k in arrays if k.startswith(name))[0]
        arrays[key] = make(arrays[key])
    return change


BAD_CHECKPOINTS = {
    "truncated": (raw(lambda good: good[: len(good) // 2]), "not an .npz file"),
    "empty": (raw(lambda good: b""), "not an .npz file"),
    "bytes flipped": (raw(flipped), ""),
    "not a zip": (raw(lambda good: b"W_hh = [[0.1, 0.2], [0.3, 0.4]]\n" * 20), "not an .npz file"),
    "format_version 3": (edited(set_in("format_version", value=3)), "format_version 3"),
    "format_version as text": (edited(set_in("format_version", value="1")), "format_version '1'"),
    "W_hh of a wrong shape": (edited(replace_array("W_hh", lambda a: a[:3])), "W_hh"),
    "W_hq as float64": (edited(replace_array("W_hq", lambda a: a.astype(np.float64))), "W_hq is float64"),
    "b_q as int32": (edited(replace_array("b_q", lambda a: a.astype(np.int32))), "b_q is int32"),
    "NaN in W_hh": (edited(replace_array("W_hh", lambda a: np.full_like(a, np.nan))), "non-finite"),
    "model metadata: num_hiddens": (edited(set_in("num_hiddens", value=lambda n: n + 1)), "expected float32"),
    "config: num_hiddens": (edited(set_in("config", "num_hiddens", value=lambda n: n + 5)), "num_hiddens 17"),
    "config: dtype": (edited(set_in("config", "dtype", value="float64")), "dtype 'float64'"),
    "config: not a number": (edited(set_in("config", "lr", value="fast")), "training"),
    "vocabulary of a wrong size": (edited(set_in("vocab", "idx_to_token", value=lambda t: t[:-2])), "vocabulary of"),
    "optimizer state of a wrong shape": (edited(replace_array("optim.", lambda a: a[:1])), "optimizer state"),
    "optimizer state missing": (edited(lambda arrays, meta: [arrays.pop(k) for k in list(arrays) if k.startswith("optim.s")]),
                                "optimizer state has no array"),
    "NaN in the optimizer state": (edited(replace_array("optim.", lambda a: a * np.nan)), "non-finite optimizer"),
    "carried state of a wrong shape": (edited(replace_array(STATE_KEY, lambda a: a[:, :5])), "carried_state"),
    "progress: tokens": (edited(set_in("progress", "tokens", value=lambda n: n + 1)), "tokens cannot be"),
    "progress: negative step": (edited(set_in("progress", "step", value=-1)), "impossible training progress"),
    "RNG state": (edited(set_in("rng", value={"bit_generator": "MT19937"})), "corrupt training state"),
    "pickled object array": (pickled_array, "pickled Python objects"),
    "a member that is a bare pickle": (pickle_member, "is not an array"),
}


def commands_reading(out):
    """sample, evaluate and train --resume, each given the checkpoint of the run in `out`."""
    path = out / CHECKPOINT
    return [["sample", path, "--length", 5], ["evaluate", path], ["train", "--resume", out, "--max-tokens", 1100]]


def test_every_command_reads_the_untouched_checkpoint(tmp_path, run_dir):
    """The control for the test below: only the edit makes a command refuse."""
    shutil.copytree(run_dir, tmp_path / "run")
    for args in commands_reading(tmp_path / "run"):
        assert_ok(invoke(*args))


@pytest.mark.parametrize("variant", BAD_CHECKPOINTS)
def test_bad_checkpoints_are_refused_by_every_command(tmp_path, run_dir, variant):
    write, says = BAD_CHECKPOINTS[variant]
    out, marker = tmp_path / "run", tmp_path / "unpickled"
    shutil.copytree(run_dir, out)
    path = out / CHECKPOINT
    good = path.read_bytes()
    write(path, good, *load_npz(path), marker)
    before = snapshot(out)
    for args in commands_reading(out):
        result = invoke(*args)
        assert_error(result, says=says)
        assert str(path) in result.stderr
    assert snapshot(out) == before and not marker.exists()


def test_the_pickle_test_would_see_an_unpickling(tmp_path, run_dir):
    """The marker check above is not vacuous: loading the crafted file with pickle allowed writes it."""
    path, marker = tmp_path / "crafted.npz", tmp_path / "unpickled"
    pickled_array(path, None, *load_npz(run_dir / CHECKPOINT), marker)
    with np.load(path, allow_pickle=True) as npz:
        npz["W_hh"]
    assert marker.exists()


def test_load_npz_refuses_a_non_zip_without_mentioning_pickle(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    with pytest.raises(CharrnnError) as err:
        load_npz(path)
    assert "not an .npz file" in str(err.value) and "allow_pickle" not in str(err.value)


# ---------------------------------------------------------------------------- bad text

@pytest.fixture
def bad_texts(tmp_path):
    """Name -> (path, what the error says)."""
    texts = tmp_path / "texts"
    texts.mkdir()
    cases = {"empty": (b"", "is empty"), "binary": (bytes(range(256)) * 8, "looks binary"),
             "latin-1": ("Caf\u00e9 au lait. ".encode("latin-1") * 50, "not UTF-8 text (byte 0xe9")}
    found = {}
    for name, (content, says) in cases.items():
        (texts / name).write_bytes(content)
        found[name] = (texts / name, says)
    (texts / "a directory").mkdir()
    found["a directory"] = (texts / "a directory", "is a directory")
    os.mkfifo(texts / "fifo")  # reading it would block forever
    found["a FIFO"] = (texts / "fifo", "not a regular file")
    found["under a file"] = (texts / "empty" / "book.txt", "no such file")
    return found


def test_bad_text_gets_a_one_line_error_from_every_command(tmp_path, bad_texts, run_dir):
    for name, (path, says) in bad_texts.items():
        out = tmp_path / f"out-{name}"
        for args in (["corpus", path], ["train", path, *TINY, "--out", out], ["evaluate", run_dir, path]):
            assert_error(invoke(*args), says=says)
        assert not out.exists(), name


@pytest.fixture
def offline_registry(tmp_path, monkeypatch):
    """The real registry entry of the book, served from a local file (a file:// URL) -> that file."""
    entry = data.load_registry()["timemachine"]
    corpora, served = tmp_path / "corpora", tmp_path / "server" / "timemachine.txt"
    corpora.mkdir()
    served.parent.mkdir()
    (corpora / "registry.json").write_text(json.dumps({"timemachine": {**entry, "url": served.as_uri()}}))
    monkeypatch.setattr(data, "SOURCE_CORPORA", corpora)
    monkeypatch.delenv("CHARRNN_DATA_DIR", raising=False)
    return served


def test_a_0_byte_download_saves_nothing(offline_registry, tmp_path):
    offline_registry.write_bytes(b"")
    result = invoke("train", "timemachine", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.stderr.rstrip("\n").split("\n")[-1]  # after the download's progress bar
    assert error.startswith("Error: download of ") and "is corrupt (0 bytes" in error
    assert "nothing was saved" in error and "178979 bytes" in error
    assert [p.name for p in data.SOURCE_CORPORA.iterdir()] == ["registry.json"]
    assert not (tmp_path / "run").exists()


def test_a_local_copy_that_fails_the_checksum_is_refused(offline_registry, tmp_path, data_dir):
    book = bytearray((data_dir / "timemachine.txt").read_bytes())
    book[1000] ^= 0x20  # one letter's case
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / "timemachine.txt").write_bytes(book)
    for args in (["corpus", "--data-dir", copy_dir], ["train", "--data-dir", copy_dir, *TINY, "--out", tmp_path / "run"]):
        assert_error(invoke(*args), says="is not the registered corpus 'timemachine'")
    assert not (tmp_path / "run").exists()


def test_a_huge_single_line_is_valid_text(tmp_path):
    """5 MB and no newline: read, counted and trained on like any text."""
    letters = np.frombuffer(b"abcdefgh ", np.uint8)
    line = letters[np.random.default_rng(3).integers(0, len(letters), 5_000_000)].tobytes()
    path = tmp_path / "line.txt"
    path.write_bytes(line)
    counted = invoke("corpus", path, "--preprocess", "raw", "--json")
    assert_ok(counted)
    assert json.loads(counted.stdout)["tokens"] == 5_000_000
    trained = invoke("train", path, *TINY, "--preprocess", "raw", "--val-fraction", 0.001, "--max-tokens", 640,
                     "--out", tmp_path / "run")
    assert_ok(trained)
    by_count = sorted("abcdefgh ", key=lambda c: line.count(c.encode()), reverse=True)
    assert load_checkpoint(tmp_path / "run").vocab.idx_to_token[1:] == by_count


# ---------------------------------------------------------------------------- bad options

def out_of_range(option):
    """Values an option must refuse, from its own declaration."""
    kind = option.type
    if isinstance(kind, click.Choice):
        return ["no-such-choice"]
    if isinstance(kind, Truncation):
        return ["regular:0", "regular:-2", "regular:x", "randomized:0", "randomized:1.5", "randomized:nan", "always"]
    if isinstance(kind, Clip):
        return ["0", "-1", "nan", "x"]
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        step = 1 if isinstance(kind, click.IntRange) else 0.5
        values = ["x"] if isinstance(kind, click.IntRange) else ["x", "nan"]
        if kind.min is not None:
            values += [kind.min - (0 if kind.min_open else step), kind.min - 5]
        if kind.max is not None:
            values += [kind.max + (0 if kind.max_open else step)]
        return values
    return []


def test_every_out_of_range_option_of_every_command_is_a_usage_error():
    checked = set()
    for name, command in cli.main.commands.items():
        options = [p for p in command.params if isinstance(p, click.Option) and not p.is_flag]
        for option in options:
            for value in out_of_range(option):
                result = invoke(name, option.opts[0], value)
                assert_error(result, code=2, says=option.opts[0])
                checked.add((name, option.opts[0]))
        assert_error(invoke(name, "--no-such-option"), code=2, says="No such option")
    assert_error(invoke("no-such-command"), code=2, says="No such command")
    assert {("train", "--lr"), ("train", "--clip"), ("train", "--truncation"), ("train", "--num-steps"),
            ("sample", "--temperature"), ("gradcheck", "--vocab-size"), ("corpus", "--top")} <= checked


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "1e400"), ("--max-time", "inf"),
                                           ("--val-fraction", "nan"), ("--lr-decay", "nan")])
def test_non_finite_numbers_are_usage_errors(tmp_path, text_file, option, value):
    result = invoke("train", text_file, *TINY, option, value, "--out", tmp_path / "run")
    assert_error(result, code=2, says=option)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["gradcheck", "--num-hiddens", 10**20], ["gradcheck", "--vocab-size", 2**40],
                                  ["sample", "RUN", "--length", 10**20]])
def test_sizes_no_array_can_have_are_one_line_errors(run_dir, args):
    result = invoke(*[run_dir if a == "RUN" else a for a in args])
    assert_error(result, says="try smaller sizes")


# ---------------------------------------------------------------------------- full or read-only disk

def test_a_full_disk_is_refused_before_training_or_resuming(tmp_path, text_file, run_dir, monkeypatch):
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=4096))
    fresh = tmp_path / "fresh"
    assert_error(invoke("train", text_file, *TINY, "--out", fresh), says="not enough space")
    assert not list(fresh.iterdir())
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    before = snapshot(resumed)
    assert_error(invoke("train", "--resume", resumed, "--max-tokens", 5000), says="not enough space")
    assert snapshot(resumed) == before


@pytest.mark.parametrize("where", [
    pytest.param("/proc/self", marks=pytest.mark.skipif(not ON_LINUX, reason="procfs takes no files, even root's")),
    "under a file",
])
def test_an_unwritable_output_directory_is_refused_before_training(tmp_path, text_file, where):
    if where == "under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        out = Path(where)
    result = invoke("train", text_file, *TINY, "--out", out)
    assert_error(result, says=str(out))
    assert "not writable" in result.stderr or "cannot create output directory" in result.stderr


def test_the_disk_filling_up_during_training_keeps_the_last_checkpoint(tmp_path, text_file, monkeypatch):
    real_savez, saves = np.savez, [0]

    def savez_until_full(f, **arrays):
        saves[0] += 1
        if saves[0] == 6:
            f.write(b"PK\x03\x04 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_savez(f, **arrays)
    monkeypatch.setattr(charrnn_io.np, "savez", savez_until_full)
    out = tmp_path / "run"
    result = invoke("train", text_file, *TINY, "--eval-every", 64, "--max-tokens", 640, "--out", out)
    assert_error(result, says="No space left on device")
    kept = load_checkpoint(out / CHECKPOINT)
    assert f"the last good checkpoint (step {kept.progress.step}) is" in result.stderr and kept.progress.step > 0
    assert load_checkpoint(out / BEST).progress.step <= kept.progress.step
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert_ok(invoke("train", "--resume", out))
