"""Fuzzing the CLI: random corpora and random options for corpus, train, sample and
evaluate. Whatever comes in: exit code 0, 1 or 2, no traceback, an error on one line, and no
file written outside --out."""
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import click
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charrnn import cli
from charrnn.cli.options import Clip, Truncation

WORDS = "the time machine traveller said we go into future past strange".split()
SMALL = ["--num-hiddens", "8", "--batch-size", "2", "--num-steps", "4"]  # given first: fuzzed values win
TRAIN_BUDGET = ["--max-tokens", "256"]  # given last, so it wins: every run stays tiny
NOT_FUZZED = {"--out", "--resume", "--data-dir", "--cache-dir"}  # paths: the test chooses them

texts = st.lists(st.sampled_from(WORDS), min_size=30, max_size=150).map(lambda words: " ".join(words).encode())
corpora = st.one_of(  # texts that train, more often than not
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    texts, texts, texts,
    st.tuples(texts, st.binary(max_size=8), texts).map(b"".join),
)
numbers = st.one_of(st.floats(), st.floats(0, 1), st.integers(-3, 3)).map(str)
malformed = st.sampled_from(["", "x", "1.5", "inf", "nan", "-1"])


def values_for(option):
    """Values around what `option` accepts, from its declaration; about 1 in 8 malformed."""
    kind = option.type
    if isinstance(kind, click.Choice):
        return st.sampled_from([*kind.choices * 7, "no-such-choice"])
    if isinstance(kind, click.IntRange):
        low = kind.min if kind.min is not None else 0
        valid = st.integers(low, low + 12).map(str)
    elif isinstance(kind, click.FloatRange):
        valid = numbers
    elif isinstance(kind, Truncation):
        valid = st.one_of(st.just("full"), st.tuples(st.sampled_from(["regular", "randomized"]), numbers).map(":".join))
    elif isinstance(kind, Clip):
        valid = st.one_of(st.just("none"), numbers)
    else:
        valid = st.text(max_size=12)
    return st.one_of(*[valid] * 7, malformed)


def options_of(command):
    """-> a strategy of argument lists: a random subset of `command`'s options, random values."""
    choices = []
    for option in cli.main.commands[command].params:
        if not isinstance(option, click.Option) or option.opts[0] in NOT_FUZZED:
            continue
        name = st.sampled_from(option.opts)
        if option.is_flag:
            choices.append(name.map(lambda n: [n]))
        else:
            choices.append(st.tuples(name, values_for(option)).map(list))
    unknown = st.sampled_from([["--no-such-option"], ["-Z", "1"]])
    return st.lists(st.one_of(*choices * 6, unknown), max_size=4).map(lambda pairs: [a for pair in pairs for a in pair])


def files_under(directory):
    return {p.relative_to(directory) for p in directory.rglob("*")}


def check(result):
    """The CLI's promise, whatever the input."""
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "this is a bug in charrnn" not in result.stderr, result.stderr  # the last line of defence, reached
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    if result.exit_code == 1:
        assert len(errors) == 1 and result.stderr.rstrip("\n").split("\n")[-1] == errors[0], result.stderr
    if result.exit_code == 2:
        assert len(errors) == 1, result.stderr


@contextmanager
def working_directory(path):
    """Run the block in `path` (so a relative --out lands there), then go back."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield Path(path)
    finally:
        os.chdir(previous)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora, corpus_options=options_of("corpus"), train_options=options_of("train"),
       sample_options=options_of("sample"), evaluate_options=options_of("evaluate"))
def test_random_corpora_and_options(corpus, corpus_options, train_options, sample_options, evaluate_options):
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp, working_directory(tmp) as cwd, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's warnings would be noise on stderr
        text = cwd / "corpus.txt"
        text.write_bytes(corpus)
        check(runner.invoke(cli.main, ["corpus", str(text), *corpus_options]))
        trained = runner.invoke(cli.main, ["train", str(text), *SMALL, *train_options, *TRAIN_BUDGET, "--out", "out"])
        check(trained)
        event(f"train exit code {trained.exit_code}")
        if trained.exit_code == 0:
            check(runner.invoke(cli.main, ["sample", "out", *sample_options]))
            check(runner.invoke(cli.main, ["evaluate", "out", str(text), *evaluate_options]))
        written = {path for path in files_under(cwd) if path.parts[0] != "out"}
        assert written == {Path("corpus.txt")}, written
        assert text.read_bytes() == corpus
