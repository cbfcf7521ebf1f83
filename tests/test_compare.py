"""Comparisons over seeds through the Python API: the runs planned, paired, reused, resumed, and
their statistics, on a tiny model and text."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.training import start as training
from charrnn.experiments.compare import compare, default_out_dir, plan, run_name
from charrnn.base.errors import CharrnnError
from charrnn.experiments.runs import GRAD_NORMS, RunInterrupted, RunSpec, execute_run, read_curve, read_grad_norms, run_state
from charrnn.experiments.stats import paired_difference
from charrnn.experiments.sweep import SweepReporter
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.outdir import CONFIG, METRICS
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig

TRUNCATIONS = ("full", "regular:2", "randomized:0.5")


@pytest.fixture
def text_file(tmp_path, write_words):
    return write_words(tmp_path / "words.txt", 300, seed=3)


def tiny_config(corpus, **changes):
    settings = dict(corpus=str(corpus), num_hiddens=10, batch_size=3, num_steps=12, max_tokens=720,
                    eval_every=240, sample_length=5, lr=0.01)
    return TrainConfig(**{**settings, **changes})


class Log(SweepReporter):
    def __init__(self):
        self.started, self.ended = [], []

    def on_run_start(self, spec, attempt):
        self.started.append(spec.name)

    def on_run_end(self, outcome):
        self.ended.append(outcome)


def checkpoint_arrays(run_dir):
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    return {**ckpt.model.params, **ckpt.arrays}


def assert_same_arrays(dir_a, dir_b):
    a, b = checkpoint_arrays(dir_a), checkpoint_arrays(dir_b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_runs_are_planned_per_strategy_and_seed_with_one_data_order(tmp_path, text_file):
    specs = plan(tiny_config(text_file, seed=4), tmp_path, TRUNCATIONS, num_seeds=2)
    assert [s.name for s in specs] == ["full-seed4", "full-seed5", "regular-2-seed4", "regular-2-seed5",
                                       "randomized-0.5-seed4", "randomized-0.5-seed5"]
    assert all(s.out_dir == tmp_path.absolute() / s.name for s in specs)
    assert [(s.truncation, s.seed) for s in specs[:3]] == [("full", 4), ("full", 5), ("regular:2", 4)]
    assert {s.config.data_seed for s in specs} == {4}  # every run sees the data in seed 4's order
    assert plan(tiny_config(text_file, seed=4, data_seed=9), tmp_path)[0].config.data_seed == 9
    assert [run_name(t) for t in ("full", "regular:10", "randomized:0.25")] == \
        ["full", "regular-10", "randomized-0.25"]
    for bad in (("full", "full"), (), ("regular:0",)):
        with pytest.raises(CharrnnError, match="distinct|truncation"):
            plan(tiny_config(text_file), tmp_path, bad)
    with pytest.raises(CharrnnError, match="seeds must be at least 1"):
        plan(tiny_config(text_file), tmp_path, num_seeds=0)


def test_a_run_of_the_sweep_is_the_same_run_trained_alone(tmp_path, text_file):
    comparison, interrupted = compare(tiny_config(text_file), tmp_path / "sweep", TRUNCATIONS, num_seeds=2)
    assert not interrupted and not comparison.failed and len(comparison.summaries) == 6
    alone = training.train(tiny_config(text_file, truncation="regular:2", seed=1, data_seed=0), tmp_path / "alone")
    assert_same_arrays(tmp_path / "sweep" / "regular-2-seed1", tmp_path / "alone")
    summary = next(s for s in comparison.summaries if s.name == "regular-2-seed1")
    assert summary.final_val_ppl == alone.val_ppl and summary.tokens == 720 and summary.reason == "max_tokens"
    assert summary.best_val_ppl == alone.progress.best_val_ppl
    curve = read_curve(tmp_path / "alone" / METRICS)
    assert [p["val_ppl"] for p in summary.curve] == [p["val_ppl"] for p in curve] and len(curve) == 3
    # the seed-0 run is `charrnn train --seed 0` itself (data_seed None is the seed)
    training.train(tiny_config(text_file), tmp_path / "plain")
    assert_same_arrays(tmp_path / "sweep" / "full-seed0", tmp_path / "plain")


def test_seeds_change_the_runs_and_the_strategies_pair_by_seed(tmp_path, text_file):
    """randomized:1 keeps every path, as full does: seed by seed the same runs; other seeds differ."""
    comparison, _ = compare(tiny_config(text_file), tmp_path, ("full", "randomized:1"), num_seeds=3)
    final = {(s.truncation, s.seed): s.final_val_ppl for s in comparison.summaries}
    assert [final["full", s] for s in range(3)] == [final["randomized:1", s] for s in range(3)]
    assert len({final["full", s] for s in range(3)}) == 3
    (diff,) = comparison.differences()
    assert diff.difference.mean == 0 and diff.difference.half_width == 0
    assert "identical in every seed" in comparison.verdict()


def test_statistics_per_strategy_and_against_full(tmp_path, text_file):
    comparison, _ = compare(tiny_config(text_file), tmp_path, TRUNCATIONS, num_seeds=3)
    strategies = comparison.strategies()
    assert [s.truncation for s in strategies] == list(TRUNCATIONS)
    by = {(s.truncation, s.seed): s for s in comparison.summaries}
    for strategy in strategies:
        finals = [by[strategy.truncation, seed].final_val_ppl for seed in range(3)]
        assert strategy.final.mean == pytest.approx(np.mean(finals)) and strategy.final.n == 3
        assert strategy.final.low < strategy.final.mean < strategy.final.high
        assert strategy.best.mean <= strategy.final.mean + 1e-12
        norms = [by[strategy.truncation, seed].mean_grad_norm for seed in range(3)]
        assert strategy.mean_grad_norm == pytest.approx(np.mean(norms)) and all(n > 0 for n in norms)
    regular = comparison.differences()[0]
    expected = paired_difference("regular:2", "full", {s: by["regular:2", s].final_val_ppl for s in range(3)},
                                 {s: by["full", s].final_val_ppl for s in range(3)})
    assert regular == expected
    assert comparison.verdict().startswith("With 3 seeds, at 95% confidence")


def test_running_again_trains_only_what_is_missing(tmp_path, text_file):
    first = Log()
    compare(tiny_config(text_file), tmp_path, TRUNCATIONS[:2], num_seeds=2, reporter=first)
    assert len(first.started) == 4
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    again = Log()
    comparison, _ = compare(tiny_config(text_file), tmp_path, TRUNCATIONS[:2], num_seeds=2, reporter=again)
    assert again.started == [] and all(o.reused for o in again.ended) and len(comparison.summaries) == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}  # not even rewritten
    more = Log()
    compare(tiny_config(text_file), tmp_path, TRUNCATIONS, num_seeds=3, reporter=more)
    assert sorted(more.started) == ["full-seed2", "randomized-0.5-seed0", "randomized-0.5-seed1",
                                    "randomized-0.5-seed2", "regular-2-seed2"]


def interrupt(spec, after_steps):
    """Run `spec` and stop it after `after_steps` minibatches, as a stop request does on a cluster
    (an exception out of the loop: the checkpoint of the last evaluation stays)."""
    steps = iter(range(after_steps))

    def stop():
        raise RunInterrupted("stopped by the test")

    with pytest.raises(RunInterrupted):
        execute_run(spec, should_stop=lambda: next(steps, None) is None, stop=stop)


def test_an_interrupted_run_is_resumed_to_the_run_never_stopped(tmp_path, text_file):
    (spec,) = plan(tiny_config(text_file, truncation="randomized:0.5"), tmp_path / "a", ["randomized:0.5"])
    interrupt(spec, 12)  # 432 tokens, checkpointed at 252
    assert run_state(spec) == "resume"
    resumed = execute_run(spec)
    (straight,) = compare(tiny_config(text_file), tmp_path / "b", ["randomized:0.5"])[0].summaries
    assert_same_arrays(spec.out_dir, tmp_path / "b" / spec.name)
    assert resumed.final_val_ppl == straight.final_val_ppl
    assert resumed.mean_grad_norm == straight.mean_grad_norm  # the sum went on from the checkpoint's


def test_a_run_killed_before_its_grad_norms_were_saved_has_no_mean_rather_than_a_wrong_one(tmp_path, text_file):
    (spec,) = plan(tiny_config(text_file, lr_schedule="constant"), tmp_path, ["full"])
    interrupt(spec, 12)
    (spec.out_dir / GRAD_NORMS).unlink()
    summary = execute_run(spec)
    assert summary.mean_grad_norm is None and summary.final_val_ppl is not None
    longer = RunSpec(spec.name, tiny_config(text_file, data_seed=0, max_tokens=1080, lr_schedule="constant"),
                     spec.out_dir)
    assert execute_run(longer).mean_grad_norm is None  # and stays unknown when it goes on
    for corrupt in ('{"step": 30, "sum": "x", "count": 2}', '[1, 2]', '{"step": 30'):
        (spec.out_dir / GRAD_NORMS).write_text(corrupt)
        assert read_grad_norms(spec.out_dir) is None


def test_a_directory_holding_other_runs_is_refused_before_anything_trains(tmp_path, text_file):
    compare(tiny_config(text_file), tmp_path, ["full"])
    log = Log()
    with pytest.raises(CharrnnError, match="holds a run with num_hiddens 10, this comparison asks for 12"):
        compare(tiny_config(text_file, num_hiddens=12), tmp_path, ["regular:2", "full"], reporter=log)
    assert log.started == [] and not (tmp_path / "regular-2-seed0").exists()
    with pytest.raises(CharrnnError, match="with --lr-schedule cosine the learning rate follows the budget"):
        compare(tiny_config(text_file, max_tokens=1080), tmp_path, ["full"])
    with pytest.raises(CharrnnError, match="baseline"):
        compare(tiny_config(text_file), tmp_path, ["regular:2"], baseline="full")


def test_with_a_schedule_that_ignores_the_budget_a_larger_budget_goes_on(tmp_path, text_file):
    constant = dict(lr_schedule="constant")
    compare(tiny_config(text_file, **constant), tmp_path / "a", ["full"])
    with pytest.raises(CharrnnError, match="longer run"):
        compare(tiny_config(text_file, max_tokens=360, **constant), tmp_path / "a", ["full"])
    longer, _ = compare(tiny_config(text_file, max_tokens=1080, **constant), tmp_path / "a", ["full"])
    straight, _ = compare(tiny_config(text_file, max_tokens=1080, **constant), tmp_path / "b", ["full"])
    assert longer.summaries[0].tokens == 1080
    assert_same_arrays(tmp_path / "a" / "full-seed0", tmp_path / "b" / "full-seed0")


def test_a_run_that_blows_up_is_reported_failed_and_the_others_finish(tmp_path, text_file):
    comparison, interrupted = compare(tiny_config(text_file, lr=1e6, clip=None, activation="linear"), tmp_path,
                                      ["full", "regular:2"], num_seeds=1)
    assert not interrupted
    assert set(comparison.failed) == {"full-seed0", "regular-2-seed0"}
    assert all("non-finite" in message for message in comparison.failed.values())


def test_default_directory_is_named_by_the_shared_settings(text_file):
    a = default_out_dir(tiny_config(text_file))
    assert a == default_out_dir(tiny_config(text_file, truncation="regular:3"))  # truncation is per run
    assert a.parent.name == "runs" and a.name.startswith("compare-words-")
    assert a != default_out_dir(tiny_config(text_file, num_hiddens=11))
    assert a != default_out_dir(tiny_config(text_file, seed=1))  # another data order
    assert json.loads(json.dumps(str(a)))  # a plain path


def test_read_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"tokens": 5, "elapsed": 1.5, "val_ppl": 9.0, "reason": "interval"}\n'
                    '{"tokens": 9, "elapsed": 2.0, "val_ppl": null, "tokens_per_s": 3.0}\n')
    assert read_curve(path) == [{"tokens": 5, "elapsed": 1.5, "val_ppl": 9.0, "tokens_per_s": None},
                                {"tokens": 9, "elapsed": 2.0, "val_ppl": None, "tokens_per_s": 3.0}]
    assert os.path.basename(path) == "metrics.jsonl"


# ---------------------------------------------------------------------------- the command line

TINY_CLI = ["--num-hiddens", 9, "--batch-size", 2, "--num-steps", 12, "--max-tokens", 240, "--eval-every", 120,
            "--sample-length", 0]


def invoke(*args):
    from click.testing import CliRunner

    from charrnn import cli
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_compare_command_runs_every_strategy_and_seed_and_prints_the_statistics(tmp_path, text_file):
    out = tmp_path / "cmp"
    result = invoke("compare", text_file, *TINY_CLI, "--optimizer", "sgd", "--regular", "3,5", "--randomized",
                    "0.5", "--seeds", 3, "--out", out)
    assert result.exit_code == 0, result.output
    names = [f"{name}-seed{seed}" for name in ("full", "regular-3", "regular-5", "randomized-0.5") for seed in range(3)]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    for name in names:
        config = json.loads((out / name / CONFIG).read_text())
        assert config["optimizer"] == "sgd" and config["data_seed"] == 0
        assert (config["num_hiddens"], config["max_tokens"], config["eval_every"]) == (9, 240, 120)
    comparison, _ = compare(TrainConfig(corpus=str(text_file), num_hiddens=9, batch_size=2, num_steps=12,
                                                 max_tokens=240, eval_every=120, sample_length=0, optimizer="sgd"),
                            out, ("full", "regular:3", "regular:5", "randomized:0.5"), num_seeds=3)
    for strategy in comparison.strategies():  # the same numbers, read back from the runs
        assert f"{strategy.final.mean:.2f} ± {strategy.final.half_width:.2f}" in result.output
        assert f"{strategy.best.mean:.2f} ± {strategy.best.half_width:.2f}" in result.output
    for diff in comparison.differences():
        assert f"{diff.difference.mean:+.2f} ± {diff.difference.half_width:.2f}" in result.output
    assert " ".join(comparison.verdict().split()) in " ".join(result.output.split())
    assert ("\n" + result.output).count("\ndone ") == 12  # a line per finished run
    again = invoke("compare", text_file, *TINY_CLI, "--optimizer", "sgd", "--regular", "3,5", "--randomized",
                   "0.5", "--seeds", 3, "--out", out)
    assert again.exit_code == 0 and "12 of 12 runs finished before: reused" in again.output
    assert "\ndone " not in again.output


def test_compare_defaults_and_the_directory_named_by_its_settings(tmp_path, text_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("compare", text_file, "--num-hiddens", 4, "--batch-size", 2, "--num-steps", 4, "--epochs", 1,
                    "--sample-length", 0)
    assert result.exit_code == 0, result.output
    (out,) = (tmp_path / "runs").iterdir()
    assert out.name.startswith("compare-words-") and f"runs: {Path('runs') / out.name}" in result.output
    config = json.loads((out / "regular-10-seed0" / CONFIG).read_text())
    assert (config["eval_every"], config["epochs"], config["max_tokens"]) == (50_000, 1, None)
    assert (out / "randomized-0.9-seed0" / METRICS).is_file()
    assert "one seed, no interval" in result.output


@pytest.mark.parametrize("args, says", [
    (["--seeds", 0], "--seeds"), (["--jobs", 0], "--jobs"), (["--regular", ""], "--regular"),
    (["--regular", "5,,10"], "--regular"), (["--regular", "5,x"], "--regular"), (["--regular", "0"], "--regular"),
    (["--regular", "5,5"], "repeats"), (["--randomized", "0.5,1.5"], "--randomized"), (["--randomized", ","], "--randomized"),
    (["--baseline", "regular:7"], "--baseline"), (["--jobs", 2, "--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
    (["--num-steps", 100_000], "--num-steps"),
])
def test_bad_compare_options_are_usage_errors_before_anything_runs(tmp_path, text_file, args, says):
    result = invoke("compare", text_file, *TINY_CLI, *args, "--out", tmp_path / "never")
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()


def test_compare_refusals_and_failures_are_one_line(tmp_path, text_file, monkeypatch):
    out = tmp_path / "cmp"
    assert invoke("compare", text_file, *TINY_CLI, "--out", out).exit_code == 0
    other = invoke("compare", text_file, *TINY_CLI, "--num-hiddens", 5, "--out", out)
    assert other.exit_code == 1 and other.stderr.count("\n") == 1
    assert "holds a run with num_hiddens 9, this comparison asks for 5" in other.stderr
    blown = invoke("compare", text_file, *TINY_CLI, "--lr", 1e6, "--clip", "none", "--activation", "linear",
                   "--regular", 2, "--out", tmp_path / "blown")
    assert blown.exit_code == 1 and blown.stderr.count("\n") == 1 and "3 run(s) failed" in blown.stderr
    assert "non-finite" in blown.stderr
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    missing = invoke("compare", text_file, *TINY_CLI, "--out", tmp_path / "never", "--plot", tmp_path / "c.png")
    assert missing.exit_code == 1 and "matplotlib" in missing.output
    assert not (tmp_path / "never").exists()  # refused before training


def test_the_figure_data_are_mean_curves_and_paired_differences(tmp_path, text_file):
    comparison, _ = compare(tiny_config(text_file), tmp_path, ("full", "regular:2"), num_seeds=3)
    curves = {t: {s.seed: {p["tokens"]: p["val_ppl"] for p in s.curve} for s in comparison.summaries
                  if s.truncation == t} for t in ("full", "regular:2")}
    xs, means, lows, highs = comparison.mean_curves()["full"]
    assert xs == [252, 504, 720]  # the minibatches (36 tokens) that cross each 240 tokens, and the end
    assert means == pytest.approx([np.mean([curves["full"][s][x] for s in range(3)]) for x in xs])
    assert all(lo < m < hi for lo, m, hi in zip(lows, means, highs))
    xs, diffs, lows, highs = comparison.difference_curves()["regular:2"]
    expected = [np.mean([curves["regular:2"][s][x] - curves["full"][s][x] for s in range(3)]) for x in xs]
    assert diffs == pytest.approx(expected) and "full" not in comparison.difference_curves()


def test_data_seed_option_orders_the_data_of_train_and_of_every_compare_run(tmp_path, text_file):
    result = invoke("train", text_file, *TINY_CLI, "--seed", 3, "--data-seed", 1, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / CONFIG).read_text())
    assert (config["seed"], config["data_seed"]) == (3, 1)
    result = invoke("compare", text_file, *TINY_CLI, "--seed", 3, "--seeds", 2, "--data-seed", 1, "--out", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "full-seed4" / CONFIG).read_text())["data_seed"] == 1
    assert_same_arrays(tmp_path / "run", tmp_path / "c" / "full-seed3")


def test_every_run_reads_the_token_store_of_the_given_cache_directory(tmp_path, text_file):
    compare(tiny_config(text_file), tmp_path / "runs", ("full", "regular:2"), num_seeds=2, cache_dir=tmp_path / "cache")
    assert any((tmp_path / "cache").rglob("*"))
    specs = plan(tiny_config(text_file), tmp_path / "runs", ("full",), cache_dir=tmp_path / "cache")
    assert specs[0].cache_dir == tmp_path / "cache"
