"""The charrnn command line: corpus, train, sample, evaluate, gradcheck.

Parses options, calls charrnn, renders what comes back (tqdm bar, rich tables). No maths here.
Errors: charrnn.CharrnnError and OSError -> one line `Error: ...` on stderr, exit code 1; bad
option values -> click usage errors, exit code 2; never a traceback.
"""
import copy
import inspect
import json
import math
import os
import shlex
import time
from pathlib import Path

# One BLAS thread unless the environment says otherwise, set before NumPy loads: the products
# of each time step are thin (batch x hidden), and a second thread that waits for a busy core
# slows them by 10-100x (README, Performance). OPENBLAS_NUM_THREADS=2 charrnn ... overrides it.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from charrnn import analysis
from charrnn import compare as comparison
from charrnn import train as training
from charrnn.data import load_corpus
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate_text
from charrnn.gradcheck import run_gradcheck
from charrnn.model import RNNLM, parse_truncation
from charrnn.plot import check_plot_path, plot_analysis, plot_comparison, sparkline
from charrnn.recompute import BPTT_MEMORY_MODES
from charrnn.sample import sample_text

console = Console()
DEFAULTS = training.TrainConfig()
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
# NumPy's ValueErrors for sizes past the address space (MemoryError covers the rest)
NUMPY_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")
GRADCHECK_DEFAULTS = {name: p.default for name, p in inspect.signature(run_gradcheck).parameters.items()}


class Truncation(click.ParamType):
    """full | regular:K | randomized:P, checked by the model's own parser."""

    name = "full|regular:K|randomized:P"

    def convert(self, value, param, ctx):
        try:
            parse_truncation(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return value


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


def one_line(text):
    return " ".join(str(text).split())


class CharrnnGroup(click.Group):
    """Turns user-facing errors into one line on stderr and exit code 1 (Ctrl-C: 130)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CharrnnError as err:
            raise click.ClickException(one_line(err)) from None
        except OSError as err:
            where = f": {err.filename}" if err.filename else ""
            raise click.ClickException(one_line(f"{err.strerror or err}{where}")) from None
        except MemoryError:
            raise click.ClickException("out of memory; try smaller sizes") from None
        except ValueError as err:
            if not str(err).startswith(NUMPY_TOO_BIG):
                raise
            raise click.ClickException(f"arrays of these sizes cannot exist ({err}); try smaller sizes") from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)


@click.group(name="charrnn", cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charrnn")
def main():
    """Character-level RNN language models trained by exact backpropagation through time."""


def warn(message):
    click.echo(f"Warning: {one_line(message)}", err=True)


def warn_unknown(unknown, what):
    if unknown:
        shown = ", ".join(repr(token) for token in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        warn(f"{len(unknown)} token(s) of {what} are not in the vocabulary and were read as <unk>: {shown}")


def say(text, **style):
    """Print user-provided text as it is: no markup, no highlighting, no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, **style)


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- corpus

level_option = click.option("--level", type=click.Choice(["char", "word"]), default=DEFAULTS.level,
                            show_default=True, help="Tokens: characters or words.")
preprocess_option = click.option(
    "--preprocess", type=click.Choice(["d2l", "raw"]), default=DEFAULTS.preprocess, show_default=True,
    help="d2l: letters only, lowercased, other runs -> one space; raw: the text as it is.")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where registered corpora are looked for first [default: $CHARRNN_DATA_DIR].")


@main.command()
@click.argument("corpus", default=DEFAULTS.corpus)
@level_option
@preprocess_option
@data_dir_option
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many of the most frequent tokens to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def corpus(corpus, level, preprocess, data_dir, top, as_json):
    """Token count, vocabulary size and most frequent tokens of CORPUS (a name or a path)."""
    ids, vocab = load_corpus(corpus, level=level, preprocess=preprocess, data_dir=data_dir)
    top_tokens = vocab.token_freqs[:top]
    if as_json:
        click.echo(json.dumps({"corpus": corpus, "level": level, "preprocess": preprocess,
                               "tokens": len(ids), "vocab_size": len(vocab),
                               "top": [[token, count] for token, count in top_tokens]}))
        return
    say(f"{corpus}: {len(ids):,} tokens, vocabulary of {len(vocab):,} ({level}, {preprocess})")
    table = Table()
    for column in ("rank", "token", "count", "share"):
        table.add_column(column, justify="left" if column == "token" else "right")
    for rank, (token, count) in enumerate(top_tokens, 1):
        table.add_row(str(rank), escape(repr(token)), f"{count:,}", f"{count / len(ids):.2%}")
    console.print(table)


