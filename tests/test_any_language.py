"""A user's own text in any language: raw by default for a file, d2l's losses reported,
prefixes changed by preprocessing warned about, universal newlines, UTF-8 JSON."""
import json
import warnings

import numpy as np
import pytest

from charrnn.training import start as training
from charrnn.training.config import TrainConfig
from charrnn.data.corpus import default_preprocess, load_corpus, read_text
from charrnn.data.text import dropped_letters
from charrnn.base.errors import CharrnnWarning
from charrnn.infer.sample import next_token_probs, sample_text
from charrnn.training.checkpoint import load_checkpoint
from test_cli import assert_ok, invoke

RUSSIAN = "Мальчик читает книгу, а девочка пишет письмо. Ёжик спит в лесу; time идёт.\n" * 40
TINY = dict(num_hiddens=16, batch_size=4, num_steps=8, eval_every=400, sample_length=12)


@pytest.fixture(scope="module")
def russian_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ru") / "ru.txt"
    path.write_text(RUSSIAN, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def russian_run(tmp_path_factory, russian_file):
    out = tmp_path_factory.mktemp("run") / "ru"
    training.train(TrainConfig(corpus=str(russian_file), epochs=2, **TINY), out)
    return out


def test_a_file_is_read_raw_and_the_registered_book_with_d2l(russian_file, data_dir):
    assert default_preprocess(russian_file) == "raw" and default_preprocess("timemachine") == "d2l"
    assert TrainConfig(corpus=str(russian_file)).preprocess == "raw"
    assert TrainConfig(corpus="timemachine").preprocess == "d2l"
    corpus, vocab = load_corpus(russian_file)
    assert len(corpus) == len(RUSSIAN) and "ё" in vocab.token_to_idx and "Ё" in vocab.token_to_idx


def test_d2l_reports_the_letters_it_drops(russian_file):
    count, examples = dropped_letters("café Über Mädchen 42")
    assert count == 3 and set(examples) == set("éÜä")
    assert dropped_letters("plain ascii, digits 42") == (0, "")
    letters = sum(c.isalpha() and not c.isascii() for c in RUSSIAN)
    with pytest.warns(CharrnnWarning, match=rf"dropped {letters:,} letters outside A-Z \(e\.g\. итаек"):
        corpus, vocab = load_corpus(russian_file, preprocess="d2l")
    assert set(vocab.idx_to_token) == {"<unk>", " ", "t", "i", "m", "e"}  # what is left: "time"
    result = invoke("corpus", russian_file, "--preprocess", "d2l")
    assert_ok(result)
    assert "Warning: 'd2l' preprocessing of" in result.stderr and "letters outside A-Z" in result.stderr


def test_windows_line_ends_become_newlines(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("один\r\nдва\rтри\n".encode("utf-8"))
    assert read_text(path) == "один\nдва\nтри\n"
    assert "\r" not in load_corpus(path)[1].token_to_idx


def test_prefixes_are_read_as_the_model_was_trained_and_changes_are_warned(russian_run):
    ckpt = load_checkpoint(russian_run)
    assert ckpt.config.sample_prefix == "Мальчик читает"  # the text's own first words
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw model keeps a Cyrillic prefix as it is: no warning
        sample = sample_text(ckpt, "девочка", 20, seed=1)
    assert sample.text.startswith("девочка") and sample.unknown == []
    with pytest.warns(CharrnnWarning, match=r"3 occurrences of 2 distinct tokens \('Z', 'z'\)"):
        assert sample_text(ckpt, "Zzz книгу", 5).unknown_count == 3
    probs = next_token_probs(ckpt, "Мальчик читает книг", top=3)
    state = None
    for token in ckpt.vocab[list("Мальчик читает книг")]:
        logits, state = ckpt.model.step(np.array([token]), state)
    softmax = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    top = np.argsort(-softmax)[:3]
    assert [t for t, _ in probs] == ckpt.vocab.to_tokens(top.tolist())
    np.testing.assert_allclose([p for _, p in probs], softmax[top], rtol=1e-5)
    book_like = invoke("sample", russian_run, "--prefix", "девочка", "--length", 5)
    assert_ok(book_like)
    assert book_like.stdout.startswith("девочка") and "Warning" not in book_like.stderr


def test_a_d2l_model_warns_when_it_changes_a_prefix(tmp_path, write_words):
    text = write_words(tmp_path / "words.txt", 400, seed=7)
    training.train(TrainConfig(corpus=str(text), preprocess="d2l", epochs=1, **TINY), tmp_path / "run")
    result = invoke("sample", tmp_path / "run", "--prefix", "привет Time 42", "--length", 5)
    assert_ok(result)
    assert "Warning: 'd2l' preprocessing changed the prefix 'привет Time 42' to ' time '" in result.stderr


def test_json_output_is_utf8_text(russian_file, russian_run):
    corpus = invoke("corpus", russian_file, "--json")
    assert_ok(corpus)
    assert "\\u" not in corpus.stdout and json.loads(corpus.stdout)["preprocess"] == "raw"
    assert "и" in corpus.stdout
    evaluation = invoke("evaluate", russian_run, russian_file, "--json")
    assert_ok(evaluation)
    assert str(russian_file) in evaluation.stdout and json.loads(evaluation.stdout)["perplexity"] > 1
