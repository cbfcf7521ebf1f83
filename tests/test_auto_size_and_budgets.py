"""`--size auto` chooses the network from the text and the budget (charrnn.training.autosize), options given
win, the choice is printed, recorded and kept on resume; budgets hold (charrnn.training.budget): a
--max-time run ends within its seconds plus 2 including the final evaluation of a large
validation split (capped, and the summary says so); the start says what the budget allows and
warns below one epoch; --init-from inherits the parent's learning rate, scaled down."""
import json
import time

import pytest

from charrnn.training import autosize
from charrnn.training import start as training
from charrnn.training.budget import EVAL_SHARE, TimeBudget, allowance, below_one_epoch
from charrnn.training.config import TrainConfig
from charrnn.training.finetune import FINETUNE_LR_SCALE
from test_compare import invoke

SPEEDS = {"gru-128": 60_000.0, "gru-2x256": 7_000.0}  # tokens/s, mocked


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, write_words):
    return write_words(tmp_path_factory.mktemp("text") / "words.txt", 3000, seed=11)


def test_with_a_token_budget_the_choice_depends_only_on_the_text_and_the_budget():
    small, large = autosize.choose_for_tokens(150_000, 100_000), autosize.choose_for_tokens(2_000_000, 50_000_000)
    assert small == autosize.choose_for_tokens(150_000, 100_000)  # nothing else goes into it
    sizes = list(autosize.CANDIDATES)
    assert sizes.index(small["name"]) <= sizes.index(large["name"])  # a larger budget, no smaller network
    assert small["name"] == "gru-128" and large["name"] == "gru-2x256" and "epochs" in small["reason"]


def test_with_a_time_budget_each_candidate_is_judged_by_the_tokens_it_would_see():
    for seconds in (1, 60, 600, 6000):
        chosen = autosize.choose_for_time(1_000_000, seconds, SPEEDS)
        own = autosize.choose_for_tokens(1_000_000, int(SPEEDS[chosen["name"]] * seconds * (1 - EVAL_SHARE)))
        assert list(autosize.CANDIDATES).index(own["name"]) >= list(autosize.CANDIDATES).index(chosen["name"])
        assert chosen["speeds"] == {k: round(v) for k, v in SPEEDS.items()} and "probe" in chosen["reason"]
    assert autosize.choose_for_time(1_000_000, 1, SPEEDS)["name"] == "gru-128"  # 6,300 tokens for the big one
    assert autosize.choose_for_time(1_000_000, 600, SPEEDS)["name"] == "gru-2x256"  # 3.8 M tokens for it


def test_the_probe_measures_every_candidate(text_file):
    config = TrainConfig(corpus=str(text_file), batch_size=4, num_steps=8)
    train_data, _, vocab, _ = training.load_data(config, None)
    tiny = {"a": {"cell": "gru", "num_hiddens": 4, "num_layers": 1, "dropout": 0.0, "lr": 0.01},
            "b": {"cell": "rnn", "num_hiddens": 8, "num_layers": 2, "dropout": 0.1, "lr": 0.01}}
    speeds = autosize.probe_speeds(train_data, len(vocab), config, tiny, steps=2)
    assert set(speeds) == {"a", "b"} and all(s > 0 for s in speeds.values())


def test_train_without_network_options_sizes_itself_records_why_and_resume_keeps_it(tmp_path, text_file):
    out = tmp_path / "run"
    result = invoke("train", text_file, "--max-tokens", 512, "--batch-size", 4, "--num-steps", 8,
                    "--sample-length", 0, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Size auto: gru, hidden 128" in result.output and "Budget: 512 tokens" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["size"] == "auto" and (config["cell"], config["num_hiddens"]) == ("gru", 128)
    assert json.loads((out / autosize.SIZE_RECORD).read_text())["name"] == "gru-128"
    again = invoke("train", "--resume", out, "--max-tokens", 1024)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "config.json").read_text())["num_hiddens"] == 128


def test_an_option_given_wins_over_the_choice(tmp_path, text_file):
    common = ["--max-tokens", 256, "--batch-size", 4, "--num-steps", 8, "--sample-length", 0]
    named = invoke("train", text_file, *common, "--cell", "rnn", "--out", tmp_path / "rnn")
    assert named.exit_code == 0 and "Size auto" not in named.output  # a network option: today's defaults
    assert json.loads((tmp_path / "rnn" / "config.json").read_text())["size"] == "default"
    mixed = invoke("train", text_file, *common, "--size", "auto", "--num-hiddens", 12, "--out", tmp_path / "mix")
    assert mixed.exit_code == 0, mixed.output
    config = json.loads((tmp_path / "mix" / "config.json").read_text())
    assert (config["cell"], config["num_hiddens"], config["size"]) == ("gru", 12, "auto")


