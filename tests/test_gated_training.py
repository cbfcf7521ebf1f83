"""Gated and stacked networks end to end: training with dropout resumes bit for bit, the
checkpoint records the network, the commands accept --cell/--num-layers/--dropout and refuse
what cannot work with a usage error."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training import start as training
from charrnn.training.checkpoint import load_model
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.outdir import CONFIG
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import TrainConfig
from charrnn.training.state import DROPOUT_STREAM
from test_train import assert_same_checkpoints

TINY = dict(num_hiddens=10, batch_size=4, num_steps=8, eval_every=300, sample_length=10)
TINY_ARGS = ["--num-hiddens", "10", "--batch-size", "4", "--num-steps", "8", "--sample-length", "10"]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture
def text_file(tmp_path, write_words):
    return write_words(tmp_path / "words.txt", 300, seed=3)


def config(corpus, **changes):
    return TrainConfig(corpus=str(corpus), **{**TINY, **changes})


@pytest.mark.parametrize("network", [dict(cell="lstm", num_layers=2, dropout=0.3),
                                     dict(cell="gru", num_layers=2, dropout=0.5, bptt_memory="recompute")])
def test_resume_with_dropout_is_bit_exact(tmp_path, text_file, network):
    """Stopped mid-epoch (carried (h, c) of both layers and the dropout Generator saved), resumed
    to the end: the same parameters, optimizer, Generators and carried state as a run never
    stopped."""
    settings = dict(truncation="randomized:0.5", lr_schedule="epoch", **network)  # a schedule the budget does not shape
    training.train(config(text_file, epochs=2, **settings), tmp_path / "straight")
    stopped = training.train(config(text_file, max_tokens=320, **settings), tmp_path / "split")
    assert stopped.reason == "max_tokens" and 0 < stopped.progress.step_in_epoch
    ckpt = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert ckpt.training.carried.shape == ckpt.model.state_shape(4)
    training.resume(tmp_path / "split", {"epochs": 2})
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "split")


def test_dropout_changes_training_and_its_generator_moves(tmp_path, text_file):
    with_dropout = training.train(config(text_file, cell="gru", dropout=0.5, max_tokens=64), tmp_path / "a")
    without = training.train(config(text_file, cell="gru", max_tokens=64), tmp_path / "b")
    a, b = (load_model(r.out_dir / CHECKPOINT) for r in (with_dropout, without))
    assert not np.array_equal(a.params["W_hh"], b.params["W_hh"])
    saved = load_checkpoint(with_dropout.out_dir / CHECKPOINT).meta["dropout_rng"]
    assert saved != np.random.default_rng([0, DROPOUT_STREAM]).bit_generator.state


def test_cli_trains_samples_and_evaluates_a_gated_stack(tmp_path, text_file):
    out = tmp_path / "run"
    result = invoke("train", text_file, *TINY_ARGS, "--cell", "lstm", "--num-layers", "2", "--dropout", "0.2",
                    "--max-tokens", "400", "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / CONFIG).read_text())
    assert (config["cell"], config["num_layers"], config["dropout"]) == ("lstm", 2, 0.2)
    model = load_model(out / CHECKPOINT)
    assert (model.cell, model.num_layers, model.dropout) == ("lstm", 2, 0.2)
    sampled = invoke("sample", out, "--length", "20", "--prefix", "the")
    assert sampled.exit_code == 0 and len(sampled.output.strip()) >= 20, sampled.output
    evaluated = invoke("evaluate", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["perplexity"] > 1


@pytest.mark.parametrize("args, says", [
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "nan"], "--dropout"),
    (["--num-layers", "0"], "--num-layers"),
    (["--cell", "transformer"], "--cell"),
    (["--cell", "gru", "--activation", "linear"], "rnn cell only"),
    (["--cell", "lstm", "--activation", "linear"], "--activation"),
])
def test_impossible_networks_are_usage_errors(tmp_path, text_file, args, says):
    result = invoke("train", text_file, *TINY_ARGS, *args, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert says in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--cell", "gru"), ("--num-layers", "2"), ("--dropout", "0.1")])
def test_resuming_with_another_network_is_refused(tmp_path, text_file, option, value):
    out = tmp_path / "run"
    assert invoke("train", text_file, *TINY_ARGS, "--max-tokens", "64", "--out", out).exit_code == 0
    result = invoke("train", "--resume", out, option, value, "--max-tokens", "128")
    assert result.exit_code == 2 and option in result.stderr, result.output
    assert "keeps its" in result.stderr


@pytest.mark.parametrize("args, param", [(["--cell", "lstm", "--num-layers", "2", "--dropout", "0.3"], "W_hh_l1"),
                                         (["--cell", "gru", "--truncation", "regular:4"], "b_hn")])
def test_gradcheck_command_checks_gated_stacks(args, param):
    result = invoke("gradcheck", "--vocab-size", "5", "--num-hiddens", "4", "--num-steps", "6", *args)
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.output and param in result.output


def test_gradcheck_command_refuses_a_linear_gated_cell():
    result = invoke("gradcheck", "--cell", "gru", "--activation", "linear")
    assert result.exit_code == 2 and "rnn cell only" in result.stderr, result.output
