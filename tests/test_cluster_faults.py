"""Dask peers that misbehave: a listener that accepts and never speaks,
a malformed address. One line within the connect timeout, no traceback after it."""
import socket
import subprocess
import threading
import time

import pytest

from charrnn.base.errors import CharrnnError
from charrnn.experiments.cluster import connect
from test_cli import charrnn_command


@pytest.fixture
def silent_peer():
    """The address of a TCP listener that accepts every connection and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_peer_that_accepts_and_never_speaks_is_given_up_on_at_the_timeout(silent_peer):
    outcome = {}

    def attempt():
        try:
            connect(silent_peer, timeout=2)
        except CharrnnError as err:
            outcome["error"] = str(err)

    trying = threading.Thread(target=attempt, daemon=True)
    start = time.monotonic()
    trying.start()
    trying.join(10)  # a test that must not hang where charrnn would
    assert not trying.is_alive() and time.monotonic() - start < 3, "still waiting"
    assert "no answer within 2 s" in outcome["error"] and "\n" not in outcome["error"]


@pytest.mark.parametrize("address", ["tcp://[bad", "silent"])
def test_a_bad_scheduler_is_one_line_with_no_traceback_after_it(tmp_path, silent_peer, address, write_words):
    address = silent_peer if address == "silent" else address
    text = write_words(tmp_path / "words.txt", 3000, seed=1)
    start = time.monotonic()
    done = subprocess.run([charrnn_command(), "compare", str(text), "--max-tokens", "100", "--scheduler", address,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: cannot reach the Dask scheduler")
    assert time.monotonic() - start < 15  # start-up and the 5 s timeout; not 140 s or a 10 s close
