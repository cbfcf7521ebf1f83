"""Data-parallel BPTT on MPI (docs/parallel.md), with real ranks: `mpiexec -n N` of tests/mpi_worker.py
and of the charrnn command, and `charrnn train --procs N`, on tiny networks, every subprocess
under a timeout.

N = 1, 2, 3 ranks train one process's parameters (1e-12 relative in float64, after 20 steps of
rnn, gru and lstm with 2 layers, dropout, randomized truncation and carried state; one rank:
bit for bit); a fixed N is bit-identical across resume, and a run resumes with another N.
Faults: Ctrl-C to the launcher and SIGTERM to one rank save one checkpoint and stop all, as SIGHUP
to one rank does within a validation pass; a killed rank or a rank that fails stops the others within seconds, with one line naming it.

Needs mpi4py and mpiexec (`pip install -e ".[mpi]"`); skipped without them, except in CI,
which installs them: there their absence fails.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.runtime import launch
from charrnn.training import start as training
from charrnn.training.checkpoint import STATE_KEY, load_checkpoint
from charrnn.training.config import TrainConfig
from charrnn.training.outdir import CHECKPOINT, METRICS
from helpers import assert_same_checkpoints

MPIEXEC = launch.find_mpiexec()
if importlib.util.find_spec("mpi4py") is None or MPIEXEC is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI installs the mpi extra (mpi4py, mpich): tests/test_mpi.py cannot run without it")
    pytest.skip("needs mpi4py and mpiexec: pip install -e '.[mpi]'", allow_module_level=True)

WORKER = Path(__file__).with_name("mpi_worker.py")
TIMEOUT = 120  # seconds for any one mpiexec: far above the few seconds each takes
B, T, STEPS = 5, 6, 20  # 5 rows: 3 ranks hold 2, 2 and 1
NETWORK = dict(num_hiddens=8, num_layers=2, dropout=0.25, dtype="float64", truncation="randomized:0.5",
               batch_size=B, num_steps=T, eval_every=B * T * 7, sample_length=5, sampler="sequential",
               lr_schedule="constant")  # a budget raised on resume leaves the learning rates as they were
CELLS = ("rnn", "gru", "lstm")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def mpiexec(procs, *args, timeout=TIMEOUT, **kwargs):
    """`mpiexec -n procs args...` to its end -> CompletedProcess (text)."""
    return subprocess.run([MPIEXEC, "-n", str(procs), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kwargs)


def run_jobs(procs, jobs, path):
    path.write_text(json.dumps(jobs))
    done = mpiexec(procs, sys.executable, WORKER, path)
    assert done.returncode == 0, done.stderr[-3000:]


def job(out, cell, steps=STEPS, corpus=None):
    return {"out": str(out), "config": {"corpus": str(corpus), "cell": cell, **NETWORK, "max_tokens": B * T * steps}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_words):
    """Every cell trained 20 steps on one process, and under mpiexec on 1, 2 and 3 ranks; with 2
    ranks also 10 steps resumed to 20, and 10 steps resumed with 3 ranks to 20."""
    root = tmp_path_factory.mktemp("mpi")
    text = write_words(root / "words.txt", 400, seed=3)
    for cell in CELLS:
        training.train(TrainConfig(**job(root / f"one-{cell}", cell, corpus=text)["config"]),
                       root / f"one-{cell}", threads=1)
    for procs in (1, 2, 3):
        jobs = [job(root / f"n{procs}-{cell}", cell, corpus=text) for cell in CELLS]
        if procs == 2:
            jobs += [job(root / "split-lstm", "lstm", STEPS // 2, text),
                     {"out": str(root / "split-lstm"), "resume": {"max_tokens": B * T * STEPS}},
                     job(root / "moved-gru", "gru", STEPS // 2, text)]
        if procs == 3:
            jobs.append({"out": str(root / "moved-gru"), "resume": {"max_tokens": B * T * STEPS}})
        run_jobs(procs, jobs, root / f"jobs-{procs}.json")
    return root


def checkpoint(directory):
    return load_checkpoint(directory / CHECKPOINT)


def assert_close_runs(one, other, rtol=1e-12):
    """The same run up to floating-point summation order: parameters, optimizer state and carried
    state to rtol relative (to each array's largest entry), the same Generators and progress."""
    a, b = checkpoint(one), checkpoint(other)
    for name, value in {**a.model.params, **a.arrays}.items():
        theirs = b.arrays[name] if name in a.arrays else b.model.params[name]
        assert np.abs(theirs - value).max() <= rtol * np.abs(value).max(), name
    assert a.meta["rng"] == b.meta["rng"] and a.meta["dropout_rng"] == b.meta["dropout_rng"]
    assert a.progress.step == b.progress.step == STEPS and a.progress.tokens == b.progress.tokens
    records = [[json.loads(line) for line in (d / METRICS).read_text().splitlines()] for d in (one, other)]
    val = [[r["val_ppl"] for r in run if r["reason"] == "interval"] for run in records]  # a resumed run also
    assert len(val[0]) >= 2                                                                 # logs where it stopped
    np.testing.assert_allclose(val[0], val[1], rtol=1e-12)


@pytest.mark.parametrize("procs", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_n_ranks_train_the_parameters_of_one_process_to_1e_12(runs, procs, cell):
    assert_close_runs(runs / f"one-{cell}", runs / f"n{procs}-{cell}")
    if procs == 1:
        assert_same_checkpoints(runs / f"one-{cell}", runs / "n1-{}".format(cell))


def test_a_fixed_number_of_ranks_resumes_bit_for_bit(runs):
    assert_same_checkpoints(runs / "n2-lstm", runs / "split-lstm")


def test_a_run_resumes_with_another_number_of_ranks(runs):
    assert_close_runs(runs / "one-gru", runs / "moved-gru")


# ---------------------------------------------------------------- the command line and faults

@pytest.fixture(scope="module")
def text(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("cli") / "words.txt", 600, seed=4)


def train_args(text, out, tokens=B * T * 40):
    return ["train", str(text), "--num-hiddens", "8", "--batch-size", str(B), "--num-steps", str(T),
            "--max-tokens", str(tokens), "--eval-every", str(B * T * 10), "--sample-length", "5", "--out", str(out)]


def test_mpiexec_trains_as_the_launcher_does_and_rank_0_alone_speaks(text, tmp_path):
    bare = mpiexec(2, sys.executable, "-m", "charrnn", *train_args(text, tmp_path / "bare"))
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.count("Training summary") == 1 and "on 2 processes (MPI)" in bare.stdout
    launched = subprocess.run([sys.executable, "-m", "charrnn", *train_args(text, tmp_path / "launched"),
                               "--procs", "2"], capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("Training summary") == 1
    assert_same_checkpoints(tmp_path / "bare", tmp_path / "launched")


def start(args, env=ENV, **kwargs):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def wait_for_training(out, process, timeout=60):
    """Until the run in `out` has logged an evaluation (it is past its first steps)."""
    deadline = time.monotonic() + timeout
    while not ((out / METRICS).is_file() and (out / METRICS).read_text().strip()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)


def rank_pids(process):
    """rank -> pid of the python ranks below `process` (their PMI_RANK)."""
    import psutil
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            rank = child.environ().get("PMI_RANK")
        except psutil.Error:
            continue
        if rank is not None and "python" in child.name():
            found[int(rank)] = child.pid
    return found


def test_ctrl_c_to_the_launcher_saves_one_checkpoint_and_stops_every_rank(text, tmp_path):
    out = tmp_path / "run"
    launcher = start([sys.executable, "-m", "charrnn", *train_args(text, out, 10**8), "--procs", "2"])
    wait_for_training(out, launcher)
    launcher.send_signal(signal.SIGINT)
    stdout, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 130, stderr
    assert "Interrupted by SIGINT: checkpoint saved" in stderr and "mpiexec" not in stderr + stdout
    saved = checkpoint(out)
    assert saved.progress.step > 10 and STATE_KEY in saved.arrays  # the whole batch's state
    assert saved.arrays[STATE_KEY].shape[-2] == B
    resumed = subprocess.run([sys.executable, "-m", "charrnn", "train", "--resume", str(out), "--max-tokens",
                              str(saved.progress.tokens + B * T * 3)], capture_output=True, text=True,
                             timeout=TIMEOUT, env=ENV)
    assert resumed.returncode == 0, resumed.stderr  # and on one process


def test_sigterm_to_one_rank_stops_all_ranks_after_one_checkpoint(text, tmp_path):
    out = tmp_path / "run"
    ranks = start([MPIEXEC, "-n", "2", sys.executable, "-m", "charrnn", *train_args(text, out, 10**8)])
    wait_for_training(out, ranks)
    os.kill(rank_pids(ranks)[1], signal.SIGTERM)
    stdout, stderr = ranks.communicate(timeout=30)
    assert ranks.returncode == 143, stderr
    assert stderr.count("Interrupted by SIGTERM") == 1 and checkpoint(out).progress.step > 10


ENDLESS_VALIDATION = """
import os, sys, time
from pathlib import Path
from charrnn.training import parallel
from charrnn.entry import main
batches = parallel.contiguous_batches
def endless(*args, **kwargs):  # a validation pass that would never end: 0.2 s a chunk
    Path(os.environ["VALIDATING"], os.environ["PMI_RANK"]).touch()
    for X, Y in batches(*args, **kwargs):
        time.sleep(0.2)
        yield X, Y
    while True:
        time.sleep(0.2)
        yield X, Y
parallel.contiguous_batches = endless
sys.argv = ["charrnn", *sys.argv[1:]]
sys.exit(main())
"""


def test_sighup_to_one_rank_within_validation_stops_every_rank_in_the_pass(text, tmp_path):
    """The ranks sum their signals before each chunk of the split validation, so all leave the pass
    at the same chunk; nothing is recorded, and the resumed run evaluates that step first."""
    out, marks = tmp_path / "run", tmp_path / "validating"
    marks.mkdir()
    ranks = start([MPIEXEC, "-n", "2", sys.executable, "-c", ENDLESS_VALIDATION, *train_args(text, out, 10**8)],
                  env={**ENV, "VALIDATING": str(marks)})
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < 2:
        assert ranks.poll() is None and time.monotonic() < deadline, ranks.communicate()
        time.sleep(0.1)
    time.sleep(0.5)
    sent = time.monotonic()
    os.kill(rank_pids(ranks)[1], signal.SIGHUP)
    stdout, stderr = ranks.communicate(timeout=30)
    seconds = time.monotonic() - sent
    assert ranks.returncode == 129 and seconds < 5, (seconds, stderr)
    assert stderr.count("Interrupted by SIGHUP") == 1
    progress = checkpoint(out).progress
    assert progress.step == 10 and progress.last_eval_step != progress.step  # stopped in the first pass
    assert not (out / METRICS).exists() or not (out / METRICS).read_text().strip()
    resumed = subprocess.run([sys.executable, "-m", "charrnn", "train", "--resume", str(out), "--max-tokens",
                              str(B * T * 12)], capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [(r["reason"], r["step"]) for r in records] == [("interval", 10), ("stop", 12)]


def test_a_killed_rank_stops_the_others_within_seconds_with_one_line(text, tmp_path):
    out = tmp_path / "run"
    launcher = start([sys.executable, "-m", "charrnn", *train_args(text, out, 10**8), "--procs", "2"])
    wait_for_training(out, launcher)
    victim = rank_pids(launcher)[1]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    stdout, stderr = launcher.communicate(timeout=30)
    assert time.monotonic() - killed < 10 and launcher.returncode == 1
    assert stderr.strip().splitlines()[-1] == (f"Error: rank 1 (pid {victim}) of 2 died (Killed (signal 9)); "
                                               f"the other ranks were stopped")
    assert "BAD TERMINATION" not in stdout + stderr


def test_a_rank_that_fails_stops_all_with_one_line_naming_it(text, tmp_path):
    """Rank 1 cannot write its token store (its own CHARRNN_CACHE_DIR, through mpiexec's -env)."""
    python = [sys.executable, "-m", "charrnn", *train_args(text, tmp_path / "run")]
    done = subprocess.run([MPIEXEC, "-n", "1", *python, ":", "-n", "1", "-env", "CHARRNN_CACHE_DIR",
                           str(text / "cache"), *python],  # a directory under a file
                          capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: rank 1 of 2: cannot write the token store of")
    assert lines[0].endswith("; stopping all 2 ranks")


def test_a_time_budget_is_refused_on_several_processes_in_one_line(text, tmp_path):
    done = mpiexec(2, sys.executable, "-m", "charrnn", *train_args(text, tmp_path / "run"), "--max-time", "60")
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "Error: --max-time is not available on 2 processes yet; give the budget as --max-tokens or --epochs; "
        "stopping all 2 ranks"]


def test_a_batch_smaller_than_the_ranks_is_refused_in_one_line(text, tmp_path):
    done = mpiexec(3, sys.executable, "-m", "charrnn", *train_args(text, tmp_path / "run"), "--batch-size", "2")
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "Error: batch_size 2 is smaller than the 3 processes; give each at least one row (--batch-size 3 or more, "
        "or fewer processes); stopping all 3 ranks"]
