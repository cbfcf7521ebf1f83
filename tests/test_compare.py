"""Truncation comparison runs, through the Python API and `charrnn compare`, on a tiny model and text."""
import json
import math
import sys

import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn import train as training
from charrnn.compare import compare, read_curve, run_name
from charrnn.errors import CharrnnError



@pytest.fixture
def text_file(tmp_path, write_words):
    return write_words(tmp_path / "words.txt", 300, seed=3)


def tiny_config(corpus, **changes):
    settings = dict(corpus=str(corpus), num_hiddens=10, batch_size=3, num_steps=12, max_tokens=720,
                    eval_every=240, sample_length=5, lr=0.01)
    return training.TrainConfig(**{**settings, **changes})


class StepLog(training.Reporter):
    def __init__(self):
        self.steps = []

    def on_step(self, stats):
        self.steps.append(stats)


def test_each_strategy_trains_the_same_network_in_its_own_run(tmp_path, text_file):
    logs = {}

    def reporter_for(truncation):
        logs[truncation] = StepLog()
        return logs[truncation]

    truncations = ("full", "regular:1", "randomized:0.5")
    results = compare(tiny_config(text_file), tmp_path / "cmp", truncations, reporter_for=reporter_for)
    assert [r.truncation for r in results] == list(truncations)
    first_losses = {logs[t].steps[0]["loss"] for t in truncations}
    assert len(first_losses) == 1  # same seed, same data: the same first forward pass
    first_norms = [logs[t].steps[0]["grad_norm"] for t in truncations]
    assert first_norms[0] != first_norms[1]  # but different gradients
    for result in results:
        run_dir = tmp_path / "cmp" / run_name(result.truncation)
        assert result.out_dir == run_dir and (run_dir / training.CHECKPOINT).is_file()
        records = [json.loads(line) for line in (run_dir / training.METRICS).read_text().splitlines()]
        assert result.curve == [{k: r[k] for k in ("tokens", "elapsed", "val_ppl")} for r in records]
        assert len(result.curve) >= 3 and result.final_val_ppl == records[-1]["val_ppl"]
        assert result.reason == "max_tokens" and result.tokens == 720
        norms = [s["grad_norm"] for s in logs[result.truncation].steps]
        assert result.mean_grad_norm == pytest.approx(sum(norms) / len(norms))
        assert result.tokens_per_s > 0
        config = json.loads((run_dir / training.CONFIG).read_text())
        assert config["truncation"] == result.truncation and config["num_hiddens"] == 10


def test_only_the_truncation_differs(tmp_path, text_file):
    """randomized:1 keeps every path, as full does: the two runs are the same run."""
    full, kept = compare(tiny_config(text_file, max_tokens=360), tmp_path, ("full", "randomized:1"))
    assert [p["val_ppl"] for p in full.curve] == [p["val_ppl"] for p in kept.curve]
    assert full.mean_grad_norm == kept.mean_grad_norm and math.isfinite(full.final_val_ppl)


def test_run_names_and_bad_strategy_lists(tmp_path, text_file):
    assert [run_name(t) for t in ("full", "regular:10", "randomized:0.25")] == \
        ["full", "regular-10", "randomized-0.25"]
    with pytest.raises(CharrnnError, match="distinct"):
        compare(tiny_config(text_file), tmp_path, ("full", "full"))
    with pytest.raises(CharrnnError, match="distinct"):
        compare(tiny_config(text_file), tmp_path, ())
    with pytest.raises(CharrnnError, match="truncation"):
        compare(tiny_config(text_file), tmp_path, ("regular:0",))


def test_read_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"tokens": 5, "elapsed": 1.5, "val_ppl": 9.0, "reason": "interval"}\n'
                    '{"tokens": 9, "elapsed": 2.0, "val_ppl": null}\n')
    assert read_curve(path) == [{"tokens": 5, "elapsed": 1.5, "val_ppl": 9.0},
                                {"tokens": 9, "elapsed": 2.0, "val_ppl": None}]


# ---------------------------------------------------------------------------- the command line

def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_compare_command_runs_each_strategy_with_the_training_options(tmp_path, text_file):
    out = tmp_path / "cmp"
    result = invoke("compare", text_file, "--num-hiddens", 9, "--batch-size", 2, "--num-steps", 12,
                    "--max-tokens", 240, "--eval-every", 120, "--sample-length", 0, "--optimizer", "sgd",
                    "--regular", 3, "--randomized", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    for name, truncation in (("full", "full"), ("regular-3", "regular:3"), ("randomized-0.5", "randomized:0.5")):
        config = json.loads((out / name / training.CONFIG).read_text())
        assert config["truncation"] == truncation and config["optimizer"] == "sgd"
        assert (config["num_hiddens"], config["max_tokens"], config["eval_every"]) == (9, 240, 120)
        assert truncation in result.output
        final = json.loads((out / name / training.METRICS).read_text().splitlines()[-1])["val_ppl"]
        assert f"{final:.3f}" in result.output


def test_compare_defaults_and_refusals(tmp_path, text_file, monkeypatch):
    out = tmp_path / "cmp"
    result = invoke("compare", text_file, "--num-hiddens", 4, "--batch-size", 2, "--num-steps", 4,
                    "--epochs", 1, "--sample-length", 0, "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "regular-10" / training.CONFIG).read_text())
    assert (config["eval_every"], config["epochs"], config["max_tokens"]) == (cli.COMPARE_EVAL_EVERY, 1, None)
    assert (out / "randomized-0.9" / training.METRICS).is_file()
    again = invoke("compare", text_file, "--out", out, "--max-tokens", 8)
    assert again.exit_code == 1 and "already holds a run" in again.output
    assert invoke("compare", text_file, "--randomized", 0).exit_code == 2
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    missing = invoke("compare", text_file, "--out", tmp_path / "never", "--plot", tmp_path / "curves.png")
    assert missing.exit_code == 1 and "matplotlib" in missing.output
    assert not (tmp_path / "never").exists()  # refused before training