# ---------------------------------------------------------------------------- train

class ConsoleReporter(training.Reporter):
    """A tqdm bar per step; a line and a sample per evaluation; a summary table at the end."""

    def on_start(self, info):
        cfg = info["config"]
        verb = f"Resuming at epoch {info['epoch']}, {info['tokens']:,} tokens:" if info["resumed"] else "Training"
        say(f"{verb} {cfg.corpus} ({info['train_tokens']:,} train / {info['val_tokens']:,} validation tokens, "
            f"vocabulary {info['vocab_size']}), {info['num_params']:,} parameters -> {info['out_dir']}")
        self.bar = tqdm(total=info["total_tokens"], initial=info["tokens"], unit="tok",
                        unit_scale=True, dynamic_ncols=True, disable=None)

    def on_step(self, stats):
        self.bar.update(stats["tokens"] - self.bar.n)
        self.bar.set_postfix_str(  # the bar itself shows tokens/s
            f"epoch {stats['epoch']} loss {stats['loss']:.3f} ppl {stats['perplexity']:.2f} "
            f"|grad| {stats['grad_norm']:.2f}" + (f" skipped {stats['skipped']}" if stats["skipped"] else ""),
            refresh=False)

    def on_evaluate(self, record):
        with tqdm.external_write_mode():
            best = " [green](best)[/green]" if record["best"] else ""
            console.print(f"[bold]epoch {record['epoch']}[/bold] {record['tokens']:,} tokens  "
                          f"train ppl {fmt(record['train_ppl'], 2)}  val ppl {fmt(record['val_ppl'], 2)}{best}")
            if record["sample"] is not None:
                say(f"  {record['sample']!r}", style="dim")

    def on_end(self, result):
        self.bar.close()


