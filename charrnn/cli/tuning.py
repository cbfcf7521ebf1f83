"""The command that searches: `tune` (charrnn.experiments.tune), and its leaderboard (--show)."""
import math
import os
import signal
import threading
from contextlib import ExitStack, closing
from pathlib import Path

import click

from charrnn.cli.options import FiniteRange, bad_parameter, cache_dir_option, data_dir_option
from charrnn.cli.render import ConsoleReporter, fmt, print_summary, print_wide, say
from charrnn.data.baselines import ngram_baselines
from charrnn.experiments import tune as tuning
from charrnn.experiments.sweep import ProcessBackend, SerialBackend, SweepReporter
from charrnn.runtime.lock import RunLock
from charrnn.runtime.signals import EXIT_CODES
from charrnn.training import start as training
from charrnn.training.autosize import CANDIDATES, probe_speeds
from charrnn.training.budget import round_down
from charrnn.training.config import ConfigError, TrainConfig

# the tune's time budget: the share of S * J the trials' work is planned to take (the rest is
# evaluations, checkpoints, starting processes), and the work of a bracket in units of n x T
PLANNED_SHARE = 0.6
WORK_PER_TRIAL = 1 / 9 + 2 / 27 + 6 / 81  # rungs T/9, T/3, T with a third promoted at each


@click.command()
@click.argument("corpus", required=False)
@click.option("--max-time", type=FiniteRange(0, min_open=True), default=None, metavar="S",
              help="Seconds for the whole search: sets the tokens of each trial (unless --trial-tokens) and "
                   "stops the search at S (the trials in progress checkpoint; the same command goes on).")
@click.option("--trials", type=click.IntRange(min=1), default=tuning.TuneSettings.trials, show_default=True,
              help="Trials in all (each an ordinary run directory under --out/trials).")
@click.option("--trial-tokens", type=click.IntRange(min=tuning.REDUCTION ** 2), default=None, metavar="N",
              help="Training tokens of a trial that reaches the last rung [default: from --max-time and a "
                   "short probe of this machine's speed; recorded in the study, kept on resume].")
@click.option("--max-hiddens", type=click.IntRange(min=1), default=None, metavar="H",
              help="Search hidden sizes up to H only [default: all of 32, 64, 128, 256].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="J",
              help="Trials at once, each in a local worker process with one BLAS thread.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run the trials on the Dask cluster of this scheduler; --out must be a directory every "
                   "worker reaches at the same path. Needs: pip install 'charrnn[cluster]'.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sampler and of every trial: the same seed finds the same winner.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The tune's directory: study.db and trials/ [default: runs/tune-<corpus>-seed<S>].")
@click.option("--best-max-time", type=FiniteRange(0, min_open=True), default=None, metavar="S",
              help="The budget of the best trial's train command [default: its own --max-tokens].")
