"""`charrnn tune` (charrnn.experiments.tune, the extra `tune`): an Optuna study in SQLite whose trials are run
directories, pruned by successive halving at rungs measured in tokens; the same seed finds the
same winner; trials that do not learn are pruned and reported; an interrupted tune resumes
without training a finished trial again; the trials run on a Dask LocalCluster too; without
Optuna one line names the extra."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("CI"):
    import optuna  # noqa: F401  CI installs the extra `tune`: its absence is a failure there, not a skip
else:
    optuna = pytest.importorskip("optuna")

from charrnn.experiments import tune as tuning  # noqa: E402
from charrnn.data.baselines import Baselines  # noqa: E402
from charrnn.training.config import TrainConfig  # noqa: E402
from charrnn.experiments.sweep import ProcessBackend, SerialBackend  # noqa: E402
from test_compare import invoke  # noqa: E402

TINY_SPACE = {"cell": ["rnn", "gru"], "num_hiddens": [8, 16], "num_layers": [1], "dropout": (0.0, 0.2, 0.1),
              "lr": (3e-3, 3e-2, "log"), "batch_size": [4], "num_steps": [8]}
TRIAL_TOKENS = 2304  # rungs at 256, 768, 2304 tokens: 8, 24, 72 minibatches of 4 x 8
BASELINES = Baselines(unigram=1e9, bigram=1e9, counted=0, scored=0)  # nothing is "not learning"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 1500, seed=5)


def settings(text_file, out, trials=6, bracket=3, **changes):
    base = TrainConfig(corpus=str(text_file), seed=0, max_tokens=9, sample_length=0, **changes)
    return tuning.TuneSettings(base=base, out_dir=out, trials=trials, bracket=bracket, space=dict(TINY_SPACE))


def ranking(study):
    return [(r["number"], r["state"], r["tokens"], r["params"]) for r in tuning.leaderboard(study)]


def test_a_tune_is_a_sqlite_study_of_run_directories_pruned_at_token_rungs(tmp_path, text_file):
    out = tmp_path / "tune"
    study = tuning.run_tune(settings(text_file, out), SerialBackend(1), TRIAL_TOKENS, BASELINES)
    assert (out / tuning.STUDY_FILE).is_file() and len(study.trials) == 6
    states = {t.number: t.state.name for t in study.trials}
    assert set(states.values()) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states.values()
    assert "PRUNED" in states.values()  # successive halving kept only some of each bracket
    for t in study.trials:
        assert set(t.intermediate_values) <= {256, 768, 2304}  # rungs in tokens
        assert (out / "trials" / tuning.trial_name(t.number) / "checkpoint.npz").is_file()  # a run directory
    best = tuning.best_trial(study)
    assert best["state"] == "complete" and best["tokens"] == TRIAL_TOKENS
    command = tuning.train_command(str(text_file), best["params"], f"--max-tokens {TRIAL_TOKENS}", 0)
    assert command.startswith("charrnn train ") and f"--cell {best['params']['cell']}" in command


def test_the_same_seed_finds_the_same_winner_however_many_trials_run_at_once(tmp_path, text_file):
    serial = tuning.run_tune(settings(text_file, tmp_path / "a", trials=4, bracket=4), SerialBackend(1),
                             TRIAL_TOKENS, BASELINES)
    parallel = tuning.run_tune(settings(text_file, tmp_path / "b", trials=4, bracket=4), ProcessBackend(2, threads=1),
                               TRIAL_TOKENS, BASELINES)
    assert ranking(serial) == ranking(parallel)
    assert [t.value for t in serial.trials] == [t.value for t in parallel.trials]


def test_trials_that_do_not_learn_are_pruned_and_reported_not_fatal(tmp_path, text_file):
    space = {**TINY_SPACE, "lr": (1e-7, 2e-7, "log")}  # learns nothing: stays at its unigram start
    real = Baselines(unigram=math.exp(2.0), bigram=math.exp(1.5), counted=0, scored=0)
    s = settings(text_file, tmp_path / "stuck", trials=2, bracket=2)
    s.space = space
    study = tuning.run_tune(s, SerialBackend(1), TRIAL_TOKENS, real)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(t.user_attrs["pruned"].startswith("not learning") for t in study.trials)
    assert tuning.best_trial(study) is None


def test_a_diverged_or_stuck_value_is_named(tmp_path):
    b = Baselines(unigram=20.0, bigram=10.0, counted=0, scored=0)
    assert tuning.not_learning(None, 0, b).startswith("diverged")
    assert tuning.not_learning(math.log(25), 0, b).startswith("not learning")
    assert tuning.not_learning(math.log(15), 0, b) is None  # below the unigram at the first rung: may yet learn
    assert tuning.not_learning(math.log(15), 1, b).startswith("not learning")  # above the bigram later


def test_tune_runs_its_trials_on_a_dask_local_cluster(tmp_path, text_file):
    from distributed import Client, LocalCluster

    from charrnn.experiments.cluster import DaskBackend

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        remote = tuning.run_tune(settings(text_file, tmp_path / "dask", trials=3), DaskBackend(client),
                                 TRIAL_TOKENS, BASELINES)
    local = tuning.run_tune(settings(text_file, tmp_path / "local", trials=3), SerialBackend(1), TRIAL_TOKENS,
                            BASELINES)
    assert ranking(remote) == ranking(local) and tuning.best_trial(remote) is not None


def test_an_interrupted_tune_resumes_without_repeating_finished_trials(tmp_path, text_file):
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "charrnn", "--threads", "1", "tune", str(text_file), "--trials", "4",
               "--trial-tokens", "92160", "--max-hiddens", "16", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "trials" / tuning.trial_name(0) / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not first.is_file() and time.monotonic() < deadline:  # trial 0 has reached its first rung
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "The same command goes on from there" in output
    rung_record = first.read_text().splitlines()[0]
    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    study = tuning.open_existing(out)
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert first.read_text().splitlines()[0] == rung_record  # the rung trained before was not trained again
    assert "Tune leaderboard" in again.stdout


def test_show_prints_the_leaderboard_and_the_best_command(tmp_path, text_file):
    out = tmp_path / "tune"
    tuning.run_tune(settings(text_file, out, trials=3), SerialBackend(1), TRIAL_TOKENS, BASELINES)
    result = invoke("tune", "--show", out)
    assert result.exit_code == 0, result.output
    assert "Tune leaderboard" in result.output and "charrnn train" in result.output
    assert f"--max-tokens {TRIAL_TOKENS}" in result.output


def test_without_optuna_tune_says_which_extra_to_install(monkeypatch, tmp_path, text_file):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    result = invoke("tune", text_file, "--max-time", 5, "--out", tmp_path / "t")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == ["Error: charrnn tune needs Optuna, which is not installed: "
                                                  "pip install 'charrnn[tune]'"]
    assert not Path(tmp_path / "t").exists()
