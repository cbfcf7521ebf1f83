"""Guards around a run: one process per run directory, sizes that cannot fit, Ctrl-C
while starting, stale temporaries, both splits hashed, a text that moved, failed appends,
overflowing weights, terminal escapes, and the CLI's last line of defence."""
import errno
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from charrnn.base import io as charrnn_io
from charrnn.training import memory
from charrnn.training import start as training
from charrnn.training import loop as training_loop
from charrnn.cli import inspection
from charrnn.cli.render import escape_controls
from charrnn.base.io import load_npz, save_npz, temporary_path
from charrnn.runtime.lock import LOCK_FILE, RunLock
from charrnn.base.io import append_jsonl
from charrnn.training.outdir import BEST, CHECKPOINT
from charrnn.training.outdir import CONFIG, METRICS
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import ConfigError, TrainConfig
from test_cli import assert_error, assert_ok, charrnn_command, invoke
from test_reliability import TINY, snapshot, train_process, wait_for

@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 2500, seed=12)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("run") / "run"
    assert_ok(invoke("train", text_file, *TINY, "--max-tokens", 1000, "--out", out))
    return out


def copied(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------------------- two processes, one run

def test_a_second_process_is_refused_while_a_run_trains_and_readers_keep_working(tmp_path, text_file):
    out = tmp_path / "run"
    process = train_process(text_file, out, "--max-time", 300)
    try:
        wait_for(out / METRICS, process)
        resumed = invoke("train", "--resume", out, "--max-tokens", 10**6)
        assert_error(resumed, says=f"in use by another charrnn process (PID {process.pid})")
        assert_error(invoke("train", text_file, *TINY, "--out", out), says="already holds a run")
        for reader in (["sample", out, "--length", 5], ["evaluate", out]):
            assert_ok(invoke(*reader))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130
    tokens = load_checkpoint(out / CHECKPOINT).progress.tokens
    assert_ok(invoke("train", "--resume", out, "--max-tokens", tokens + 64))  # the lock died with its holder


def test_the_lock_refuses_a_new_run_before_any_file_is_written(tmp_path, text_file):
    """A process holding the lock of an empty directory (a run starting): a new run there is
    refused naming it, and writes nothing; the lock dies with its holder."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from charrnn.runtime.lock import RunLock\n"
                               f"with RunLock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert_error(invoke("train", text_file, *TINY, "--out", out), says=f"(PID {holder.pid})")
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    with RunLock(out):  # released by the kernel, though the holder never unlocked
        pass


def test_two_runs_started_together_into_one_directory_leave_one_run(tmp_path, text_file):
    out = tmp_path / "run"
    args = [charrnn_command(), "train", str(text_file), *TINY, "--max-tokens", "2048", "--out", str(out)]
    processes = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 1], results
    refusal = next(err for code, err in results if code == 1)
    assert refusal.count("\n") == 1 and any(reason in refusal for reason in (
        "in use by another", "already holds a run", "holds files of another run"))
    steps = [json.loads(line)["step"] for line in (out / METRICS).read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's records, none interleaved


def test_a_new_run_refuses_a_directory_holding_any_file_of_an_earlier_run(tmp_path, run_dir, text_file):
    out = copied(run_dir, tmp_path)
    for name in (CHECKPOINT, BEST):
        (out / name).unlink()
    before = snapshot(out)
    assert_error(invoke("train", text_file, *TINY, "--out", out), says="holds files of another run")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- memory bombs

def test_a_run_that_cannot_fit_in_memory_is_refused_creating_nothing(tmp_path, text_file):
    out = tmp_path / "run"
    start = time.perf_counter()
    result = invoke("train", text_file, "--num-hiddens", 4_000_000, "--out", out)
    assert_error(result, says="needs about")
    assert "GB of memory" in result.stderr and "--num-hiddens" in result.stderr
    assert time.perf_counter() - start < 5 and not out.exists()


def test_a_vocabulary_too_large_for_a_checkpoint_is_refused_before_the_run_starts(tmp_path, text_file, monkeypatch):
    """The limit on what a checkpoint's metadata may hold is met when a run starts, not at its
    first checkpoint (a word vocabulary of ~100,000 words reaches the real 2 MiB)."""
    monkeypatch.setattr(charrnn_io, "MAX_META_BYTES", (64 << 10) + 200)  # 200 bytes for the vocabulary
    out = tmp_path / "run"
    assert_error(invoke("train", text_file, *TINY, "--out", out), says="bytes of metadata, over the 200 a checkpoint holds")
    assert not out.exists()
    monkeypatch.undo()
    assert_ok(invoke("train", text_file, *TINY, "--max-tokens", 64, "--out", out))


def test_a_stack_of_more_layers_than_a_checkpoint_holds_is_a_usage_error(tmp_path, text_file):
    """cells.MAX_LAYERS keeps a checkpoint within the members charrnn reads back; without it a
    million layers took 27 s and 800 MB only to list their shapes."""
    out = tmp_path / "run"
    start = time.perf_counter()
    assert_error(invoke("train", text_file, *TINY, "--num-layers", 10**6, "--out", out), code=2, says="--num-layers")
    assert time.perf_counter() - start < 5 and not out.exists()


def test_resume_and_readers_check_memory_before_allocating(tmp_path, run_dir, monkeypatch):
    out = copied(run_dir, tmp_path)
    before = snapshot(out)
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000)
    assert_error(invoke("train", "--resume", out, "--max-tokens", 5000), says="needs about")
    assert_error(invoke("sample", out), says=f"reading {out / BEST} needs about")
    assert snapshot(out) == before


def test_the_memory_estimate_bounds_a_real_run(tmp_path, text_file):
    """The estimate is above what a run allocates (tracemalloc sees NumPy's arrays), not far above."""
    config = TrainConfig(corpus=str(text_file), num_hiddens=128, batch_size=16, num_steps=32,
                                  max_tokens=16 * 32 * 2, eval_every=512, sample_length=5)
    _, val_data, vocab, _ = training.load_data(config, None)
    network = ("num_hiddens", "activation", "dtype", "cell", "num_layers", "dropout")
    spec = {**{name: getattr(config, name) for name in network}, "vocab_size": len(vocab)}
    tracemalloc.start()
    try:
        training.train(config, tmp_path / "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = memory.training_memory_bytes(spec, config, len(val_data))
    assert peak < estimate < 3 * peak, (peak, estimate)


def test_available_memory_reads_the_machine():
    available = memory.available_memory()
    if sys.platform.startswith("linux"):
        assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------------------- smaller holes

def test_ctrl_c_while_charrnn_starts_prints_no_traceback(text_file):
    """SIGINT at moments spread over charrnn's start-up (the imports of NumPy, click, rich: most of
    a second) and after: exit 130, or the command's end, never a traceback. The child starts
    as the console script does, with os, re and signal imported, then says "ready" and calls
    charrnn.entry.main; the signal comes 20 ms or more after that. (Before it, the interpreter's own
    start-up and an editable install's import hooks are outside charrnn's reach.)"""
    script = ("import os, re, signal, sys\nprint('ready', flush=True)\n"
              "from charrnn.entry import main\nsys.exit(main())")
    for delay in np.arange(0.02, 0.6, 0.08):
        process = subprocess.Popen([sys.executable, "-c", script, "corpus", str(text_file)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        # 130: interrupted while starting or in the command; 1: in click's parsing of the arguments
        # ("Aborted!"); -SIGINT: during the interpreter's exit
        assert "Traceback" not in stderr and process.returncode in (0, 1, 130, -signal.SIGINT), (delay, stderr)
        assert stderr == {130: "\nInterrupted.\n", 1: "\nAborted!\n"}.get(process.returncode, stderr), stderr


def test_stale_temporaries_of_dead_processes_are_removed_when_a_run_resumes(tmp_path, run_dir):
    out = copied(run_dir, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = temporary_path(out / CHECKPOINT, pid=dead)
        stale.write_bytes(b"PK\x03\x04 half a checkpoint")
        theirs = temporary_path(out / BEST, pid=alive.pid)
        theirs.write_bytes(b"being written")
        assert_ok(invoke("train", "--resume", out, "--max-tokens", 1200))
        assert not stale.exists() and theirs.exists()
    finally:
        alive.kill()
        alive.wait()


def test_randomized_truncation_whose_inverse_overflows_is_a_usage_error(tmp_path, text_file):
    out = tmp_path / "run"
    assert_error(invoke("train", text_file, *TINY, "--truncation", "randomized:1e-40", "--out", out),
                 code=2, says="1/P overflows float32")
    assert not out.exists()
    TrainConfig(truncation="randomized:1e-40", dtype="float64")  # fits a float64


def test_an_edited_validation_text_is_not_resumed(tmp_path, text_file):
    """A checkpoint names its text by the SHA-1 of all its token ids (charrnn.data.store), both splits."""
    text = tmp_path / "text.txt"
    shutil.copy(text_file, text)
    out = tmp_path / "run"
    assert_ok(invoke("train", text, *TINY, "--max-tokens", 600, "--out", out))
    words = text.read_text().split(" ")
    words[-3], words[-5] = words[-5], words[-3]  # the validation split: the same letters, another text
    assert words[-3] != words[-5]
    text.write_text(" ".join(words))
    assert_error(invoke("train", "--resume", out, "--max-tokens", 1200), says="is not the text")


def test_a_text_that_moved_resumes_from_its_new_path_if_it_is_the_same_text(tmp_path, text_file):
    old, new, other = tmp_path / "old.txt", tmp_path / "new.txt", tmp_path / "other.txt"
    shutil.copy(text_file, old)
    out = tmp_path / "run"
    assert_ok(invoke("train", old, *TINY, "--max-tokens", 600, "--out", out))
    old.rename(new)
    assert_error(invoke("train", "--resume", out, "--max-tokens", 1200), says=f"--resume {out} NEW_PATH")
    other.write_text(new.read_text()[::-1])
    assert_error(invoke("train", "--resume", out, other, "--max-tokens", 1200), says="is not the text")
    assert_ok(invoke("train", "--resume", out, new, "--max-tokens", 1200))
    assert json.loads((out / CONFIG).read_text())["corpus"] == str(new.resolve())
    assert_ok(invoke("train", "--resume", out, "--max-tokens", 1800))  # from the new path, remembered


def test_a_failed_metrics_append_names_the_file_and_the_last_good_checkpoint(tmp_path, text_file, monkeypatch):
    real, calls = append_jsonl, [0]

    def append_until_full(path, record):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, record)
    monkeypatch.setattr(training_loop, "append_jsonl", append_until_full)
    out = tmp_path / "run"
    result = invoke("train", text_file, *TINY, "--eval-every", 64, "--max-tokens", 640, "--out", out)
    step = load_checkpoint(out / CHECKPOINT).progress.step
    assert_error(result, says=f"cannot append to {out / METRICS} (No space left on device)")
    assert f"the last good checkpoint (step {step}) is {out / CHECKPOINT}" in result.stderr


def test_bptt_memory_changed_on_resume_is_said_to_change_rounding(tmp_path, text_file):
    help_text = " ".join(invoke("train", "--help").stdout.split())
    assert "up to rounding" in help_text and "not bit-identical" in help_text
    maths = [text_file, *TINY, "--num-steps", 16, "--lr-schedule", "constant"]  # a schedule blind to the budget
    assert_ok(invoke("train", *maths, "--max-tokens", 1024, "--out", tmp_path / "straight", "--bptt-memory", "store"))
    assert_ok(invoke("train", *maths, "--max-tokens", 512, "--out", tmp_path / "split", "--bptt-memory", "store"))
    assert_ok(invoke("train", "--resume", tmp_path / "split", "--max-tokens", 1024, "--bptt-memory", "recompute"))
    straight, split = (load_checkpoint(tmp_path / name / CHECKPOINT).model for name in ("straight", "split"))
    for name, value in straight.params.items():  # close, though not bit-identical
        np.testing.assert_allclose(split.params[name], value, rtol=1e-3, atol=1e-5)


def test_evaluate_refuses_weights_whose_outputs_overflow_without_a_numpy_warning(tmp_path, run_dir):
    path = tmp_path / "huge.npz"
    arrays, meta = load_npz(run_dir / CHECKPOINT)
    arrays["W_xh"] = np.full_like(arrays["W_xh"], 1e3)  # every h_t = tanh(>= 1e3 - ...) = 1
    arrays["W_hq"] = np.full_like(arrays["W_hq"], 3e38)  # finite, but o_t = h_t W_hq overflows
    save_npz(path, arrays, meta)
    for args in (["evaluate", path], ["evaluate", path, "--json"]):
        result = invoke(*args)
        assert_error(result, says="overflow")
        assert result.stdout == "" and "Warning" not in result.stderr


def test_sample_escapes_control_characters_on_a_terminal_only(tmp_path, run_dir):
    assert escape_controls("a\x1b[31mb\tc\nd\x9b\x7f\x00") == "a\\x1b[31mb\tc\nd\\x9b\\x7f\\x00"
    path = tmp_path / "escape.npz"
    arrays, meta = load_npz(run_dir / CHECKPOINT)
    meta["vocab"]["idx_to_token"][1] = "\x1b"  # the most frequent token, drawn often
    save_npz(path, arrays, meta)
    args = ["sample", str(path), "--length", "200", "--prefix", "the"]
    piped = invoke(*args)
    assert_ok(piped)
    assert "\x1b" in piped.stdout  # a pipe gets the text as it is
    controller, terminal = pty.openpty()
    process = subprocess.Popen([charrnn_command(), *args], stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert b"\x1b" not in shown and b"\\x1b" in shown


def test_an_infinite_clip_is_a_usage_error(tmp_path, text_file):
    """A checkpoint's JSON holds finite numbers only (found by the CLI fuzz: --clip inf reached the
    last line of defence when the first checkpoint was saved)."""
    out = tmp_path / "run"
    assert_error(invoke("train", text_file, *TINY, "--clip", "inf", "--out", out), code=2, says="--clip")
    assert not out.exists()
    with pytest.raises(ConfigError, match="max_time must be a finite number"):
        TrainConfig(max_time=float("inf"))


def test_arguments_that_are_not_utf8_text_are_usage_errors(tmp_path, run_dir, text_file):
    """Bytes that are not UTF-8 in an argument reach Python as lone surrogates: such a prefix could
    be neither printed nor saved in a checkpoint that loads again."""
    assert_error(invoke("sample", run_dir, "--prefix", "ab\udcff"), code=2, says="--prefix")
    out = tmp_path / "run"
    assert_error(invoke("train", text_file, *TINY, "--sample-prefix", "ab\udcff", "--out", out),
                 code=2, says="--sample-prefix")
    assert not out.exists()


def test_a_path_in_the_home_of_no_such_user_is_a_one_line_error(tmp_path):
    """Path.expanduser raises RuntimeError for ~user of no such user: found by the last line of
    defence (it reported a bug), now read as the path it is."""
    book = "~no-such-user-charrnn/book.txt"
    for args in (["corpus", book], ["train", book, *TINY, "--out", tmp_path / "run"]):
        assert_error(invoke(*args), says=f"no such file or registered corpus: {book!r}")
    assert not (tmp_path / "run").exists()


def test_plot_reads_a_hostile_metrics_file_without_a_traceback(tmp_path):
    """Lines nested 100,000 deep, values of the wrong type, integers past int64, bytes that are
    not UTF-8: skipped or read as no value; the good record is charted."""
    run = tmp_path / "run"
    run.mkdir()
    lines = ["[" * 100_000 + "]" * 100_000, '{"tokens": 5, "train_ppl": "x", "val_ppl": [1]}',
             '{"tokens": ' + "9" * 400 + ', "train_ppl": 3}', '{"tokens": 6, "train_ppl": 1e308, "val_ppl": -1}',
             '{"tokens": 7, "train_ppl": 3.0, "val_ppl": 2.0}']
    (run / METRICS).write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    result = invoke("plot", run)
    assert_ok(result)
    assert "2.000" in result.stdout


def test_an_unexpected_exception_is_one_line_reporting_a_bug(run_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(inspection, "sample_text", broken)
    result = invoke("sample", run_dir)
    assert_error(result, says="unexpected ZeroDivisionError: division by zero -- this is a bug in charrnn")
    assert "CHARRNN_DEBUG=1" in result.stderr
    debug = invoke("sample", run_dir, env={"CHARRNN_DEBUG": "1"})
    assert isinstance(debug.exception, ZeroDivisionError)