def print_summary(result):
    p = result.progress
    table = Table(title="Training summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    best = "-" if p.best_val_ppl is None else f"{p.best_val_ppl:.3f} (step {p.best_step:,})"
    rows = [
        ("stopped by", result.reason), ("epochs", f"{p.epoch} done, {p.step_in_epoch} steps into the next"),
        ("steps / tokens", f"{p.step:,} / {p.tokens:,}"), ("train perplexity", fmt(result.train_ppl)),
        ("validation perplexity", fmt(result.val_ppl)), ("best validation perplexity", best),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"), ("wall time", f"{result.wall_time:.1f} s"),
    ]
    if p.skipped:
        rows.insert(3, ("skipped minibatches", str(p.skipped)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    say(f"checkpoint: {result.checkpoint}\nbest checkpoint: {result.best or '-'}")


def bad_parameter(err, ctx):
    """A training.ConfigError as click's usage error on the option of its field."""
    return click.BadParameter(one_line(err), ctx, param_hint=f"'--{err.name.replace('_', '-')}'")


def config_changes(ctx, options):
    """The TrainConfig fields set on the command line (or environment), not by default."""
    return {name: value for name, value in options.items()
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


@main.command()
@click.argument("corpus", default=DEFAULTS.corpus)
@level_option
@preprocess_option
@data_dir_option
@click.option("--val-fraction", type=FiniteRange(0, 1, min_open=True, max_open=True),
              default=DEFAULTS.val_fraction, show_default=True, help="Tail of the corpus held out for validation.")
@click.option("--num-hiddens", type=click.IntRange(min=1), default=DEFAULTS.num_hiddens, show_default=True)
@click.option("--activation", type=click.Choice(["tanh", "linear"]), default=DEFAULTS.activation, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=DEFAULTS.dtype, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--num-steps", type=click.IntRange(min=1), default=DEFAULTS.num_steps, show_default=True,
              help="Time steps per minibatch (the BPTT window).")
@click.option("--sampler", type=click.Choice(["sequential", "random"]), default=DEFAULTS.sampler,
              show_default=True, help="sequential carries the hidden state across minibatches.")
@click.option("--truncation", type=Truncation(), default=DEFAULTS.truncation, show_default=True,
              help="BPTT inside a window: full, regular:K (cut every K steps), randomized:P.")
@click.option("--clip", type=Clip(), default=DEFAULTS.clip, show_default=True,
              help="Clip the global gradient norm to THETA; 'none' to switch off.")
@click.option("--optimizer", type=click.Choice(["sgd", "adagrad", "adam"]), default=DEFAULTS.optimizer,
              show_default=True)
@click.option("--lr", type=FiniteRange(0, min_open=True), default=DEFAULTS.lr, show_default=True,
              help="Learning rate.")
@click.option("--lr-decay", type=FiniteRange(0, 1, min_open=True), default=DEFAULTS.lr_decay,
              show_default=True, help="Multiply the learning rate by this after each epoch.")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Budget in passes over the training split [default: {training.DEFAULT_EPOCHS} "
                   f"when no budget is given].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Budget in training tokens.")
@click.option("--max-time", type=FiniteRange(0, min_open=True), default=None,
              help="Budget in seconds of training (wall clock).")
@click.option("--eval-every", type=click.IntRange(min=1), default=DEFAULTS.eval_every, show_default=True,
              help="Tokens between validation evaluations (there is one at the end too).")
@click.option("--on-nonfinite", type=click.Choice(["stop", "skip"]), default=DEFAULTS.on_nonfinite,
              show_default=True, help="On a NaN/inf loss or gradient: stop, or skip the minibatch.")
@click.option("--sample-prefix", default=DEFAULTS.sample_prefix, show_default=True,
              help="Prefix continued at each evaluation.")
@click.option("--sample-length", type=click.IntRange(min=0), default=DEFAULTS.sample_length, show_default=True)
@click.option("--bptt-memory", type=click.Choice(BPTT_MEMORY_MODES), default=DEFAULTS.bptt_memory,
              show_default=True, help="store: keep every hidden state for BPTT; recompute: keep one every "
                                      "~sqrt(num_steps) steps and recompute the rest (O(sqrt T) memory, about "
                                      "one more forward pass); auto: recompute beyond --bptt-memory-budget.")
@click.option("--bptt-memory-budget", type=click.IntRange(min=1), default=DEFAULTS.bptt_memory_budget,
              show_default=True, metavar="MIB", help="MiB of BPTT buffers above which auto recomputes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for checkpoints and metrics [default: runs/<corpus>-<date>-<time>].")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this directory (its settings; a budget may be raised).")
@click.pass_context
def train(ctx, data_dir, out, resume, **options):
    """Train a character-level RNN language model on CORPUS (a registered name or a path;
    default: timemachine). Ctrl-C saves a checkpoint; --resume DIR continues the run.
    """
    reporter = ConsoleReporter()
    try:
        if resume is not None:
            if out is not None and out.resolve() != resume.resolve():
                raise click.UsageError("--out cannot differ from --resume: a resumed run writes to its own directory", ctx)
            result = training.resume(resume, config_changes(ctx, options), data_dir, reporter)
        else:
            config = training.TrainConfig(**options)
            result = training.train(config, out or training.default_out_dir(config), data_dir, reporter)
    except training.ConfigError as err:
        raise bad_parameter(err, ctx) from None
    print_summary(result)
    resume_command = f"charrnn train --resume {shlex.quote(str(result.out_dir))}"
    if result.reason == "nonfinite":
        kept = training.last_good_checkpoint(result.out_dir, result.checkpoint_step)
        raise click.ClickException(f"{result.message}; {kept}. Lower --lr, clip the gradient with --clip, "
                                   f"or resume with --on-nonfinite skip: {resume_command} --on-nonfinite skip")
    if result.reason in EXIT_CODES:
        click.echo(f"Interrupted by {result.reason}: checkpoint saved to {result.checkpoint}. "
                   f"Resume with: {resume_command}", err=True)
        ctx.exit(EXIT_CODES[result.reason])


# ---------------------------------------------------------------------------- sample / evaluate

checkpoint_argument = click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))


@main.command()
@checkpoint_argument
@click.option("--prefix", default=DEFAULTS.sample_prefix, show_default=True, help="Text to warm the state up on.")
@click.option("--length", type=click.IntRange(min=0), default=200, show_default=True, help="Tokens to generate.")
@click.option("--temperature", type=FiniteRange(0, min_open=True), default=1.0, show_default=True,
              help="Below 1: more conservative; above 1: more random.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Draw only from the K most likely tokens.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (as the textbook's predict).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def sample(checkpoint, prefix, length, temperature, top_k, greedy, seed):
    """Continue PREFIX with a trained model. CHECKPOINT: a .npz file or a run directory (best.npz)."""
    ckpt = training.load_checkpoint(checkpoint)
    text, unknown = sample_text(ckpt.model, ckpt.vocab, prefix, length, level=ckpt.config.level,
                                preprocess=ckpt.config.preprocess, temperature=temperature,
                                top_k=top_k, greedy=greedy, seed=seed)
    warn_unknown(unknown, "the prefix")
    click.echo(text)


@main.command()
@checkpoint_argument
@click.argument("corpus", required=False)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(checkpoint, corpus, data_dir, as_json):
    """Perplexity of a model on its validation split, or on CORPUS (a name or a path).

    CHECKPOINT: a .npz file or a run directory (best.npz there). Tokens outside the
    checkpoint's vocabulary are read as <unk>.
    """
    ckpt = training.load_checkpoint(checkpoint)
    result = evaluate_text(ckpt.model, ckpt.vocab, ckpt.config, corpus, data_dir)
    warn_unknown(result.unknown, str(corpus))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(ckpt.path), "source": result.source, "tokens": result.tokens,
                               "loss": result.loss, "perplexity": result.perplexity}))
        return
    table = Table(title=escape(f"Evaluation of {ckpt.path}"), show_header=False)
    for name, value in (("text", escape(result.source)), ("tokens", f"{result.tokens:,}"),
                        ("cross-entropy (nats/token)", f"{result.loss:.4f}"),
                        ("perplexity", f"{result.perplexity:.3f}")):
        table.add_row(name, value)
    console.print(table)


