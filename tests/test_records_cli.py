"""Records from the command line: train --records, sample -n, score, evaluate, resume and
fine-tuning of a records run, and the bad input each refuses in one line."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training import start as training
from charrnn.training.checkpoint import load_checkpoint
from syllable_names import write_names

TINY = ["--records", "lines", "--cell", "lstm", "--num-hiddens", "16", "--num-layers", "2", "--dropout", "0.1",
        "--batch-size", "8", "--num-steps", "12", "--eval-every", "4000", "--lr-schedule", "constant"]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_error(result, code, says):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert says in result.stderr, result.stderr


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    root = tmp_path_factory.mktemp("names_cli")
    write_names(root / "names.txt", 800, seed=2)
    return root


@pytest.fixture(scope="module")
def run(names):
    result = invoke("train", names / "names.txt", *TINY, "--max-tokens", 8000, "--out", names / "run")
    assert result.exit_code == 0, result.output
    return names / "run"


def test_sample_n_prints_one_record_per_line_and_novelty(run):
    result = invoke("sample", run, "-n", 100, "--length", 15, "--novelty", "--seed", 1)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 100 and all(len(line) <= 15 for line in lines)  # an empty record is one too
    assert "novelty:" in result.stderr and "records new" in result.stderr


def test_sample_json_scores_equal_score(run):
    result = invoke("sample", run, "-n", 5, "--json", "--seed", 4)
    samples = [s for s in json.loads(result.stdout) if s["ended"]]
    scored = json.loads(invoke("score", run, *[s["text"] for s in samples], "--json").stdout)
    for s, r in zip(samples, scored):
        assert -r["nats"] == pytest.approx(s["log_prob"], rel=1e-5) and r["tokens"] == s["tokens"]


def test_score_file_scores_each_line_and_evaluate_reports_nats_per_record(run, names):
    result = invoke("score", run, "--file", names / "names.txt", "--json")
    assert len(json.loads(result.stdout)) == 800
    report = json.loads(invoke("evaluate", run, "--json").stdout)
    assert report["records"] == 80
    assert report["nats_per_record"] == pytest.approx(report["nats_per_char"] * report["tokens"] / 80)


def test_a_records_run_resumes_exactly(names, tmp_path):
    straight = invoke("train", names / "names.txt", *TINY, "--max-tokens", 6000, "--out", tmp_path / "a")
    first = invoke("train", names / "names.txt", *TINY, "--max-tokens", 3000, "--out", tmp_path / "b")
    assert straight.exit_code == 0 and first.exit_code == 0, first.output
    training.resume(tmp_path / "b", {"max_tokens": 6000})
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.npz"), load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    for name, value in a.model.params.items():
        assert np.array_equal(value, b.model.params[name]), name
    assert np.array_equal(a.training.carried, b.training.carried)


def test_a_stream_model_fine_tuned_on_records_gains_the_record_tokens(run, names, tmp_path):
    stream = invoke("train", names / "names.txt", "--num-hiddens", 8, "--batch-size", 4, "--num-steps", 8,
                    "--max-tokens", 640, "--out", tmp_path / "stream")
    assert stream.exit_code == 0, stream.output
    tuned = invoke("train", names / "names.txt", "--records", "lines", "--init-from", tmp_path / "stream",
                   "--max-tokens", 640, "--out", tmp_path / "tuned")
    assert tuned.exit_code == 0, tuned.output
    vocab = load_checkpoint(tmp_path / "tuned").vocab
    assert vocab.idx_to_token[-2:] == ["<s>", "</s>"]


def test_records_on_a_text_without_line_breaks_says_so(tmp_path):
    (tmp_path / "one.txt").write_text("a single line " * 50, encoding="utf-8")
    assert_error(invoke("train", tmp_path / "one.txt", *TINY), 1, "has no line breaks")


def test_a_record_longer_than_a_thousand_windows_is_refused_with_its_line(tmp_path):
    (tmp_path / "long.txt").write_text("ab\ncd\n" + "x" * 1001 + "\nef\n" * 50, encoding="utf-8")
    result = invoke("train", tmp_path / "long.txt", "--records", "lines", "--num-steps", 1, "--batch-size", 1)
    assert_error(result, 1, "line 3")


def test_usage_errors_of_sample(run, tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert_error(invoke("sample", run, "--prime-file", tmp_path / "empty.txt"), 2, "is empty")
    assert_error(invoke("sample", run, "-n", 0), 2, "'-n'")
    assert_error(invoke("sample", run, "--beam", 3, "-n", 2), 2, "--beam")


def test_prime_file_starts_every_record(run, tmp_path):
    (tmp_path / "prime.txt").write_text("Ka", encoding="utf-8")
    result = invoke("sample", run, "--prime-file", tmp_path / "prime.txt", "-n", 10)
    assert all(line.startswith("Ka") for line in result.stdout.splitlines())


def test_gradcheck_with_record_boundaries_inside_the_window():
    result = invoke("gradcheck", "--cell", "gru", "--num-layers", 2, "--records", 2, "--truncation", "regular:4",
                    "--num-hiddens", 4, "--vocab-size", 5, "--num-steps", 8)
    assert result.exit_code == 0 and "all checks passed" in result.output


def test_corpus_shows_the_records_and_their_tokens(names):
    report = json.loads(invoke("corpus", names / "names.txt", "--records", "lines", "--json").stdout)
    assert report["records"]["count"] == 800 and report["records"]["held_out"] == 80
    assert report["records"]["vocab_size"] == report["vocab_size"] + 2


def test_a_paragraphs_model_samples_end_before_a_blank_line(tmp_path):
    rng = np.random.default_rng(0)
    verses = ["\n".join("".join(rng.choice(list("abcde "), 8)) for _ in range(rng.integers(1, 4)))
              for _ in range(300)]
    (tmp_path / "verses.txt").write_text("\n\n".join(verses) + "\n", encoding="utf-8")
    trained = invoke("train", tmp_path / "verses.txt", "--records", "paragraphs", "--num-hiddens", 8,
                     "--batch-size", 4, "--num-steps", 16, "--max-tokens", 2000, "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    samples = json.loads(invoke("sample", tmp_path / "run", "-n", 20, "--length", 60, "--json").stdout)
    assert all("\n\n" not in s["text"] for s in samples)
