"""Export to PyTorch: the safetensors file loads into nn.RNN/GRU/LSTM + nn.Linear and
gives charrnn's logits, and charrnn's BPTT gradients equal PyTorch autograd's.

PyTorch is a test dependency installed by CI (.ci/run: torch==2.13.0); where CI is set a missing
torch fails these tests, elsewhere they are skipped.
"""
import json
import os

import numpy as np
import pytest

from charrnn.nn.cells import layer_suffix
from charrnn.data.corpus import Vocab
from charrnn.base.errors import CharrnnError
from charrnn.infer.export import FORMAT, TORCH_MODULES, export_model, read_export, torch_state_dict
from charrnn.nn.model import RNNLM

if os.environ.get("CI"):
    import torch  # noqa: F401  CI installs torch: its absence is a failure there, not a skip
else:
    torch = pytest.importorskip("torch")

CELLS = ("rnn", "gru", "lstm")
V, H, B, T = 7, 5, 3, 6


def vocab_of(size):
    return Vocab("abcdefghijklmnopqrstuvwxyz"[:size - 1])


def scrambled_model(cell, num_layers, dtype, seed=0):
    """A model whose every parameter (biases too) is drawn from N(0, 0.5²), so that a wrong
    name, transpose or gate block in the mapping changes the numbers a lot."""
    model = RNNLM(V, H, dtype=dtype, seed=seed, cell=cell, num_layers=num_layers)
    rng = np.random.default_rng(seed + 1)
    for array in model.params.values():
        array[...] = rng.normal(0.0, 0.5, array.shape)
    return model


def window(seed, steps=T):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (B, steps + 1))
    return tokens[:, :-1], tokens[:, 1:]


