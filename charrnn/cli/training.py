"""The commands that train: `train` (a run, or --resume of one) and `compare` (truncations side by side, over seeds)."""
import shlex
import sys
import time
from contextlib import ExitStack, closing, nullcontext
from functools import partial
from pathlib import Path

import click

from charrnn.analysis import gradients as analysis
from charrnn.analysis.plot import check_plot_path, plot_comparison
from charrnn.cli.options import (
    FiniteRange,
    NumberList,
    Procs,
    Truncation,
    bad_parameter,
    config_changes,
    plot_option,
    training_options,
)
from charrnn.cli.render import (
    ConsoleReporter,
    SweepProgress,
    network_words,
    print_comparison,
    print_summary,
    say,
    shown,
)
from charrnn.experiments import compare as comparison
from charrnn.experiments.sweep import ProcessBackend, SerialBackend
from charrnn.runtime import launch
from charrnn.runtime.signals import EXIT_CODES
from charrnn.runtime.threads import AUTO, Threads
from charrnn.training import autosize
from charrnn.training import start as training
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import BUDGET_FIELDS, ConfigError, TrainConfig
from charrnn.training.finetune import FINETUNE_LR_SCALE, finetune_config
from charrnn.training.loop import Run
from charrnn.training.outdir import CHECKPOINT, default_out_dir, last_good_checkpoint
from charrnn.training.parallel import ParallelRun, abort_on_error, current_ranks, follow

COMPARE_TOKENS = 500_000  # compare's budget when none is given
COMPARE_EVAL_EVERY = 50_000  # compare's default --eval-every


@click.command()
@training_options()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for checkpoints and metrics [default: runs/<corpus>-<date>-<time>].")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this directory (its settings; a budget may be raised). A CORPUS "
                   "given with it is where the run's text is now: accepted if it is the same text.")
@click.option("--init-from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Fine-tune: start a new run from the weights of this run (its best.npz) or checkpoint, "
                   "with its network and preprocessing and a fresh optimizer; new tokens get new rows; "
                   f"--lr defaults to the parent's x {FINETUNE_LR_SCALE:g}.")
@click.option("--size", type=click.Choice(autosize.SIZES), default=None,
              help="auto: choose the network (cell, size, layers, dropout, lr) for the text and the budget "
                   "(docs/tune.md; --max-time uses a short timed probe); options given win. default: the "
                   "cell's defaults [default: auto with --max-time or --max-tokens and none of "
                   "--cell, --num-hiddens, --num-layers, --dropout, --lr; else default].")
@click.option("--procs", type=Procs(), default=None, metavar="auto|N",
              help="Train on N processes of this machine (MPI, each with one BLAS thread); auto: the free "
                   "cores, or one process for a network too small to gain [default: one process with "
                   "--threads]. Needs: pip install 'charrnn[mpi]'. For several machines use mpiexec "
                   "(docs/parallel.md).")
@click.pass_context
def train(ctx, data_dir, cache_dir, out, resume, init_from, size, procs, **options):
    """Train a character-level RNN language model on CORPUS (a registered name or a path;
    default: timemachine). Ctrl-C saves a checkpoint; --resume DIR continues the run;
    --init-from RUN fine-tunes a trained model on CORPUS.
    """
    given = config_changes(ctx, options)
    check_schedule_options(ctx, given, options["lr_schedule"], resume)
    ranks = current_ranks()  # this process is one of several that mpiexec started, or None
    if procs is not None:
        if ranks is not None:
            raise click.UsageError("--procs starts the processes itself; under mpiexec leave it out", ctx)
        try:
            code = launch_ranks(procs, resume, options)
        except ConfigError as err:
            raise bad_parameter(err, ctx) from None
        if code is not None:
            ctx.exit(code)
    if ranks is not None and ranks.rank != 0:
        with abort_on_error(ranks):
            result = follow(ranks, data_dir, cache_dir, ctx.obj["threads"])
        ctx.exit(EXIT_CODES.get(result.reason, 1 if result.reason == "nonfinite" else 0))
    run_class = Run if ranks is None else partial(ParallelRun, ranks=ranks)
    reporter = ConsoleReporter()
    try:
        with (nullcontext() if ranks is None else abort_on_error(ranks)):  # rank 0 of several: abort them all
            result = train_or_resume(ctx, data_dir, cache_dir, out, resume, init_from, size, options, given,
                                     reporter, run_class)
    except ConfigError as err:
        raise bad_parameter(err, ctx) from None
    report_result(ctx, result)


