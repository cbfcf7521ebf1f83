"""The commands that read: `corpus`, `sample`, `evaluate`, `gradcheck` and `analyze`."""
import inspect
import json
import math
import sys
from pathlib import Path

import click
import numpy as np

from charrnn.analysis import gradients as analysis
from charrnn.analysis.gradcheck import run_gradcheck
from charrnn.analysis.plot import check_plot_path, plot_analyses, plot_analysis
from charrnn.base.checks import is_text
from charrnn.base.errors import CharrnnError
from charrnn.cli.options import (
    DEFAULTS,
    FiniteRange,
    Truncation,
    activation_choice,
    cache_dir_option,
    cell_choice,
    checkpoint_argument,
    data_dir_option,
    dropout_range,
    dtype_choice,
    given_options,
    level_option,
    plot_option,
    preprocess_option,
    randomized_option,
    regular_option,
    vocab_limit_options,
)
from charrnn.cli.render import (
    escape_controls,
    print_analysis,
    print_baselines,
    print_corpus,
    print_evaluation,
    print_gradcheck,
    print_next_tokens,
    say,
    shown,
    warn_unknown,
)
from charrnn.cli.scoring import batch_options, run_batch, wants_batch
from charrnn.data.baselines import ngram_baselines
from charrnn.data.corpus import default_preprocess
from charrnn.data.records import END, RECORD_MODES, START, open_records, record_vocab, split_records
from charrnn.data.samplers import split_corpus
from charrnn.data.store import open_store
from charrnn.infer.evaluate import evaluate_text
from charrnn.infer.sample import next_token_probs, sample_text
from charrnn.nn.cells import network_problem
from charrnn.nn.model import RNNLM
from charrnn.training.checkpoint import load_checkpoint

GRADCHECK_DEFAULTS = {name: p.default for name, p in inspect.signature(run_gradcheck).parameters.items()}
FRESH_MODEL_OPTIONS = ("corpus", "level", "preprocess", "cell", "num_layers", "num_hiddens", "activation", "dtype",
                       "model_seed")


@click.command()
@click.argument("corpus", default=DEFAULTS.corpus)
@level_option
@preprocess_option
@vocab_limit_options
@data_dir_option
@cache_dir_option
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many of the most frequent tokens to list.")
@click.option("--val-fraction", type=FiniteRange(0, 1, min_open=True, max_open=True), default=DEFAULTS.val_fraction,
              show_default=True, help="The share held out for validation, on which the baselines are scored.")
@click.option("--records", type=click.Choice(RECORD_MODES), default=None,
              help="Read CORPUS as records (one per line or paragraph): their count, lengths and the "
                   "<s> and </s> tokens a records model adds to the vocabulary.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def corpus(corpus, level, preprocess, min_freq, max_vocab, data_dir, cache_dir, top, val_fraction, records,
           as_json):
    """Token count, vocabulary size and most frequent tokens of CORPUS (a name or a path), the
    unigram and bigram perplexity of its validation split (what a network must beat), and where
    its token store is (made now if need be, and every id read back to check it)."""
    preprocess = preprocess or default_preprocess(corpus)
    store = open_store(corpus, level, preprocess, min_freq, max_vocab, data_dir=data_dir, cache_dir=cache_dir)
    store.verify()
    vocab, top_tokens = store.vocab, store.vocab.token_freqs[:top]
    train, val = split_corpus(store.ids, val_fraction)
    if len(val) < 2:
        raise CharrnnError(f"{corpus}: a validation split of {val_fraction:g} holds {len(val)} tokens, "
                           f"too few to score the baselines; give a larger --val-fraction")
    baselines = ngram_baselines(train, val, len(vocab))
    summary = records and records_summary(store, records, val_fraction, corpus)
    if as_json:
        click.echo(json.dumps({"corpus": corpus, "level": level, "preprocess": preprocess,
                               "tokens": len(store), "vocab_size": len(vocab), **({"records": summary} if records else {}),
                               "top": [[token, count] for token, count in top_tokens],
                               "val_fraction": val_fraction, **baselines.as_dict(),
                               "store": str(store.path), "store_bytes": store.nbytes,
                               "dtype": store.ids.dtype.name}, ensure_ascii=False))
        return
    print_corpus(corpus, level, preprocess, len(store), vocab, top_tokens)
    print_baselines(baselines)
    if records:
        say(f"records ({records}): {summary['count']:,}, {summary['held_out']:,} held out; "
            f"{summary['mean_length']:.1f} tokens on average, the longest {summary['longest']:,} (line "
            f"{summary['longest_line']:,}); a records model's vocabulary: {summary['vocab_size']} tokens, "
            f"with {START} ({summary['start_id']}) and {END} ({summary['end_id']})")
    say(f"token store: {shown(store.path)} ({store.nbytes:,} bytes, {store.ids.dtype.name} ids"
        f"{', made now' if store.built else ''})")


