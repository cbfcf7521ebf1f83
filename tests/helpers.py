"""What several test modules share: running the CLI in-process and as the installed command, tiny
runs and their settings, and the comparisons of two runs. Not a test module: the tests import
from it (pytest collects test_*.py only)."""
import json
import os
import shutil
import signal
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.experiments.runs import RunInterrupted, execute_run
from charrnn.experiments.sweep import SweepReporter
from charrnn.runtime.lock import LOCK_FILE
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig
from charrnn.training.events import Reporter
from charrnn.training.outdir import CHECKPOINT, METRICS

# ---------------------------------------------------------------- the command line

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


def charrnn_command():
    path = shutil.which("charrnn")
    assert path, "the charrnn command is not installed (pip install -e .)"
    return path



# ---------------------------------------------------------------- tiny runs

TINY_SETTINGS = dict(num_hiddens=12, batch_size=4, num_steps=8, eval_every=300, sample_length=10)


def config(corpus, **changes):
    return TrainConfig(corpus=str(corpus), **{**TINY_SETTINGS, **changes})


TINY_OPTIONS = ["--num-hiddens", "12", "--batch-size", "4", "--num-steps", "8", "--sample-length", "10",
                "--eval-every", "512"]


# sequential sampler: a state carried, an RNG drawn; these runs change their budget on resume (from
# --max-time to --max-tokens), so their learning rate must not follow the budget: the epoch schedule
INTERRUPTED = [*TINY_OPTIONS, "--truncation", "randomized:0.5", "--lr-schedule", "epoch"]


TINY_CLI = ["--num-hiddens", 9, "--batch-size", 2, "--num-steps", 12, "--max-tokens", 240, "--eval-every", 120,
            "--sample-length", 0]


def tiny_config(corpus, **changes):
    settings = dict(corpus=str(corpus), num_hiddens=10, batch_size=3, num_steps=12, max_tokens=720,
                    eval_every=240, sample_length=5, lr=0.01)
    return TrainConfig(**{**settings, **changes})


class InterruptAt(Reporter):
    """Sends the process a SIGINT after minibatch `step`, as Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_step(self, stats):
        if stats["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def train_process(text_file, out, *budget):
    """`charrnn train` as a real process: a fresh run, or a resumed one if `out` has a checkpoint."""
    what = (["--resume", out] if (out / CHECKPOINT).exists()
            else [text_file, *INTERRUPTED, "--out", out])
    return subprocess.Popen([charrnn_command(), "train", *map(str, what), *map(str, budget)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


class Log(SweepReporter):
    def __init__(self):
        self.started, self.ended = [], []

    def on_run_start(self, spec, attempt):
        self.started.append(spec.name)

    def on_run_end(self, outcome):
        self.ended.append(outcome)


def interrupt(spec, after_steps):
    """Run `spec` and stop it after `after_steps` minibatches, as a stop request does on a cluster
    (an exception out of the loop: the checkpoint of the last evaluation stays)."""
    steps = iter(range(after_steps))

    def stop():
        raise RunInterrupted("stopped by the test")

    with pytest.raises(RunInterrupted):
        execute_run(spec, should_stop=lambda: next(steps, None) is None, stop=stop)



# ---------------------------------------------------------------- comparing runs

TIME_FIELDS = ("elapsed", "tokens_per_s", "step_tokens_per_s", "threads")  # of the machine, not the maths


def metrics(out_dir, scheduled_only=False):
    records = [json.loads(line) for line in (out_dir / METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records
            if not (scheduled_only and r["reason"] == "stop")]


def checkpoint_arrays(run_dir):
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    return {**ckpt.model.params, **ckpt.arrays}


def assert_same_arrays(dir_a, dir_b):
    a, b = checkpoint_arrays(dir_a), checkpoint_arrays(dir_b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_same_checkpoints(dir_a, dir_b):
    """Bit-identical parameters, optimizer state, carried state, truncation and dropout
    Generators and progress in the two runs' latest checkpoints."""
    a, b = (load_checkpoint(d / CHECKPOINT) for d in (dir_a, dir_b))
    for name, value in a.model.params.items():
        np.testing.assert_array_equal(value, b.model.params[name], err_msg=name)
    assert a.arrays.keys() == b.arrays.keys()
    for name, value in a.arrays.items():
        np.testing.assert_array_equal(value, b.arrays[name], err_msg=name)
    assert a.meta["optimizer"] == b.meta["optimizer"] and a.meta["rng"] == b.meta["rng"]
    assert a.meta.get("dropout_rng") == b.meta.get("dropout_rng")
    progress = [{k: v for k, v in vars(c.progress).items() if k != "elapsed"} for c in (a, b)]
    assert progress[0] == progress[1]


def assert_same_run(dir_a, dir_b):
    """assert_same_checkpoints, and the same "interval" metrics records (a run stopped and
    resumed also logs an evaluation where it stopped)."""
    assert_same_checkpoints(dir_a, dir_b)
    scheduled = metrics(dir_a, scheduled_only=True)
    assert len(scheduled) >= 3 and scheduled == metrics(dir_b, scheduled_only=True)


def snapshot(directory):
    """Every file under `directory` -> its bytes, but the run's lock file (which names the PID of
    its last holder)."""
    return {p: p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file() and p.name != LOCK_FILE}



# ---------------------------------------------------------------- memory

def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