# ---------------------------------------------------------------------------- gradcheck

def gradcheck_option(name, **kwargs):
    return click.option(name, default=GRADCHECK_DEFAULTS[name.lstrip("-").replace("-", "_")],
                        show_default=True, **kwargs)


@main.command()
@gradcheck_option("--vocab-size", type=click.IntRange(min=2))
@gradcheck_option("--num-hiddens", type=click.IntRange(min=1))
@gradcheck_option("--batch-size", type=click.IntRange(min=1))
@gradcheck_option("--num-steps", type=click.IntRange(min=1))
@gradcheck_option("--activation", type=click.Choice(["tanh", "linear"]))
@gradcheck_option("--truncation", type=Truncation())
@gradcheck_option("--seed", type=click.IntRange(min=0))
@click.option("--with-state/--no-state", default=GRADCHECK_DEFAULTS["with_state"], show_default=True,
              help="Start from a random carried state.")
@click.pass_context
def gradcheck(ctx, **options):
    """Compare BPTT gradients with finite differences on a small fresh model (exit 0 iff all pass).

    Checks every parameter against finite differences; with --activation linear also against
    the closed-form gradient; with truncation also the strategy's own checks.
    """
    report = run_gradcheck(**options)
    checks = {}
    for check, param, abs_err, rel_err, passed in report.rows:
        checks.setdefault(check, []).append((param, abs_err, rel_err, passed))
    for check, rows in checks.items():
        table = Table(title=check)
        for column in ("parameter", "max abs error", "max rel error", "result"):
            table.add_column(column, justify="left" if column == "parameter" else "right")
        for param, abs_err, rel_err, passed in rows:
            table.add_row(param, f"{abs_err:.2e}", f"{rel_err:.2e}",
                          "[green]pass[/green]" if passed else "[red]FAIL[/red]")
        console.print(table)
    console.print("[green]all checks passed[/green]" if report.passed else "[red]some checks failed[/red]")
    if not report.passed:
        ctx.exit(1)


# ---------------------------------------------------------------------------- analyze / compare

COMPARE_TOKENS = 500_000  # compare's budget when none is given
COMPARE_EVAL_EVERY = 50_000  # compare's default --eval-every

regular_option = click.option("--regular", "regular_steps", type=click.IntRange(min=1),
                              default=analysis.DEFAULT_REGULAR_STEPS, show_default=True, metavar="K",
                              help="Compare regular:K truncation (a cut every K steps).")
randomized_option = click.option("--randomized", "keep_prob", type=FiniteRange(0, 1, min_open=True),
                                 default=analysis.DEFAULT_KEEP_PROB, show_default=True, metavar="P",
                                 help="Compare randomized:P truncation: each step kept with probability P "
                                      "(weighted 1/P), a cut every 1/(1-P) steps on average.")
plot_option = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Also draw a figure to this .png/.pdf/.svg file (needs matplotlib).")
FRESH_MODEL_OPTIONS = ("corpus", "level", "preprocess", "num_hiddens", "activation", "dtype", "model_seed")


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--window", "num_steps", type=click.IntRange(min=1), default=analysis.DEFAULT_WINDOW,
              show_default=True, help="Time steps of the analysed window.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows of the window (consecutive stretches of the text).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Token of the text where the window starts.")
