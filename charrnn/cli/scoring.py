"""`score`, and the generation of `sample` beyond one plain continuation: many samples in one
batch (-n), records, --top-p, --beam, --stop, --prime-file, --scores, --json, --novelty."""
import json
import math
import sys
from pathlib import Path

import click

from charrnn.base.checks import is_text
from charrnn.cli.options import FiniteRange, checkpoint_argument
from charrnn.cli.render import escape_controls
from charrnn.data.records import is_records_vocab
from charrnn.infer.generation import sample as generate, score as score_texts
from charrnn.training.checkpoint import load_checkpoint

BATCH_OPTIONS = ("num_samples", "top_p", "beam", "stop", "prime_file", "scores", "as_json", "novelty", "only_new")


def batch_options(command):
    """The options of `sample` that this module handles."""
    for option in reversed([
        click.option("-n", "--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Samples to generate, as the rows of one batch; a records model's end at </s>."),
        click.option("--top-p", type=FiniteRange(0, 1, min_open=True), default=None, metavar="P",
                     help="Nucleus sampling: draw only from the most likely tokens whose probabilities sum to P."),
        click.option("--beam", type=click.IntRange(min=1), default=None, metavar="K",
                     help="Beam search of K sequences, length-normalised (opt-in: beams are conservative)."),
        click.option("--stop", default=None, metavar="STRING",
                     help="A stream model's sample ends after this string."),
        click.option("--prime-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Read the prefix from this file."),
        click.option("--scores", is_flag=True,
                     help="After each sample, tab-separated: its log-probability (nats) and perplexity."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON, whole at the end."),
        click.option("--novelty", is_flag=True,
                     help="Report the share of records found verbatim in the training and held-out records."),
        click.option("--only-new", is_flag=True, help="Keep only the records not found in the text (--novelty)."),
    ]):
        command = option(command)
    return command


def wants_batch(ckpt, options) -> bool:
    """Whether `sample` takes this module's path: a records model, or one of its options given."""
    given = {name: value for name, value in options.items() if name in BATCH_OPTIONS}
    plain = {"num_samples": 1, "top_p": None, "beam": None, "stop": None, "prime_file": None}
    return is_records_vocab(ckpt.vocab) or any(given.get(k, v) not in (v, False) for k, v in plain.items()) or any(
        given.get(k) for k in ("scores", "as_json", "novelty", "only_new"))


def read_prime_file(path) -> str:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint="'--prime-file'") from None
    if not text:
        raise click.BadParameter(f"{path} is empty: a prime file must hold the text to start from",
                                 param_hint="'--prime-file'")
    return text


def run_batch(ctx, ckpt, prefix, length, temperature, top_k, greedy, seed, num_samples, top_p, beam, stop,
              prime_file, scores, as_json, novelty, only_new, data_dir=None, cache_dir=None):
    """`sample` with this module's options; prints one sample per line (a record, or a stream
    model's continuation with its line breaks escaped as \\n when -n > 1)."""
    if num_samples < 1:
        raise click.UsageError(f"-n must be at least 1, got {num_samples}", ctx)
    if prime_file is not None:
        if prefix is not None:
            raise click.UsageError("give the prefix with --prefix or --prime-file, not both", ctx)
        prefix = read_prime_file(prime_file)
    if beam is not None and (num_samples != 1 or greedy or top_k or top_p or temperature != 1.0):
        raise click.UsageError("--beam searches for the one most likely sequence; it takes no -n, --greedy, "
                               "--top-k, --top-p or --temperature", ctx)
    if only_new:
        novelty = True
    records = is_records_vocab(ckpt.vocab)
    live = sys.stdout.isatty() and not as_json and num_samples == 1 and beam is None
    shown = []

    def on_step(tokens, done):  # a terminal sees the one sample as it is generated
        if not done[0]:
            text = ckpt.vocab.decode([int(tokens[0])], ckpt.config.level)
            shown.append(text)
            click.echo(escape_controls(text), nl=False)

    if live and prefix and not records:
        click.echo(escape_controls(prefix), nl=False)
    results = generate(ckpt, num_samples, length, prefix, temperature, top_k, top_p, greedy, beam, stop, seed,
                       novelty, only_new, data_dir, cache_dir, on_step if live and not only_new else None)
    if as_json:
        click.echo(json.dumps([{"text": r.text, "log_prob": r.log_prob, "tokens": r.tokens,
                                "perplexity": r.perplexity if math.isfinite(r.perplexity) else None,
                                "ended": r.ended, **({"found": r.found} if novelty else {})} for r in results],
                              ensure_ascii=False))
        return results
    if live and shown:
        click.echo("")
    for r in results:
        text = r.text if num_samples == 1 and not records else r.text.replace("\n", "\\n")
        text = escape_controls(text) if sys.stdout.isatty() else text
        if scores:  # on the sample's line: one sample per line still
            text += (f"\t{r.log_prob:.4f}\t{r.perplexity:.4g}" + (f"\t{r.found}" if r.found else ""))
        if not (live and shown) or scores:
            click.echo(text)
    if novelty:
        print_novelty(results, num_samples, only_new)
    return results


