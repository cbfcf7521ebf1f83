"""The files of a run: the model file format and the training checkpoint, one save/load pair each.

A model file is an `.npz` (charrnn.io, no pickle) holding the parameters by name and JSON
metadata that describes the model (MODEL_FORMAT, its version, sizes, cell, layers, dropout,
activation, dtype). Version 2 records cell, num_layers and dropout; a version-1 file (before
gated cells) is read as the one-layer rnn it is. A
training checkpoint is a model file with more: the optimizer's arrays ("optim.<slot>.<param>")
and the state carried by the sequential sampler (STATE_KEY), and in the metadata the vocabulary,
the TrainConfig, the Progress, the optimizer's counters, the states of the truncation and
dropout Generators and the SHA-1 of the training tokens. `save_checkpoint` writes exactly the keys `load_checkpoint`
reads back and checks whole.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .checks import is_finite, is_integer
from .config import TrainConfig
from .data import Vocab
from .errors import CharrnnError
from .io import load_npz, save_npz
from .model import ACTIVATIONS, CELLS, DTYPES, RNNLM
from .optim import make_optimizer

# the files of a run directory
CHECKPOINT = "checkpoint.npz"  # the latest state of a run, what --resume continues
BEST = "best.npz"  # the state with the lowest validation perplexity so far
CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"

MODEL_FORMAT = "charrnn-model"
MODEL_FORMAT_VERSION = 2  # 2: cell, num_layers, dropout recorded; 1: a one-layer rnn
MODEL_FORMAT_VERSIONS = (1, 2)  # the versions load_model reads
NETWORK_V1 = {"cell": "rnn", "num_layers": 1, "dropout": 0.0}  # what a version-1 file holds
STATE_KEY = "carried_state"  # hidden state carried into the next minibatch (sequential)


# ----------------------------------------------------------------------------- model files

def model_meta(model) -> dict:
    """The metadata that describes `model` in a file."""
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "vocab_size": model.vocab_size, "num_hiddens": model.num_hiddens,
            "cell": model.cell, "num_layers": model.num_layers, "dropout": model.dropout,
            "activation": model.activation, "dtype": model.dtype.name}


def save_model(model, path, extra_arrays=None, extra_meta=None) -> None:
    """Write the model's params and metadata (plus the caller's extras) atomically to a .npz file."""
    arrays, meta = dict(extra_arrays or {}), dict(extra_meta or {})
    described = model_meta(model)
    clash = sorted(set(arrays) & set(model.params) | set(meta) & set(described))
    if clash:
        raise CharrnnError(f"extra arrays/metadata may not use the model's names {clash}")
    save_npz(path, {**arrays, **model.params}, {**meta, **described})


def load_model_with_extras(path) -> tuple:
    """Read a file written by save_model() -> (model, extra_arrays, extra_meta).

    Refuses (CharrnnError) a file that is not a charrnn model, has missing arrays, shapes
    or dtypes that disagree with its metadata, or non-finite parameters.
    """
    arrays, meta = load_npz(path)
    model = RNNLM(**check_model_meta(path, meta))
    for name, shape in model.param_shapes().items():
        array = arrays.pop(name, None)
        if array is None:
            raise CharrnnError(f"{path}: model file has no array {name!r}")
        if array.shape != shape or array.dtype != model.dtype:
            raise CharrnnError(
                f"{path}: {name} is {array.dtype.name} {array.shape}, "
                f"expected {model.dtype.name} {shape}")
        if not np.all(np.isfinite(array)):
            raise CharrnnError(f"{path}: {name} holds non-finite values")
        model.params[name][...] = array
    stray = sorted(name for name in arrays if name.startswith(("W_", "b_")))
    if stray:
        raise CharrnnError(f"{path}: arrays {stray} belong to no {model.num_layers}-layer {model.cell} "
                           f"network: its metadata and its arrays disagree")
    described = model_meta(model)
    extra_meta = {key: value for key, value in meta.items() if key not in described}
    return model, arrays, extra_meta


def load_model(path) -> RNNLM:
    """Read a model written by save_model()."""
    return load_model_with_extras(path)[0]


def check_model_meta(path, meta) -> dict:
    """Check a model file's metadata -> RNNLM keyword arguments."""
    if meta.get("format") != MODEL_FORMAT:
        raise CharrnnError(f"{path}: not a charrnn model file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if type(version) is not int or version not in MODEL_FORMAT_VERSIONS:
        raise CharrnnError(f"{path}: unsupported model format_version {version!r}")
    keys = ("vocab_size", "num_hiddens", "activation", "dtype")
    if version >= 2:
        keys += tuple(NETWORK_V1)
    elif set(NETWORK_V1) & set(meta):
        raise CharrnnError(f"{path}: a version-1 model file cannot describe a cell, layers or dropout")
    spec = {**NETWORK_V1, **{key: meta.get(key) for key in keys}}
    for key in ("vocab_size", "num_hiddens", "num_layers"):
        if type(spec[key]) is not int or spec[key] < 1:
            raise CharrnnError(f"{path}: bad {key} {spec[key]!r} in model metadata")
    if spec["activation"] not in ACTIVATIONS or spec["dtype"] not in DTYPES:
        raise CharrnnError(
            f"{path}: bad activation/dtype {spec['activation']!r}/{spec['dtype']!r} in metadata")
    if spec["cell"] not in CELLS or not (is_finite(spec["dropout"]) and 0 <= spec["dropout"] < 1):
        raise CharrnnError(f"{path}: bad cell/dropout {spec['cell']!r}/{spec['dropout']!r} in metadata")
    return spec


# ----------------------------------------------------------------------------- training checkpoints

@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (JSON).

    Epochs are counted as users read them, from 1: `epoch` is the number of epochs completed,
    so the run is in epoch `epoch + 1` (see `current_epoch`).
    """

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # minibatches of the current epoch done
    step: int = 0  # minibatches done in all
    tokens: int = 0  # tokens trained on (batch_size * num_steps per minibatch)
    elapsed: float = 0.0  # seconds of training, all sessions together
    skipped: int = 0  # minibatches skipped for a non-finite loss or gradient
    skipped_in_a_row: int = 0  # the latest of them that came one after another
    interval_loss: float = 0.0  # sum of minibatch losses since the last scheduled evaluation
    interval_steps: int = 0
    last_eval_step: int = -1
    best_val_ppl: float | None = None
    best_step: int | None = None

    def current_epoch(self) -> int:
        """The epoch (from 1) of the latest minibatch: the one in progress, or the one just
        completed at an epoch's end; 0 before the first minibatch."""
        return self.epoch + (self.step_in_epoch > 0)

    @classmethod
    def from_dict(cls, d):
        """The inverse of `asdict`, for untrusted metadata: missing, unknown or impossible values
        -> CharrnnError."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise CharrnnError(f"not a training progress record: {d!r:.200}")
        p = cls(**d)
        counts = (p.epoch, p.step_in_epoch, p.step, p.tokens, p.skipped, p.skipped_in_a_row,
                  p.interval_steps, p.best_step or 0)
        possible = (all(is_integer(n) and n >= 0 for n in counts)
                    and is_integer(p.last_eval_step) and p.last_eval_step >= -1
                    and is_finite(p.elapsed) and is_finite(p.interval_loss)
                    and (p.best_val_ppl is None or is_finite(p.best_val_ppl))
                    and p.skipped_in_a_row <= p.skipped
                    and max(p.step_in_epoch, p.skipped, p.interval_steps, p.last_eval_step, p.best_step or 0) <= p.step)
        if not possible:
            raise CharrnnError(f"impossible training progress {d!r:.300}")
        return p


@dataclass
class Checkpoint:
    """A training checkpoint read back and checked whole: the model, its vocabulary, config,
    progress and the state training goes on from."""

    path: Path
    model: RNNLM
    vocab: Vocab
    config: TrainConfig
    progress: Progress
    optimizer: object = field(repr=False)  # restored on model.params
    truncation_rng: np.random.Generator = field(repr=False)
    state: np.ndarray | None = field(repr=False)  # carried (model.state_shape(batch_size)), or None
    arrays: dict = field(repr=False)  # extra arrays: optimizer state, carried state
    meta: dict = field(repr=False)
    dropout_rng: np.random.Generator = field(repr=False, default=None)


def all_finite(arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


def data_sha1(tokens, chunk=1 << 22) -> str:
    """SHA-1 of a token array as int32: what checkpoints recorded to recognise the training
    text before token stores (charrnn.store.TokenStore.split_sha1 now), still accepted on
    resume. Read `chunk` ids at a time: a memory map of narrower ids is never copied whole."""
    sha1 = hashlib.sha1()
    for start in range(0, len(tokens), chunk):
        sha1.update(np.ascontiguousarray(tokens[start:start + chunk], dtype=np.int32).tobytes())
    return sha1.hexdigest()


def save_checkpoint(path, model, optimizer, vocab, config, progress, truncation_rng, state, sha1,
                    dropout_rng=None) -> None:
    """Write the whole state of a run to `path` atomically (what load_checkpoint reads back).

    A state with a non-finite value -> CharrnnError, and nothing written; a failed write
    (OSError) leaves the file on disk as it was.
    """
    arrays = dict(optimizer.state_arrays())  # named "optim.<slot>.<param>"
    if state is not None:
        arrays[STATE_KEY] = state
    if not all_finite([*model.params.values(), *arrays.values()]):
        raise CharrnnError("non-finite parameters or optimizer state")
    meta = {"vocab": vocab.to_dict(), "config": asdict(config), "progress": asdict(progress),
            "optimizer": optimizer.state_meta(), "rng": truncation_rng.bit_generator.state,
            "data_sha1": sha1}
    if dropout_rng is not None:
        meta["dropout_rng"] = dropout_rng.bit_generator.state
    save_model(model, path, extra_arrays=arrays, extra_meta=meta)


def checkpoint_path(path, prefer=BEST):
    """A checkpoint file, or a run directory -> its `prefer` file (else its latest checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (prefer, CHECKPOINT):
        if (path / name).is_file():
            return path / name
    raise CharrnnError(f"{path} is not a run directory (it holds neither {BEST} nor {CHECKPOINT}); "
                       f"give a run directory or a .npz checkpoint")


def load_checkpoint(path, prefer=BEST):
    """Read a checkpoint written by `save_checkpoint` (file or run directory) and check it whole;
    anything else, or metadata that disagrees with the arrays, -> CharrnnError."""
    path = checkpoint_path(path, prefer)
    model, arrays, meta = load_model_with_extras(path)
    try:
        vocab = Vocab.from_dict(meta["vocab"])
        config = TrainConfig.from_dict(meta["config"])
        progress = Progress.from_dict(meta["progress"])
    except KeyError as err:
        raise CharrnnError(f"{path} is not a charrnn training checkpoint (no {err} in its metadata)") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise CharrnnError(f"{path} has corrupt training metadata ({err})") from None
    if len(vocab) != model.vocab_size:
        raise CharrnnError(f"{path}: vocabulary of {len(vocab)} tokens for a model of {model.vocab_size}")
    described = model_meta(model)
    for name in ("num_hiddens", "cell", "num_layers", "dropout", "activation", "dtype"):
        if getattr(config, name) != described[name]:
            raise CharrnnError(f"{path}: its config has {name} {getattr(config, name)!r}, its arrays {described[name]!r}")
    if progress.tokens != progress.step * config.batch_size * config.num_steps:
        raise CharrnnError(f"{path}: {progress.tokens} tokens cannot be {progress.step} minibatches "
                           f"of {config.batch_size} x {config.num_steps}")
    optimizer, truncation_rng, state, dropout_rng = restore_training_state(path, model, config, arrays, meta)
    return Checkpoint(path, model, vocab, config, progress, optimizer, truncation_rng, state, arrays, meta,
                      dropout_rng)


def restore_training_state(path, model, config, arrays, meta):
    """-> (optimizer on model.params, truncation Generator, carried state or None, dropout
    Generator or None) as a checkpoint saved them; a missing, misshapen or non-finite piece ->
    CharrnnError. A checkpoint without a dropout Generator (before dropout existed) gives None."""
    try:
        optimizer = make_optimizer(config.optimizer, model.params, config.lr)
        optimizer.load_state(arrays, meta["optimizer"])
        truncation_rng = np.random.default_rng()
        truncation_rng.bit_generator.state = meta["rng"]
        dropout_rng = None
        if "dropout_rng" in meta:
            dropout_rng = np.random.default_rng()
            dropout_rng.bit_generator.state = meta["dropout_rng"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CharrnnError(f"{path} has a corrupt training state ({err})") from None
    state, shape = arrays.get(STATE_KEY), model.state_shape(config.batch_size)
    if state is not None and (state.shape != shape or state.dtype != model.dtype):
        raise CharrnnError(f"{path}: {STATE_KEY} is {state.dtype.name} {state.shape}, "
                           f"expected {model.dtype.name} {shape}")
    if not all_finite([*optimizer.state_arrays().values(), *([] if state is None else [state])]):
        raise CharrnnError(f"{path} holds a non-finite optimizer or carried state")
    return optimizer, truncation_rng, state, dropout_rng