@click.option("--train-best", is_flag=True, help="Run the best trial's train command (into --out/best).")
@click.option("--show", "show", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Print the leaderboard of the tune in DIR and its best train command, and stop.")
@data_dir_option
@cache_dir_option
@click.pass_context
def tune(ctx, corpus, max_time, trials, trial_tokens, max_hiddens, jobs, scheduler, seed, out, best_max_time, train_best, show,
         data_dir, cache_dir):
    """Search the network and training settings for CORPUS within a time budget: Optuna's
    sampler proposes trials (cell, size, layers, dropout, learning rate, batch, steps),
    successive halving prunes the worse ones at rungs measured in tokens, trials that diverge
    or do not beat the text's n-gram baselines are pruned and reported. Prints the leaderboard
    and the best trial's `charrnn train` command. Needs: pip install 'charrnn[tune]'.
    """
    tuning.import_optuna()  # one line naming the extra before anything else
    if show is not None:
        print_leaderboard(tuning.open_existing(show))
        return
    if corpus is None:
        raise click.UsageError("give the CORPUS to tune for (or --show DIR)", ctx)
    if max_time is None and trial_tokens is None:
        raise click.UsageError("give --max-time S (or --trial-tokens N)", ctx)
    if scheduler is not None and jobs > 1:
        raise click.UsageError("--jobs sets local worker processes; with --scheduler the cluster's workers "
                               "run the trials", ctx)
    try:
        base = TrainConfig(corpus=corpus, seed=seed, max_tokens=tuning.REDUCTION ** 2)
        train_data, val_data, vocab, _ = training.load_data(base, data_dir, cache_dir=cache_dir)
    except ConfigError as err:
        raise bad_parameter(err, ctx) from None
    out = out or Path("runs") / f"tune-{Path(base.corpus).stem or 'corpus'}-seed{seed}"
    settings = tuning.TuneSettings(base=base, out_dir=out, trials=trials, data_dir=data_dir, cache_dir=cache_dir,
                                   space=tuning.space_for(len(train_data), max_hiddens))
    if trial_tokens is None:
        trial_tokens = recorded_or_planned(settings, max_time, jobs, train_data, len(vocab))
    trial_tokens = tuning.whole_rungs(trial_tokens)
    baselines = ngram_baselines(train_data, val_data, len(vocab))
    say(f"Tuning {base.corpus}: {trials} trials of up to {trial_tokens:,} tokens, rungs at "
        f"{', '.join(f'{n:,}' for n in settings.rungs(trial_tokens))} tokens; unigram / bigram perplexity "
        f"{fmt(baselines.unigram)} / {fmt(baselines.bigram)} -> {out}")
    deadline = Deadline(max_time)
    with ExitStack() as stack:
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(RunLock(out))  # one tune at a time in a directory
        if scheduler is not None:
            from charrnn.experiments.cluster import DaskBackend, connect
            backend = DaskBackend(stack.enter_context(connect(scheduler)))
        else:
            threads = ctx.obj["threads"]
            backend = ProcessBackend(jobs, threads=threads) if jobs > 1 else SerialBackend(threads)
        stack.enter_context(closing(deadline))
        try:
            study = tuning.run_tune(settings, backend, trial_tokens, baselines, TunePrinter(), TrialLines())
            interrupted = False
        except (tuning.TuneInterrupted, KeyboardInterrupt):
            study, interrupted = tuning.open_existing(out), True
    print_leaderboard(study, best_max_time, out)
    if interrupted:
        why = f"the time budget of {max_time:g} s ran out" if deadline.expired else "interrupted"
        click.echo(f"Stopped: {why}; trials in progress checkpointed. The same command goes on from there.", err=True)
        ctx.exit(EXIT_CODES["SIGINT"])
    best = tuning.best_trial(study)
    if train_best and best is not None:
        config = TrainConfig(**{**vars(base), **best["params"], "max_tokens": None if best_max_time else trial_tokens,
                                "max_time": best_max_time, "epochs": None})
        result = training.train(config, out / "best", data_dir, ConsoleReporter(), cache_dir, ctx.obj["threads"])
        print_summary(result)


def recorded_or_planned(settings, max_time, jobs, train_data, vocab_size):
    """T: the one recorded in the study of --out, or planned from --max-time: the probe's speed
    of the middle candidate network x S x J x PLANNED_SHARE over the work of the trials."""
    path = settings.out_dir / tuning.STUDY_FILE
    if path.is_file():
        recorded = tuning.open_existing(settings.out_dir).user_attrs.get("trial_tokens")
        if recorded:
            return recorded
    middle = list(CANDIDATES)[len(CANDIDATES) // 2]
    speed = probe_speeds(train_data, vocab_size, settings.base, {middle: CANDIDATES[middle]})[middle]
    planned = round_down(int(speed * max_time * jobs * PLANNED_SHARE / (settings.trials * WORK_PER_TRIAL)))
    say(f"Probe: {middle} trains at {speed:,.0f} tokens/s here; {max_time:g} s x {jobs} job(s) -> "
        f"{planned:,} tokens a trial (--trial-tokens {tuning.whole_rungs(planned)} repeats this search exactly)")
    return planned


class Deadline:
    """Stops the search at the end of its time budget as Ctrl-C does (a SIGINT to this process:
    the trials in progress checkpoint and stop)."""

    def __init__(self, seconds):
        self.expired = False
        self.timer = None if seconds is None else threading.Timer(seconds, self.expire)
        if self.timer is not None:
            self.timer.daemon = True
            self.timer.start()

    def expire(self):
        self.expired = True
        os.kill(os.getpid(), signal.SIGINT)

    def close(self):
        if self.timer is not None:
            self.timer.cancel()


class TunePrinter(tuning.TuneReporter):
    """A line per rung started and per decision."""

    def on_bracket(self, numbers, rung, until):
        say(f"rung {rung + 1}: trials {', '.join(map(str, numbers))} train to {until:,} tokens", style="bold")

    def on_decision(self, number, rung, loss, decision):
        ppl = "-" if loss is None else fmt(math.exp(loss))
        say(f"  trial {number}: val ppl {ppl} -> {decision}")


class TrialLines(SweepReporter):
    """The sweep's events for a tune: a line when a trial's run fails or is interrupted."""

    def on_retry(self, spec, message):
        say(f"  {spec.name}: {message}; starting it again from its checkpoint")

    def on_run_end(self, outcome):
        if outcome.status not in ("done", "failed"):
            say(f"  {outcome.spec.name}: {outcome.status} {outcome.message}")


def print_leaderboard(study, best_max_time=None, out=None):
    """The trials, best first, and the best one's train command."""
    from rich.table import Table

    table = Table(title="Tune leaderboard")
    for name in ("trial", "state", "tokens", "val ppl", *tuning.TRIAL_FIELDS, "note"):
        table.add_column(name, justify="right" if name not in ("state", "cell", "note") else "left")
    for row in tuning.leaderboard(study):
        p = row["params"]
        cells = [f"{p[k]:.3g}" if isinstance(p.get(k), float) else str(p.get(k, "-")) for k in tuning.TRIAL_FIELDS]
        ppl = "-" if row["loss"] is None else fmt(math.exp(row["loss"]))
        table.add_row(str(row["number"]), row["state"], f"{row['tokens']:,}", ppl, *cells, row["note"])
    print_wide(table)  # its full width in a pipe too, as every table with many columns
    best = tuning.best_trial(study)
    if best is None:
        say("no trial has completed yet")
        return
    tokens = study.user_attrs.get("trial_tokens")
    budget = f"--max-time {best_max_time:g}" if best_max_time else f"--max-tokens {tokens}"
    say(f"best: trial {best['number']}, validation perplexity {fmt(math.exp(best['loss']))} "
        f"after {best['tokens']:,} tokens")
    say(tuning.train_command(study.user_attrs.get("corpus", "CORPUS"), best["params"], budget,
                             study.user_attrs.get("seed", 0)))
