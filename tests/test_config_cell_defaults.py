"""Per-cell defaults: a run that names only its cell gets that cell's network and learning rate
(CELL_DEFAULTS), an option given explicitly wins, and a run records the values resolved, so
resume and older checkpoints never depend on today's table."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training import config as config_module
from charrnn.training import start as training
from charrnn.cli.options import per_cell_default
from charrnn.training.config import CELL_DEFAULTS, TrainConfig
from charrnn.base.io import load_npz, save_npz
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint

PER_CELL = ("num_hiddens", "num_layers", "dropout", "lr")
TINY = dict(batch_size=4, num_steps=8, eval_every=10**9, sample_length=0)
TINY_ARGS = ["--batch-size", "4", "--num-steps", "8", "--eval-every", "1000000000", "--sample-length", "0"]


@pytest.fixture
def text_file(tmp_path, write_words):
    return write_words(tmp_path / "words.txt", 300, seed=3)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def recorded(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def test_the_rnn_defaults_are_the_readme_default_run():
    config = TrainConfig()
    assert (config.cell, config.num_hiddens, config.num_layers, config.dropout, config.lr) == ("rnn", 256, 1, 0.0, 1e-2)


@pytest.mark.parametrize("cell", sorted(CELL_DEFAULTS))
def test_a_cell_named_alone_gets_its_own_defaults(cell):
    config = TrainConfig(cell=cell)
    assert {name: getattr(config, name) for name in PER_CELL} == CELL_DEFAULTS[cell]


def test_the_gated_defaults_are_a_stacked_network_with_dropout():
    for cell in ("gru", "lstm"):
        assert CELL_DEFAULTS[cell]["num_layers"] >= 2 and 0 < CELL_DEFAULTS[cell]["dropout"] < 1


@pytest.mark.parametrize("given", [dict(num_hiddens=10), dict(num_layers=1, dropout=0.0), dict(lr=0.05),
                                   dict(num_hiddens=12, num_layers=3, dropout=0.5, lr=1e-3)])
def test_explicit_settings_win_over_the_cell_defaults(given):
    config = TrainConfig(cell="lstm", **given)
    for name in PER_CELL:
        assert getattr(config, name) == given.get(name, CELL_DEFAULTS["lstm"][name]), name


def test_bad_explicit_settings_are_still_refused():
    with pytest.raises(config_module.ConfigError, match="lr"):
        TrainConfig(cell="gru", lr=-1.0)
    with pytest.raises(config_module.ConfigError, match="cell"):
        TrainConfig(cell="transformer")


def test_the_cli_records_the_resolved_defaults_and_the_options_given(tmp_path, text_file):
    result = invoke("train", text_file, "--cell", "gru", "--num-hiddens", "8", "--max-tokens", "32",
                    "--out", tmp_path / "run", *TINY_ARGS)
    assert result.exit_code == 0, result.output
    saved = recorded(tmp_path / "run")
    assert saved["num_hiddens"] == 8
    assert {name: saved[name] for name in ("num_layers", "dropout", "lr")} == \
        {name: CELL_DEFAULTS["gru"][name] for name in ("num_layers", "dropout", "lr")}
    result = invoke("train", text_file, "--max-tokens", "32", "--size", "default", "--out", tmp_path / "rnn", *TINY_ARGS)
    assert result.exit_code == 0, result.output
    assert {name: recorded(tmp_path / "rnn")[name] for name in PER_CELL} == CELL_DEFAULTS["rnn"]


def test_help_shows_the_default_of_every_cell():
    text = " ".join(invoke("train", "--help").output.split())
    for name in PER_CELL:
        assert per_cell_default(name) in text, name
    assert "[default: 1 for rnn, 2 for gru and lstm]" in text  # num_layers, spelled out once


def test_a_resumed_run_keeps_the_defaults_it_was_started_with(tmp_path, text_file, monkeypatch):
    """Resolved once and recorded: a later change of CELL_DEFAULTS does not reach a saved run,
    and the resumed run ends where a run never stopped ends, bit for bit."""
    settings = dict(corpus=str(text_file), cell="gru", num_hiddens=8, truncation="randomized:0.5",
                    lr_schedule="epoch", **TINY)  # a schedule the budget does not shape
    training.train(TrainConfig(epochs=2, **settings), tmp_path / "straight")
    training.train(TrainConfig(max_tokens=320, **settings), tmp_path / "split")
    started_with = {**CELL_DEFAULTS["gru"], "num_hiddens": 8}
    monkeypatch.setitem(CELL_DEFAULTS, "gru", {"num_hiddens": 5, "num_layers": 1, "dropout": 0.0, "lr": 0.5})
    result = training.resume(tmp_path / "split", {"epochs": 2})
    assert {name: getattr(result.config, name) for name in PER_CELL} == started_with
    straight, split = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ("straight", "split"))
    assert straight.config == split.config
    for name, value in straight.model.params.items():
        np.testing.assert_array_equal(value, split.model.params[name], err_msg=name)
    assert straight.meta["dropout_rng"] == split.meta["dropout_rng"]


def test_resume_accepts_the_recorded_value_and_refuses_another(tmp_path, text_file):
    args = ("train", text_file, "--cell", "lstm", "--num-hiddens", "8", *TINY_ARGS)
    assert invoke(*args, "--max-tokens", "32", "--out", tmp_path / "run").exit_code == 0
    lr = CELL_DEFAULTS["lstm"]["lr"]
    same = invoke("train", "--resume", tmp_path / "run", "--max-tokens", "64", "--lr", lr)
    assert same.exit_code == 0, same.output
    other = invoke("train", "--resume", tmp_path / "run", "--max-tokens", "96", "--lr", lr * 2)
    assert other.exit_code == 2 and "keeps its lr" in other.output


def test_a_checkpoint_written_before_per_cell_defaults_loads_with_its_own_settings(tmp_path, text_file):
    """Older runs recorded every field: a gru run of one layer, no dropout and lr 0.01 (the
    defaults of its time) resumes as that network, whatever the gated defaults are now."""
    old = dict(corpus=str(text_file), cell="gru", num_hiddens=8, num_layers=1, dropout=0.0, lr=1e-2, **TINY)
    training.train(TrainConfig(epochs=1, lr_schedule="epoch", **old), tmp_path / "old")
    path = tmp_path / "old" / CHECKPOINT
    arrays, meta = load_npz(path)
    for name in ("lr_schedule", "lr_floor", "init_from"):  # as written before those fields existed
        del meta["config"][name]
    save_npz(path, arrays, meta)
    result = training.resume(tmp_path / "old", {"epochs": 2})
    assert (result.config.num_layers, result.config.dropout, result.config.lr) == (1, 0.0, 1e-2)
    assert result.progress.epoch == 2 and result.config.lr_schedule == "epoch"
