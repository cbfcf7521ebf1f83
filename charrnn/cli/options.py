"""Option types and the options several commands share, declared once.

Every choice comes from the list of the module that owns it (charrnn.data.vocab's LEVELS, the
model's ACTIVATIONS, ...), every default from TrainConfig; `training_options` declares the
training settings once for both `train` and `compare`.
"""
import math
from pathlib import Path

import click
from click.core import ParameterSource

from charrnn.analysis import gradients as analysis
from charrnn.base.errors import CharrnnError
from charrnn.base.schema import describe
from charrnn.cli.render import one_line, warn
from charrnn.data.records import RECORD_MODES
from charrnn.data.samplers import SAMPLERS
from charrnn.data.store import CACHE_ENV
from charrnn.data.text import PREPROCESS_MODES
from charrnn.data.vocab import LEVELS
from charrnn.nn.cells import ACTIVATIONS, CELLS, OUTPUT_BIASES
from charrnn.nn.fused import KERNELS
from charrnn.nn.model import DTYPES
from charrnn.nn.optim import OPTIMIZERS
from charrnn.nn.recompute import BPTT_MEMORY_MODES
from charrnn.nn.truncation import parse_truncation
from charrnn.runtime.threads import capped, check_threads
from charrnn.training.config import CELL_DEFAULTS, DEFAULT_EPOCHS, ON_NONFINITE, TrainConfig
from charrnn.training.schedule import LR_SCHEDULES

DEFAULTS = TrainConfig()


class Truncation(click.ParamType):
    """full | regular:K | randomized:P, checked by the model's own parser."""

    name = "full|regular:K|randomized:P"

    def convert(self, value, param, ctx):
        try:
            parse_truncation(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return value


class ThreadCount(click.ParamType):
    """auto | N, checked by charrnn.runtime.threads."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        try:
            threads = check_threads(value)
        except CharrnnError as err:
            self.fail(str(err), param, ctx)
        if capped(threads) != threads:
            warn(f"--threads {describe(threads)} is more than the {capped(threads)} cores this process may use; "
                 f"using {capped(threads)}")
        return capped(threads)


class Procs(click.ParamType):
    """auto | N >= 1: the processes of `train --procs`."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if text == "auto":
            return text
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"processes must be 'auto' or an integer >= 1, got {value!r}", param, ctx)


class Clip(click.ParamType):
    """A positive gradient-norm threshold, or `none` for no clipping."""

    name = "THETA|none"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "none":
            return None
        try:
            theta = float(value)
        except ValueError:
            theta = float("nan")
        if not theta > 0:
            self.fail(f"{value!r} is not a positive number or 'none'", param, ctx)
        return theta


class FiniteRange(click.FloatRange):
    """click.FloatRange of finite numbers: click lets nan through every bound, and inf past a lower one."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NumberList(click.ParamType):
    """A comma-separated list of numbers, each checked by `item` (a click type): "5,10,20"."""

    def __init__(self, item):
        self.item = item
        self.name = f"{item.name},..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(parts):
            self.fail(f"{value!r} is not a comma-separated list of numbers (an empty item)", param, ctx)
        numbers = tuple(self.item.convert(part, param, ctx) for part in parts)
        if len(set(numbers)) != len(numbers):
            self.fail(f"{value!r} repeats a value", param, ctx)
        return numbers


def bad_parameter(err, ctx):
    """A charrnn.training.config.ConfigError as click's usage error on the option of its field."""
    return click.BadParameter(one_line(err), ctx, param_hint=f"'--{err.name.replace('_', '-')}'")


def config_changes(ctx, options):
    """The TrainConfig fields set on the command line (or environment), not by default."""
    return {name: value for name, value in options.items()
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def given_options(ctx, names):
    """The options among `names` given on the command line, as --option-name."""
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]


def per_cell_default(name):
    """The help text of a TrainConfig field whose default depends on --cell (CELL_DEFAULTS)."""
    by_value = {}
    for cell, defaults in CELL_DEFAULTS.items():
        by_value.setdefault(defaults[name], []).append(cell)
    if len(by_value) == 1:
        return f"[default: {next(iter(by_value)):g}]"
    return "[default: " + ", ".join(f"{value:g} for {' and '.join(cells)}" for value, cells in by_value.items()) + "]"