def records_summary(store, mode, val_fraction, name) -> dict:
    """What `corpus --records` shows of a text's records."""
    if store.header["level"] != "char":
        raise click.BadParameter("records are read at the char level", param_hint="'--records'")
    records = open_records(store, mode, num_steps=1 << 40, name=str(name))
    vocab = record_vocab(store.vocab)
    lengths = np.asarray(records.ends) - np.asarray(records.starts)
    longest = int(np.argmax(lengths))
    return {"mode": mode, "count": records.num_records, "held_out": split_records(records, val_fraction)[1].num_records,
            "mean_length": float(lengths.mean()), "longest": int(lengths[longest]),
            "longest_line": int(records.lines[longest]), "vocab_size": len(vocab),
            "start_id": vocab.token_to_idx[START], "end_id": vocab.token_to_idx[END]}


@click.command()
@checkpoint_argument
@click.option("--prefix", default=None,
              help="Text to warm the state up on [default: the run's sample prefix: 'time traveller' for the book].")
@click.option("--length", type=click.IntRange(min=0), default=200, show_default=True, help="Tokens to generate.")
@click.option("--temperature", type=FiniteRange(0, min_open=True), default=1.0, show_default=True,
              help="Below 1: more conservative; above 1: more random.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Draw only from the K most likely tokens.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (as the textbook's predict).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--show-probs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Instead of generating, list the N most likely next tokens after PREFIX with their probabilities.")
@batch_options
@data_dir_option
@cache_dir_option
@click.pass_context
def sample(ctx, checkpoint, prefix, length, temperature, top_k, greedy, seed, show_probs, data_dir, cache_dir,
           **batch):
    """Continue PREFIX with a trained model. CHECKPOINT: a .npz file or a run directory (best.npz).

    The prefix is read as the training text was (its preprocessing); a change is warned about.
    A model trained on records (--records) generates whole records, one per line; -n N draws N
    samples in one batch (docs/records.md).
    """
    drawing = given_options(ctx, ["top_k", "temperature"])
    if greedy and drawing:
        raise click.UsageError(f"--greedy takes the most likely token; it cannot be combined with "
                               f"{' or '.join(drawing)}", ctx)
    generating = given_options(ctx, ["length", "temperature", "top_k", "greedy", "seed"])
    if show_probs is not None and generating:
        raise click.UsageError(f"--show-probs lists the next token's probabilities and generates nothing; "
                               f"drop {', '.join(generating)}", ctx)
    if prefix is not None and not is_text(prefix):
        raise click.BadParameter(f"{prefix!r} is not UTF-8 text", param_hint="'--prefix'")
    ckpt = load_checkpoint(checkpoint)
    if show_probs is None and wants_batch(ckpt, batch):
        with ctx.obj["applied"].one_row(batch["num_samples"] == 1):
            run_batch(ctx, ckpt, prefix, length, temperature, top_k, greedy, seed, **batch,
                      data_dir=data_dir, cache_dir=cache_dir)
        return
    if prefix is None:
        prefix = ckpt.config.sample_prefix or ckpt.vocab.token_freqs[0][0]  # a run records the prefix it used
    with ctx.obj["applied"].one_row():  # one row at a time: auto's rounding stays exact on one thread
        if show_probs is not None:
            print_next_tokens(prefix, next_token_probs(ckpt, prefix, show_probs))
            return
        text = sample_text(ckpt, prefix, length, temperature=temperature, top_k=top_k, greedy=greedy, seed=seed).text
    click.echo(escape_controls(text) if sys.stdout.isatty() else text)  # a pipe or file gets the text as it is