def train_or_resume(ctx, data_dir, cache_dir, out, resume, init_from, size, options, given, reporter, run_class):
    """-> the TrainResult of the run `train` was asked for (run_class: Run, or ParallelRun on rank 0)."""
    threads = ctx.obj["threads"]
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise click.UsageError("--out cannot differ from --resume: a resumed run writes to its own directory", ctx)
        if init_from is not None:
            raise click.UsageError("--init-from starts a new run; --resume continues one", ctx)
        return training.resume(resume, given, data_dir, reporter, cache_dir, threads, run_class=run_class)
    if init_from is not None:
        config = finetune_config(init_from, options["corpus"], **{k: v for k, v in given.items() if k != "corpus"})
        return training.train(config, out or default_out_dir(config), data_dir, reporter, cache_dir, threads,
                              run_class=run_class)
    if wants_auto(size, given, options):
        config, chosen, spent = auto_config(options, given, data_dir, cache_dir)
        return training.train(config, out or default_out_dir(config), data_dir, reporter, cache_dir, threads,
                              speed=chosen.get("speeds", {}).get(chosen["name"]), spent=spent, size_record=chosen,
                              run_class=run_class)
    config = TrainConfig(**options)
    return training.train(config, out or default_out_dir(config), data_dir, reporter, cache_dir, threads,
                          run_class=run_class)


def report_result(ctx, result):
    """The summary of a run, and its exit: an error for a non-finite stop, 130/143 after a signal."""
    print_summary(result)
    resume_command = f"charrnn train --resume {shlex.quote(str(result.out_dir))}"
    if result.reason == "nonfinite":
        kept = last_good_checkpoint(result.out_dir, result.checkpoint_step)
        raise click.ClickException(f"{result.message}; {kept}. Lower --lr, clip the gradient with --clip, "
                                   f"or resume with --on-nonfinite skip: {resume_command} --on-nonfinite skip")
    if result.reason in EXIT_CODES:
        click.echo(f"Interrupted by {result.reason}: checkpoint saved to {shown(result.checkpoint)}. "
                   f"Resume with: {shown(resume_command)}", err=True)
        ctx.exit(EXIT_CODES[result.reason])


def wants_auto(size, given, options) -> bool:
    """--size auto, or no --size, a --max-time or --max-tokens budget, and no network option."""
    if size is not None:
        return size == "auto"
    budget = options["max_time"] is not None or options["max_tokens"] is not None
    return budget and not set(autosize.NETWORK_FIELDS) & set(given)


def auto_config(options, given, data_dir, cache_dir):
    """The TrainConfig of `--size auto` -> (config, the choice, seconds the probe took): the
    rule of charrnn.training.autosize for the text's training tokens and the budget in tokens
    (the smaller of --max-tokens and --epochs x the text), or the probe's speeds and --max-time;
    the options given override the choice."""
    started = time.perf_counter()
    provisional = TrainConfig(**options)
    train_data, _, vocab, _ = training.load_data(provisional, data_dir, cache_dir=cache_dir)
    tokens = [n for n in (options["max_tokens"], options["epochs"] and options["epochs"] * len(train_data)) if n]
    if tokens or options["max_time"] is None:
        chosen = autosize.choose_for_tokens(len(train_data), min(tokens or [provisional.epochs * len(train_data)]))
        spent = 0.0
    else:
        speeds = autosize.probe_speeds(train_data, len(vocab), provisional)
        spent = time.perf_counter() - started
        chosen = autosize.choose_for_time(len(train_data), options["max_time"] - spent, speeds)
        say("Probe: " + ", ".join(f"{name} {speed:,.0f} tokens/s" for name, speed in speeds.items())
            + f" ({spent:.1f} s, counted in the budget)")
    fields = {k: v for k, v in chosen["fields"].items() if k not in given}
    config = TrainConfig(**{**options, **fields, "size": "auto"})
    chosen["config"] = {k: getattr(config, k) for k in autosize.NETWORK_FIELDS}
    named = sorted(set(autosize.NETWORK_FIELDS) & set(given))
    say(f"Size auto: {network_words(config)}, lr {config.lr:g} -- {chosen['reason']}"
        + (f"; given: {', '.join(named)}" if named else ""))
    return config, chosen, spent


def launch_ranks(procs, resume, options):
    """--procs: start the ranks (charrnn.runtime.launch) and wait -> their exit code; None: train here,
    on one process (--procs 1, or auto's choice, said)."""
    problem = launch.mpi_problem()
    if problem:
        raise click.ClickException(problem)
    if procs == "auto":
        with Threads(AUTO) as counted:
            free = counted.count
        cfg = load_checkpoint(resume / CHECKPOINT).config if resume else TrainConfig(**options)
        flops = launch.step_flops(cfg.batch_size, cfg.num_steps, cfg.num_hiddens, cfg.num_layers, cfg.cell,
                                  launch.GUESSED_VOCAB)
        procs, note = launch.resolve_procs(procs, free, flops)
        if note:
            say(note)
    if procs <= 1:
        return None
    return launch.launch(procs, launch.rank_arguments(sys.argv[1:]))


def check_schedule_options(ctx, given, schedule, resume):
    """--lr-decay belongs to the epoch schedule, --lr-floor to cosine and exponential."""
    if resume is not None:
        return
    if "lr_decay" in given and schedule != "epoch":
        raise click.UsageError("--lr-decay applies to --lr-schedule epoch only", ctx)
    if "lr_floor" in given and schedule not in ("cosine", "exponential"):
        raise click.UsageError("--lr-floor applies to --lr-schedule cosine or exponential only", ctx)


