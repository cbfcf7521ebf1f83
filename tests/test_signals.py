"""Signals honoured in time: SIGHUP (a closed terminal) is SIGTERM, a
checkpoint saved; a signal in the middle of a validation pass ends the run within 2 s, and the
resumed run evaluates that step first, ending bit-identical to a run never stopped."""
import json
import signal
import subprocess
import sys
import time

import pytest

from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.outdir import CHECKPOINT, METRICS
from test_cli import assert_ok, charrnn_command, invoke
from test_reliability import INTERRUPTED
from test_train import assert_same_run


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 2500, seed=11)


def read_until(process, marker, timeout=60):
    """Lines of the process's stdout until one holds `marker`."""
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if marker in line:
            return
        assert time.monotonic() < deadline, f"{marker!r} never printed"
    raise AssertionError(f"{marker!r} never printed: exit {process.wait()}, {process.stderr.read()}")


def test_sighup_stops_training_with_a_checkpoint_and_exit_129(tmp_path, text_file):
    out = tmp_path / "run"
    process = subprocess.Popen([charrnn_command(), "train", str(text_file), *INTERRUPTED, "--max-time", "300",
                                "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(process, "val ppl")  # an evaluation printed: the loop and its handlers run
        process.send_signal(signal.SIGHUP)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 129, stderr
    assert "Interrupted by SIGHUP" in stderr and f"Resume with: charrnn train --resume {out}" in stderr
    assert load_checkpoint(out / CHECKPOINT).progress.step > 0


ENDLESS_VALIDATION = """
import sys, time
from charrnn.infer import evaluate
from charrnn.entry import main
batches = evaluate.contiguous_batches
def endless(*args, **kwargs):  # a validation pass that would never end: 0.2 s a chunk
    print("validating", flush=True)
    for X, Y in batches(*args, **kwargs):
        time.sleep(0.2)
        yield X, Y
    while True:
        time.sleep(0.2)
        yield X, Y
evaluate.contiguous_batches = endless
sys.argv = ["charrnn", "train", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_validation_is_honoured_within_2_s_and_the_run_resumes_exactly(tmp_path, text_file,
                                                                                       sig, code):
    out, straight = tmp_path / "run", tmp_path / "straight"
    process = subprocess.Popen([sys.executable, "-c", ENDLESS_VALIDATION, str(text_file), *INTERRUPTED,
                                "--max-tokens", "4096", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(process, "validating")
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == code and seconds < 2, (seconds, stderr)
    progress = load_checkpoint(out / CHECKPOINT).progress
    assert progress.step == 512 // (4 * 8) and progress.last_eval_step != progress.step  # stopped in the pass
    assert not (out / METRICS).exists() or not (out / METRICS).read_text().strip()
    assert_ok(invoke("train", "--resume", out, "--max-tokens", 1536))
    assert_ok(invoke("train", text_file, *INTERRUPTED, "--max-tokens", 1536, "--out", straight))
    assert_same_run(straight, out)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == [16, 32, 48]
