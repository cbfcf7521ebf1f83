"""Shared fixtures. The real book comes from CHARRNN_DATA_DIR (CI: ../shared/corpora).

With CHARRNN_REQUIRE_CORPUS=1 a missing book fails the tests that need it instead of skipping.
"""
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples on every run, so that a submission's result does not depend on
# the draw; a local run explores new ones each time.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def token_cache_dir(tmp_path_factory):
    """Token stores (charrnn.data.store) made by the tests go to a temporary directory (through
    CHARRNN_CACHE_DIR, which subprocesses inherit), never into the checkout."""
    previous = os.environ.get("CHARRNN_CACHE_DIR")
    os.environ["CHARRNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("tokens"))
    yield Path(os.environ["CHARRNN_CACHE_DIR"])
    if previous is None:
        del os.environ["CHARRNN_CACHE_DIR"]
    else:
        os.environ["CHARRNN_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding timemachine.txt, from CHARRNN_DATA_DIR."""
    env = os.environ.get("CHARRNN_DATA_DIR")
    if env and (Path(env) / "timemachine.txt").is_file():
        return Path(env)
    message = f"timemachine.txt not found in CHARRNN_DATA_DIR={env!r}"
    if os.environ.get("CHARRNN_REQUIRE_CORPUS") == "1":
        pytest.fail(message + " (CHARRNN_REQUIRE_CORPUS=1)")
    pytest.skip(message)


WORDS = "the time machine traveller said we go into future past strange".split()


@pytest.fixture(scope="session")
def write_words():
    """-> write(path, num_words, seed): a text of random lowercase words at path (returned);
    d2l preprocessing leaves such a text as it is."""
    import numpy as np

    def write(path, num_words, seed):
        words = np.random.default_rng(seed).choice(WORDS, size=num_words)
        path.write_text(" ".join(words), encoding="utf-8")
        return path

    return write
