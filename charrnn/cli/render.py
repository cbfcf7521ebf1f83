"""What the commands print: one-line messages, the training bar and summary, and rich tables.

User-provided text (corpus names, samples, paths) is printed as it is, never read as markup.
"""
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from charrnn.analysis.plot import sparkline
from charrnn.base.errors import CharrnnWarning
from charrnn.experiments.stats import describe, format_p
from charrnn.experiments.sweep import SweepReporter
from charrnn.infer.sample import unknown_summary
from charrnn.training.budget import below_one_epoch
from charrnn.training.events import Reporter


def quiet_stdout():
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. a test runner)
        pass


class PipeConsole(Console):
    """A rich Console for which a closed pipe is an exception the command line handles (as for
    click.echo), not rich's own exit with code 1."""

    def on_broken_pipe(self):
        quiet_stdout()
        raise BrokenPipeError


console = PipeConsole()


def one_line(text):
    """`text` on one line, its control characters escaped (an OSC sequence in a path or a store's
    header cannot drive the terminal through an Error: or Warning: line)."""
    return escape_controls(" ".join(str(text).split()))


def shown(value):
    """A user-provided value (a path, a corpus name) inside a line of output: every control
    character, newline and tab included, written as an escape, so it stays on its line."""
    return ANY_CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))


def warn(message):
    click.echo(f"Warning: {one_line(message)}", err=True)


def warn_unknown(unknown, count, what):
    if unknown:
        warn(f"{unknown_summary(unknown, count)} of {what} are not in the vocabulary and were read as <unk>")


@contextmanager
def charrnn_warnings():
    """While active, every CharrnnWarning is printed as `Warning: ...` on stderr (each time),
    other warnings as Python prints them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CharrnnWarning)
        show_others = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, CharrnnWarning):
                warn(message)
            else:
                show_others(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def print_wide(renderable):
    """Print a table at its full width, even past the terminal's (or the 80 columns of a pipe),
    so that no column (a chart) is cut."""
    needed = console.measure(renderable, options=console.options.update_width(10_000)).maximum
    (PipeConsole(width=needed) if needed > console.width else console).print(renderable)


CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Unicode's Cc but newline and tab
ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc


def escape_controls(text):
    """`text` with each control character other than newline and tab written as an escape
    (ESC -> \\x1b), so that a model's output cannot drive the terminal that shows it."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def say(text, **style):
    """Print user-provided text as it is: no markup, no highlighting, no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, **style)


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- corpus

def print_corpus(corpus, level, preprocess, num_tokens, vocab, top_tokens):
    say(f"{shown(corpus)}: {num_tokens:,} tokens, vocabulary of {len(vocab):,} ({level}, {preprocess})")
    table = Table()
    for column in ("rank", "token", "count", "share"):
        table.add_column(column, justify="left" if column == "token" else "right")
    for rank, (token, count) in enumerate(top_tokens, 1):
        table.add_row(str(rank), escape(repr(token)), f"{count:,}", f"{count / num_tokens:.2%}")
    console.print(table)


# ---------------------------------------------------------------------------- train

def network_words(config) -> str:
    """The network of a TrainConfig in words: "tanh rnn, hidden 256", "lstm x 2 layers, hidden
    512, dropout 0.3"."""
    cell = f"{config.activation} rnn" if config.cell == "rnn" else config.cell
    layers = f" x {config.num_layers} layers" if config.num_layers > 1 else ""
    dropout = f", dropout {config.dropout:g}" if config.dropout else ""
    return f"{cell}{layers}, hidden {config.num_hiddens}{dropout}"