def stack(*decorators):
    """One decorator applying `decorators` so that their options list in the order given."""
    def decorate(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return decorate


# ---------------------------------------------------------------------------- shared by several commands

level_option = click.option("--level", type=click.Choice(LEVELS), default=DEFAULTS.level,
                            show_default=True, help="Tokens: characters or words.")
preprocess_option = click.option(
    "--preprocess", type=click.Choice(PREPROCESS_MODES), default=None,
    help="d2l: letters A-Z only, lowercased, other runs -> one space; raw: the text as it is "
         "[default: d2l for the registered book, raw for a file].")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where registered corpora are looked for first [default: $CHARRNN_DATA_DIR].")
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"Where token stores (texts tokenized once, memory-mapped after) are kept "
         f"[default: ${CACHE_ENV}, else tokens/ beside the corpora].")
vocab_limit_options = stack(
    click.option("--min-freq", type=click.IntRange(min=0), default=DEFAULTS.min_freq, show_default=True,
                 help="Tokens seen fewer times than this are read as <unk>."),
    click.option("--max-vocab", type=click.IntRange(min=1), default=DEFAULTS.max_vocab, metavar="N",
                 help="Keep the N most frequent tokens; the others are read as <unk> [default: all]."),
)
checkpoint_argument = click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
activation_choice = click.Choice(ACTIVATIONS)
cell_choice = click.Choice(CELLS)
dropout_range = FiniteRange(0, 1, max_open=True)
dtype_choice = click.Choice(DTYPES)
regular_option = click.option("--regular", "regular_steps", type=click.IntRange(min=1),
                              default=analysis.DEFAULT_REGULAR_STEPS, show_default=True, metavar="K",
                              help="Compare regular:K truncation (a cut every K steps).")
randomized_option = click.option("--randomized", "keep_prob", type=FiniteRange(0, 1, min_open=True),
                                 default=analysis.DEFAULT_KEEP_PROB, show_default=True, metavar="P",
                                 help="Compare randomized:P truncation: each step kept with probability P "
                                      "(weighted 1/P), a cut every 1/(1-P) steps on average.")
plot_option = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Also draw a figure to this .png/.pdf/.svg file (needs matplotlib).")


# ---------------------------------------------------------------------------- the training settings

