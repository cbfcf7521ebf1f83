"""The unigram and bigram baselines (charrnn.data.baselines): counted as the docstring's formulas say,
in pieces that change nothing, and shown by `charrnn corpus` and the training summary."""
import json
import math
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.data import baselines as baselines_module
from charrnn.data.baselines import ngram_baselines, pair_counts, token_counts, unigram_log_probs
from charrnn.cli import main


def naive_baselines(train, val, V):
    """The formulas of the module docstring, one token at a time."""
    uni, pairs, contexts = Counter(train), Counter(zip(train[:-1], train[1:])), Counter(train[:-1])
    N = len(train)
    uni_nll = bi_nll = 0.0
    for u, v in zip(val[:-1], val[1:]):
        uni_nll -= math.log((uni[v] + 1) / (N + V))
        bi_nll -= math.log((pairs[u, v] + 1) / (contexts[u] + V))
    M = len(val) - 1
    return math.exp(uni_nll / M), math.exp(bi_nll / M)


@pytest.mark.parametrize("piece", [3, 7, 1 << 22])
def test_baselines_follow_the_add_one_formulas_whatever_the_piece_size(monkeypatch, piece):
    monkeypatch.setattr(baselines_module, "PIECE", piece)
    rng = np.random.default_rng(0)
    V = 9
    ids = rng.choice(V - 1, size=400, p=np.linspace(1, 3, V - 1) / np.linspace(1, 3, V - 1).sum()).astype(np.uint8)
    train, val = ids[:350], ids[350:]
    result = ngram_baselines(train, val, V)
    unigram, bigram = naive_baselines(train.tolist(), val.tolist(), V)
    assert result.unigram == pytest.approx(unigram, rel=1e-12)
    assert result.bigram == pytest.approx(bigram, rel=1e-12)
    assert (result.counted, result.scored) == (350, 49)
    assert np.array_equal(token_counts(train, V), np.bincount(train, minlength=V))
    assert pair_counts(train, V).sum() == len(train) - 1


def test_unigram_log_probs_are_a_smoothed_distribution():
    log_p = unigram_log_probs([5, 0, 3])
    assert np.exp(log_p).sum() == pytest.approx(1.0)
    assert np.allclose(np.exp(log_p), np.array([6, 1, 4]) / 11)


def test_a_structured_text_has_a_bigram_below_its_unigram():
    text = np.array([0, 1, 2, 3] * 200, dtype=np.uint8)  # each token fixes the next
    result = ngram_baselines(text[:700], text[700:], 4)
    assert result.unigram == pytest.approx(4, rel=0.01)
    assert result.bigram < 1.02


def test_vocabularies_too_large_for_pairs_have_no_bigram(monkeypatch):
    monkeypatch.setattr(baselines_module, "MAX_BIGRAM_VOCAB", 5)
    result = ngram_baselines(np.arange(30) % 6, np.arange(10) % 6, 6)
    assert result.bigram is None and result.unigram > 1


def test_corpus_prints_the_baselines_of_the_validation_split(tmp_path, write_words):
    text = write_words(tmp_path / "w.txt", 2000, seed=1)
    runner = CliRunner()
    shown = runner.invoke(main, ["corpus", str(text), "--json", "--val-fraction", "0.2"])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["val_fraction"] == 0.2 and record["bigram_ppl"] < record["unigram_ppl"]
    assert record["baseline_val_tokens"] == record["tokens"] - record["baseline_train_tokens"] - 1
    table = runner.invoke(main, ["corpus", str(text), "--val-fraction", "0.2"])
    assert f"unigram perplexity {record['unigram_ppl']:.3f}, bigram perplexity {record['bigram_ppl']:.3f}" in table.output
