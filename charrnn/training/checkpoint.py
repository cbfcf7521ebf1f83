"""A model file and a training checkpoint: one save/load pair each.

A model file is an `.npz` (charrnn.base.io, no pickle) holding the parameters by name and JSON
metadata that describes the model (MODEL_FORMAT, its version, sizes, cell, layers, dropout,
activation, dtype). Version 2 records cell, num_layers and dropout; a version-1 file (before
gated cells) is read as the one-layer rnn it is.

A training checkpoint is a model file with more: the optimizer's arrays ("optim.<slot>.<param>")
and the state carried by the sequential sampler (STATE_KEY), and in the metadata the vocabulary,
the TrainConfig, the Progress, the optimizer's counters, the states of the truncation and
dropout Generators and the SHA-1 that names the text (both splits: charrnn.data.store): a
TrainingState (charrnn.training.state) and what it was trained on. `save_checkpoint` writes
exactly the keys `load_checkpoint` reads back, and it reads nothing else: a file is checked whole
(charrnn.base.io's limits, charrnn.base.schema's types and ranges, each array's header
against the shape the metadata gives, the memory it needs) before anything is built from it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charrnn.base import io as charrnn_io
from charrnn.base import schema
from charrnn.base.errors import CharrnnError
from charrnn.base.io import NpzReader, save_npz
from charrnn.data.vocab import Vocab
from charrnn.nn.cells import ACTIVATIONS, CELLS, network_problem
from charrnn.nn.model import DTYPES, RNNLM
from charrnn.nn.optim import OPTIMIZERS, make_optimizer
from charrnn.training.config import TrainConfig
from charrnn.training.memory import check_memory, param_bytes, param_shapes, state_shape
from charrnn.training.outdir import BEST, CHECKPOINT
from charrnn.training.state import DROPOUT_STREAM, Progress, TrainingState

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


MODEL_KEYS = ("format", "format_version", "vocab_size", "num_hiddens", "cell", "num_layers", "dropout",
              "activation", "dtype")  # model_meta's


def model_spec(model) -> dict:
    """The RNNLM keyword arguments that build a model like `model` (its metadata's sizes and kinds)."""
    return {key: value for key, value in model_meta(model).items() if key not in ("format", "format_version")}


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
    or dtypes that disagree with its metadata, or non-finite parameters; every array is checked
    against its declared size, and all of them against the memory available, before it is read.
    """
    with NpzReader(path) as reader:
        spec = check_model_meta(path, reader.meta)
        expected = expected_params(spec)
        check_headers(reader, expected)
        extras = {name: reader.header(name)[:2] for name in reader.names if name not in expected}
        check_memory(read_bytes(path, {**expected, **extras}) + param_bytes(spec), f"reading {path}")
        stray = sorted(name for name in extras if name.startswith(("W_", "b_")))
        if stray:
            raise CharrnnError(f"{path}: arrays {stray} belong to no {spec['num_layers']}-layer {spec['cell']} "
                               f"network: its metadata and its arrays disagree")
        params = {name: reader.read(name, shape, dtype) for name, (shape, dtype) in expected.items()}
        arrays = {name: reader.read(name, shape, dtype) for name, (shape, dtype) in extras.items()}
        meta = reader.meta
    model = build_model(path, spec, params)
    described = model_meta(model)
    extra_meta = {key: value for key, value in meta.items() if key not in described}
    return model, arrays, extra_meta


def load_model(path) -> RNNLM:
    """Read a model written by save_model()."""
    return load_model_with_extras(path)[0]


def check_model_meta(path, meta) -> dict:
    """Check a model file's metadata -> RNNLM keyword arguments (its spec)."""
    if meta.get("format") != MODEL_FORMAT:
        raise CharrnnError(f"{path}: not a charrnn model file (format {schema.describe(meta.get('format'))})")
    version = meta.get("format_version")
    if type(version) is not int or version not in MODEL_FORMAT_VERSIONS:
        raise CharrnnError(f"{path}: unsupported model format_version {schema.describe(version)}")
    if version == 1 and set(NETWORK_V1) & set(meta):
        raise CharrnnError(f"{path}: a version-1 model file cannot describe a cell, layers or dropout")
    network = NETWORK_V1 if version == 1 else meta
    try:
        spec = {"vocab_size": schema.size(meta.get("vocab_size"), "vocab_size"),
                "num_hiddens": schema.size(meta.get("num_hiddens"), "num_hiddens"),
                "activation": schema.choice(meta.get("activation"), ACTIVATIONS, "activation"),
                "dtype": schema.choice(meta.get("dtype"), DTYPES, "dtype"),
                "cell": schema.choice(network.get("cell"), CELLS, "cell"),
                "num_layers": schema.size(network.get("num_layers"), "num_layers"),
                "dropout": schema.number(network.get("dropout"), "dropout")}
    except schema.SchemaError as err:
        raise CharrnnError(f"{path}: bad model metadata: {err}") from None
    problem = network_problem(spec["cell"], spec["num_layers"], spec["dropout"], spec["activation"])
    if problem:  # before the shapes of, say, a million layers are listed
        raise CharrnnError(f"{path}: bad model metadata: {problem[1]}")
    return spec


def expected_params(spec) -> dict:
    """name -> (shape, dtype) of the parameters of the model `spec` describes."""
    return {name: (shape, np.dtype(spec["dtype"])) for name, shape in param_shapes(spec).items()}


def check_headers(reader, expected, what="", missing="model file has") -> None:
    """Every array of `expected` (name -> (shape, dtype)) is in `reader` with that shape and dtype
    in its .npy header; nothing is decompressed beyond the headers."""
    for name, (shape, dtype) in expected.items():
        if name not in reader.names:
            raise CharrnnError(f"{reader.path}: {missing} no array {name!r}")
        found_shape, found_dtype, _ = reader.header(name)
        if found_shape != tuple(shape) or found_dtype != dtype:
            raise CharrnnError(f"{reader.path}: {what}{name} is {found_dtype} {found_shape}, "
                               f"expected {dtype} {tuple(shape)}")


def read_bytes(path, arrays) -> int:
    """Bytes the arrays name -> (shape, dtype) take once read."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in arrays.values())


def build_model(path, spec, params) -> RNNLM:
    """The model `spec` describes holding `params` (checked arrays), refused if not finite."""
    for name, array in params.items():
        if not np.all(np.isfinite(array)):
            raise CharrnnError(f"{path}: {name} holds non-finite values")
    model = RNNLM(**spec)
    for name, array in params.items():
        model.params[name][...] = array
    return model


# ----------------------------------------------------------------------------- training checkpoints

@dataclass
class Checkpoint:
    """A training checkpoint read back and checked whole: its vocabulary and config, and the
    TrainingState training goes on from (`model` and `progress` are the state's)."""

    path: Path
    vocab: Vocab
    config: TrainConfig
    training: TrainingState = field(repr=False)
    arrays: dict = field(repr=False)  # the arrays besides the parameters: optimizer slots, carried state
    meta: dict = field(repr=False)  # the metadata besides the model's

    @property
    def model(self) -> RNNLM:
        return self.training.model

    @property
    def progress(self) -> Progress:
        return self.training.progress


def all_finite(arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


def legacy_tokens_sha1(tokens, chunk=1 << 22) -> str:
    """SHA-1 of a token array as int32: what checkpoints recorded to recognise the training
    text before token stores (charrnn.data.store.TokenStore.split_sha1 now), still accepted on
    resume. Read `chunk` ids at a time: a memory map of narrower ids is never copied whole."""
    sha1 = hashlib.sha1()
    for start in range(0, len(tokens), chunk):
        sha1.update(np.ascontiguousarray(tokens[start:start + chunk], dtype=np.int32).tobytes())
    return sha1.hexdigest()


META_MARGIN = 64 << 10  # bytes of checkpoint metadata besides the vocabulary, at most


def check_vocab_fits(vocab) -> None:
    """Refuse, before a run starts, a vocabulary too large for a checkpoint's metadata (which
    charrnn.base.io limits to MAX_META_BYTES), rather than fail at the first checkpoint."""
    size = len(json.dumps(vocab.to_dict()).encode("utf-8"))
    if size > charrnn_io.MAX_META_BYTES - META_MARGIN:
        raise CharrnnError(f"a vocabulary of {len(vocab):,} tokens takes {size:,} bytes of metadata, over the "
                           f"{charrnn_io.MAX_META_BYTES - META_MARGIN:,} a checkpoint holds; use --level char "
                           f"or a smaller text")


def save_checkpoint(path, training, *, vocab, config) -> None:
    """Write the TrainingState `training` of a run of `config` on `vocab` to `path` atomically
    (what load_checkpoint reads back).

    A state with a non-finite value -> CharrnnError, and nothing written; a failed write
    (OSError) leaves the file on disk as it was.
    """
    arrays = dict(training.optimizer.state_arrays())  # named "optim.<slot>.<param>"
    if training.carried is not None:
        arrays[STATE_KEY] = training.carried
    if not all_finite([*training.model.params.values(), *arrays.values()]):
        raise CharrnnError("non-finite parameters or optimizer state")
    meta = {"vocab": vocab.to_dict(), "config": asdict(config), "progress": asdict(training.progress),
            "optimizer": training.optimizer.state_meta(), "rng": training.truncation_rng.bit_generator.state,
            "dropout_rng": training.dropout_rng.bit_generator.state, "data_sha1": training.data_id}
    save_model(training.model, path, extra_arrays=arrays, extra_meta=meta)


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
    anything else, or metadata that disagrees with the arrays, -> CharrnnError.

    In order, before anything is built: the metadata against the schema; the .npy headers of
    exactly the arrays such a checkpoint holds (no other member is read) against the shapes the
    metadata gives; their size against the memory available. Then the arrays are read.
    """
    path = checkpoint_path(path, prefer)
    with NpzReader(path) as reader:
        spec = check_model_meta(path, reader.meta)
        params = expected_params(spec)
        check_headers(reader, params)
        vocab, config, progress = check_training_meta(path, reader.meta, spec)
        slots = {f"optim.{slot}.{name}": expected for slot in OPTIMIZERS[config.optimizer].slot_names
                 for name, expected in params.items()}
        check_headers(reader, slots, what="optimizer state ", missing="optimizer state has")
        state = {STATE_KEY: (state_shape(spec, config.batch_size), np.dtype(spec["dtype"]))}
        if STATE_KEY in reader.names:
            check_headers(reader, state)
        else:
            state = {}
        unknown = sorted(set(reader.names) - set(params) - set(slots) - set(state))
        if unknown:
            raise CharrnnError(f"{path} holds an array {unknown[0]!r} no checkpoint of this run holds")
        expected = {**params, **slots, **state}
        check_memory(read_bytes(path, expected) + param_bytes(spec), f"reading {path}")
        arrays = {name: reader.read(name, shape, dtype) for name, (shape, dtype) in expected.items()}
        meta = {key: value for key, value in reader.meta.items() if key not in MODEL_KEYS}
    model = build_model(path, spec, {name: arrays.pop(name) for name in params})
    training = restore_training_state(path, model=model, config=config, progress=progress, arrays=arrays, meta=meta)
    return Checkpoint(path=path, vocab=vocab, config=config, training=training, arrays=arrays, meta=meta)


TRAINING_KEYS = ("vocab", "config", "progress", "optimizer", "rng", "data_sha1")


def check_training_meta(path, meta, spec) -> tuple:
    """The training part of a checkpoint's metadata, checked whole against the schema and
    against the model `spec` -> (Vocab, TrainConfig, Progress)."""
    for key in TRAINING_KEYS:
        if key not in meta:
            raise CharrnnError(f"{path} is not a charrnn training checkpoint (no {key!r} in its metadata)")
    try:
        schema.vocab_dict(meta["vocab"], spec["vocab_size"])
        vocab = Vocab.from_dict(meta["vocab"])
        config = TrainConfig.from_dict(schema.dataclass_fields(TrainConfig, meta["config"], "config", required=False))
        progress = Progress.from_dict(schema.dataclass_fields(Progress, meta["progress"], "progress"))
        schema.optimizer_meta(meta["optimizer"], config.optimizer)
        schema.pcg64_state(meta["rng"])
        if "dropout_rng" in meta:
            schema.pcg64_state(meta["dropout_rng"], "dropout_rng")
        schema.sha1(meta["data_sha1"], "data_sha1")
    except (schema.SchemaError, CharrnnError) as err:
        raise CharrnnError(f"{path} has a corrupt training state: {err}") from None
    for name in ("num_hiddens", "cell", "num_layers", "dropout", "activation", "dtype"):
        if getattr(config, name) != spec[name]:
            raise CharrnnError(f"{path}: its config has {name} {getattr(config, name)!r}, its arrays {spec[name]!r}")
    if progress.tokens != progress.step * config.batch_size * config.num_steps:
        raise CharrnnError(f"{path}: {progress.tokens} tokens cannot be {progress.step} minibatches "
                           f"of {config.batch_size} x {config.num_steps}")
    return vocab, config, progress


def restore_training_state(path, *, model, config, progress, arrays, meta) -> TrainingState:
    """The TrainingState a checkpoint saved (checked by load_checkpoint); a non-finite piece ->
    CharrnnError. A checkpoint from before dropout has no dropout Generator: its run goes on
    with the one a new run of its seed starts with (its model has no dropout to draw for)."""
    try:
        optimizer = make_optimizer(config.optimizer, model.params, config.lr)
        optimizer.load_state(arrays, meta["optimizer"])
        truncation_rng = np.random.default_rng()
        truncation_rng.bit_generator.state = meta["rng"]
        dropout_rng = np.random.default_rng([config.seed, DROPOUT_STREAM])
        if "dropout_rng" in meta:
            dropout_rng.bit_generator.state = meta["dropout_rng"]
    except (KeyError, TypeError, ValueError) as err:
        raise CharrnnError(f"{path} has a corrupt training state ({err})") from None
    carried = arrays.get(STATE_KEY)
    if not all_finite([*optimizer.state_arrays().values(), *([] if carried is None else [carried])]):
        raise CharrnnError(f"{path} holds a non-finite optimizer or carried state")
    return TrainingState(model=model, optimizer=optimizer, progress=progress, truncation_rng=truncation_rng,
                         dropout_rng=dropout_rng, carried=carried, data_id=meta["data_sha1"])
