"""Runs in local worker processes (charrnn.experiments.sweep.ProcessBackend): bit-identical to runs alone,
workers killed under a run, Ctrl-C. Tiny models; the runs that must be caught in flight are long."""
import os
import signal
import subprocess
import threading
import time

import pytest

from charrnn.base.errors import CharrnnWarning
from charrnn.experiments.compare import compare, plan
from charrnn.experiments.runs import RunSpec, execute_run, run_state
from charrnn.experiments.sweep import ProcessBackend, SerialBackend
from charrnn.training import start as training
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.outdir import CHECKPOINT, METRICS
from helpers import Log, assert_same_arrays, charrnn_command, tiny_config

TRUNCATIONS = ("full", "regular:2", "randomized:0.5")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 300, seed=3)


def long_config(text_file):
    """Runs long enough (a few seconds) to be caught in flight, evaluated (checkpointed) often."""
    return tiny_config(text_file, max_tokens=20_000, eval_every=720)


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_run_from_the_pool_is_bit_identical_to_the_same_run_alone(tmp_path, text_file):
    pooled, interrupted = compare(tiny_config(text_file), tmp_path / "pool", TRUNCATIONS, num_seeds=2,
                                  backend=ProcessBackend(jobs=2))
    assert not interrupted and not pooled.failed and len(pooled.summaries) == 6
    for spec in plan(tiny_config(text_file), tmp_path / "pool", TRUNCATIONS, num_seeds=2):
        alone = training.train(spec.config, tmp_path / "alone" / spec.name)  # in this process, as a user would
        assert_same_arrays(spec.out_dir, alone.out_dir)
        summary = next(s for s in pooled.summaries if s.name == spec.name)
        assert summary.final_val_ppl == alone.val_ppl
    serial, _ = compare(tiny_config(text_file), tmp_path / "serial", TRUNCATIONS, num_seeds=2, backend=SerialBackend())
    assert [(s.name, s.final_val_ppl, s.best_val_ppl, s.mean_grad_norm) for s in serial.summaries] == \
        [(s.name, s.final_val_ppl, s.best_val_ppl, s.mean_grad_norm) for s in pooled.summaries]


class KillUnder(Log):
    """Kills (SIGKILL) the worker that has run `name` once the run has written a checkpoint."""

    def __init__(self, backend, name):
        super().__init__()
        self.backend, self.name, self.killed, self.retries = backend, name, None, []

    def on_run_start(self, spec, attempt):
        super().on_run_start(spec, attempt)
        if spec.name == self.name and attempt == 1:
            threading.Thread(target=self.kill, args=(spec,), daemon=True).start()

    def kill(self, spec):
        wait_for(lambda: (spec.out_dir / METRICS).is_file())
        (worker,) = [w for w in self.backend.workers if w.spec is not None and w.spec.name == self.name]
        self.killed = load_checkpoint(spec.out_dir / CHECKPOINT).progress.tokens
        os.kill(worker.process.pid, signal.SIGKILL)

    def on_retry(self, spec, message):
        self.retries.append((spec.name, message))


def test_a_worker_killed_under_a_run_is_replaced_and_the_run_resumes_to_the_same_end(tmp_path, text_file):
    backend = ProcessBackend(jobs=2)
    log = KillUnder(backend, "regular-2-seed0")
    comparison, _ = compare(long_config(text_file), tmp_path / "killed", TRUNCATIONS, backend=backend, reporter=log)
    assert log.killed is not None and log.killed < 20_000
    assert log.retries == [("regular-2-seed0", "its worker died (exit code -9)")]
    assert not comparison.failed and len(comparison.summaries) == 3
    assert log.started.count("regular-2-seed0") == 2
    (spec,) = plan(long_config(text_file), tmp_path / "straight", ["regular:2"])
    training.train(spec.config, spec.out_dir)
    assert_same_arrays(tmp_path / "killed" / spec.name, spec.out_dir)