def print_novelty(results, num_samples, only_new):
    """The shares of generated records found in the training and held-out records (stderr)."""
    if only_new:
        click.echo(f"novelty: {len(results)} of {num_samples} records are new (the copies were left out)", err=True)
        return
    n = len(results)
    counts = {where: sum(r.found == where for r in results) for where in ("train", "val", "new")}
    click.echo(f"novelty: {counts['new']} of {n} records new ({counts['new'] / n:.1%}); "
        f"{counts['train']} found in the training records ({counts['train'] / n:.1%}), "
        f"{counts['val']} in the held-out ones ({counts['val'] / n:.1%})", err=True)


@click.command()
@checkpoint_argument
@click.argument("texts", nargs=-1)
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Score the lines of this file (with --records) or the file as one text.")
@click.option("--prefix", default=None, help="Text read before each one, not scored.")
@click.option("--records/--no-records", default=None,
              help="Score each text as a record, <s> text </s> [default: whether the model was trained on records].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def score(checkpoint, texts, path, prefix, records, as_json):
    """Log-probability of TEXTS (or of --file) under a trained model: nats, and nats and bits per
    character. A records model scores each text (each line of --file) as a record, its </s>
    included; a stream model scores the text after --prefix, or from the start state."""
    ckpt = load_checkpoint(checkpoint)
    if path is not None and texts:
        raise click.UsageError("give TEXTS or --file, not both")
    if path is not None:
        try:
            content = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise click.BadParameter(f"{path} is not UTF-8 text", param_hint="'--file'") from None
        as_records = is_records_vocab(ckpt.vocab) if records is None else records
        texts = [line for line in content.splitlines() if line] if as_records else [content]
    if not texts:
        raise click.UsageError("nothing to score: give TEXTS or --file")
    for text in (*texts, prefix or ""):
        if not is_text(text):
            raise click.BadParameter(f"{text!r} is not UTF-8 text")
    results = score_texts(ckpt, texts, prefix, records)
    if as_json:
        click.echo(json.dumps([{"text": r.text, "nats": r.nats, "tokens": r.tokens,
                                "nats_per_char": r.nats_per_char if r.tokens else None,
                                "bits_per_char": r.bits_per_char if r.tokens else None} for r in results],
                              ensure_ascii=False))
        return
    total = sum(r.nats for r in results)
    count = sum(r.tokens for r in results)
    for r in results:
        per = f"{r.nats_per_char:.4f} nats/char, {r.bits_per_char:.4f} bits/char" if r.tokens else "nothing scored"
        click.echo(f"{r.nats:10.4f} nats  {r.tokens:6d} tokens  {per}  {escape_controls(r.text)[:60]}")
    if len(results) > 1 and count:
        click.echo(f"{total:10.4f} nats  {count:6d} tokens  {total / count:.4f} nats/char, "
                   f"{total / count / math.log(2):.4f} bits/char  (all)")
