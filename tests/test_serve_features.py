"""What `charrnn serve` computes without a server: the text features, the correlation ranking
that finds a unit following a feature, the page file, `charrnn activations`, the limits."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.training.checkpoint import load_checkpoint
from charrnn.serve.features import rank_units, text_features
from charrnn.serve.limits import Fields, Limits, RequestError, parse_body
from charrnn.serve.page import render_page
from charrnn.cli.serving import is_loopback

from serving import train_runs


def test_quotes_toggle_on_quote_marks_but_not_on_apostrophes_and_end_at_a_blank_line():
    text = "a 'don't go,' he said \"no\" 'open\n\nx"
    inside = text_features(list(text))["inside quotes"]
    marked = "".join("1" if v else "0" for v in inside)
    assert marked == "00111111111100000000001110011111100"
    assert inside[text.index("don't") + 3] == 1  # the apostrophe of don't keeps the quotation open


def test_parentheses_position_in_line_spaces_and_vowels():
    features = text_features(list("ab (c)\nde f"))
    assert features["inside parentheses"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert features["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]
    assert features["after a space"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    assert features["vowel"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]


def test_the_ranking_finds_a_unit_planted_to_follow_a_feature():
    text = list("said 'go on,' then 'stop' and (so) 'on'.\n" * 3)
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, size=(len(text), 2, 2, 8)).astype(np.float32)
    quotes = text_features(text)["inside quotes"]
    states[:, 1, 1, 5] = np.tanh(2 * quotes - 1 + 0.1 * rng.standard_normal(len(text)))
    ranked = rank_units(text, states, ["h", "c"])
    best = ranked["inside quotes"]["units"][0]
    assert (best["layer"], best["state"], best["unit"]) == (1, "c", 5) and best["r"] > 0.9
    assert ranked["inside quotes"]["r"][(1 * 2 + 1) * 8 + 5] == best["r"]


def test_a_feature_that_does_not_vary_ranks_no_unit():
    ranked = rank_units(list("abc"), np.ones((3, 1, 1, 4), np.float32), ["h"])
    assert ranked["inside quotes"] == {"varies": False, "units": [], "r": [None] * 4}


def test_the_page_needs_no_network_and_its_data_cannot_close_the_script():
    live = render_page()
    assert "http" not in live and "/*SCRIPT*/" not in live and "<script src" not in live
    hostile = render_page({"tokens": ["</script><script>alert(1)</script>", "<!--"]})
    assert hostile.count("</script>") == live.count("</script>")
    embedded = hostile.split('type="application/json">')[1].split("</script>")[0]
    assert json.loads(embedded)["tokens"][0] == "</script><script>alert(1)</script>"


def test_request_fields_are_checked_against_the_limits():
    limits = Limits(max_text_chars=5)
    fields = Fields(parse_body(b'{"text": "abc", "n": 2}', limits), limits)
    assert fields.text("text", limits.max_text_chars) == "abc" and fields.integer("n", 1, 1, 8) == 2
    fields.done()
    with pytest.raises(RequestError) as err:
        Fields({"text": "abcdef"}, limits).text("text", limits.max_text_chars)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        parse_body(b"x" * (limits.max_body_bytes + 1), limits)
    assert err.value.status == 413


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("example.org", False)])
def test_only_loopback_addresses_count_as_local(host, loopback):
    assert is_loopback(host) is loopback


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("runs"))[0]


def test_activations_npz_holds_the_tokens_and_every_state_per_layer(run_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("'we go,' he said.", encoding="utf-8")
    out, npz = tmp_path / "view.html", tmp_path / "states.npz"
    result = CliRunner().invoke(cli.main, ["activations", str(run_dir), "--text", str(text), "--out", str(out),
                                           "--npz", str(npz)])
    assert result.exit_code == 0, result.output
    with np.load(npz) as arrays:
        assert arrays["tokens"].tolist() == list(text.read_text())
        h, c = arrays["layer0_h"], arrays["layer0_c"]
    ckpt = load_checkpoint(run_dir)
    state = None
    for k, token in enumerate(ckpt.vocab[list(text.read_text())]):
        _, state = ckpt.model.step(np.array([token]), state)
        np.testing.assert_array_equal(state.reshape(2, -1), np.stack([h[k], c[k]]))
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")


@pytest.mark.parametrize("args, says", [(["--out", "x.html", "--text", "missing.txt"], "missing.txt"),
                                        (["--text", "TEXT"], "--out"),
                                        (["--text", "BINARY", "--out", "x.html"], "not UTF-8"),
                                        (["--text", "TEXT", "--out", "x.html", "--max-chars", "3"], "--max-chars")])
def test_activations_refuses_bad_input_in_one_line(run_dir, tmp_path, args, says):
    (tmp_path / "text.txt").write_text("some text", encoding="utf-8")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00abc")
    paths = {"TEXT": str(tmp_path / "text.txt"), "BINARY": str(tmp_path / "binary.bin")}
    result = CliRunner().invoke(cli.main, ["activations", str(run_dir), *[paths.get(a, a) for a in args]])
    assert result.exit_code in (1, 2) and says in result.stderr and "Traceback" not in result.output