def torch_model(path, dtype):
    """The README's loading code (README.md, charrnn export): the file -> (recurrent net, decoder)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = {key: json.loads(value) for key, value in f.metadata().items()}
    vocab_size, hiddens = len(meta["vocab"]), meta["num_hiddens"]
    rnn = getattr(torch.nn, TORCH_MODULES[meta["cell"]])(
        vocab_size, hiddens, meta["num_layers"], batch_first=True, dtype=dtype)
    decoder = torch.nn.Linear(hiddens, vocab_size, dtype=dtype)
    decoder.load_state_dict({"weight": tensors.pop("decoder.weight"), "bias": tensors.pop("decoder.bias")})
    rnn.load_state_dict(tensors)
    return rnn, decoder


def torch_logits(rnn, decoder, X, state=None):
    inputs = torch.nn.functional.one_hot(torch.from_numpy(X).long(), decoder.out_features).to(decoder.weight.dtype)
    outputs, state = rnn(inputs, state)
    return decoder(outputs), state


def detached(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


# ----------------------------------------------------------------------------- the file


def test_file_holds_pytorch_names_and_json_settings(tmp_path):
    model = scrambled_model("gru", 2, "float32")
    path = export_model(model, vocab_of(V), tmp_path / "m.safetensors", level="char", preprocess="raw")
    tensors, settings = read_export(path)
    assert sorted(tensors) == sorted(
        [f"{kind}_{side}_l{layer}" for kind in ("weight", "bias") for side in ("ih", "hh") for layer in (0, 1)]
        + ["decoder.weight", "decoder.bias"])
    assert tensors["weight_ih_l0"].shape == (3 * H, V) and tensors["weight_ih_l1"].shape == (3 * H, H)
    assert tensors["decoder.weight"].shape == (V, H) and tensors["weight_hh_l1"].dtype == np.float32
    np.testing.assert_array_equal(tensors["weight_hh_l1"], model.params["W_hh_l1"].T)
    np.testing.assert_array_equal(tensors["bias_hh_l1"][:2 * H], 0)
    np.testing.assert_array_equal(tensors["bias_hh_l1"][2 * H:], model.params["b_hn_l1"])
    assert settings == {"format": FORMAT, "format_version": 1, "cell": "gru", "num_layers": 2, "num_hiddens": H,
                        "vocab_size": V, "activation": "tanh", "dropout": 0.0, "dtype": "float32",
                        "vocab": vocab_of(V).idx_to_token, "level": "char", "preprocess": "raw"}


def test_export_refuses_a_path_that_is_not_safetensors_or_cannot_be_written(tmp_path):
    model, vocab = scrambled_model("rnn", 1, "float32"), vocab_of(V)
    (tmp_path / "best.npz").write_bytes(b"precious")
    with pytest.raises(CharrnnError, match=r"must end in \.safetensors"):
        export_model(model, vocab, tmp_path / "best.npz")
    assert (tmp_path / "best.npz").read_bytes() == b"precious"
    with pytest.raises(CharrnnError, match="does not exist"):
        export_model(model, vocab, tmp_path / "missing" / "m.safetensors")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(CharrnnError, match="is a directory"):
        export_model(model, vocab, tmp_path / "d.safetensors")
    with pytest.raises(CharrnnError, match="vocabulary of 3 tokens"):
        export_model(model, vocab_of(3), tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "d.safetensors"]


def test_a_linear_rnn_is_refused_since_pytorch_has_no_such_cell():
    with pytest.raises(CharrnnError, match="no 'linear' activation"):
        torch_state_dict(RNNLM(V, H, activation="linear"))


def test_read_export_refuses_other_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CharrnnError, match="not a readable safetensors"):
        read_export(tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- against PyTorch


@pytest.mark.parametrize("cell", CELLS)
def test_pytorch_loads_a_two_layer_export_and_gives_the_same_logits(cell, tmp_path):
    model = scrambled_model(cell, 2, "float32")
    path = export_model(model, vocab_of(V), tmp_path / f"{cell}.safetensors")
    rnn, decoder = torch_model(path, torch.float32)
    X, _ = window(1, steps=20)
    state, ours = None, []
    for t in range(X.shape[1]):
        logits, state = model.step(X[:, t], state)
        ours.append(logits)
    with torch.no_grad():
        theirs, _ = torch_logits(rnn, decoder, X)
    assert np.abs(np.stack(ours, axis=1)).max() > 0.3  # the numbers are not all near zero
    np.testing.assert_allclose(np.stack(ours, axis=1), theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_bptt_gradients_equal_pytorch_autograd_in_float64(cell, num_layers, with_state, tmp_path):
    """Full BPTT, dropout 0. With a state: both networks first run a warm-up window from zeros,
    and each carries its own final state (charrnn's state format, PyTorch's h_n or (h_n, c_n))
    into the window whose gradient is compared; no gradient flows into that state. The states
    at the end of the window agree too."""
    model = scrambled_model(cell, num_layers, "float64", seed=3)
    path = export_model(model, vocab_of(V), tmp_path / "m.safetensors")
    rnn, decoder = torch_model(path, torch.float64)
    X, Y = window(2)
    state = torch_state = None
    if with_state:
        X0, Y0 = window(5, steps=4)
        _, _, state = model.loss_and_grads(X0, Y0)
        with torch.no_grad():
            _, torch_state = torch_logits(rnn, decoder, X0)
        torch_state = detached(torch_state)
    loss, grads, state = model.loss_and_grads(X, Y, state)
    logits, torch_state = torch_logits(rnn, decoder, X, torch_state)
    torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(Y).reshape(-1).long())
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    state = np.reshape(state, (num_layers, model.num_states, B, H))  # (B, H) for one rnn/gru layer
    torch_state = torch_state if cell == "lstm" else (torch_state,)
    for part, torch_part in enumerate(torch_state):  # h_n (and c_n), (num_layers, B, H)
        np.testing.assert_allclose(state[:, part], torch_part.detach().numpy(), rtol=1e-12, atol=1e-14)
    expected = torch_state_dict(_with_params(model, grads))
    theirs = {name: p.grad.numpy() for name, p in rnn.named_parameters()}
    theirs.update({f"decoder.{name}": p.grad.numpy() for name, p in decoder.named_parameters()})
    for layer in range(num_layers):
        # bias_ih and bias_hh enter the same sums, so their gradients are both charrnn's b_h's,
        # except the GRU candidate's hidden-side bias, which is b_hn
        hidden_bias = grads["b_h" + layer_suffix(layer)].copy()
        if cell == "gru":
            hidden_bias[2 * H:] = grads["b_hn" + layer_suffix(layer)]
        expected[f"bias_hh_l{layer}"] = hidden_bias
    assert sorted(expected) == sorted(theirs)
    for name, grad in theirs.items():
        assert np.abs(grad).max() > 1e-6, name  # a gradient that is there to compare
        np.testing.assert_allclose(expected[name], grad, rtol=1e-9, atol=1e-12, err_msg=name)


def _with_params(model, values):
    """A stand-in for `model` whose params are `values` (e.g. gradients), for torch_state_dict."""
    clone = RNNLM(model.vocab_size, model.num_hiddens, dtype=model.dtype, cell=model.cell,
                  num_layers=model.num_layers)
    for name, array in values.items():
        clone.params[name][...] = array
    return clone


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, write_words):
    """A finished tiny training run of a 2-layer GRU on a text of random words, raw preprocessing."""
    from charrnn.training.config import TrainConfig
    from charrnn.training.start import train

    folder = tmp_path_factory.mktemp("export")
    text = write_words(folder / "words.txt", 300, seed=3)
    config = TrainConfig(corpus=str(text), preprocess="raw", cell="gru", num_layers=2, num_hiddens=8,
                         batch_size=4, num_steps=8, epochs=1, eval_every=10_000, sample_length=0)
    train(config, folder / "run")
    return folder / "run"


def invoke(*args):
    from click.testing import CliRunner

    from charrnn import cli

    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_export_command_writes_what_pytorch_loads(run_dir, tmp_path):
    from charrnn.training.checkpoint import load_checkpoint

    result = invoke("export", run_dir, tmp_path / "m.safetensors")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "gru, 2 layer(s) of 8" in result.output and "torch.nn.GRU + torch.nn.Linear" in result.output
    ckpt = load_checkpoint(run_dir)
    rnn, decoder = torch_model(tmp_path / "m.safetensors", torch.float32)
    X = np.arange(12).reshape(2, 6) % ckpt.model.vocab_size
    with torch.no_grad():
        theirs, _ = torch_logits(rnn, decoder, X)
    state, ours = None, []
    for t in range(X.shape[1]):
        logits, state = ckpt.model.step(X[:, t], state)
        ours.append(logits)
    np.testing.assert_allclose(np.stack(ours, axis=1), theirs.numpy(), rtol=1e-5, atol=1e-6)
    assert read_export(tmp_path / "m.safetensors")[1]["vocab"] == ckpt.vocab.idx_to_token


@pytest.mark.parametrize("make_input,out,says", [
    (lambda d, run: d / "notes.txt", "m.safetensors", "not a charrnn checkpoint"),
    (lambda d, run: run, "missing/m.safetensors", "missing does not exist"),
    (lambda d, run: run, "notes.txt/m.safetensors", "notes.txt is not a folder"),
    (lambda d, run: run, "m.npz", "must end in .safetensors"),
    (lambda d, run: run / "best.npz", "best.npz", "must end in .safetensors"),
])
def test_export_command_errors_are_one_line(run_dir, tmp_path, make_input, out, says):
    (tmp_path / "notes.txt").write_text("some notes", encoding="utf-8")
    source = make_input(tmp_path, run_dir)
    before = source.read_bytes() if source.is_file() else None
    result = invoke("export", source, (run_dir if out == "best.npz" else tmp_path) / out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and says in result.stderr
    assert before is None or source.read_bytes() == before


def test_a_failed_write_is_a_one_line_error_and_leaves_no_file(run_dir, tmp_path, monkeypatch):
    import charrnn.base.io

    def refuse(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return open_(path, mode, *args, **kwargs)

    open_ = open
    monkeypatch.setattr(charrnn.base.io, "open", refuse, raising=False)
    result = invoke("export", run_dir, tmp_path / "m.safetensors")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "cannot write" in result.stderr and "Permission denied" in result.stderr
    assert list(tmp_path.iterdir()) == []
