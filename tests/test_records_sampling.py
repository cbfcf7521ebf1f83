"""Sampling and scoring with a model of records (charrnn.infer.generation, charrnn.infer.decoding): whole
records from one batch, beam search against greedy, nucleus sampling, scores."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import charrnn
from charrnn.training.config import TrainConfig
from charrnn.infer.decoding import beam_search, filtered_probs, generate_rows, text_score
from charrnn.infer.generation import sample as generate, score
from charrnn.nn.model import RNNLM
from syllable_names import write_names


@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    """A GRU trained for a few seconds on 2,000 generated names, one per line."""
    root = tmp_path_factory.mktemp("names")
    names = write_names(root / "names.txt", 2000, seed=5)
    config = TrainConfig(corpus=str(root / "names.txt"), records="lines", cell="gru", num_hiddens=32,
                         num_layers=1, dropout=0.0, batch_size=16, num_steps=16, max_tokens=40_000,
                         eval_every=40_000, lr=1e-2)
    return charrnn.train(config, root / "run"), names  # the TrainResult: model, vocab, config


def test_every_sample_of_a_batch_is_one_whole_record(names_run):
    run, names = names_run
    samples = generate(run, n=200, length=12, temperature=1.5, seed=3)
    assert len(samples) == 200
    for item in samples:
        assert "\n" not in item.text and "<s>" not in item.text and "</s>" not in item.text
        assert item.ended or len(item.text) == 12  # at the end token or the length limit: 100%
    assert sum(item.ended for item in samples) > 100
    assert len({item.text for item in samples}) > 100  # rows drew different records


def test_novelty_finds_copies_in_train_and_none_left_with_only_new(names_run):
    run, names = names_run
    samples = generate(run, n=300, length=20, temperature=0.6, seed=1, novelty=True)
    found = {item.found for item in samples}
    assert found <= {"train", "val", "new"} and "train" in found
    known = set(names)
    for item in samples:
        assert (item.found != "new") == (item.ended and item.text in known) or not item.ended
    fresh = generate(run, n=300, length=20, temperature=0.6, seed=1, only_new=True)
    assert fresh and all(item.found == "new" for item in fresh)
    assert len(fresh) == sum(item.found == "new" for item in samples)


def test_scores_of_samples_equal_score_of_the_same_text(names_run):
    run, _ = names_run
    samples = [item for item in generate(run, n=20, length=30, seed=7) if item.ended]
    scored = score(run, [item.text for item in samples])
    for item, result in zip(samples, scored):
        assert result.tokens == item.tokens
        assert -result.nats == pytest.approx(item.log_prob, rel=1e-5)


def test_a_sample_stops_right_after_the_first_stop_string(names_run):
    run, _ = names_run
    model, vocab = run.model, run.vocab
    stop = [vocab["a"], vocab["n"]]
    seqs, _, ended = generate_rows(model, [vocab["B"]], 50, 40, np.random.default_rng(0), stop_ids=np.array(stop))
    for seq, end in zip(seqs, ended):
        text = seq.tolist()
        assert not end or (text[-2:] == stop and all(text[i:i + 2] != stop for i in range(len(text) - 2)))
        assert end or len(text) == 40


def small_model(seed, cell):
    model = RNNLM(6, 8, seed=seed, cell=cell, dtype="float64")
    rng = np.random.default_rng(seed)
    for value in model.params.values():
        value += rng.normal(0, 1.5, value.shape)
    return model


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cell=st.sampled_from(["rnn", "gru", "lstm"]), ends=st.booleans())
def test_beam_of_one_is_greedy(seed, cell, ends):
    model = small_model(seed, cell)
    end_id = 5 if ends else None
    greedy, log_p, _ = generate_rows(model, [1], 1, 12, greedy=True, end_id=end_id)
    seq, beam_log_p, _ = beam_search(model, [1], 1, 12, end_id=end_id)
    assert seq.tolist() == greedy[0].tolist()
    assert beam_log_p == pytest.approx(log_p[0], abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cell=st.sampled_from(["rnn", "gru", "lstm"]), beam=st.integers(2, 6),
       ends=st.booleans())
def test_a_wider_beam_never_ranks_below_greedy(seed, cell, beam, ends):
    """Without an end token every sequence has the length limit: its log-probability itself is
    never below greedy's; with one, its length-normalised log-probability."""
    model = small_model(seed, cell)
    end_id = 5 if ends else None
    greedy, log_p, ended = generate_rows(model, [1], 1, 10, greedy=True, end_id=end_id)
    seq, beam_log_p, count = beam_search(model, [1], beam, 10, end_id=end_id)
    assert beam_log_p == pytest.approx(text_log_p(model, seq, count > len(seq), end_id), abs=1e-9)
    greedy_count = len(greedy[0]) + int(ended[0])
    assert beam_log_p / count >= log_p[0] / greedy_count - 1e-12
    if not ends:
        assert beam_log_p >= log_p[0] - 1e-12


def text_log_p(model, seq, ended, end_id):
    tokens = [*seq.tolist(), *([end_id] if ended else [])]
    return text_score(model, tokens, prefix_ids=[1])[0]


@settings(max_examples=50, deadline=None)
@given(probs=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12), top_p=st.floats(0.05, 0.99))
def test_top_p_keeps_the_fewest_most_likely_tokens_reaching_p(probs, top_p):
    p = np.array(probs) / sum(probs)
    kept = filtered_probs(np.log(p)[None], top_p=top_p)[0] > 0
    order = np.argsort(-p, kind="stable")
    share = np.cumsum(p[order])
    needed = int(np.searchsorted(share, top_p * share[-1] * (1 - 1e-12))) + 1
    assert kept.sum() >= min(needed, len(p)) - 1 and p[kept].sum() >= top_p * (1 - 1e-9)
    assert p[kept].min() >= p[~kept].max(initial=0)


def test_n_zero_and_a_prefixless_stream_model_are_refused(names_run):
    run, _ = names_run
    with pytest.raises(charrnn.CharrnnError, match="n must be"):
        generate(run, n=0)
    with pytest.raises(charrnn.CharrnnError, match="stop"):
        generate(run, stop="a")