def training_options(with_truncation=True, eval_every=DEFAULTS.eval_every, default_max_tokens=None):
    """The options of every TrainConfig field (and CORPUS, --data-dir, --cache-dir), for `train`
    and `compare`.

    with_truncation: whether --truncation is one of them (compare sets it per run itself);
    eval_every: the default of --eval-every; default_max_tokens: the budget when none is given,
    if not DEFAULT_EPOCHS epochs.
    """
    when_none = " when no budget is given]"
    epochs_default = "" if default_max_tokens else f" [default: {DEFAULT_EPOCHS}{when_none}"
    tokens_default = f" [default: {default_max_tokens:,}{when_none}" if default_max_tokens else ""
    truncation = click.option(
        "--truncation", type=Truncation(), default=DEFAULTS.truncation, show_default=True,
        help="BPTT inside a window: full, regular:K (cut every K steps), randomized:P.")
    return stack(
        click.argument("corpus", default=DEFAULTS.corpus),
        level_option,
        preprocess_option,
        vocab_limit_options,
        data_dir_option,
        cache_dir_option,
        click.option("--val-fraction", type=FiniteRange(0, 1, min_open=True, max_open=True),
                     default=DEFAULTS.val_fraction, show_default=True,
                     help="Tail of the corpus held out for validation."),
        click.option("--records", type=click.Choice(RECORD_MODES), default=None,
                     help="A text of records, one per line or per paragraph (blank-line separated): each "
                          "trained from a zero state between <s> and </s>, the last --val-fraction of them "
                          "held out (docs/records.md)."),
        click.option("--num-hiddens", type=click.IntRange(min=1), default=None,
                     help=f"Hidden units per layer {per_cell_default('num_hiddens')}."),
        click.option("--cell", type=cell_choice, default=DEFAULTS.cell, show_default=True,
                     help="rnn (tanh or linear), gru (PyTorch's) or lstm (no peepholes); sets the defaults of "
                          "--num-hiddens, --num-layers, --dropout and --lr."),
        click.option("--num-layers", type=click.IntRange(min=1), default=None,
                     help=f"Recurrent layers stacked, each reading the one below {per_cell_default('num_layers')}."),
        click.option("--dropout", type=dropout_range, default=None, metavar="P",
                     help="Inverted dropout between layers and before the output layer while training "
                          f"{per_cell_default('dropout')}."),
        click.option("--activation", type=activation_choice, default=DEFAULTS.activation, show_default=True,
                     help="The rnn cell's nonlinearity (gated cells have their own)."),
        click.option("--dtype", type=dtype_choice, default=DEFAULTS.dtype, show_default=True),
        click.option("--output-bias", type=click.Choice(OUTPUT_BIASES), default=DEFAULTS.output_bias,
                     show_default=True,
                     help="The output layer's bias at the start: the training text's letter frequencies "
                          "(log unigram probabilities; the first loss is the unigram's), or zeros (the "
                          "textbook's; the first loss is log V)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True),
        click.option("--num-steps", type=click.IntRange(min=1), default=DEFAULTS.num_steps, show_default=True,
                     help="Time steps per minibatch (the BPTT window)."),
        click.option("--sampler", type=click.Choice(tuple(SAMPLERS)), default=DEFAULTS.sampler,
                     show_default=True, help="sequential carries the hidden state across minibatches."),
        *([truncation] if with_truncation else []),
        click.option("--clip", type=Clip(), default=DEFAULTS.clip, show_default=True,
                     help="Clip the global gradient norm to THETA; 'none' to switch off."),
        click.option("--optimizer", type=click.Choice(tuple(OPTIMIZERS)), default=DEFAULTS.optimizer,
                     show_default=True),
        click.option("--lr", type=FiniteRange(0, min_open=True), default=None,
                     help=f"Learning rate {per_cell_default('lr')}."),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=DEFAULTS.lr_schedule,
                     show_default=True,
                     help="The learning rate over the budget used (tokens, epochs or time): cosine or "
                          "exponential from --lr down to --lr x --lr-floor, constant, or epoch "
                          "(x --lr-decay after each epoch, the schedule of older runs)."),
        click.option("--lr-floor", type=FiniteRange(0, 1, min_open=True), default=DEFAULTS.lr_floor,
                     show_default=True, help="Where cosine and exponential end, as a fraction of --lr."),
        click.option("--lr-decay", type=FiniteRange(0, 1, min_open=True), default=DEFAULTS.lr_decay,
                     show_default=True, help="--lr-schedule epoch: multiply the learning rate by this "
                                             "after each epoch."),
        click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
                     help="Seed of the initialisation and the truncation draws (and of the data order)."),
        click.option("--data-seed", type=click.IntRange(min=0), default=DEFAULTS.data_seed,
                     help="Seed of the order of the minibatches alone [default: --seed]."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help=f"Budget in passes over the training split{epochs_default}."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                     help=f"Budget in training tokens{tokens_default}."),
        click.option("--max-time", type=FiniteRange(0, min_open=True), default=None,
                     help="Budget in seconds of training (wall clock)."),
        click.option("--eval-every", type=click.IntRange(min=1), default=eval_every, show_default=True,
                     help="Tokens between validation evaluations (there is one at the end too)."),
        click.option("--on-nonfinite", type=click.Choice(ON_NONFINITE), default=DEFAULTS.on_nonfinite,
                     show_default=True, help="On a NaN/inf loss or gradient: stop, or skip the minibatch."),
        click.option("--sample-prefix", default=None,
                     help="Prefix continued at each evaluation [default: 'time traveller' for the book, "
                          "the first words of the text otherwise]."),
        click.option("--sample-length", type=click.IntRange(min=0), default=DEFAULTS.sample_length,
                     show_default=True),
        click.option("--sample-temperature", type=FiniteRange(0), default=DEFAULTS.sample_temperature,
                     show_default=True, help="Temperature of the sample at each evaluation; 0 takes the most "
                                             "likely token (greedy, as the textbook's predict)."),
        click.option("--bptt-memory", type=click.Choice(BPTT_MEMORY_MODES), default=DEFAULTS.bptt_memory,
                     show_default=True,
                     help="store: keep every hidden state for BPTT; recompute: keep one every ~sqrt(num_steps) "
                          "steps and recompute the rest (O(sqrt T) memory, about one more forward pass); "
                          "auto: recompute beyond --bptt-memory-budget. Both give the same gradients up to "
                          "rounding (~1e-7 in float32): a run resumed with another mode stays close to, not "
                          "bit-identical with, one never stopped."),
        click.option("--bptt-memory-budget", type=click.IntRange(min=1), default=DEFAULTS.bptt_memory_budget,
                     show_default=True, metavar="MIB", help="MiB of BPTT buffers above which auto recomputes."),
        click.option("--kernel", type=click.Choice(KERNELS), default=DEFAULTS.kernel, show_default=True,
                     help="The time loop's per-step work: fused (compiled with numba, one pass per step), "
                          "numpy (the readable NumPy cells), auto (fused for gru and lstm in float32). The same numbers up to "
                          "tanh's last bits (~1e-7 in float32); NumPy with a note when numba is missing."),
    )
