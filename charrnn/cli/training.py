"""The commands that train: `train` (a run, or --resume of one) and `compare` (truncations side by side)."""
import shlex
import time
from pathlib import Path

import click

from .. import compare as comparison
from .. import train as training
from ..config import BUDGET_FIELDS, ConfigError, TrainConfig
from ..finetune import finetune_config
from ..outdir import default_out_dir, last_good_checkpoint
from ..plot import check_plot_path, plot_comparison
from .options import (bad_parameter, config_changes, plot_option, randomized_option, regular_option,
                      training_options)
from .render import ConsoleReporter, print_comparison, print_summary, say

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
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
                   "with its network and preprocessing and a fresh optimizer; new tokens get new rows.")
@click.pass_context
def train(ctx, data_dir, cache_dir, out, resume, init_from, **options):
    """Train a character-level RNN language model on CORPUS (a registered name or a path;
    default: timemachine). Ctrl-C saves a checkpoint; --resume DIR continues the run;
    --init-from RUN fine-tunes a trained model on CORPUS.
    """
    given = config_changes(ctx, options)
    check_schedule_options(ctx, given, options["lr_schedule"], resume)
    reporter = ConsoleReporter()
    try:
        if resume is not None:
            if out is not None and out.resolve() != resume.resolve():
                raise click.UsageError("--out cannot differ from --resume: a resumed run writes to its own directory", ctx)
            if init_from is not None:
                raise click.UsageError("--init-from starts a new run; --resume continues one", ctx)
            result = training.resume(resume, given, data_dir, reporter, cache_dir)
        else:
            if init_from is not None:
                config = finetune_config(init_from, options["corpus"],
                                         **{k: v for k, v in given.items() if k != "corpus"})
            else:
                config = TrainConfig(**options)
            result = training.train(config, out or default_out_dir(config), data_dir, reporter, cache_dir)
    except ConfigError as err:
        raise bad_parameter(err, ctx) from None
    print_summary(result)
    resume_command = f"charrnn train --resume {shlex.quote(str(result.out_dir))}"
    if result.reason == "nonfinite":
        kept = last_good_checkpoint(result.out_dir, result.checkpoint_step)
        raise click.ClickException(f"{result.message}; {kept}. Lower --lr, clip the gradient with --clip, "
                                   f"or resume with --on-nonfinite skip: {resume_command} --on-nonfinite skip")
    if result.reason in EXIT_CODES:
        click.echo(f"Interrupted by {result.reason}: checkpoint saved to {result.checkpoint}. "
                   f"Resume with: {resume_command}", err=True)
        ctx.exit(EXIT_CODES[result.reason])


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
@regular_option
@randomized_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the runs, one subdirectory each [default: runs/compare-<date>-<time>].")
@plot_option
@click.pass_context
def compare(ctx, regular_steps, keep_prob, out, plot, data_dir, cache_dir, **options):
    """Train the same network from the same seed with full, regular:K and randomized:P truncation.

    Every training option applies to all runs alike. Without a budget (--epochs, --max-tokens,
    --max-time) each run trains on 500,000 tokens. Each run writes its checkpoints and
    metrics.jsonl to its own subdirectory of --out.
    """
    check_schedule_options(ctx, config_changes(ctx, options), options["lr_schedule"], None)
    if plot is not None:
        check_plot_path(plot)
    if all(options[name] is None for name in BUDGET_FIELDS):
        options["max_tokens"] = COMPARE_TOKENS
    try:
        config = TrainConfig(**options)
        out = out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        truncations = ("full", f"regular:{regular_steps}", f"randomized:{keep_prob:g}")
        results = comparison.compare(config, out, truncations, data_dir, reporter_for=lambda _: ConsoleReporter(),
                                     cache_dir=cache_dir)
    except ConfigError as err:  # as train: a setting the text cannot serve is a usage error
        raise bad_parameter(err, ctx) from None
    print_comparison(config, results)
    say(f"runs: {out}")
    stopped_by = results[-1].reason
    if stopped_by in EXIT_CODES:
        click.echo(f"Interrupted by {stopped_by}: the {results[-1].truncation} run was checkpointed to "
                   f"{results[-1].out_dir}, the strategies after it were not run.", err=True)
        ctx.exit(EXIT_CODES[stopped_by])
    if plot is not None:
        plot_comparison(results, plot)
        say(f"figure: {plot}")