@regular_option
@randomized_option
@click.option("--draws", type=click.IntRange(min=2), default=analysis.DEFAULT_DRAWS, show_default=True,
              help="Draws of randomized truncation, for its mean and spread.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draws.")
@plot_option
@data_dir_option
@click.option("--corpus", default=DEFAULTS.corpus, show_default=True, help="Fresh model: the text.")
@level_option
@preprocess_option
@click.option("--num-hiddens", type=click.IntRange(min=1), default=DEFAULTS.num_hiddens, show_default=True,
              help="Fresh model: hidden units.")
@click.option("--activation", type=click.Choice(["tanh", "linear"]), default=DEFAULTS.activation,
              show_default=True, help="Fresh model: activation.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=DEFAULTS.dtype, show_default=True,
              help="Fresh model: floating-point type.")
@click.option("--model-seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Fresh model: seed of its initialisation.")
@click.pass_context
def analyze(ctx, checkpoint, num_steps, batch_size, offset, regular_steps, keep_prob, draws, seed, plot,
            data_dir, **fresh):
    """Vanishing and exploding gradients on a window of text: ‖∂L/∂h_t‖, the Jacobian product
    ‖∂h_t/∂h_0‖ against ρ(W_hh)^t (eq. 9.7.15), and the error of truncated gradients.

    CHECKPOINT: a .npz file or a run directory (best.npz there), analysed on its own text;
    without it, a freshly initialised model from the --corpus ... --model-seed options.
    """
    if plot is not None:
        check_plot_path(plot)
    if checkpoint is None:
        corpus, vocab = load_corpus(fresh["corpus"], level=fresh["level"], preprocess=fresh["preprocess"],
                                    data_dir=data_dir)
        model = RNNLM(len(vocab), fresh["num_hiddens"], activation=fresh["activation"], dtype=fresh["dtype"],
                      seed=fresh["model_seed"])
        source = f"a fresh model on {fresh['corpus']}"
    else:
        given = [f"--{name.replace('_', '-')}" for name in FRESH_MODEL_OPTIONS
                 if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)} describe a fresh model; a CHECKPOINT brings its own", ctx)
        ckpt = training.load_checkpoint(checkpoint)
        cfg = ckpt.config
        corpus, vocab = load_corpus(cfg.corpus, level=cfg.level, preprocess=cfg.preprocess, data_dir=data_dir)
        if vocab.idx_to_token != ckpt.vocab.idx_to_token:
            raise CharrnnError(f"{cfg.corpus} no longer gives the vocabulary {ckpt.path} was trained with")
        model, source = ckpt.model, str(ckpt.path)
    X, Y = analysis.analysis_window(corpus, num_steps, batch_size, offset)
    truncations = (f"regular:{regular_steps}", f"randomized:{keep_prob:g}")
    result = analysis.analyze(model, X, Y, truncations=truncations, num_draws=draws, seed=seed)
    print_analysis(result, source)
    if plot is not None:
        plot_analysis(result, plot)
        say(f"figure: {plot}")


