"""Fine-tuning: `train TEXT --init-from RUN` starts from a trained model's weights."""
import json

import numpy as np
import pytest

from charrnn.training import start as training
from charrnn.infer.evaluate import mean_loss, perplexity
from charrnn.training.config import TrainConfig
from charrnn.training.finetune import PARENT, finetune_config, grown_model
from charrnn.nn.model import RNNLM
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import ConfigError
from test_cli import assert_error, assert_ok, invoke

TINY = dict(num_hiddens=16, batch_size=4, num_steps=8, eval_every=300, sample_length=10)


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory, write_words):
    text = write_words(tmp_path_factory.mktemp("text") / "words.txt", 400, seed=7)
    out = tmp_path_factory.mktemp("parent") / "parent"
    training.train(TrainConfig(corpus=str(text), epochs=2, **TINY), out)
    return out


def test_a_grown_model_keeps_the_parent_rows_and_starts_new_rows_as_a_fresh_model():
    parent = RNNLM(5, 4, seed=3)
    grown = grown_model(parent, 7, seed=9)
    fresh = RNNLM(7, 4, seed=9)
    for name, value in parent.params.items():
        old = tuple(slice(0, n) for n in value.shape)
        np.testing.assert_array_equal(grown.params[name][old], value)
        new = np.ones(grown.params[name].shape, bool)
        new[old] = False  # the entries of the new tokens: a fresh model's
        np.testing.assert_array_equal(grown.params[name][new], fresh.params[name][new])
    assert grown.params["W_xh"].shape == (7, 4) and grown.params["W_hq"].shape == (4, 7)


def test_fine_tuning_on_a_text_with_new_characters(parent_run, tmp_path):
    text = tmp_path / "new.txt"
    text.write_text("the time traveller, said: 42 QUICK! " * 60, encoding="utf-8")
    out = tmp_path / "child"
    result = invoke("train", text, "--init-from", parent_run, "--epochs", 1, "--out", out, "--eval-every", 300,
                    "--batch-size", 4, "--num-steps", 8)
    assert_ok(result)
    parent = load_checkpoint(parent_run)
    child = load_checkpoint(out / CHECKPOINT)
    old = len(parent.vocab)
    assert child.vocab.idx_to_token[:old] == parent.vocab.idx_to_token  # the parent's ids kept
    added = child.vocab.idx_to_token[old:]
    assert set(added) == set(",:42QUICK!")
    assert (child.config.num_hiddens, child.config.preprocess) == (16, "raw")  # the parent's network
    assert child.config.init_from == str(parent.path.resolve())
    record = json.loads((out / PARENT).read_text())
    assert record["checkpoint"] == str(parent.path.resolve()) and record["added_tokens"] == added
    assert record["config"]["corpus"] == parent.config.corpus and record["progress"]["step"] == parent.progress.step
    assert child.progress.step > 0 and child.meta["optimizer"] != parent.meta["optimizer"]
    # a fine-tuned run resumes like any other, with the vocabulary it was given
    assert_ok(invoke("train", "--resume", out, "--epochs", 2))
    assert load_checkpoint(out / CHECKPOINT).progress.epoch == 2


def test_fine_tuning_starts_from_the_parent_weights(parent_run, tmp_path):
    """Before its first step the child predicts the parent's text as well as the parent does."""
    parent = load_checkpoint(parent_run)
    config = finetune_config(parent_run, parent.config.corpus, max_tokens=32, eval_every=10**6, sample_length=0,
                             lr=1e-12, batch_size=4, num_steps=8)
    result = training.train(config, tmp_path / "child")
    assert result.val_ppl == pytest.approx(perplexity(mean_loss(parent.model, validation_split(parent))),
                                           rel=1e-5)


def validation_split(ckpt):
    """The validation tokens of the run `ckpt` was trained in."""
    return training.load_data(ckpt.config, None)[1]


def test_the_parent_network_cannot_be_changed(parent_run, tmp_path):
    assert_error(invoke("train", "--init-from", parent_run, "--num-hiddens", 32, "--out", tmp_path / "x"),
                 code=2, says="keeps its num_hiddens (16)")
    with pytest.raises(ConfigError, match="keeps its activation"):
        finetune_config(parent_run, "timemachine", activation="linear")
    assert_error(invoke("train", "--init-from", tmp_path, "--out", tmp_path / "y"), says="not a run directory")
