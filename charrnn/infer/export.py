"""Export a model's weights to PyTorch: a safetensors file under the names of nn.RNN/GRU/LSTM.

The file holds, for every layer l = 0 .. num_layers-1 of the recurrent network (the names of
the parameters of a PyTorch `nn.RNN`, `nn.GRU` or `nn.LSTM`, whose state_dict it loads into):

    weight_ih_l{l}  (G·H, I)  = W_xh_l{l}ᵀ     I = V (one-hot tokens) for l = 0, H above
    weight_hh_l{l}  (G·H, H)  = W_hh_l{l}ᵀ
    bias_ih_l{l}    (G·H,)    = b_h_l{l}
    bias_hh_l{l}    (G·H,)    = 0, except the GRU's candidate block [2H:3H] = b_hn_l{l}

and the output layer, the state_dict of an `nn.Linear(H, V)` under the prefix "decoder.":

    decoder.weight  (V, H)    = W_hqᵀ
    decoder.bias    (V,)      = b_q

(charrnn's names: layer 0 has no suffix, W_xh; layer l >= 1 is W_xh_l{l}.) G = 1, 3, 4 for
rnn, gru, lstm; the gates inside a fused matrix are in PyTorch's order, GRU [r|z|n] and LSTM
[i|f|g|o], so the blocks copy across unchanged. The transposes turn charrnn's row-vector
products (x W_xh) into PyTorch's (W x). PyTorch adds two biases where charrnn has one; every
pre-activation takes their sum, so b_h goes into bias_ih and zeros into bias_hh — except for
the GRU's candidate n = tanh(x W_xn + b_xn + r ⊙ (h W_hn + b_hn)), whose hidden-side bias sits
inside the reset gate's product and is PyTorch's bias_hh block n.

The file's metadata (safetensors allows strings only) maps each key to a JSON-encoded value:
format "charrnn-export", format_version 1, cell, num_layers, num_hiddens, vocab_size,
activation, dropout, dtype, and the vocabulary `vocab` (the list of tokens, index order,
"<unk>" first) with `level` and `preprocess`, which say how to turn text into those tokens.
Dropout (training only) and the state are not part of the weights; a PyTorch model built with
dropout 0 and evaluated gives charrnn's logits.
"""
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from charrnn.base.errors import CharrnnError
from charrnn.base.io import write_atomic
from charrnn.nn.cells import layer_suffix

FORMAT = "charrnn-export"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
TORCH_MODULES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}  # cell -> torch.nn class name
OUTPUT_PREFIX = "decoder."


def torch_state_dict(model) -> dict:
    """The model's parameters under PyTorch's names -> {name: C-contiguous ndarray}, in the
    model's dtype (see the module docstring for the mapping)."""
    if model.cell == "rnn" and model.activation != "tanh":
        raise CharrnnError(f"PyTorch's nn.RNN has no {model.activation!r} activation "
                           f"(tanh or relu); only tanh models can be exported")
    params, H = model.params, model.num_hiddens
    tensors = {}
    for layer in range(model.num_layers):
        suffix = layer_suffix(layer)
        b_h = params["b_h" + suffix]
        bias_hh = np.zeros_like(b_h)
        if model.cell == "gru":
            bias_hh[2 * H:] = params["b_hn" + suffix]
        tensors[f"weight_ih_l{layer}"] = params["W_xh" + suffix].T
        tensors[f"weight_hh_l{layer}"] = params["W_hh" + suffix].T
        tensors[f"bias_ih_l{layer}"] = b_h
        tensors[f"bias_hh_l{layer}"] = bias_hh
    tensors[OUTPUT_PREFIX + "weight"] = params["W_hq"].T
    tensors[OUTPUT_PREFIX + "bias"] = params["b_q"]
    return {name: np.ascontiguousarray(array) for name, array in tensors.items()}


def export_metadata(model, vocab, level="char", preprocess="d2l") -> dict:
    """The file's metadata: key -> JSON text (see the module docstring)."""
    if len(vocab) != model.vocab_size:
        raise CharrnnError(f"a vocabulary of {len(vocab)} tokens for a model of {model.vocab_size}")
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "cell": model.cell,
                "num_layers": model.num_layers, "num_hiddens": model.num_hiddens,
                "vocab_size": model.vocab_size, "activation": model.activation,
                "dropout": model.dropout, "dtype": model.dtype.name,
                "vocab": list(vocab.idx_to_token), "level": level, "preprocess": preprocess}
    return {key: json.dumps(value) for key, value in settings.items()}


def export_model(model, vocab, path, level="char", preprocess="d2l", force=False) -> Path:
    """Write the model's weights and settings to the safetensors file `path` -> path.

    The path must end in .safetensors (so that a checkpoint or a text is never overwritten by
    mistake) and name nothing yet (a file, a symlink, a FIFO) unless `force`; the file is
    written atomically, whole or not at all.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise CharrnnError(f"the export file must end in {SUFFIX}, got {path}")
    if path.is_dir():
        raise CharrnnError(f"{path} is a directory; give a file name ending in {SUFFIX}")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise CharrnnError(f"cannot write {path}: {path.parent} {problem}")
    if os.path.lexists(path) and not force:
        raise CharrnnError(f"{path} exists; give --force to replace it")
    data = save(torch_state_dict(model), metadata=export_metadata(model, vocab, level, preprocess))
    try:
        write_atomic(path, lambda f: f.write(data))
    except OSError as err:
        raise CharrnnError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def read_export(path) -> tuple:
    """A file written by export_model -> (tensors: {name: ndarray}, settings: {key: value})."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        settings = {key: json.loads(value) for key, value in metadata.items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CharrnnError(f"{path} is not a readable safetensors file ({err})") from None
    if settings.get("format") != FORMAT:
        raise CharrnnError(f"{path} is not a charrnn export (format {settings.get('format')!r})")
    return tensors, settings