@click.command()
@checkpoint_argument
@click.argument("corpus", required=False)
@data_dir_option
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(checkpoint, corpus, data_dir, cache_dir, as_json):
    """Perplexity of a model on its validation split, or on CORPUS (a name or a path).

    CHECKPOINT: a .npz file or a run directory (best.npz there). Tokens outside the
    checkpoint's vocabulary are read as <unk>.
    """
    ckpt = load_checkpoint(checkpoint)
    result = evaluate_text(ckpt.model, ckpt.vocab, ckpt.config, corpus, data_dir, cache_dir)
    if not math.isfinite(result.loss):
        raise CharrnnError(f"{ckpt.path}: the model's outputs overflow on this text (its loss is {result.loss}); "
                           f"its weights are too large to evaluate")
    warn_unknown(result.unknown, result.unknown_count, str(corpus))
    if as_json:  # strict JSON: a perplexity past a float (loss > ~709 nats) is null
        perplexity = result.perplexity if math.isfinite(result.perplexity) else None
        click.echo(json.dumps({"checkpoint": str(ckpt.path), "source": result.source, "tokens": result.tokens,
                               "loss": result.loss, "perplexity": perplexity,
                               **({"records": result.records, "nats_per_record": result.nats_per_record,
                                   "nats_per_char": result.loss} if result.records else {})},
                              ensure_ascii=False, allow_nan=False))
        return
    print_evaluation(ckpt.path, result)


def gradcheck_option(name, **kwargs):
    return click.option(name, default=GRADCHECK_DEFAULTS[name.lstrip("-").replace("-", "_")],
                        show_default=True, **kwargs)


@click.command()
@gradcheck_option("--vocab-size", type=click.IntRange(min=2))
@gradcheck_option("--num-hiddens", type=click.IntRange(min=1))
@gradcheck_option("--batch-size", type=click.IntRange(min=1))
@gradcheck_option("--num-steps", type=click.IntRange(min=1))
@gradcheck_option("--cell", type=cell_choice)
@gradcheck_option("--num-layers", type=click.IntRange(min=1))
@gradcheck_option("--dropout", type=dropout_range, metavar="P",
                  help="Dropout probability; the check holds the masks fixed.")
@gradcheck_option("--activation", type=activation_choice)
@gradcheck_option("--truncation", type=Truncation())
@gradcheck_option("--seed", type=click.IntRange(min=0))
@gradcheck_option("--records", type=click.IntRange(min=0), metavar="N",
                  help="Record starts per row inside the window: the state is reset and the gradient cut there.")
@click.option("--with-state/--no-state", default=GRADCHECK_DEFAULTS["with_state"], show_default=True,
              help="Start from a random carried state.")
@click.pass_context
def gradcheck(ctx, **options):
    """Compare BPTT gradients with finite differences on a small fresh model (exit 0 iff all pass).

    Checks every parameter against finite differences; with --activation linear also against
    the closed-form gradient; with truncation also the strategy's own checks.
    """
    problem = network_problem(options["cell"], options["num_layers"], options["dropout"], options["activation"])
    if problem:
        raise click.BadParameter(problem[1], ctx, param_hint=f"'--{problem[0].replace('_', '-')}'")
    if options["records"] > options["num_steps"] - 1:
        raise click.BadParameter(f"{options['records']} record starts do not fit inside a window of "
                                 f"{options['num_steps']} steps (at most num_steps - 1)", ctx, param_hint="'--records'")
    masks = f", dropout {options['dropout']:g} (masks held fixed)" if options["dropout"] else ""
    say(f"{options['cell']}, {options['num_layers']} layer{'s' * (options['num_layers'] > 1)}, "
        f"hidden {options['num_hiddens']}{masks}; truncation {options['truncation']}")
    report = run_gradcheck(**options)
    print_gradcheck(report)
    if not report.passed:
        ctx.exit(1)


