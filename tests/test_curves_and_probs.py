"""`charrnn plot`, `sample --show-probs` and the smaller things a newcomer tripped on."""
import json
import os
import subprocess
import sys

import pytest

from charrnn.training import start as training
from charrnn.training.config import TrainConfig
from charrnn.analysis.curves import read_history
from charrnn.infer.sample import next_token_probs
from charrnn.training.outdir import METRICS
from charrnn.training.checkpoint import load_checkpoint
from test_cli import assert_error, assert_ok, charrnn_command, invoke

TINY = dict(num_hiddens=16, batch_size=4, num_steps=8, eval_every=300, sample_length=10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_words):
    """Two finished tiny runs of the same text with different learning rates."""
    root = tmp_path_factory.mktemp("runs")
    text = write_words(root / "words.txt", 400, seed=7)
    for name, lr in (("a", 0.01), ("b", 0.003)):
        training.train(TrainConfig(corpus=str(text), epochs=2, lr=lr, **TINY), root / name)
    return root / "a", root / "b"


def test_a_run_history_is_its_metrics_in_token_order(runs):
    records = [json.loads(line) for line in (runs[0] / METRICS).read_text().splitlines()]
    history = read_history(runs[0])
    assert history.tokens == [r["tokens"] for r in records] and history.val_ppl == [r["val_ppl"] for r in records]
    assert history.best_val_ppl == min(r["val_ppl"] for r in records)
    with (runs[0] / METRICS).open("a") as f:
        f.write('{"torn')  # a run killed while writing
    assert read_history(runs[0]).tokens == history.tokens


def test_plot_draws_terminal_charts_or_a_figure(runs, tmp_path):
    charts = invoke("plot", *runs)
    assert_ok(charts)
    for run in runs:
        assert str(run) in charts.stdout and f"{read_history(run).best_val_ppl:.3f}" in charts.stdout
    assert max(map(len, charts.stdout.splitlines())) > 80  # the charts are not cut to 80 columns
    if not os.environ.get("CI"):  # CI installs the plot extra: there a missing matplotlib fails
        pytest.importorskip("matplotlib")
    figure = invoke("plot", *runs, "--out", tmp_path / "curves.png")
    assert_ok(figure)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert_error(invoke("plot", tmp_path), says="not a run directory (no metrics.jsonl in it)")
    assert_error(invoke("plot", runs[0], "--out", tmp_path / "curves.txt"), says=".png, .pdf or .svg")


def test_show_probs_lists_the_most_likely_next_tokens(runs):
    result = invoke("sample", runs[0], "--prefix", "the time", "--show-probs", 4)
    assert_ok(result)
    probs = next_token_probs(load_checkpoint(runs[0]), "the time", top=4)
    assert len(probs) == 4 and [p for _, p in probs] == sorted((p for _, p in probs), reverse=True)
    for token, p in probs:
        assert f"{p:.4f}" in result.stdout and repr(token) in result.stdout
    assert_error(invoke("sample", runs[0], "--show-probs", 3, "--length", 5), code=2, says="generates nothing")


@pytest.mark.parametrize("extra", [["--top-k", 3], ["--temperature", 0.5]])
def test_greedy_with_a_drawing_option_is_a_usage_error(runs, extra):
    assert_error(invoke("sample", runs[0], "--greedy", *extra), code=2, says="--greedy")


def test_a_closed_pipe_is_a_normal_end_and_files_come_first(runs, tmp_path):
    figure = tmp_path / "g.png"
    command = [charrnn_command(), "analyze", str(runs[0]), "--window", "20", "--draws", "4"]
    if subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True).returncode == 0:
        command += ["--plot", str(figure)]
    else:
        figure = None
    done = subprocess.run(f"set -o pipefail; {' '.join(command)} | head -1", shell=True, capture_output=True,
                          text=True, executable="/bin/bash")
    assert done.returncode == 0 and done.stderr == ""
    assert "Gradient analysis" in done.stdout and len(done.stdout.splitlines()) == 1
    assert figure is None or figure.is_file()


def test_compare_help_names_its_own_default_budget():
    result = invoke("compare", "--help")
    assert "500,000 when no budget is given" in " ".join(result.stdout.split())
    assert "30 when no budget" not in " ".join(result.stdout.split())


def test_schedule_options_belong_to_their_schedule(tmp_path):
    assert_error(invoke("train", "--lr-decay", 0.5, "--out", tmp_path / "a"), code=2, says="--lr-schedule epoch")
    assert_error(invoke("compare", "--lr-floor", 0.5, "--lr-schedule", "constant", "--out", tmp_path / "b"),
                 code=2, says="--lr-floor applies")
