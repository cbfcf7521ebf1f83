"""Fuzzing a sweep's directory: the sibling of the checkpoint-bytes fuzz. Files of a
finished sweep are damaged, deleted, replaced by hostile JSON or by a directory; the same sweep
run again must report every run with its true numbers, name it failed or interrupted, or refuse
in one line; never a traceback, never a number read from a damaged record."""
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.base.errors import CharrnnError
from charrnn.experiments.compare import compare
from charrnn.experiments.sweep import SerialBackend
from charrnn.training.outdir import BEST, CHECKPOINT, CONFIG, METRICS, VOCAB
from test_compare import tiny_config

TRUNCATIONS = ("full", "regular:2")
FILES = [METRICS, "grad_norms.json", CONFIG, VOCAB, CHECKPOINT, BEST]
HOSTILE_JSON = [b"NaN", b"[" * 100_000, b'{"tokens": 720, "val_ppl": NaN}', b'{"tokens": 1e999}', b"\xff\xfe",
                b'{"step": 10, "sum": 1e308, "count": -1}', b'{"tokens": ' + b"9" * 5000 + b"}", b""]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, write_words):
    directory = tmp_path_factory.mktemp("sweep")
    text = write_words(directory / "words.txt", 300, seed=3)
    comparison, interrupted = compare(tiny_config(text), directory / "cmp", TRUNCATIONS)
    assert not interrupted and not comparison.failed
    return text, directory / "cmp", {s.name: (s.final_val_ppl, s.best_val_ppl) for s in comparison.summaries}


damages = st.one_of(
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("directory"), st.none()),
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("append"), st.sampled_from(HOSTILE_JSON)),
    st.tuples(st.just("replace"), st.sampled_from(HOSTILE_JSON)),
)


def damage(path, kind, how):
    content = path.read_bytes()
    if kind in ("delete", "directory"):
        path.unlink()
        if kind == "directory":
            path.mkdir()
    elif kind == "cut":
        path.write_bytes(content[: int(how * len(content))])
    elif kind == "flip":
        damaged = bytearray(content)
        for where, mask in how:
            damaged[min(int(where * len(damaged)), len(damaged) - 1)] ^= mask
        path.write_bytes(bytes(damaged))
    else:
        path.write_bytes((content if kind == "append" else b"") + how + b"\n")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(run=st.sampled_from(["full-seed0", "regular-2-seed0"]), name=st.sampled_from(FILES), change=damages)
def test_fuzzed_sweep_directories_never_crash_or_report_a_damaged_run(tmp_path_factory, finished, run, name, change):
    text, original, truth = finished
    out = tmp_path_factory.mktemp("fuzzed") / "cmp"
    shutil.copytree(original, out)
    damage(out / run / name, *change)
    try:
        comparison, interrupted = compare(tiny_config(text), out, TRUNCATIONS, backend=SerialBackend())
    except CharrnnError as err:  # a refusal of the whole sweep, in one line
        assert "\n" not in str(err)
        return
    reported = {s.name: (s.final_val_ppl, s.best_val_ppl) for s in comparison.summaries}
    for name_, numbers in reported.items():
        assert numbers == truth[name_], (name_, numbers, truth[name_])
    missing = set(truth) - set(reported)
    assert missing <= set(comparison.failed) | set(comparison.interrupted), (missing, comparison.failed)
    assert all("\n" not in message for message in comparison.failed.values())
    json.dumps(comparison.failed)