def test_the_start_says_what_the_budget_allows_and_warns_below_one_epoch(tmp_path, text_file):
    allowed = allowance(TrainConfig(corpus=str(text_file), max_tokens=1000), 20_000, 64, tokens_per_s=None)
    assert allowed == {"tokens": 1024, "epochs": 1024 / 20_000, "steps": 16, "estimated": False}
    assert "less than one epoch" in below_one_epoch(allowed)
    timed = allowance(TrainConfig(corpus=str(text_file), max_time=10), 20_000, 64, tokens_per_s=5_000)
    assert timed["tokens"] == 50_000 and timed["estimated"] and below_one_epoch(timed) is None
    assert allowance(TrainConfig(corpus=str(text_file), max_time=10), 20_000, 64) is None  # speed not known yet


def test_the_validation_cap_fits_the_final_evaluation_in_its_share_of_the_budget():
    budget = TimeBudget(max_time=10, val_tokens=5_000_000)
    budget.observe_step(0.01, 1_000)  # 1e-5 s a training token -> 5e-6 s an evaluated one, estimated
    assert budget.eval_tokens() == 200_000  # 10 s x EVAL_SHARE / 5e-6 s
    assert not budget.out_of_time(8.0) and budget.out_of_time(9.0)  # 1 s kept for the evaluation and the rest
    whole = TimeBudget(max_time=10, val_tokens=50_000)
    whole.observe_step(0.01, 1_000)
    assert whole.eval_tokens() == 50_000


def test_a_max_time_run_ends_in_time_with_a_large_validation_split(tmp_path, write_words):
    text = write_words(tmp_path / "big.txt", 600_000, seed=2)  # ~3.6 MB: 1.8 M validation tokens
    config = TrainConfig(corpus=str(text), val_fraction=0.5, num_hiddens=8, batch_size=8, num_steps=16,
                         max_time=2.0, sample_length=0)
    training.load_data(config, None)  # the token store is made before the clock starts, as a second run finds it
    started = time.perf_counter()
    result = training.train(config, tmp_path / "run", threads=1)
    assert time.perf_counter() - started <= 2.0 + 2.0
    assert result.reason == "max_time" and result.val_tokens < result.val_total


def test_the_summary_says_when_the_validation_was_capped(tmp_path, write_words):
    text = write_words(tmp_path / "big.txt", 300_000, seed=4)
    result = invoke("train", text, "--val-fraction", 0.5, "--num-hiddens", 8, "--batch-size", 8, "--num-steps", 16,
                    "--max-time", 1.5, "--sample-length", 0, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.replace("│", " ").split())  # the summary table wraps its cells
    assert "of 300,000" not in flat and "--max-time cap)" in flat and "Budget: about" in flat


def test_fine_tuning_inherits_the_parents_learning_rate_scaled_down(tmp_path, text_file, write_words):
    parent = invoke("train", text_file, "--cell", "rnn", "--num-hiddens", 8, "--lr", 0.004, "--max-tokens", 256,
                    "--batch-size", 4, "--num-steps", 8, "--sample-length", 0, "--out", tmp_path / "parent")
    assert parent.exit_code == 0, parent.output
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text() + " QXZ", encoding="utf-8")
    child = invoke("train", other, "--init-from", tmp_path / "parent", "--max-tokens", 256, "--batch-size", 4,
                   "--num-steps", 8, "--sample-length", 0, "--out", tmp_path / "child")
    assert child.exit_code == 0, child.output
    assert json.loads((tmp_path / "child" / "config.json").read_text())["lr"] == pytest.approx(0.004 * FINETUNE_LR_SCALE)
    assert f"at lr {0.004 * FINETUNE_LR_SCALE:.3g}" in child.output and "token(s) added" in child.output
    told = invoke("train", other, "--init-from", tmp_path / "parent", "--lr", 0.01, "--max-tokens", 256,
                  "--batch-size", 4, "--num-steps", 8, "--sample-length", 0, "--out", tmp_path / "told")
    assert told.exit_code == 0 and json.loads((tmp_path / "told" / "config.json").read_text())["lr"] == 0.01
