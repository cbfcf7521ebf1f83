"""A sweep's directories after faults: a run killed before its first
checkpoint or evaluation, a damaged metrics.jsonl in a finished run, a signal to one worker, the
sweep itself SIGKILLed. The states are made by hand where a kill would have to hit a window of
milliseconds; a sweep never exits 0 without every seed, and never trusts a damaged record."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from charrnn.experiments.compare import compare, plan
from charrnn.experiments.runs import GRAD_NORMS, execute_run
from charrnn.experiments.sweep import SerialBackend
from charrnn.training import start as training
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.events import Reporter
from charrnn.training.outdir import BEST, CHECKPOINT, CONFIG, METRICS, VOCAB
from test_compare import tiny_config

TRUNCATIONS = ("full", "regular:2")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 300, seed=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_file):
    """A finished sweep of two strategies, two seeds: (its directory, its final perplexities)."""
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    comparison, interrupted = compare(tiny_config(text_file), out, TRUNCATIONS, num_seeds=2)
    assert not interrupted and not comparison.failed
    return out, finals(comparison)


def finals(comparison):
    return {(s.truncation, s.seed): (s.final_val_ppl, s.best_val_ppl, s.mean_grad_norm) for s in comparison.summaries}


def again(text_file, out):
    comparison, interrupted = compare(tiny_config(text_file), out, TRUNCATIONS, num_seeds=2, backend=SerialBackend())
    assert not interrupted and not comparison.failed and not comparison.interrupted, comparison.failed
    return finals(comparison)


def copied(finished, tmp_path):
    out, result = finished
    shutil.copytree(out, tmp_path / "cmp")
    return tmp_path / "cmp", result


# ---------------------------------------------------------------------------- killed early

def test_a_run_killed_between_its_config_and_its_first_checkpoint_is_started_again(finished, tmp_path, text_file):
    out, result = copied(finished, tmp_path)
    run = out / "full-seed1"
    for name in (CHECKPOINT, BEST, METRICS, GRAD_NORMS):
        (run / name).unlink()  # what a SIGKILL 8-87 ms after config.json leaves: config.json, vocab.json
    assert (run / CONFIG).exists() and (run / VOCAB).exists()
    assert again(text_file, out) == result


def test_a_run_killed_before_its_first_evaluation_keeps_its_mean_gradient_norm(finished, tmp_path, text_file):
    out, result = copied(finished, tmp_path)
    (spec,) = [s for s in plan(tiny_config(text_file), out, TRUNCATIONS, num_seeds=2) if s.name == "regular-2-seed0"]
    shutil.rmtree(spec.out_dir)

    class Killed(Reporter):
        def on_step(self, stats):
            if stats["step"] == 3:
                raise RuntimeError("SIGKILL")  # dies as a killed process would: no file written after

    with pytest.raises(RuntimeError, match="SIGKILL"):
        training.train(spec.config, spec.out_dir, reporter=Killed())
    assert not (spec.out_dir / GRAD_NORMS).exists() and (spec.out_dir / CHECKPOINT).exists()
    summary = execute_run(spec)
    assert summary.mean_grad_norm == result["regular:2", 0][2] is not None


# ---------------------------------------------------------------------------- damaged records

def damage_last_record(path, how):
    lines = path.read_text().splitlines(keepends=True)
    if how == "a NaN perplexity":
        record = json.loads(lines[-1])
        lines[-1] = json.dumps({**record, "val_ppl": "NaN"}).replace('"NaN"', "NaN") + "\n"
    elif how == "the last record missing":
        lines = lines[:-1]
    elif how == "a torn last line":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif how == "nested 100,000 deep":
        lines[-1] = "[" * 100_000 + "]" * 100_000 + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize("how", ["a NaN perplexity", "the last record missing", "a torn last line",
                                 "nested 100,000 deep"])
def test_a_reused_run_whose_last_record_is_damaged_is_evaluated_again_not_trusted(finished, tmp_path, text_file, how):
    out, result = copied(finished, tmp_path)
    damage_last_record(out / "regular-2-seed1" / METRICS, how)
    assert again(text_file, out) == result
    assert again(text_file, out) == result  # and now reused as it is


def test_a_run_whose_records_cannot_be_read_back_fails_by_name_not_as_a_bug(finished, tmp_path, text_file):
    out, result = copied(finished, tmp_path)
    (out / "full-seed0" / METRICS).write_bytes(b"\xff\xfe not json\n")
    # the run's last step was evaluated (last_eval_step) but its record is gone: evaluated again
    assert again(text_file, out) == result


# ---------------------------------------------------------------------------- signals and orphans

def command(text_file, out, jobs=2, tokens=30_000):
    from test_cli import charrnn_command
    return [charrnn_command(), "compare", str(text_file), "--num-hiddens", "10", "--batch-size", "3",
            "--num-steps", "12", "--max-tokens", str(tokens), "--eval-every", "720", "--sample-length", "5",
            "--regular", "2", "--randomized", "0.5", "--jobs", str(jobs), "--out", str(out)]


def workers_of(pid):
    """The pids of the sweep's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_signal_to_one_worker_is_a_sweep_that_exits_non_zero_naming_the_run(tmp_path, text_file):
    out = tmp_path / "cmp"
    process = subprocess.Popen(command(text_file, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(out.glob("*/metrics.jsonl"))) >= 2 and len(workers_of(process.pid)) == 2)
        os.kill(workers_of(process.pid)[0], signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr and "1 run(s) interrupted (" in stderr and "SIGTERM" in stderr, stderr


def test_a_sweep_killed_with_sigkill_leaves_no_worker_training(tmp_path, text_file):
    from charrnn.runtime.lock import RunLock
    out = tmp_path / "cmp"
    process = subprocess.Popen(command(text_file, out, tokens=10**8), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(out.glob("*/metrics.jsonl"))) >= 2 and len(workers_of(process.pid)) == 2)
        workers = workers_of(process.pid)
        process.kill()
        process.wait(timeout=10)
        wait_for(lambda: not any(map(alive, workers)), timeout=5)
    finally:
        for pid in workers_of(process.pid) if alive(process.pid) else []:
            os.kill(pid, signal.SIGKILL)
    for run in out.glob("*-seed0"):  # a rerun finds them free, each with a checkpoint to resume from
        with RunLock(run):
            assert load_checkpoint(run / CHECKPOINT).progress.step > 0
