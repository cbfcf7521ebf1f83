"""Training loop, evaluation, sampling and checkpoints, through the Python API on tiny models."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.data.samplers import SAMPLERS
from charrnn.data.vocab import Vocab
from charrnn.infer.evaluate import contiguous_batches, mean_loss
from charrnn.infer.sample import continue_text, generate, sample_text
from charrnn.nn.model import RNNLM
from charrnn.training import loop as training_loop
from charrnn.training import start as training
from charrnn.training.checkpoint import STATE_KEY, load_checkpoint, save_model
from charrnn.training.config import ConfigError, TrainConfig
from charrnn.training.loop import MAX_SKIPPED_IN_A_ROW
from charrnn.training.outdir import BEST, CHECKPOINT, CONFIG, VOCAB
from helpers import InterruptAt, assert_same_run, config, metrics


@pytest.fixture
def text_file(tmp_path, write_words):
    """A ~2,400-character text of random words."""
    return write_words(tmp_path / "words.txt", 400, seed=7)


@pytest.mark.parametrize("settings, k", [
    (dict(sampler="sequential", truncation="randomized:0.5", optimizer="adam", lr_schedule="epoch",
          lr_decay=0.8), 1),
    (dict(sampler="random", truncation="regular:3", optimizer="adagrad", lr_schedule="constant"), 2),
])
def test_resume_after_k_epochs_is_exact(tmp_path, text_file, settings, k):
    """N epochs straight == k epochs + resume to N: parameters, optimizer, RNG state, metrics.
    (A schedule that does not follow the budget: raising the budget on resume stretches the rest
    of a cosine schedule, see test_an_interrupted_run_resumes_to_the_straight_run.)"""
    straight = training.train(config(text_file, **settings, epochs=3), tmp_path / "straight")
    assert straight.reason == "epochs" and straight.progress.epoch == 3
    first = training.train(config(text_file, **settings, epochs=k), tmp_path / "split")
    assert first.progress.epoch == k
    training.resume(tmp_path / "split", {"epochs": 3})
    assert_same_run(tmp_path / "straight", tmp_path / "split")


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_an_interrupted_run_resumes_to_the_straight_run(tmp_path, text_file, schedule):
    """Interrupted inside an epoch (carried state saved) with the learning rate halfway down its
    schedule, resumed to the end of the same budget: the same run as one never stopped."""
    cfg = config(text_file, truncation="randomized:0.3", epochs=2, lr_schedule=schedule)
    straight = training.train(cfg, tmp_path / "straight")
    stopped = training.train(cfg, tmp_path / "split", reporter=InterruptAt(40))
    assert stopped.reason == "SIGINT" and 0 < stopped.progress.step_in_epoch
    assert STATE_KEY in load_checkpoint(tmp_path / "split" / "checkpoint.npz").arrays
    result = training.resume(tmp_path / "split")
    assert result.reason == "epochs" and result.val_ppl == straight.val_ppl
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    lrs = [r["lr"] for r in metrics(tmp_path / "split")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * cfg.lr


def test_resume_keeps_the_maths_and_needs_a_budget(tmp_path, text_file):
    training.train(config(text_file, epochs=1), tmp_path / "run")
    with pytest.raises(ConfigError, match="keeps its lr") as err:
        training.resume(tmp_path / "run", {"lr": 0.5, "epochs": 2})
    assert err.value.name == "lr"
    with pytest.raises(CharrnnError, match="already reached its budget"):
        training.resume(tmp_path / "run")
    with pytest.raises(CharrnnError, match="already holds a run"):
        training.train(config(text_file, epochs=1), tmp_path / "run")
    changed = TrainConfig(corpus=str(text_file), epochs=1).resumed({"max_time": 5.0, "eval_every": 9})
    assert (changed.epochs, changed.max_time, changed.eval_every) == (None, 5.0, 9)


def test_resume_refuses_a_changed_corpus(tmp_path, text_file):
    training.train(config(text_file, epochs=1), tmp_path / "run")
    text_file.write_text(text_file.read_text()[::-1], encoding="utf-8")
    with pytest.raises(CharrnnError, match="not the text the run"):
        training.resume(tmp_path / "run", {"epochs": 2})


def test_training_lowers_validation_perplexity_and_writes_its_files(tmp_path, text_file):
    result = training.train(config(text_file, num_hiddens=32, epochs=6, lr=0.01, lr_schedule="epoch",
                                   lr_decay=0.9), tmp_path / "run")
    records = metrics(tmp_path / "run")
    assert all(r["lr"] == 0.01 * 0.9 ** (r["epoch"] - 1) for r in records)
    assert records[-1]["val_ppl"] < 0.6 * records[0]["val_ppl"]
    assert result.val_ppl == records[-1]["val_ppl"]
    assert result.progress.best_val_ppl == min(r["val_ppl"] for r in records)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    first_words = " ".join(text_file.read_text().split()[:2])  # the default prefix of a user's text
    assert all(r["sample"].startswith(first_words) for r in records)
    saved = json.loads((tmp_path / "run" / CONFIG).read_text())
    assert saved["num_hiddens"] == 32 and saved["corpus"] == str(text_file.resolve())
    best = load_checkpoint(tmp_path / "run")  # a directory means best.npz
    assert best.path.name == BEST and best.progress.step == result.progress.best_step
    assert Vocab.load(tmp_path / "run" / VOCAB).idx_to_token == best.vocab.idx_to_token


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_file):
    result = training.train(config(text_file, activation="linear", optimizer="sgd", lr=1e30, clip=None, epochs=2),
                            tmp_path / "run")
    assert result.reason == "nonfinite" and "non-finite" in result.message
    kept = load_checkpoint(tmp_path / "run" / CHECKPOINT)  # refuses non-finite params
    assert kept.progress.step == result.checkpoint_step < result.progress.step


def test_a_nonfinite_validation_loss_never_becomes_best(tmp_path, text_file, monkeypatch):
    real, calls = mean_loss, []

    def finite_once_then_nan(model, tokens, **kwargs):
        calls.append(1)
        return real(model, tokens, **kwargs) if len(calls) == 1 else math.nan

    monkeypatch.setattr(training_loop, "mean_loss", finite_once_then_nan)
    training.train(config(text_file, epochs=1), tmp_path / "run")
    records = metrics(tmp_path / "run")
    assert len(records) > 2 and records[0]["best"] and records[0]["val_ppl"] > 1
    assert all(r["val_ppl"] is None and not r["best"] for r in records[1:])
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert best.progress.step == records[0]["step"] and best.progress.best_val_ppl == records[0]["val_ppl"]


def test_nonfinite_minibatch_can_be_skipped(tmp_path, text_file, monkeypatch):
    real = RNNLM.loss_and_grads
    calls = []

    def nan_on_third_call(self, *args, **kwargs):
        loss, grads, state = real(self, *args, **kwargs)
        calls.append(1)
        return (math.nan if len(calls) == 3 else loss), grads, state

    monkeypatch.setattr(RNNLM, "loss_and_grads", nan_on_third_call)
    result = training.train(config(text_file, on_nonfinite="skip", epochs=1), tmp_path / "run")
    assert result.reason == "epochs" and result.progress.skipped == 1
    assert all(np.isfinite(v).all() for v in load_checkpoint(tmp_path / "run").model.params.values())


def test_skipping_gives_up_on_a_diverged_model(tmp_path, text_file):
    result = training.train(config(text_file, activation="linear", optimizer="sgd", lr=1e30, clip=None,
                                   on_nonfinite="skip", epochs=2), tmp_path / "run")
    assert result.reason == "nonfinite" and "diverged" in result.message
    assert result.progress.skipped == MAX_SKIPPED_IN_A_ROW - 1


def test_bad_settings_fail_before_training(tmp_path, text_file):
    with pytest.raises(ConfigError) as err:
        training.train(config(text_file, num_steps=5000, epochs=1), tmp_path / "a")
    assert err.value.name == "num_steps" and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="lr must be positive"):
        config(text_file, lr=0)
    with pytest.raises(ConfigError, match="truncation"):
        config(text_file, truncation="regular:0")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CharrnnError, match="cannot create output directory"):
        training.train(config(text_file, epochs=1), blocker / "out")


def test_corrupt_checkpoints_are_refused(tmp_path, text_file):
    training.train(config(text_file, epochs=1), tmp_path / "run")
    good = (tmp_path / "run" / CHECKPOINT).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CharrnnError):
        load_checkpoint(truncated)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    bare_model = tmp_path / "model.npz"
    save_model(ckpt.model, bare_model)
    with pytest.raises(CharrnnError, match="not a charrnn training checkpoint"):
        load_checkpoint(bare_model)
    small_vocab = tmp_path / "small_vocab.npz"
    save_model(ckpt.model, small_vocab, extra_meta={**ckpt.meta, "vocab": Vocab(list("abc")).to_dict()})
    with pytest.raises(CharrnnError, match="vocabulary of 4 tokens"):
        load_checkpoint(small_vocab)


def test_contiguous_batches_cover_each_target_once_in_order():
    corpus = np.arange(103, dtype=np.int32)
    batches = list(contiguous_batches(corpus, num_rows=4, num_steps=7))
    X = np.concatenate([x for x, _ in batches], axis=1)
    Y = np.concatenate([y for _, y in batches], axis=1)
    np.testing.assert_array_equal(X, np.arange(100).reshape(4, 25))
    np.testing.assert_array_equal(Y, X + 1)


def test_mean_loss_is_the_stepwise_cross_entropy_with_state_carried():
    """Each row of the evaluation is one stream read token by token, state carried throughout."""
    model = RNNLM(vocab_size=6, num_hiddens=5, dtype="float64", seed=3)
    model.params["W_hh"] *= 50  # a state that matters, so a reset or a skipped token shows
    model.params["W_hq"] *= 50
    corpus = np.random.default_rng(0).integers(0, 6, size=32 * 300 + 1).astype(np.int32)
    batches = list(contiguous_batches(corpus))
    num_rows, row_len = batches[0][0].shape[0], sum(x.shape[1] for x, _ in batches)
    assert len(batches) > 1
    expected = []
    for row in range(num_rows):
        stream, state = corpus[row * row_len : (row + 1) * row_len + 1], None
        for x, y in zip(stream[:-1], stream[1:]):
            logits, state = model.step(np.array([x]), state)
            expected.append(np.log(np.exp(logits[0]).sum()) - logits[0][y])
    assert mean_loss(model, corpus) == pytest.approx(np.mean(expected), rel=1e-12)


def test_generation_warms_up_on_the_prefix_then_follows_the_model():
    vocab = Vocab(list("abcab c"))
    model = RNNLM(vocab_size=len(vocab), num_hiddens=8, seed=1)
    model.params["W_hq"] *= 100
    sample = continue_text(model, vocab, "Ab!c", 12, "char", "d2l", greedy=True)
    greedy = sample.text
    assert greedy.startswith("ab c") and len(greedy) == 16 and sample.unknown == []
    assert sample.prefix == "ab c"
    state, expected = None, []
    for token in vocab[list("ab c")]:
        logits, state = model.step(np.array([token]), state)
    for _ in range(12):
        expected.append(int(np.argmax(logits[0])))
        logits, state = model.step(np.array(expected[-1:]), state)
    assert greedy == "ab c" + vocab.decode(expected, "char")
    raw = TrainConfig(corpus="x", preprocess="raw")  # sample_text reads a prefix as its config says
    trained = SimpleNamespace(model=model, vocab=vocab, config=raw)
    assert sample_text(trained, "ab c", 12, top_k=1, seed=5).text == greedy
    drawn = [sample_text(trained, "ab c", 30, temperature=3.0, seed=s).text for s in (1, 1, 2)]
    assert drawn[0] == drawn[1] != drawn[2]
    with pytest.warns(CharrnnWarning, match="3 occurrences of 2 distinct tokens"):
        unknown = sample_text(trained, "abzzZ", 3)
    assert (unknown.unknown, unknown.unknown_count, unknown.prefix) == (["Z", "z"], 3, "abzzZ")
    assert len(generate(model, np.array([1]), 0, np.random.default_rng(0))) == 0
    with pytest.raises(CharrnnError, match="no tokens"):
        sample_text(trained, "", 3)


def test_data_seed_fixes_the_order_of_minibatches_and_seed_the_rest(tmp_path, text_file, monkeypatch):
    """seed 1 with data_seed 0 sees the minibatches of seed 0, from another initialisation;
    data_seed None is the seed itself, bit for bit."""
    batches = []
    sampler = SAMPLERS["random"]

    def recording(*args):
        for X, Y in sampler(*args):
            batches[-1].append(X.copy())
            yield X, Y

    monkeypatch.setitem(SAMPLERS, "random", recording)
    runs = {}
    for name, seeds in {"seed0": {}, "seed1-data0": dict(seed=1, data_seed=0), "seed1": dict(seed=1),
                        "seed1-data1": dict(seed=1, data_seed=1)}.items():
        batches.append([])
        runs[name] = training.train(config(text_file, sampler="random", epochs=2, **seeds), tmp_path / name)
        runs[name] = (batches[-1], load_checkpoint(tmp_path / name / CHECKPOINT))
    order = {name: np.stack(seen) for name, (seen, _) in runs.items()}
    np.testing.assert_array_equal(order["seed0"], order["seed1-data0"])
    assert not np.array_equal(order["seed0"], order["seed1"])
    params = {name: ckpt.model.params["W_hh"] for name, (_, ckpt) in runs.items()}
    assert not np.array_equal(params["seed0"], params["seed1-data0"])
    np.testing.assert_array_equal(params["seed1"], params["seed1-data1"])
    assert_same_run(tmp_path / "seed1", tmp_path / "seed1-data1")


def test_a_checkpoint_from_before_data_seed_loads_and_resumes(tmp_path, text_file):
    constant = dict(lr_schedule="constant")  # a schedule that does not follow the budget raised on resume
    training.train(config(text_file, max_tokens=320, **constant), tmp_path / "old")
    ckpt = load_checkpoint(tmp_path / "old" / CHECKPOINT)
    meta = dict(ckpt.meta, config={k: v for k, v in ckpt.meta["config"].items() if k != "data_seed"})
    save_model(ckpt.model, tmp_path / "old" / CHECKPOINT, extra_arrays=ckpt.arrays, extra_meta=meta)
    assert load_checkpoint(tmp_path / "old" / CHECKPOINT).config.data_seed is None
    training.resume(tmp_path / "old", {"max_tokens": 960})
    training.train(config(text_file, max_tokens=960, **constant), tmp_path / "new")
    assert_same_run(tmp_path / "new", tmp_path / "old")
    with pytest.raises(ConfigError, match="keeps its data_seed"):
        training.resume(tmp_path / "old", {"data_seed": 3, "max_tokens": 1280})
    with pytest.raises(ConfigError, match="data_seed must be a non-negative integer"):
        config(text_file, data_seed=-1)
