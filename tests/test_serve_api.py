"""`charrnn serve` over real HTTP on loopback: the API's numbers are the model's, every hostile
request gets a 4xx JSON error, concurrent clients see only 200 or 429, the runs' files are
never written, Ctrl-C stops the server cleanly."""
import base64
import json
import signal
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training.checkpoint import load_checkpoint
from charrnn.infer.sample import next_token_probs, sample_text

from serving import Server, generated_text, snapshot, train_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(runs):
    before = snapshot(runs)
    server = Server(runs)
    server.files_before = before
    yield server
    server.stop()


TEXT = "'we go into the future,' he said (the time)"


def test_info_lists_the_runs_the_limits_and_the_features(server):
    status, info, _ = server.request("GET", "/api/info")
    assert status == 200
    assert [run["name"] for run in info["runs"]] == ["lstm", "rnn2"]
    assert info["runs"][0]["states"] == ["h", "c"] and info["runs"][1]["num_layers"] == 2
    assert info["limits"]["max_n"] == 8 and "inside quotes" in info["features"]


@pytest.mark.parametrize("run", ["lstm", "rnn2"])
def test_probs_are_those_of_sample_show_probs(server, runs, run):
    ckpt = load_checkpoint(runs[["lstm", "rnn2"].index(run)])
    status, answer = server.post("/api/probs", {"text": TEXT, "top": 10, "run": run})
    assert status == 200 and answer["run"] == run
    expected = next_token_probs(ckpt, TEXT, 10)
    assert [token for token, _ in answer["top"]] == [token for token, _ in expected]
    np.testing.assert_allclose([p for _, p in answer["top"]], [p for _, p in expected], rtol=1e-6)
    shown = CliRunner().invoke(cli.main, ["--threads", "1", "sample", str(ckpt.path), "--prefix", TEXT,
                                          "--show-probs", "10"])
    assert shown.exit_code == 0, shown.output
    for token, p in answer["top"]:  # the command's table: rank, repr(token), probability to 4 places
        assert f"{p:.4f}" in shown.stdout and repr(token) in shown.stdout


def test_typing_one_more_character_gives_the_numbers_of_reading_anew(server):
    for k in range(len(TEXT) - 5, len(TEXT) + 1):  # each keystroke's text starts with the last one
        status, typed = server.post("/api/probs", {"text": TEXT[:k], "top": 5})
        assert status == 200
    fresh = server.post("/api/probs", {"text": " " + TEXT, "top": 5})[1]  # a text never read before
    again = server.post("/api/probs", {"text": " " + TEXT, "top": 5})[1]
    assert typed["top"] == server.post("/api/probs", {"text": TEXT, "top": 5})[1]["top"]
    assert fresh == again


def reference_pass(model, ids):
    """The model's forward pass over the whole text at once -> states (T, L, S, H), logits (T, V)."""
    ws = model.workspace(1, len(ids))
    model.forward_segment(np.asarray(ids)[:, None], None, ws)
    states = [ws.hs[:, 1:, 0]] + ([ws.cs[:, 1:, 0]] if ws.cs is not None else [])
    return np.stack(states, axis=1).transpose(2, 0, 1, 3), model.logits(ws.top[:, 0])


@pytest.mark.parametrize("encoding", ["base64", "list"])
def test_activations_are_the_forward_pass_states_to_float32_rounding(server, runs, encoding):
    for k, run in enumerate(("lstm", "rnn2")):
        status, answer = server.post("/api/activations", {"text": TEXT, "run": run, "encoding": encoding})
        assert status == 200
        if encoding == "base64":
            states = np.frombuffer(base64.b64decode(answer["states"]), "<f4").reshape(answer["shape"])
        else:
            states = np.array(answer["states"], np.float32)
        ckpt = load_checkpoint(runs[k])
        expected, logits = reference_pass(ckpt.model, ckpt.vocab[list(TEXT)])
        model = ckpt.model
        assert states.shape == expected.shape == (len(TEXT), model.num_layers, model.num_states, model.num_hiddens)
        np.testing.assert_allclose(states, expected, atol=2e-6, rtol=1e-5)
        best = [ckpt.vocab.to_tokens(int(i)) for i in logits.argmax(axis=1)]
        assert [guesses[0][0] for guesses in answer["top"]] == best
        assert answer["tokens"] == list(TEXT) and set(answer["features"]) >= {"inside quotes", "vowel"}


def test_score_is_the_forward_loss_of_the_text(server, runs):
    ckpt = load_checkpoint(runs[0])
    status, answer = server.post("/api/score", {"text": TEXT})
    ids = np.array(ckpt.vocab[list(TEXT)])
    loss_sum, count, _ = ckpt.model.forward_loss(ids[None, :-1], ids[None, 1:])
    assert status == 200 and answer["predicted"] == count == len(TEXT) - 1
    assert answer["log_prob"] == pytest.approx(-loss_sum, rel=1e-5)


