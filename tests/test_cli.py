"""The command line: every command, bad input everywhere, the installed `charrnn`, signals."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training import start as training
from charrnn.analysis.gradcheck import run_gradcheck
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num-hiddens", "12", "--batch-size", "4", "--num-steps", "8", "--sample-length", "10"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], env=env)


def assert_ok(result):
    assert result.exception is None and result.exit_code == 0, result.output


def assert_error(result, code=1, says=""):
    """Exit `code`, no traceback; an exit-1 error is exactly one line `Error: ...` on stderr."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if code == 1:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    else:
        assert "Error: " in result.stderr
    assert says in result.stderr


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    """A ~2,400-character text of random lowercase words."""
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 400, seed=7)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file):
    """A finished tiny training run on `text_file` with raw preprocessing."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(corpus=str(text_file), preprocess="raw", num_hiddens=16,
                                  batch_size=4, num_steps=8, epochs=2, eval_every=300)
    training.train(config, out)
    return out


# ---------------------------------------------------------------------------- the real book

def test_corpus_command_on_the_book(data_dir):
    env = {"CHARRNN_DATA_DIR": str(data_dir)}
    result = invoke("corpus", "--json", "--top", 3, env=env)
    assert_ok(result)
    summary = json.loads(result.stdout)
    assert (summary["tokens"], summary["vocab_size"]) == (173_428, 28)
    assert [token for token, _ in summary["top"]] == [" ", "e", "t"]
    table = invoke("corpus", "timemachine", "--level", "word", env=env)
    assert_ok(table)
    assert "32,775 tokens" in table.stdout and "'the'" in table.stdout and "2,261" in table.stdout


def test_train_sample_resume_evaluate_on_the_book(tmp_path, data_dir):
    env = {"CHARRNN_DATA_DIR": str(data_dir)}
    out = tmp_path / "run"
    size = ["--num-hiddens", "32", "--batch-size", "16", "--num-steps", "16", "--eval-every", 2048]
    trained = invoke("train", *size, "--max-tokens", 4096, "--out", out, env=env)
    assert_ok(trained)
    assert "Training summary" in trained.stdout and "max_tokens" in trained.stdout
    assert {"checkpoint.npz", "best.npz", "config.json", "vocab.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()}

    sampled = invoke("sample", out, "--prefix", "Time Traveller", "--length", 40, "--seed", 1)
    assert_ok(sampled)
    assert sampled.stdout.startswith("time traveller") and len(sampled.stdout) == 14 + 40 + 1
    assert "<unk>" not in sampled.stdout

    resumed = invoke("train", "--resume", out, "--max-tokens", 8192, env=env)
    assert_ok(resumed)
    assert "Resuming at epoch 1, 4,096 tokens" in resumed.stdout
    assert load_checkpoint(out / "checkpoint.npz").progress.tokens == 8192

    evaluated = invoke("evaluate", out, "--json", env=env)
    assert_ok(evaluated)
    report = json.loads(evaluated.stdout)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert report["perplexity"] == min(r["val_ppl"] for r in records)  # best.npz, same split
    assert report["tokens"] == 17_342


# ---------------------------------------------------------------------------- every command

def test_train_prints_evaluations_and_a_summary(tmp_path, text_file):
    result = invoke("train", text_file, *TINY, "--epochs", 1, "--eval-every", 300, "--out", tmp_path / "r")
    assert_ok(result)
    first_words = " ".join(text_file.read_text().split()[:2])  # the default sample prefix of a user's text
    assert "val ppl" in result.stdout and f"'{first_words}" in result.stdout
    for row in ("validation perplexity", "tokens/s", "wall time", f"checkpoint: {tmp_path / 'r' / 'checkpoint.npz'}"):
        assert row in result.stdout


def test_sample_options_and_unknown_prefix_characters(run_dir):
    greedy = invoke("sample", run_dir, "--prefix", "the Time", "--length", 30, "--greedy")
    assert_ok(greedy)
    assert greedy.stdout.startswith("the Time") and len(greedy.stdout) == 8 + 30 + 1
    assert "Warning: 1 occurrence of 1 distinct token ('T') of the prefix are not in the vocabulary" in greedy.stderr
    top1 = invoke("sample", run_dir / "best.npz", "--prefix", "the Time", "--length", 30, "--top-k", 1)
    assert top1.stdout == greedy.stdout
    seeded = [invoke("sample", run_dir, "--length", 50, "--temperature", 2, "--seed", s).stdout
              for s in (3, 3, 4)]
    assert seeded[0] == seeded[1] != seeded[2]


def test_evaluate_on_a_given_text(run_dir, text_file, tmp_path):
    own = invoke("evaluate", run_dir, text_file)
    assert_ok(own)
    assert "perplexity" in own.stdout and str(text_file) in own.stdout
    few_unknown = tmp_path / "few.txt"
    few_unknown.write_text(text_file.read_text() + " zzz", encoding="utf-8")
    warned = invoke("evaluate", run_dir, few_unknown, "--json")
    assert_ok(warned)
    assert "Warning: 3 occurrences of 1 distinct token ('z')" in warned.stderr
    assert json.loads(warned.stdout)["perplexity"] > 1
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("ПРИВЕТ МИР " * 50, encoding="utf-8")
    assert_error(invoke("evaluate", run_dir, foreign), says="outside the checkpoint's vocabulary")


def test_gradcheck_command():
    result = invoke("gradcheck", "--activation", "linear", "--truncation", "regular:2")
    assert_ok(result)
    report = run_gradcheck(activation="linear", truncation="regular:2")
    for check, param, *_ in report.rows:
        assert check in result.stdout and param in result.stdout
    assert "all checks passed" in result.stdout and "FAIL" not in result.stdout


def test_gradcheck_exits_1_when_a_check_fails(monkeypatch):
    report = run_gradcheck()
    report.rows[0] = report.rows[0]._replace(passed=False)
    monkeypatch.setattr(cli.inspection, "run_gradcheck", lambda **options: report)
    result = invoke("gradcheck")
    assert result.exit_code == 1 and "FAIL" in result.stdout and "some checks failed" in result.stdout


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("option, value", [
    ("--lr", "0"), ("--lr", "-1"), ("--clip", "0"), ("--clip", "-2"), ("--batch-size", "0"),
    ("--num-hiddens", "-3"), ("--num-steps", "0"), ("--truncation", "regular:0"),
    ("--truncation", "randomized:0"), ("--truncation", "randomized:1.5"), ("--truncation", "sometimes"),
    ("--optimizer", "rmsprop"), ("--val-fraction", "1"), ("--max-time", "0"), ("--epochs", "0"),
    ("--sampler", "shuffled"), ("--seed", "-1"), ("--num-steps", "100000"),
])
def test_bad_train_options_are_usage_errors(tmp_path, text_file, option, value):
    result = invoke("train", text_file, *TINY, option, value, "--out", tmp_path / "r")
    assert_error(result, code=2, says=option)
    assert not (tmp_path / "r").exists()


def test_bad_sample_and_gradcheck_options_are_usage_errors(run_dir):
    assert_error(invoke("sample", run_dir, "--temperature", "0"), code=2, says="--temperature")
    assert_error(invoke("sample", run_dir, "--top-k", "0"), code=2, says="--top-k")
    assert_error(invoke("sample", run_dir / "missing.npz"), code=2, says="does not exist")
    assert_error(invoke("gradcheck", "--truncation", "regular:x"), code=2, says="--truncation")


def test_bad_files_are_one_line_errors(tmp_path, run_dir):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((run_dir / "checkpoint.npz").read_bytes()[:3000])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert_error(invoke("sample", garbage), says="garbage.npz")
    assert_error(invoke("evaluate", truncated), says="truncated.npz")
    assert_error(invoke("sample", empty_dir), says="is not a run directory (it holds neither best.npz nor checkpoint.npz)")
    assert_error(invoke("train", tmp_path / "missing.txt", "--out", tmp_path / "r"), says="missing.txt")
    assert_error(invoke("train", binary, "--out", tmp_path / "r"), says="binary")
    assert_error(invoke("corpus", empty_dir), says="is a directory")
    assert_error(invoke("evaluate", run_dir, binary), says="binary")


def test_resume_errors(tmp_path, run_dir, text_file):
    assert_error(invoke("train", "--resume", run_dir, "--lr", "0.5"), code=2, says="keeps its lr")
    assert_error(invoke("train", "--resume", run_dir), says="already reached its budget")
    assert_error(invoke("train", "--resume", run_dir, "--out", tmp_path), code=2, says="--out")
    assert_error(invoke("train", text_file, "--out", run_dir), says="already holds a run")
    assert_error(invoke("train", text_file, *TINY, "--out", text_file / "sub"), says="cannot create output directory")


def test_nonfinite_run_stops_with_a_one_line_error(tmp_path, text_file):
    result = invoke("train", text_file, *TINY, "--activation", "linear", "--optimizer", "sgd",
                    "--lr", "1e30", "--clip", "none", "--out", tmp_path / "r")
    assert_error(result, says="non-finite")
    assert "--on-nonfinite skip" in result.stderr and "last good checkpoint (step 0)" in result.stderr
    assert load_checkpoint(tmp_path / "r" / "checkpoint.npz").progress.step == 0


# ---------------------------------------------------------------------------- the installed command

def charrnn_command():
    path = shutil.which("charrnn")
    assert path, "the charrnn command is not installed (pip install -e .)"
    return path


def test_installed_command_and_cli_py(text_file):
    done = subprocess.run([charrnn_command(), "corpus", str(text_file), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == len(text_file.read_text())
    bad = subprocess.run([charrnn_command(), "sample", str(text_file)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
    for how in ([charrnn_command()], [sys.executable, "cli.py"], [sys.executable, "-m", "charrnn"]):
        helped = subprocess.run([*how, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0, (how, helped.stderr)
        assert all(command in helped.stdout for command in ("corpus", "train", "sample", "evaluate", "gradcheck",
                                                            "analyze", "compare", "--threads")), how


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_resumable_checkpoint(tmp_path, text_file, sig, code):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [charrnn_command(), "train", str(text_file), *TINY, "--eval-every", "64", "--max-time", "300",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first evaluation happens inside the training loop
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"Resume with: charrnn train --resume {out}" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(out / "checkpoint.npz")
    assert saved.progress.step >= 2
    resumed = invoke("train", "--resume", out, "--max-tokens", saved.progress.tokens + 32)
    assert_ok(resumed)
    assert load_checkpoint(out / "checkpoint.npz").progress.step == saved.progress.step + 1


def test_a_path_option_holding_a_nul_character_is_a_one_line_error():
    assert_error(invoke("train", "--init-from", "\x00"), says="NUL")