@click.command()
@training_options(with_truncation=False, eval_every=COMPARE_EVAL_EVERY, default_max_tokens=COMPARE_TOKENS)
@click.option("--regular", "regular_steps", type=NumberList(click.IntRange(min=1)),
              default=str(analysis.DEFAULT_REGULAR_STEPS), show_default=True, metavar="K[,K...]",
              help="Compare regular:K truncation (a cut every K steps), for each K of the list.")
@click.option("--randomized", "keep_probs", type=NumberList(FiniteRange(0, 1, min_open=True)),
              default=f"{analysis.DEFAULT_KEEP_PROB:g}", show_default=True, metavar="P[,P...]",
              help="Compare randomized:P truncation (each step kept with probability P, weighted 1/P; "
                   "a cut every 1/(1-P) steps on average), for each P of the list.")
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Runs per strategy, from seeds --seed, --seed + 1, ...: the seed changes the "
                   "initialisation and the truncation draws; the data order stays that of --seed, "
                   "so the strategies pair seed by seed.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="J",
              help="Runs at once, each in a local worker process with one BLAS thread (the runs of "
                   "compare always use one).")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run on the Dask cluster of this scheduler (e.g. tcp://host:8786); --out must be a "
                   "directory every worker reaches at the same path. Needs: pip install 'charrnn[cluster]'.")
@click.option("--baseline", type=Truncation(), default="full", show_default=True,
              help="The strategy the others are set against, seed by seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the runs, one subdirectory per strategy and seed; running the same "
                   "command again reuses finished runs and resumes interrupted ones "
                   "[default: runs/compare-<corpus>-<hash of the settings>].")
@plot_option
@click.pass_context
def compare(ctx, regular_steps, keep_probs, num_seeds, jobs, scheduler, baseline, out, plot, data_dir,
            cache_dir, **options):
    """Train the same network with full, regular:K and randomized:P truncation, from --seeds
    seeds each, and say what the runs support: per strategy the mean and 95% interval of the
    final and best validation perplexity, the paired difference from --baseline with its
    interval and p-value (paired t-test), and a verdict.

    Every training option applies to all runs alike. Without a budget (--epochs, --max-tokens,
    --max-time) each run trains on 500,000 tokens. Each run writes its checkpoints and
    metrics.jsonl to its own subdirectory of --out; Ctrl-C stops every run with a checkpoint.
    """
    check_schedule_options(ctx, config_changes(ctx, options), options["lr_schedule"], None)
    if plot is not None:
        check_plot_path(plot)
    if scheduler is not None and jobs > 1:
        raise click.UsageError("--jobs sets local worker processes; with --scheduler the cluster's workers "
                               "run the runs", ctx)
    if all(options[name] is None for name in BUDGET_FIELDS):
        options["max_tokens"] = COMPARE_TOKENS
    truncations = ("full", *(f"regular:{k}" for k in regular_steps), *(f"randomized:{p:g}" for p in keep_probs))
    chosen = [t for t in truncations if comparison.run_name(t) == comparison.run_name(baseline)]
    if not chosen:
        raise click.BadParameter(f"{baseline} is not among the strategies compared ({', '.join(truncations)})",
                                 ctx, param_hint="'--baseline'")
    try:
        config = TrainConfig(**options)
        training.load_data(config, data_dir, cache_dir=cache_dir)  # a text too short for the settings fails before any run
    except ConfigError as err:  # as train: a setting the text cannot serve is a usage error
        raise bad_parameter(err, ctx) from None
    out = out or comparison.default_out_dir(config)
    with ExitStack() as stack:
        if scheduler is not None:
            from charrnn.experiments.cluster import DaskBackend, connect  # Dask only when asked for
            backend = DaskBackend(stack.enter_context(connect(scheduler)))
        else:
            threads = ctx.obj["threads"]
            backend = ProcessBackend(jobs, threads=threads) if jobs > 1 else SerialBackend(threads)
        progress = stack.enter_context(closing(SweepProgress()))
        result, interrupted = comparison.compare(config, out, truncations, num_seeds, data_dir, backend,
                                                 progress, chosen[0], cache_dir)
    if interrupted:
        click.echo(f"Interrupted: {len(result.summaries)} finished runs kept in {shown(out)}, the runs in progress "
                   f"checkpointed; the same command goes on from there.", err=True)
        ctx.exit(EXIT_CODES["SIGINT"])
    if result.summaries:
        print_comparison(config, result)
    say(f"runs: {shown(out)}")
    if plot is not None and result.summaries:
        plot_comparison(result, plot)
        say(f"figure: {shown(plot)}")
    problems = []  # the table lacks these seeds: never exit 0
    for runs, what, then in ((result.failed, "failed", ""),
                             (result.interrupted, "interrupted", "; the same command resumes them")):
        if runs:
            listed = "; ".join(f"{name}: {message}" for name, message in runs.items())
            problems.append(f"{len(runs)} run(s) {what} ({listed}){then}")
    if problems:
        raise click.ClickException("; ".join(problems))