def test_without_retries_the_run_of_a_killed_worker_fails_and_the_others_finish(tmp_path, text_file):
    backend = ProcessBackend(jobs=2, retries=0)
    log = KillUnder(backend, "full-seed0")
    comparison, interrupted = compare(long_config(text_file), tmp_path, TRUNCATIONS, backend=backend, reporter=log)
    assert not interrupted
    assert list(comparison.failed) == ["full-seed0"] and "worker died" in comparison.failed["full-seed0"]
    assert sorted(s.name for s in comparison.summaries) == ["randomized-0.5-seed0", "regular-2-seed0"]
    assert run_state(plan(long_config(text_file), tmp_path, ["full"])[0]) == "resume"  # its checkpoint is kept


class InterruptAtThirdRun(Log):
    """Sends `sig` to this process (only, as `kill`) when the third run is handed out: the workers
    hear of it through the stop request."""

    def __init__(self, sig):
        super().__init__()
        self.sig = sig

    def on_run_start(self, spec, attempt):
        super().on_run_start(spec, attempt)
        if len(self.started) == 3:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_runs_in_flight_with_a_checkpoint_and_keeps_the_finished(tmp_path, text_file, sig):
    config = long_config(text_file)
    log = InterruptAtThirdRun(sig)
    comparison, interrupted = compare(config, tmp_path / "sweep", TRUNCATIONS, num_seeds=2,
                                      backend=ProcessBackend(jobs=2), reporter=log)
    assert interrupted
    statuses = [o.status for o in log.ended]
    third = next(o for o in log.ended if o.spec.name == log.started[2])
    assert len(statuses) == 3 and statuses[0] == "done" and third.status == "interrupted"  # the third: stopped
    assert set(statuses) == {"done", "interrupted"}  # the second: done, or stopped in flight
    assert len(comparison.summaries) == statuses.count("done")
    specs = plan(config, tmp_path / "sweep", TRUNCATIONS, num_seeds=2)
    states = {spec.name: run_state(spec) for spec in specs}
    assert list(states.values()).count("done") == statuses.count("done")
    assert set(states.values()) <= {"done", "resume", "new"} and list(states.values()).count("new") >= 3
    again = Log()
    comparison, interrupted = compare(config, tmp_path / "sweep", TRUNCATIONS, num_seeds=2,
                                      backend=ProcessBackend(jobs=2), reporter=again)
    assert not interrupted and len(comparison.summaries) == 6
    assert sorted(again.started) == sorted(name for name, state in states.items() if state != "done")
    for spec in specs:
        if states[spec.name] == "resume":
            training.train(spec.config, tmp_path / "straight" / spec.name)
            assert_same_arrays(spec.out_dir, tmp_path / "straight" / spec.name)



def test_ctrl_c_in_a_terminal_stops_the_command_and_its_workers_cleanly(tmp_path, text_file):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: exit 130, no traceback, every
    worker's run checkpointed; the same command then finishes the sweep as if never stopped."""

    out = tmp_path / "cmp"
    command = [charrnn_command(), "compare", str(text_file), "--num-hiddens", "10", "--batch-size", "3",
               "--num-steps", "12", "--max-tokens", "20000", "--eval-every", "720", "--sample-length", "5",
               "--regular", "2", "--randomized", "0.5", "--jobs", "2", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for(lambda: len(list(out.glob("*/metrics.jsonl"))) >= 2 or process.poll() is not None)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "Interrupted" in stderr
    specs = plan(long_config(text_file), out, TRUNCATIONS)
    assert all(run_state(spec) in ("resume", "new") for spec in specs)  # stopped where they were
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for spec in specs:
        training.train(spec.config, tmp_path / "straight" / spec.name)
        assert_same_arrays(spec.out_dir, tmp_path / "straight" / spec.name)


def test_a_run_of_a_sweep_that_does_not_learn_leaves_the_saying_to_the_sweep(tmp_path, text_file, recwarn):
    """A sweep (compare, tune) reports its runs' perplexities itself: a worker's run prints no
    not-learning warning of its own, which would land among the sweep's lines unformatted."""
    spec = RunSpec("stuck", tiny_config(text_file, lr=1e-6), tmp_path / "stuck")
    summary = execute_run(spec, threads=1)
    assert summary.reason == "max_tokens"
    assert not [w for w in recwarn if "not learning" in str(w.message)]
    # the same run alone does say it (the warning the sweep's run left out)
    with pytest.warns(CharrnnWarning, match="not learning"):
        training.train(tiny_config(text_file, lr=1e-6), tmp_path / "alone", threads=1)
