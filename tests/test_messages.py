"""Messages and small things: --threads past the cores, control
characters in paths, a metrics.jsonl that is no file, export over an existing file."""
import json
import os

import pytest

from charrnn.runtime.threads import available_cores
from charrnn.training.outdir import CHECKPOINT, METRICS
from test_cli import assert_error, assert_ok, invoke

TINY = ["--num-hiddens", 8, "--batch-size", 2, "--num-steps", 8, "--eval-every", 128, "--sample-length", 4]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 600, seed=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("run") / "run"
    assert_ok(invoke("train", text_file, *TINY, "--max-tokens", 256, "--out", out))
    return out


@pytest.mark.parametrize("threads", ["100000", "99999999999999999999"])
def test_threads_past_the_cores_are_capped_with_a_warning(tmp_path, text_file, threads):
    out = tmp_path / "run"
    result = invoke("--threads", threads, "train", text_file, *TINY, "--max-tokens", 128, "--out", out)
    assert_ok(result)
    assert f"Warning: --threads {threads} is more than the {available_cores()} cores" in result.stderr
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert records and all(record["threads"] <= available_cores() for record in records)


HOSTILE_NAME = "run\x1b]0;pwned\x07\nnext line"


def test_control_characters_of_a_path_never_reach_the_terminal(tmp_path, text_file):
    out = tmp_path / HOSTILE_NAME
    first = invoke("train", text_file, *TINY, "--max-tokens", 128, "--out", out)
    assert_ok(first)
    again = invoke("train", text_file, *TINY, "--max-tokens", 128, "--out", out)
    assert_error(again, says="already holds a run")
    for output in (first.stdout, first.stderr, again.stderr):
        assert "\x1b" not in output and "\x07" not in output and "\nnext line" not in output
    assert "\\x1b]0;pwned\\x07" in again.stderr


def test_a_metrics_file_that_is_a_directory_is_refused_before_training(tmp_path, run_dir):
    out = tmp_path / "run"
    import shutil
    shutil.copytree(run_dir, out)
    (out / METRICS).unlink()
    (out / METRICS).mkdir()
    before = (out / CHECKPOINT).read_bytes()
    assert_error(invoke("train", "--resume", out, "--max-tokens", 4096), says="is not a regular file")
    assert (out / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("kind", ["file", "symlink", "fifo"])
def test_export_replaces_an_existing_path_only_with_force(tmp_path, run_dir, kind):
    target, other = tmp_path / "m.safetensors", tmp_path / "other.txt"
    other.write_text("keep me")
    if kind == "file":
        target.write_text("keep me")
    elif kind == "symlink":
        target.symlink_to(other)
    else:
        os.mkfifo(target)
    assert_error(invoke("export", run_dir, target), says="--force")
    assert other.read_text() == "keep me" and os.path.lexists(target)
    assert_ok(invoke("export", run_dir, target, "--force"))
    assert target.is_file() and not target.is_symlink() and other.read_text() == "keep me"
