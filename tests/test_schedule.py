"""The learning-rate schedule: by the fraction of the budget used, with a floor."""
import json
import math

import pytest

from charrnn.training import start as training
from charrnn.training.state import Progress
from charrnn.training.config import TrainConfig
from charrnn.base.io import load_npz, save_npz
from charrnn.training.schedule import budget_fraction, learning_rate
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.outdir import METRICS
from charrnn.training.config import ConfigError


def cfg(**changes):
    return TrainConfig(corpus="timemachine", **changes)


def test_cosine_and_exponential_go_from_lr_to_the_floor():
    cosine, exponential = cfg(lr=0.02, lr_floor=0.1), cfg(lr=0.02, lr_floor=0.1, lr_schedule="exponential")
    assert learning_rate(cosine, 0.0, 0) == pytest.approx(0.02)
    assert learning_rate(cosine, 0.5, 0) == pytest.approx((0.02 + 0.002) / 2)
    assert learning_rate(cosine, 1.0, 0) == pytest.approx(0.002)
    assert learning_rate(exponential, 0.5, 0) == pytest.approx(0.02 * math.sqrt(0.1))
    assert learning_rate(exponential, 1.0, 7) == pytest.approx(0.002)
    assert learning_rate(cfg(lr_schedule="constant"), 0.9, 3) == cfg().lr
    assert learning_rate(cfg(lr_schedule="epoch", lr_decay=0.5), 0.9, 3) == cfg().lr * 0.125


def test_the_fraction_is_of_the_budget_furthest_along_and_does_not_depend_on_the_text_size():
    """150 epochs of a 50 KB text and of a 5 MB text are at the same point of their schedule
    after the same share of their budget, however many minibatches an epoch has."""
    for tokens_per_epoch in (24_576, 4_915_200):
        progress = Progress(tokens=75 * tokens_per_epoch)
        assert budget_fraction(progress, cfg(epochs=150), tokens_per_epoch) == pytest.approx(0.5)
    progress = Progress(tokens=3_000, elapsed=45.0)
    assert budget_fraction(progress, cfg(max_tokens=10_000, max_time=60), 1_000) == pytest.approx(0.75)
    assert budget_fraction(progress, cfg(max_tokens=10_000, max_time=60), 1_000, elapsed=12.0) == pytest.approx(0.3)
    assert budget_fraction(Progress(tokens=20_000), cfg(max_tokens=10_000), 1_000) == 1.0


def test_a_time_budget_resumes_where_its_schedule_stood():
    """The saved Progress carries the seconds trained, so a resumed --max-time run goes on from
    the learning rate it stopped at, not from the top."""
    config = cfg(max_time=60)
    saved = Progress.from_dict(json.loads(json.dumps(vars(Progress(step=1, tokens=2048, elapsed=30.0)))))
    assert learning_rate(config, budget_fraction(saved, config, 10**6), 0) == pytest.approx(0.55 * config.lr)


def test_configurations_saved_before_the_schedule_keep_their_epoch_decay():
    old = {k: v for k, v in vars(cfg(lr_decay=0.8)).items() if k not in ("lr_schedule", "lr_floor", "init_from")}
    restored = TrainConfig.from_dict(old)
    assert (restored.lr_schedule, restored.lr_decay, restored.lr_floor) == ("epoch", 0.8, 0.1)
    assert cfg().lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="lr_floor"):
        cfg(lr_floor=0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        cfg(lr_schedule="linear")


def test_a_small_text_keeps_learning_to_the_end_of_a_long_budget(tmp_path, write_words):
    """Many epochs of a short text: the per-epoch decay freezes the learning rate at nothing,
    the schedule over the budget ends at lr * lr_floor."""
    text = write_words(tmp_path / "small.txt", 120, seed=3)
    tiny = dict(num_hiddens=8, batch_size=4, num_steps=8, eval_every=10**9, sample_length=0, epochs=40)
    runs = {}
    for schedule in ("epoch", "cosine"):
        runs[schedule] = training.train(TrainConfig(corpus=str(text), lr_schedule=schedule, **tiny),
                                        tmp_path / schedule)
    last_lr = {s: json.loads((tmp_path / s / METRICS).read_text().splitlines()[-1])["lr"] for s in runs}
    assert last_lr["epoch"] < 0.02 * TrainConfig().lr  # 0.9**39
    assert last_lr["cosine"] == pytest.approx(TrainConfig().lr * 0.1, rel=0.01)
    assert runs["cosine"].train_ppl < runs["epoch"].train_ppl  # it kept learning


def test_a_run_saved_before_the_schedule_existed_resumes_with_its_epoch_decay(tmp_path, write_words):
    text = write_words(tmp_path / "words.txt", 300, seed=5)
    tiny = dict(num_hiddens=8, batch_size=4, num_steps=8, eval_every=10**9, sample_length=0)
    training.train(TrainConfig(corpus=str(text), epochs=1, lr_schedule="epoch", lr_decay=0.5, **tiny), tmp_path / "old")
    path = tmp_path / "old" / CHECKPOINT
    arrays, meta = load_npz(path)
    for name in ("lr_schedule", "lr_floor", "init_from"):  # as a checkpoint of an older charrnn
        del meta["config"][name]
    save_npz(path, arrays, meta)
    result = training.resume(tmp_path / "old", {"epochs": 2})
    assert result.config.lr_schedule == "epoch" and result.progress.epoch == 2
    last = json.loads((tmp_path / "old" / METRICS).read_text().splitlines()[-1])
    assert last["lr"] == pytest.approx(TrainConfig().lr * 0.5)


def test_a_time_budget_runs_the_whole_schedule_by_the_clock(tmp_path, write_words):
    text = write_words(tmp_path / "words.txt", 300, seed=5)
    tiny = dict(num_hiddens=8, batch_size=4, num_steps=8, eval_every=32, sample_length=0)  # every step
    result = training.train(TrainConfig(corpus=str(text), max_time=1.0, **tiny), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    assert result.reason == "max_time" and len(lrs) > 3 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 0.15 * TrainConfig().lr < 0.5 * TrainConfig().lr < lrs[0]
