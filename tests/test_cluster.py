"""Sweeps on a real Dask distributed cluster (charrnn.experiments.cluster, the extra `cluster`): a LocalCluster of
two worker processes on the loopback address, a shared directory."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from charrnn.training import start as training
from charrnn.experiments.cluster import DaskBackend, connect, run_on_worker
from charrnn.experiments.compare import compare, plan
from charrnn.base.errors import CharrnnError
from charrnn.experiments.runs import run_state
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.outdir import METRICS
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig
from test_cli import assert_error
from test_compare import Log, TINY_CLI, assert_same_arrays, interrupt, invoke, tiny_config

TRUNCATIONS = ("full", "regular:2", "randomized:0.5")


@pytest.fixture(scope="module")
def scheduler():
    """The address of a LocalCluster: two worker processes, one thread each, loopback only."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 300, seed=3)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sweep_on_the_cluster_equals_the_local_one(tmp_path, text_file, scheduler):
    with connect(scheduler) as client:
        remote, interrupted = compare(tiny_config(text_file), tmp_path / "cluster", TRUNCATIONS, num_seeds=2,
                                      backend=DaskBackend(client))
        workers = client.run(os.getpid)
    assert not interrupted and not remote.failed and len(workers) == 2 and os.getpid() not in workers.values()
    local, _ = compare(tiny_config(text_file), tmp_path / "local", TRUNCATIONS, num_seeds=2)
    assert [(s.name, s.final_val_ppl, s.best_val_ppl, s.mean_grad_norm) for s in remote.summaries] == \
        [(s.name, s.final_val_ppl, s.best_val_ppl, s.mean_grad_norm) for s in local.summaries]
    for spec in plan(tiny_config(text_file), tmp_path / "cluster", TRUNCATIONS, num_seeds=2):
        assert_same_arrays(spec.out_dir, tmp_path / "local" / spec.name)  # written by the workers, here
    assert not list((tmp_path / "cluster").glob(".charrnn-sweep-*"))  # the marker is cleaned up


def test_the_compare_command_on_the_cluster_reuses_and_resumes(tmp_path, text_file, scheduler):
    out = tmp_path / "cmp"
    (spec,) = plan(TrainConfig(corpus=str(text_file), num_hiddens=9, batch_size=2, num_steps=12,
                                        max_tokens=240, eval_every=120, sample_length=0), out, ["regular:10"])
    interrupt(spec, 7)  # a run stopped halfway (checkpointed at 120 tokens), found by the sweep
    assert run_state(spec) == "resume"
    result = invoke("compare", text_file, *TINY_CLI, "--seeds", 2, "--scheduler", scheduler, "--out", out)
    assert result.exit_code == 0, result.output
    assert ("\n" + result.output).count("\ndone ") == 6 and "With 2 seeds" in result.output
    training.train(spec.config, tmp_path / "straight")
    assert_same_arrays(spec.out_dir, tmp_path / "straight")
    again = invoke("compare", text_file, *TINY_CLI, "--seeds", 2, "--scheduler", scheduler, "--out", out)
    assert again.exit_code == 0 and "6 of 6 runs finished before: reused" in again.output


def test_an_unreachable_scheduler_is_one_line_within_seconds_and_nothing_trains(tmp_path, text_file):
    start = time.monotonic()
    result = invoke("compare", text_file, *TINY_CLI, "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                    "--out", tmp_path / "never")
    assert time.monotonic() - start < 15
    assert_error(result, says="cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert not (tmp_path / "never").exists()


def test_without_the_extra_the_scheduler_option_names_it(tmp_path, text_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask[distributed] were not installed
    result = invoke("compare", text_file, *TINY_CLI, "--scheduler", "tcp://127.0.0.1:8786", "--out", tmp_path / "n")
    assert_error(result, says="pip install 'charrnn[cluster]'")
    with pytest.raises(CharrnnError, match="Dask distributed, which is not installed"):
        connect("tcp://127.0.0.1:8786")


def test_nothing_of_dask_is_imported_without_the_option(tmp_path, text_file):
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from charrnn import cli\n"
        f"args = ['compare', {str(text_file)!r}, *{[str(a) for a in TINY_CLI]!r}, '--jobs', '2', "
        f"'--out', {str(tmp_path / 'cmp')!r}]\n"
        "result = CliRunner().invoke(cli.main, args)\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_worker_that_does_not_see_the_directory_reports_the_run_failed(tmp_path, text_file):
    (spec,) = plan(tiny_config(text_file), tmp_path, ["full"])
    status, message = run_on_worker(spec, ".charrnn-sweep-nothere", "charrnn-stop-unused")
    assert status == "failed" and "must be a directory every worker reaches at the same path" in message
    assert not spec.out_dir.exists()  # nothing trained


def test_a_worker_killed_under_a_run_hands_it_to_another_that_resumes_it(tmp_path, text_file, scheduler):
    config = tiny_config(text_file, max_tokens=20_000, eval_every=720)
    (spec,) = plan(config, tmp_path / "cluster", ["full"])
    log, killed = Log(), []
    with connect(scheduler) as client:
        def kill_when_checkpointed():
            while not (spec.out_dir / METRICS).is_file():
                time.sleep(0.01)
            (worker,) = [w for w, keys in client.processing().items() if keys]
            killed.append(load_checkpoint(spec.out_dir / CHECKPOINT).progress.tokens)
            os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)

        killer = threading.Thread(target=kill_when_checkpointed, daemon=True)
        killer.start()
        comparison, _ = compare(config, tmp_path / "cluster", ["full"], backend=DaskBackend(client), reporter=log)
        killer.join(timeout=60)
    assert killed and killed[0] < 20_000  # killed in flight
    assert not comparison.failed and len(comparison.summaries) == 1
    training.train(spec.config, tmp_path / "straight")
    assert_same_arrays(spec.out_dir, tmp_path / "straight")


class InterruptAtFirstEnd(Log):
    def on_run_end(self, outcome):
        super().on_run_end(outcome)
        if len(self.ended) == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_the_runs_on_the_cluster_and_keeps_the_finished(tmp_path, text_file, scheduler):
    config = tiny_config(text_file, max_tokens=20_000, eval_every=720)
    log = InterruptAtFirstEnd()
    with connect(scheduler) as client:
        comparison, interrupted = compare(config, tmp_path, TRUNCATIONS, num_seeds=2, backend=DaskBackend(client),
                                          reporter=log)
        assert interrupted and len(comparison.summaries) >= 1
        assert not any(client.processing().values())  # no run goes on behind the user's back
    statuses = [o.status for o in log.ended]
    assert statuses[0] == "done" and set(statuses) <= {"done", "interrupted"} and "interrupted" in statuses
    states = [run_state(spec) for spec in plan(config, tmp_path, TRUNCATIONS, num_seeds=2)]
    assert states.count("done") == len(comparison.summaries) and set(states) <= {"done", "resume", "new"}