def print_analysis(result, source):
    """Rich tables of a charrnn.analysis.GradientAnalysis."""
    table = Table(title=f"Gradient analysis of {source}: {result.batch_size} x {result.num_steps} window, "
                        f"{result.activation}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in (("loss (nats/token)", f"{result.loss:.4f}"),
                        ("spectral radius ρ(W_hh)", f"{result.spectral_radius:.4g}"),
                        ("largest singular value σ_max(W_hh)", f"{result.largest_singular_value:.4g}"),
                        ("measured growth per step ‖∂h_T/∂h_0‖^(1/T)", f"{result.growth_rate:.4g}")):
        table.add_row(name, value)
    console.print(table)
    curves = Table(title="Over the window, t = 1 .. T (charts: log scale, the last three on one scale)")
    for column in ("quantity", "t = 1", f"t = {result.num_steps // 2}", f"t = {result.num_steps}", "chart"):
        curves.add_column(column, justify="left" if column in ("quantity", "chart") else "right")
    middle = max(result.num_steps // 2 - 1, 0)
    jacobian_curves = [result.jacobian_norms, result.predicted_norms, result.singular_bound]
    for name, values, scale_with in (("‖∂L/∂h_t‖", result.hidden_grad_norms, None),
                                     ("‖∂h_t/∂h_0‖ measured", result.jacobian_norms, jacobian_curves),
                                     ("ρ^t (eq. 9.7.15, linear)", result.predicted_norms, jacobian_curves),
                                     ("σ_max^t (bound)", result.singular_bound, jacobian_curves)):
        curves.add_row(name, f"{values[0]:.3e}", f"{values[middle]:.3e}", f"{values[-1]:.3e}",
                       sparkline(values, scale_with=scale_with))
    console.print(curves)
    errors = Table(title="Truncated vs full gradient, relative to ‖full gradient‖")
    for column in ("truncation", "draws", "‖mean - full‖", "standard error", "spread of one draw",
                   "RMS error of one draw"):
        errors.add_column(column, justify="left" if column == "truncation" else "right",
                          no_wrap=column == "truncation")
    for error in result.truncations:
        drawn = error.num_draws > 1
        errors.add_row(error.truncation, str(error.num_draws), f"{error.relative_bias:.3g}",
                       f"{error.mean_error_stderr / error.full_norm:.3g}" if drawn else "-",
                       f"{error.relative_spread:.3g}" if drawn else "-", f"{error.relative_rms_error:.3g}")
    console.print(errors)
    if any(e.num_draws > 1 and e.mean_error > 4 * e.mean_error_stderr for e in result.truncations):
        say("Note: a mean error well above its standard error means heavy-tailed draws (a rare long path "
            "weighs 1/P per step kept); the spread is then underestimated too. Try more --draws.")


@main.command()
@regular_option
@randomized_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the runs, one subdirectory each [default: runs/compare-<date>-<time>].")
@plot_option
@click.pass_context
def compare(ctx, regular_steps, keep_prob, out, plot, **options):
    """Train the same network from the same seed with full, regular:K and randomized:P truncation.

    Every training option applies to all runs alike. Without a budget (--epochs, --max-tokens,
    --max-time) each run trains on 500,000 tokens. Each run writes its checkpoints and
    metrics.jsonl to its own subdirectory of --out.
    """
    if plot is not None:
        check_plot_path(plot)
    if all(options[name] is None for name in training.BUDGET_FIELDS):
        options["max_tokens"] = COMPARE_TOKENS
    data_dir = options.pop("data_dir")
    try:
        config = training.TrainConfig(**options)
        out = out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        truncations = ("full", f"regular:{regular_steps}", f"randomized:{keep_prob:g}")
        results = comparison.compare(config, out, truncations, data_dir, reporter_for=lambda _: ConsoleReporter())
    except training.ConfigError as err:  # as train: a setting the text cannot serve is a usage error
        raise bad_parameter(err, ctx) from None
    table = Table(title=f"Truncation compared: {config.corpus}, hidden {config.num_hiddens}, "
                        f"batch {config.batch_size} x {config.num_steps} steps, seed {config.seed}")
    for column in ("truncation", "tokens", "tok/s", "mean ‖g‖", "val ppl", "best", "val ppl over time"):
        table.add_column(column, justify="left" if column in ("truncation", "val ppl over time") else "right",
                         no_wrap=column == "truncation")
    for result in results:
        ppl = [p["val_ppl"] for p in result.curve if p["val_ppl"] is not None]
        table.add_row(result.truncation, f"{result.tokens:,}", f"{result.tokens_per_s:,.0f}",
                      fmt(result.mean_grad_norm), fmt(result.final_val_ppl), fmt(min(ppl, default=None)),
                      sparkline(ppl, log=False))
    console.print(table)
    say(f"runs: {out}")
    stopped_by = results[-1].reason
    if stopped_by in EXIT_CODES:
        click.echo(f"Interrupted by {stopped_by}: the {results[-1].truncation} run was checkpointed to "
                   f"{results[-1].out_dir}, the strategies after it were not run.", err=True)
        ctx.exit(EXIT_CODES[stopped_by])
    if plot is not None:
        plot_comparison(results, plot)
        say(f"figure: {plot}")


def compare_param(param):
    """A training option as compare takes it: evaluations every COMPARE_EVAL_EVERY tokens, for curves."""
    if param.name != "eval_every":
        return param
    param = copy.copy(param)
    param.default = COMPARE_EVAL_EVERY
    return param


# compare takes every training option of train except the ones it sets itself
compare.params[:0] = [compare_param(param) for param in train.params
                      if param.name not in ("truncation", "out", "resume")]


if __name__ == "__main__":
    main()
