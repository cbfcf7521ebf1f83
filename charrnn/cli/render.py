"""What the commands print: one-line messages, the training bar and summary, and rich tables.

User-provided text (corpus names, samples, paths) is printed as it is, never read as markup.
"""
import re

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from ..plot import sparkline
from ..train import Reporter

console = Console()


def one_line(text):
    return " ".join(str(text).split())


def warn(message):
    click.echo(f"Warning: {one_line(message)}", err=True)


def warn_unknown(unknown, what):
    if unknown:
        shown = ", ".join(repr(token) for token in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        warn(f"{len(unknown)} token(s) of {what} are not in the vocabulary and were read as <unk>: {shown}")


CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Unicode's Cc but newline and tab


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
    say(f"{corpus}: {num_tokens:,} tokens, vocabulary of {len(vocab):,} ({level}, {preprocess})")
    table = Table()
    for column in ("rank", "token", "count", "share"):
        table.add_column(column, justify="left" if column == "token" else "right")
    for rank, (token, count) in enumerate(top_tokens, 1):
        table.add_row(str(rank), escape(repr(token)), f"{count:,}", f"{count / num_tokens:.2%}")
    console.print(table)


# ---------------------------------------------------------------------------- train

class ConsoleReporter(Reporter):
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

    def on_validation(self, record):
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


def print_comparison(config, results):
    """The table of a charrnn.compare run: one row per truncation strategy."""
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


# ---------------------------------------------------------------------------- evaluate / gradcheck

def print_evaluation(path, result):
    """The table of a charrnn.evaluate.Evaluation of the checkpoint at `path`."""
    table = Table(title=escape(f"Evaluation of {path}"), show_header=False)
    for name, value in (("text", escape(result.source)), ("tokens", f"{result.tokens:,}"),
                        ("cross-entropy (nats/token)", f"{result.loss:.4f}"),
                        ("perplexity", f"{result.perplexity:.3f}")):
        table.add_row(name, value)
    console.print(table)


def print_gradcheck(report):
    """One table per check of a charrnn.gradcheck.GradcheckReport, then the verdict."""
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


# ---------------------------------------------------------------------------- analyze

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