class ConsoleReporter(Reporter):
    """A tqdm bar per step; a line and a sample per evaluation; a summary table at the end."""

    def on_start(self, info):
        cfg = info["config"]
        verb = f"Resuming at epoch {info['epoch']}, {info['tokens']:,} tokens:" if info["resumed"] else "Training"
        say(f"{verb} {shown(cfg.corpus)} ({info['train_tokens']:,} train / {info['val_tokens']:,} validation tokens, "
            f"vocabulary {info['vocab_size']}), {network_words(cfg)}, {info['num_params']:,} parameters "
            f"-> {shown(info['out_dir'])}")
        if cfg.init_from:
            added = info.get("added_tokens")
            say(f"Fine-tuning from {shown(cfg.init_from)} at lr {cfg.lr:.3g}"
                + ("" if added is None else f"; {len(added)} token(s) added to its vocabulary"
                   + (f": {', '.join(map(repr, added[:20]))}{' ...' if len(added) > 20 else ''}" if added else "")))
        kernel = info.get("kernel") or {}
        if kernel.get("fused"):
            say(f"Fused kernels (numba {kernel['numba']}), compiled or loaded from cache in {kernel['compile_s']:.2f} s")
        if info.get("procs", 1) > 1:
            say(f"on {info['procs']} processes (MPI), the batch of {cfg.batch_size} rows split among them")
        if info.get("allowed"):
            self.on_budget(info["allowed"])
        # under `train --procs` rank 0 writes through mpiexec's pipes to the launcher's terminal
        self.bar = tqdm(total=info["total_tokens"], initial=info["tokens"], unit="tok", unit_scale=True,
                        dynamic_ncols=True, disable=False if os.environ.get("CHARRNN_TERMINAL") else None)

    def on_budget(self, allowed):
        about = "about " if allowed["estimated"] else ""
        line = (f"Budget: {about}{allowed['tokens']:,} tokens = {allowed['epochs']:.3g} epochs, "
                f"{allowed['steps']:,} steps")
        short = below_one_epoch(allowed)
        with tqdm.external_write_mode():
            say(line + (f" -- {short}" if short else ""), style="yellow" if short else None)

    def on_step(self, stats):
        self.bar.update(stats["tokens"] - self.bar.n)
        self.bar.set_postfix_str(  # the bar itself shows tokens/s
            f"epoch {stats['epoch']} loss {stats['loss']:.3f} ppl {stats['perplexity']:.2f} "
            f"|grad| {stats['grad_norm']:.2f}" + (f" skipped {stats['skipped']}" if stats["skipped"] else ""),
            refresh=False)

    def on_validation(self, record):
        with tqdm.external_write_mode():
            best = " [green](best)[/green]" if record["best"] else ""
            console.print(f"[bold]epoch {record['epoch']}[/bold] {record['tokens']:,} tokens  "
                          f"train ppl {fmt(record['train_ppl'], 2)}  val ppl {fmt(record['val_ppl'], 2)}{best}  "
                          f"[dim]lr {record['lr']:.2g}[/dim]")
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
        ("validation perplexity", fmt(result.val_ppl) + capped(result)), ("best validation perplexity", best),
        *baseline_rows(result.baselines),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"), ("wall time", f"{result.wall_time:.1f} s"),
    ]
    if p.skipped:
        rows.insert(3, ("skipped minibatches", str(p.skipped)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    say(f"checkpoint: {shown(result.checkpoint)}\nbest checkpoint: {shown(result.best or '-')}")


def capped(result):
    """" (first N of M tokens: --max-time cap)" when the evaluation was capped (charrnn.training.budget)."""
    total = result.val_total
    if result.val_tokens is None or total is None or result.val_tokens >= total:
        return ""
    return f" (first {result.val_tokens:,} of {total:,} tokens: --max-time cap)"


def baseline_rows(baselines):
    """The summary's rows for charrnn.data.baselines.Baselines: what the network must beat."""
    if baselines is None:
        return []
    return [("unigram / bigram perplexity", f"{fmt(baselines.unigram)} / {fmt(baselines.bigram)} (validation split)")]


def print_baselines(baselines):
    say(f"validation split ({baselines.scored:,} tokens): unigram perplexity {fmt(baselines.unigram)}, "
        f"bigram perplexity {fmt(baselines.bigram)} (add-one smoothed, counted on "
        f"{baselines.counted:,} training tokens)")


class SweepProgress(SweepReporter):
    """One bar over the runs of a sweep (done / total, ETA) and a line per run that ends."""

    def on_sweep_start(self, total, done):
        self.bar = tqdm(total=total, initial=done, unit="run", dynamic_ncols=True, disable=None)
        if done:
            self.write(f"{done} of {total} runs finished before: reused")

    def on_retry(self, spec, message):
        self.write(f"{spec.name}: {message}; starting it again from its checkpoint")

    def on_run_end(self, outcome):
        if outcome.reused:
            return
        spec, summary = outcome.spec, outcome.summary
        if outcome.status == "done":
            seconds = summary.curve[-1]["elapsed"] if summary.curve else None
            self.write(f"done {spec.truncation} seed {spec.seed}: final val ppl {fmt(summary.final_val_ppl)}, "
                       f"best {fmt(summary.best_val_ppl)}" + (f" ({seconds:.1f} s of training)" if seconds else ""))
            self.bar.update(1)
        else:
            self.write(f"{outcome.status} {spec.truncation} seed {spec.seed}: {outcome.message}")
            self.bar.update(outcome.status == "failed")

    def write(self, text):
        with tqdm.external_write_mode():
            say(text)

    def close(self):
        if hasattr(self, "bar"):
            self.bar.close()


def print_comparison(config, comparison):
    """The table of a charrnn.experiments.compare.Comparison: per strategy over its seeds, the mean and
    interval of the final and best validation perplexity and the paired difference from the
    baseline; then the verdict."""
    seeds = comparison.num_seeds()
    tokens = max(s.tokens for s in comparison.strategies())
    table = Table(title=f"Truncation compared: {config.corpus}, {network_words(config)}, batch "
                        f"{config.batch_size} x {config.num_steps}, {tokens:,} tokens, {seeds} seed"
                        f"{'s' if seeds != 1 else ''} from {config.seed}: mean ± half the "
                        f"{comparison.confidence:.0%} interval; Δ final: minus {comparison.baseline}, seed by "
                        f"seed; ‖g‖: mean gradient norm", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("truncation", "runs", "final val ppl", "best val ppl", "Δ final", "p", "‖g‖"):
        table.add_column(column, justify="left" if column == "truncation" else "right", no_wrap=True)
    differences = {d.strategy: d for d in comparison.differences()}
    for strategy in comparison.strategies():
        diff = differences.get(strategy.truncation)
        table.add_row(strategy.truncation, str(len(strategy.runs)), describe(strategy.final), describe(strategy.best),
                      "-" if diff is None else signed(diff.difference, 2),
                      "-" if diff is None else format_p(diff.p_value), fmt(strategy.mean_grad_norm))
    print_wide(table)
    say(comparison.verdict())



def print_next_tokens(prefix, probs):
    """The table of charrnn.infer.sample.next_token_probs: the most likely tokens after `prefix`."""
    table = Table(title=escape(f"Next token after {prefix!r}"))
    for column in ("rank", "token", "probability"):
        table.add_column(column, justify="left" if column == "token" else "right")
    for rank, (token, p) in enumerate(probs, 1):
        table.add_row(str(rank), escape(repr(token)), f"{p:.4f}")
    console.print(table)


def signed(estimate, digits):
    """'+0.123 ± 0.045', or '+0.123' for a single pair."""
    text = f"{estimate.mean:+.{digits}f}"
    return text if estimate.half_width is None else f"{text} ± {estimate.half_width:.{digits}f}"


def print_histories(histories):
    """The table of `charrnn plot` without --out: per run (charrnn.analysis.curves.RunHistory), its last
    and best perplexities and both curves as one-line charts on one (log) scale."""
    table = Table(title="Perplexity against training tokens (charts: log scale, shared by all runs)")
    for column in ("run", "tokens", "train ppl", "val ppl", "best val", "training", "validation"):
        table.add_column(column, justify="left" if column in ("run", "training", "validation") else "right",
                         no_wrap=True)
    every = [[p for p in h.train_ppl + h.val_ppl if p is not None] for h in histories]
    for history in histories:
        last = {name: next((p for p in reversed(values) if p is not None), None)
                for name, values in (("train", history.train_ppl), ("val", history.val_ppl))}
        charts = [sparkline([math.nan if p is None else p for p in values], width=30, scale_with=every)
                  for values in (history.train_ppl, history.val_ppl)]
        table.add_row(escape(history.name), f"{history.tokens[-1]:,}", fmt(last["train"]), fmt(last["val"]),
                      fmt(history.best_val_ppl), *charts)
    print_wide(table)


# ---------------------------------------------------------------------------- evaluate / gradcheck

def print_evaluation(path, result):
    """The table of a charrnn.infer.evaluate.Evaluation of the checkpoint at `path`."""
    table = Table(title=escape(f"Evaluation of {path}"), show_header=False)
    for name, value in (("text", escape(result.source)), ("tokens", f"{result.tokens:,}"),
                        ("cross-entropy (nats/token)", f"{result.loss:.4f}"),
                        ("perplexity", f"{result.perplexity:.3f}")):
        table.add_row(name, value)
    if getattr(result, "records", None):
        table.add_row("records", f"{result.records:,}")
        table.add_row("nats per record", f"{result.nats_per_record:.4f}")
        table.add_row("nats per character (</s> counted)", f"{result.loss:.4f}")
    console.print(table)


def print_gradcheck(report):
    """One table per check of a charrnn.analysis.gradcheck.GradcheckReport, then the verdict."""
    checks = {}
    for row in report.rows:
        checks.setdefault(row.check, []).append(row)
    for check, rows in checks.items():
        table = Table(title=check)
        tested_by_z = any((check, row.param) in report.z_scores for row in rows)  # the measure it bounds
        columns = ("parameter", "max abs error", "max rel error", *(["max |mean-full|/s.e."] * tested_by_z),
                   "result")
        for column in columns:
            table.add_column(column, justify="left" if column == "parameter" else "right")
        for row in rows:
            z = [f"{report.z_scores[check, row.param]:.2f}"] if tested_by_z else []
            table.add_row(row.param, f"{row.max_abs_err:.2e}", f"{row.max_rel_err:.2e}", *z,
                          "[green]pass[/green]" if row.passed else "[red]FAIL[/red]")
        console.print(table)
    console.print("[green]all checks passed[/green]" if report.passed else "[red]some checks failed[/red]")


# ---------------------------------------------------------------------------- analyze

def print_analysis(result, source):
    """Rich tables of a charrnn.analysis.gradients.GradientAnalysis."""
    table = Table(title=f"Gradient analysis of {source}: {result.batch_size} x {result.num_steps} window, "
                        f"{result.network}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [("loss (nats/token)", f"{result.loss:.4f}")]
    if result.spectral_radius is not None:
        rows += [("spectral radius ρ(W_hh)", f"{result.spectral_radius:.4g}"),
                 ("largest singular value σ_max(W_hh)", f"{result.largest_singular_value:.4g}")]
    else:
        rows += [("state s_t of the Jacobian product", result.state_description)]
    rows += [(f"measured growth per step {result.jacobian_name(final=True)}^(1/T)", f"{result.growth_rate:.4g}")]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    bounds = result.spectral_radius is not None
    curves = Table(title="Over the window, t = 1 .. T (charts: log scale"
                         + (", the last three on one scale)" if bounds else ")"))
    for column in ("quantity", "t = 1", f"t = {result.num_steps // 2}", f"t = {result.num_steps}", "chart"):
        curves.add_column(column, justify="left" if column in ("quantity", "chart") else "right")
    middle = max(result.num_steps // 2 - 1, 0)
    jacobian_curves = [result.jacobian_norms, result.predicted_norms, result.singular_bound] if bounds else None
    named = [("‖∂L/∂h_t‖", result.hidden_grad_norms, None),
             (f"{result.jacobian_name()} measured", result.jacobian_norms, jacobian_curves)]
    if bounds:
        named += [("ρ^t (eq. 9.7.15, linear)", result.predicted_norms, jacobian_curves),
                  ("σ_max^t (bound)", result.singular_bound, jacobian_curves)]
    for name, values, scale_with in named:
        curves.add_row(name, f"{values[0]:.3e}", f"{values[middle]:.3e}", f"{values[-1]:.3e}",
                       sparkline(values, scale_with=scale_with))
    print_wide(curves)
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
