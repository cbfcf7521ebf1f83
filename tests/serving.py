"""Helpers of the tests of `charrnn serve`: two tiny trained runs, a real server started as
`python -m charrnn serve` on a free loopback port, and plain HTTP requests to it."""
import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from charrnn.training.config import TrainConfig
from charrnn.training.start import train

WORDS = "the time machine traveller said we go into future past strange don't it's".split()


def dialogue_text(num_lines=120, seed=3) -> str:
    """A text with quotations, apostrophes, parentheses and lines of ~60 characters."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(num_lines):
        words = list(rng.choice(WORDS, size=rng.integers(6, 11)))
        if rng.random() < 0.4:
            lines.append(f"'{' '.join(words[:5])},' he said, '{' '.join(words[5:])}.'")
        elif rng.random() < 0.3:
            lines.append(f"{' '.join(words[:3])} ({' '.join(words[3:])}) we go.")
        else:
            lines.append(" ".join(words) + ".")
    return "\n".join(lines) + "\n"


def train_runs(root: Path) -> list:
    """Two tiny runs on the dialogue text, raw preprocessing: a one-layer LSTM and a two-layer rnn."""
    text = root / "dialogue.txt"
    text.write_text(dialogue_text(), encoding="utf-8")
    runs = []
    for name, network in (("lstm", {"cell": "lstm", "num_layers": 1, "num_hiddens": 16}),
                          ("rnn2", {"cell": "rnn", "num_layers": 2, "num_hiddens": 12})):
        config = TrainConfig(corpus=str(text), preprocess="raw", batch_size=8, num_steps=16,
                                      epochs=2, eval_every=10**6, sample_length=10, **network)
        train(config, root / name, threads=1)
        runs.append(root / name)
    return runs


def snapshot(paths) -> dict:
    """Every file under the run directories -> (size, mtime_ns, sha1)."""
    files = {}
    for path in paths:
        for f in sorted(Path(path).rglob("*")):
            if f.is_file():
                stat = f.stat()
                files[str(f)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(f.read_bytes()).hexdigest())
    return files


class Server:
    """`python -m charrnn serve RUNS --port 0` in a subprocess; .host, .port once it listens."""

    def __init__(self, runs, *options):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "charrnn", "--threads", "1", "serve",
                                         *map(str, runs), "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if "http://" not in line:
            self.process.kill()
            raise AssertionError(f"the server did not start: {line}{self.process.stderr.read()}")
        address = line.split("http://")[1].split("/")[0]
        self.host, self.port = address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1])
        self.url = f"http://{self.host}:{self.port}/"

    def connection(self, timeout=30):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None) -> tuple:
        """-> (status, the JSON answer, headers)."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode("utf-8")
        conn = self.connection()
        try:
            conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def post(self, path, body) -> tuple:
        status, answer, _ = self.request("POST", path, body)
        return status, answer

    def events(self, body) -> tuple:
        """POST /api/generate -> (status, headers, [events])."""
        conn = self.connection()
        try:
            conn.request("POST", "/api/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            if response.status != 200:
                return response.status, {k.lower(): v for k, v in response.getheaders()}, [json.loads(text)]
            events = [json.loads(block[len("data: "):]) for block in text.split("\n\n") if block]
            return response.status, {k.lower(): v for k, v in response.getheaders()}, events
        finally:
            conn.close()

    def stop(self, sig=None, timeout=15) -> tuple:
        """Send `sig` (SIGINT unless given), wait -> (returncode, stdout, stderr)."""
        import signal
        self.process.send_signal(sig or signal.SIGINT)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        return self.process.returncode, out, err


def generated_text(events, sample=0) -> str:
    """The text of one sample of a generation stream: its prefix and chunks."""
    parts = [e.get("prefix", "") + e.get("text", "") for e in events if e.get("sample") == sample]
    return "".join(parts)


def wait_until(condition, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return False