@click.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(exists=True, path_type=Path))
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
@cache_dir_option
@click.option("--corpus", default=DEFAULTS.corpus, show_default=True, help="Fresh model: the text.")
@level_option
@preprocess_option
@click.option("--cell", type=cell_choice, default=DEFAULTS.cell, show_default=True, help="Fresh model: the cell.")
@click.option("--num-layers", type=click.IntRange(min=1), default=DEFAULTS.num_layers, show_default=True,
              help="Fresh model: recurrent layers.")
@click.option("--num-hiddens", type=click.IntRange(min=1), default=DEFAULTS.num_hiddens, show_default=True,
              help="Fresh model: hidden units.")
@click.option("--activation", type=activation_choice, default=DEFAULTS.activation,
              show_default=True, help="Fresh model: the rnn cell's activation.")
@click.option("--dtype", type=dtype_choice, default=DEFAULTS.dtype, show_default=True,
              help="Fresh model: floating-point type.")
@click.option("--model-seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Fresh model: seed of its initialisation.")
@click.pass_context
def analyze(ctx, checkpoints, num_steps, batch_size, offset, regular_steps, keep_prob, draws, seed, plot,
            data_dir, cache_dir, **fresh):
    """Vanishing and exploding gradients on a window of text: ‖∂L/∂h_t‖, the Jacobian product
    ‖∂h_t/∂h_0‖ against ρ(W_hh)^t (eq. 9.7.15), and the error of truncated gradients.

    For gated or stacked networks the Jacobian product is that of the full state s_t (every
    layer's h_t, and the LSTM's cell state c_t too): ‖∂s_t/∂s_0‖.

    CHECKPOINTS: .npz files or run directories (best.npz there), each analysed on its own text
    (several: one table each, and --plot draws their curves together); without any, a freshly
    initialised model from the --corpus ... --model-seed options.
    """
    if plot is not None:
        check_plot_path(plot)
    if not checkpoints:
        problem = network_problem(fresh["cell"], fresh["num_layers"], 0.0, fresh["activation"])
        if problem:
            raise click.BadParameter(problem[1], ctx, param_hint=f"'--{problem[0].replace('_', '-')}'")
        store = open_store(fresh["corpus"], fresh["level"], fresh["preprocess"], data_dir=data_dir,
                           cache_dir=cache_dir)
        corpus, vocab = store.ids, store.vocab
        model = RNNLM(len(vocab), fresh["num_hiddens"], activation=fresh["activation"], dtype=fresh["dtype"],
                      seed=fresh["model_seed"], cell=fresh["cell"], num_layers=fresh["num_layers"])
        subjects = [(model, corpus, f"a fresh model on {fresh['corpus']}")]
    else:
        given = given_options(ctx, FRESH_MODEL_OPTIONS)
        if given:
            raise click.UsageError(f"{', '.join(given)} describe a fresh model; a CHECKPOINT brings its own", ctx)
        subjects = [checkpoint_subject(checkpoint, data_dir, cache_dir) for checkpoint in checkpoints]
    truncations = (f"regular:{regular_steps}", f"randomized:{keep_prob:g}")
    results = []
    for model, corpus, source in subjects:
        X, Y = analysis.analysis_window(corpus, num_steps, batch_size, offset)
        results.append(analysis.analyze(model, X, Y, truncations=truncations, num_draws=draws, seed=seed))
    sources = [source for _, _, source in subjects]
    if plot is not None:  # the file first: a reader of the tables may close the pipe early
        if len(results) == 1:
            plot_analysis(results[0], plot)
        else:
            plot_analyses(results, sources, plot)
    for result, source in zip(results, sources):
        print_analysis(result, source)
    if plot is not None:
        say(f"figure: {shown(plot)}")


def checkpoint_subject(checkpoint, data_dir, cache_dir) -> tuple:
    """A checkpoint to analyse -> (model, its text's token ids (memory-mapped), its path as a string)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    store = open_store(cfg.corpus, cfg.level, cfg.preprocess, cfg.min_freq, cfg.max_vocab,
                       data_dir=data_dir, cache_dir=cache_dir)
    if store.vocab.idx_to_token != ckpt.vocab.idx_to_token:
        raise CharrnnError(f"{cfg.corpus} no longer gives the vocabulary {ckpt.path} was trained with")
    return ckpt.model, store.ids, str(ckpt.path)