def test_streamed_generation_is_the_text_of_charrnn_sample_with_each_seed(server, runs):
    ckpt = load_checkpoint(runs[0])
    body = {"prefix": "we go", "length": 120, "temperature": 0.8, "top_k": 5, "seed": 11, "n": 2}
    status, headers, events = server.events(body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    assert sum("text" in e for e in events) > 2 * 2 and events[-1] == {"done": True}  # several chunks per sample
    for k in range(2):
        expected = sample_text(ckpt, "we go", 120, temperature=0.8, top_k=5, seed=11 + k).text
        assert generated_text(events, k) == expected


def test_a_client_that_leaves_a_stream_frees_its_generation_slot(server):
    for _ in range(6):  # more than max_generations (4): each slot must come back
        conn = server.connection()
        conn.request("POST", "/api/generate", json.dumps({"length": 2000, "n": 8}).encode())
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        conn.close()
    time.sleep(0.5)
    status, _, events = server.events({"length": 5})
    assert status == 200 and events[-1] == {"done": True}


HOSTILE = [
    ("/api/probs", b'{"text": "' + b"a" * 300_000 + b'"}', 413, "bytes"),
    ("/api/probs", json.dumps({"text": "a" * 10_001}).encode(), 413, "10,000"),
    ("/api/activations", json.dumps({"text": "a" * 2_001}).encode(), 413, "2,000"),
    ("/api/generate", json.dumps({"n": 10**9}).encode(), 413, "'n'"),
    ("/api/generate", json.dumps({"length": 10**9}).encode(), 413, "'length'"),
    ("/api/generate", json.dumps({"temperature": 0}).encode(), 400, "'temperature'"),
    ("/api/generate", json.dumps({"greedy": True, "top_k": 3}).encode(), 400, "greedy"),
    ("/api/generate", b'{"seed": -1}', 400, "'seed'"),
    ("/api/probs", b'{"text": "\xff\xfe"}', 400, "UTF-8"),
    ("/api/probs", b'{"text": "\\ud800"}', 400, "surrogate"),
    ("/api/probs", b'{"text": 5}', 400, "string"),
    ("/api/probs", b'{"text": "ab", "top": "3"}', 400, "integer"),
    ("/api/probs", b'{"text": "ab", "top": true}', 400, "integer"),
    ("/api/probs", b'{"text": "ab", "top": 0}', 400, "'top'"),
    ("/api/generate", b'{"temperature": NaN}', 400, "NaN"),
    ("/api/probs", b'["text"]', 400, "object"),
    ("/api/probs", b"[" * 50_000, 400, "JSON"),
    ("/api/probs", b"", 400, "JSON"),
    ("/api/probs", b'{"text": "ab", "run": "nope"}', 404, "nope"),
    ("/api/probs", b'{"text": "ab", "run": ["lstm"]}', 404, "run"),
    ("/api/probs", b'{"text": "ab", "extra": 1}', 400, "unknown field"),
    ("/api/probs", b'{"text": ""}', 422, "no tokens"),
    ("/api/score", b'{"text": "a"}', 422, "two tokens"),
    ("/api/activations", b'{"text": "ab", "encoding": "xml"}', 400, "encoding"),
]


@pytest.mark.parametrize("path, body, status, says", HOSTILE)
def test_a_hostile_request_gets_a_4xx_json_error(server, path, body, status, says):
    got, answer, _ = server.request("POST", path, body)
    assert (got, answer["status"]) == (status, status) and says in answer["error"]


@pytest.mark.parametrize("method, path, status", [("GET", "/../../etc/passwd", 404), ("GET", "/static/page.js", 404),
                                                  ("GET", "/api/probs", 405), ("DELETE", "/", 405)])
def test_no_route_serves_a_file_and_unknown_routes_answer_json(server, method, path, status):
    got, answer, _ = server.request(method, path)
    assert got == status and answer["status"] == status


def test_ten_clients_for_two_seconds_see_only_200_or_429(server):
    statuses, end = [], time.monotonic() + 2.0

    def client(k):
        conn = server.connection()
        while time.monotonic() < end:
            conn.request("POST", "/api/probs", json.dumps({"text": TEXT[: 10 + k], "top": 10}).encode())
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses and set(statuses) <= {200, 429} and statuses.count(200) > 10


def test_the_server_never_writes_a_file_of_its_runs(server, runs):
    assert server.events({"length": 10})[0] == 200
    assert snapshot(runs) == server.files_before


def test_ctrl_c_stops_the_server_cleanly_even_while_it_streams(runs):
    server = Server(runs[:1])
    conn = server.connection()
    conn.request("POST", "/api/generate", json.dumps({"length": 2000, "n": 8}).encode())
    assert conn.getresponse().status == 200
    code, out, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err and out.strip().endswith("stopped")


def test_serve_without_the_extra_says_which_in_one_line(runs, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    result = CliRunner().invoke(cli.main, ["serve", str(runs[0])])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "[serve]" in result.stderr and "pip install" in result.stderr


def test_a_port_in_use_is_one_line_and_exit_1(server, runs):
    result = CliRunner().invoke(cli.main, ["serve", str(runs[0]), "--port", str(server.port)])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
