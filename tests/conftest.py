"""Shared fixtures. The real book comes from CHARRNN_DATA_DIR (CI: ../shared/corpora).

With CHARRNN_REQUIRE_CORPUS=1 a missing book fails the tests that need it instead of skipping.
"""
import os
from pathlib import Path

import pytest


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
