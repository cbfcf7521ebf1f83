"""The configuration of a training run: TrainConfig, the single source of its defaults.

The fields before `epochs` fix a run's maths (MATHS_FIELDS: a resumed run keeps them); the
budget fields (BUDGET_FIELDS) stop it at the first one reached; the rest say what happens along
the way. Every choice is checked against the list of the module that owns it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from charrnn.base.checks import is_finite, is_integer, is_text
from charrnn.data.corpus import LEVELS, default_preprocess, expand_user
from charrnn.data.text import PREPROCESS_MODES
from charrnn.data.samplers import SAMPLERS
from charrnn.data.records import RECORD_MODES
from charrnn.base.errors import CharrnnError
from charrnn.nn.cells import ACTIVATIONS, CELLS, OUTPUT_BIASES, network_problem
from charrnn.nn.fused import KERNELS
from charrnn.nn.model import DTYPES
from charrnn.nn.truncation import parse_truncation
from charrnn.nn.optim import OPTIMIZERS
from charrnn.nn.recompute import BPTT_MEMORY_MODES, DEFAULT_MEMORY_BUDGET
from charrnn.training.schedule import LR_SCHEDULES
from charrnn.training.autosize import SIZES

DEFAULT_EPOCHS = 30  # the budget when none of epochs / max_tokens / max_time is given
ON_NONFINITE = ("stop", "skip")  # what a non-finite loss or gradient does to the run
# what a configuration saved before a field existed meant by it (older checkpoints still load)
LEGACY_DEFAULTS = {"lr_schedule": "epoch", "output_bias": "zero"}
# the network and learning rate a run gets when it names only its cell; a field given explicitly
# wins. rnn: the default run of docs/usage.md; gru/lstm: measured on the book, reasoned for texts of a few
# MB (docs/usage.md, "Defaults of the gated cells"). A run records them resolved in config.json and checkpoints.
CELL_DEFAULTS = {
    "rnn": {"num_hiddens": 256, "num_layers": 1, "dropout": 0.0, "lr": 1e-2},
    "gru": {"num_hiddens": 256, "num_layers": 2, "dropout": 0.3, "lr": 5e-3},
    "lstm": {"num_hiddens": 256, "num_layers": 2, "dropout": 0.2, "lr": 5e-3},
}
# the prefix continued at each evaluation, by corpus; other texts: their own first words
DEFAULT_SAMPLE_PREFIXES = {"timemachine": "time traveller"}


class ConfigError(CharrnnError):
    """A training setting that cannot work; `name` is the TrainConfig field at fault."""

    def __init__(self, name, message):
        super().__init__(message)
        self.name = name


@dataclass
class TrainConfig:
    """Everything that defines a run. The fields before `epochs` fix its maths."""

    corpus: str = "timemachine"
    level: str = "char"
    preprocess: str | None = None  # None: "d2l" for the registered book, "raw" for a file
    min_freq: int = 0  # tokens seen fewer times map to <unk>
    max_vocab: int | None = None  # keep the max_vocab most frequent tokens, the rest -> <unk>
    val_fraction: float = 0.1
    num_hiddens: int | None = None  # None: CELL_DEFAULTS of the cell (also num_layers, dropout, lr)
    cell: str = "rnn"  # "rnn" | "gru" | "lstm" (charrnn.nn.cells)
    num_layers: int | None = None
    dropout: float | None = None  # between layers and before the output layer, while training
    activation: str = "tanh"  # the rnn cell's; gated cells have their own nonlinearities
    dtype: str = "float32"
    # the output layer's bias at the start: the training split's unigram log-probabilities, or
    # zeros (the textbook's); see charrnn.nn.cells.init_output_bias
    output_bias: str = "unigram"
    batch_size: int = 64
    num_steps: int = 32
    sampler: str = "sequential"
    truncation: str = "full"
    optimizer: str = "adam"
    lr: float | None = None
    lr_schedule: str = "cosine"  # lr over the fraction of the budget used (charrnn.training.schedule)
    lr_floor: float = 0.1  # where cosine/exponential end: lr * lr_floor
    lr_decay: float = 0.9  # the "epoch" schedule: after e epochs completed, lr * lr_decay**e
    clip: float | None = 1.0  # None: no clipping
    seed: int = 0  # initialisation and truncation draws (and data order unless data_seed is given)
    data_seed: int | None = None  # order of the minibatches; None: seed. compare pairs runs by it
    init_from: str | None = None  # fine-tuning: the checkpoint whose weights the run starts from
    records: str | None = None  # None: one stream; "lines" | "paragraphs": a text of records (charrnn.data.records)
    # budget: the run stops at the first one reached (none given: DEFAULT_EPOCHS epochs)
    epochs: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None  # seconds of training, all sessions of the run together
    # what happens along the way
    on_nonfinite: str = "stop"  # "stop" | "skip" the minibatch
    eval_every: int = 500_000  # tokens between evaluations (and one at the end)
    sample_prefix: str | None = None  # None: DEFAULT_SAMPLE_PREFIXES, else the text's first words
    sample_length: int = 60
    sample_temperature: float = 0.8  # of the sample at each evaluation; 0 = greedy
    # BPTT storage: every state ("store"), or checkpoints and recomputation in O(√T) memory
    # ("recompute", charrnn.nn.recompute); "auto" recomputes when storing would pass the budget
    bptt_memory: str = "auto"
    bptt_memory_budget: int = DEFAULT_MEMORY_BUDGET >> 20  # MiB
    # the time loop's steps: "fused" compiled (numba), "numpy" cells.py's, "auto" fused for gru
    # and lstm in float32 (charrnn.nn.fused); not a maths field: the same numbers up to tanh's last bits
    kernel: str = "auto"
    # how the network was chosen: "default" (CELL_DEFAULTS and the options given) or "auto" (for
    # the text and the budget, charrnn.training.autosize; the run directory's size.json says why)
    size: str = "default"

    def __post_init__(self):
        self.corpus = corpus_key(self.corpus)
        for name, value in cell_defaults(self.cell).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.preprocess is None:
            self.preprocess = default_preprocess(self.corpus)
        if self.epochs is None and self.max_tokens is None and self.max_time is None:
            self.epochs = DEFAULT_EPOCHS
        self.validate()

    def validate(self):
        """Raise ConfigError naming the first field that cannot work."""
        integers = ("min_freq", "max_vocab", "num_hiddens", "batch_size", "num_steps", "epochs", "max_tokens",
                    "eval_every", "sample_length", "seed")
        for name in integers:
            value = getattr(self, name)
            if value is not None and not is_integer(value):
                raise ConfigError(name, f"{name} must be an integer, got {value!r}")
        if self.min_freq < 0:
            raise ConfigError("min_freq", f"min_freq must be >= 0, got {self.min_freq!r}")
        positive = ("max_vocab", "num_hiddens", "batch_size", "num_steps", "lr", "clip", "epochs",
                    "max_tokens", "max_time", "eval_every", "bptt_memory_budget")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(name, f"{name} must be positive, got {value!r}")
        for name in ("lr", "clip", "max_time"):  # saved as JSON numbers, which are finite
            value = getattr(self, name)
            if not is_finite(value) and (name == "lr" or value is not None):
                raise ConfigError(name, f"{name} must be a finite number, got {value!r}")
        if not (is_finite(self.sample_temperature) and self.sample_temperature >= 0):
            raise ConfigError("sample_temperature",
                              f"sample_temperature must be a finite number >= 0, got {self.sample_temperature!r}")
        if not (is_finite(self.lr_floor) and 0 < self.lr_floor <= 1):
            raise ConfigError("lr_floor", f"lr_floor must be in (0, 1], got {self.lr_floor!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("lr_decay", f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if not (is_integer(value) and value >= 0 or value is None and name == "data_seed"):
                raise ConfigError(name, f"{name} must be a non-negative integer, got {value!r}")
        for name in ("corpus", "sample_prefix", "init_from"):  # saved in checkpoints, which hold UTF-8 text only
            value = getattr(self, name)
            if not is_text(value) and (name == "corpus" or value is not None):
                raise ConfigError(name, f"{name} must be UTF-8 text, got {value!r}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ConfigError(name, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.records is not None and self.records not in RECORD_MODES:
            raise ConfigError("records", f"records must be one of {', '.join(RECORD_MODES)}, got {self.records!r}")
        if self.records is not None and self.level != "char":
            raise ConfigError("records", "records are read at the char level (--level char)")
        problem = network_problem(self.cell, self.num_layers, self.dropout, self.activation)
        if problem:
            raise ConfigError(*problem)
        try:
            kind, keep_prob = parse_truncation(self.truncation)
        except ValueError as err:
            raise ConfigError("truncation", str(err)) from None
        if kind == "randomized" and not keep_prob * float(np.finfo(self.dtype).max) >= 1:  # ξ = 1/P must be a number
            raise ConfigError("truncation", f"truncation {self.truncation!r}: 1/P overflows {self.dtype}; "
                                            f"P must be at least {1 / float(np.finfo(self.dtype).max):.3g}")

    @property
    def order_seed(self):
        """The seed of the data order: data_seed, or seed when none is given."""
        return self.seed if self.data_seed is None else self.data_seed

    @classmethod
    def from_dict(cls, d):
        """The inverse of `asdict`, for untrusted metadata: unknown or bad fields -> CharrnnError.
        A field missing (a checkpoint older than the field) takes its default."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not set(d) <= names:
            raise CharrnnError(f"not a training configuration: {d!r:.200}")
        try:
            return cls(**{**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in d}, **d})
        except TypeError as err:
            raise CharrnnError(f"bad training configuration ({err})") from None

    def resumed(self, changes):
        """This config with `changes` (field -> value) for a resumed run.

        Changing a field that fixes the maths is an error; a budget given replaces the whole
        budget (so `epochs` alone lifts a saved `max_time`); the other fields may change.
        """
        changes = dict(changes)
        if "corpus" in changes:
            changes["corpus"] = corpus_key(changes["corpus"])
        for name in MATHS_FIELDS & set(changes):
            if changes[name] != getattr(self, name):
                raise ConfigError(name, f"a resumed run keeps its {name} ({getattr(self, name)!r}); "
                                        f"start a new run to use {changes[name]!r}")
        others = {k: v for k, v in changes.items() if k not in MATHS_FIELDS}
        if BUDGET_FIELDS & set(others):
            others = {**dict.fromkeys(BUDGET_FIELDS), **others}
        return replace(self, **others)


def cell_defaults(cell) -> dict:
    """The CELL_DEFAULTS of `cell` (an unknown cell: rnn's, and validation names the cell)."""
    return CELL_DEFAULTS.get(cell, CELL_DEFAULTS["rnn"])


def corpus_key(corpus):
    """A corpus as a run records it: the absolute path of an existing file, else the name."""
    path = expand_user(corpus)
    return str(path.resolve()) if path.is_file() else str(corpus)


# the fields chosen from a list, and the list of the module that owns each
CHOICES = {"level": LEVELS, "preprocess": PREPROCESS_MODES, "cell": CELLS, "activation": ACTIVATIONS, "dtype": DTYPES,
           "output_bias": OUTPUT_BIASES,
           "sampler": tuple(SAMPLERS), "optimizer": tuple(OPTIMIZERS), "on_nonfinite": ON_NONFINITE,
           "bptt_memory": BPTT_MEMORY_MODES, "lr_schedule": LR_SCHEDULES, "kernel": KERNELS, "size": SIZES}
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
MATHS_FIELDS = frozenset(FIELD_NAMES[: FIELD_NAMES.index("epochs")])
BUDGET_FIELDS = frozenset(("epochs", "max_tokens", "max_time"))
