"""The history of a run read back from its metrics.jsonl: perplexity against tokens.

Each evaluation of a run appends one record (charrnn.run); a resumed run first drops the
records after its checkpoint, so the file reads as one run. Every reader takes the records as
`metrics_lines` gives them: a line is parsed as untrusted JSON (charrnn.io.parse_json: no NaN,
no nesting past the stack, at most MAX_META_BYTES, read a line at a time), and a torn, foreign
or hostile line, or one without a token count, is skipped.
"""
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import METRICS
from .checks import is_finite, is_integer
from .errors import CharrnnError
from .io import MAX_META_BYTES, parse_json


def metrics_lines(path):
    """(line, record) for each line of a metrics.jsonl, record None for a line that is not a
    run's evaluation (a JSON object with a token count in [0, 2^63)). A line longer than
    MAX_META_BYTES is skipped unread. No file -> nothing."""
    path = Path(path)
    if not path.is_file():  # nor a FIFO, which would block
        return
    with open(path, "rb") as f:
        while line := f.readline(MAX_META_BYTES + 1):
            if len(line) > MAX_META_BYTES:
                while line and not line.endswith(b"\n"):
                    line = f.readline(MAX_META_BYTES)
                continue
            try:
                record = parse_json(line, "a metrics record")
            except CharrnnError:
                record = None
            if record is not None and not (is_integer(record.get("tokens")) and 0 <= record["tokens"] < 2**63):
                record = None
            yield line, record


def metrics_records(path) -> list:
    """The records of a metrics.jsonl that are a run's evaluations, in the file's order."""
    return [record for _, record in metrics_lines(path) if record is not None]


@dataclass
class RunHistory:
    """One run's evaluations in order: tokens trained, training and validation perplexity (None
    where there is none: no step since the last evaluation, or a non-finite value)."""

    name: str
    tokens: list
    train_ppl: list
    val_ppl: list

    @property
    def best_val_ppl(self):
        return min((p for p in self.val_ppl if p is not None), default=None)


def read_history(run_dir) -> RunHistory:
    """The evaluations in `run_dir`/metrics.jsonl -> RunHistory; no such file -> CharrnnError."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        what = "no such directory" if not Path(run_dir).is_dir() else f"no {METRICS} in it"
        raise CharrnnError(f"{run_dir} is not a run directory ({what})")
    records = [{key: record.get(key) for key in ("tokens", "train_ppl", "val_ppl")}  # not the samples
               for record in metrics_records(path)]
    if not records:
        raise CharrnnError(f"{path} holds no evaluation yet")
    records.sort(key=lambda record: record["tokens"])
    return RunHistory(str(run_dir), [r["tokens"] for r in records],
                      [perplexity_or_none(r.get("train_ppl")) for r in records],
                      [perplexity_or_none(r.get("val_ppl")) for r in records])


def perplexity_or_none(value):
    """A perplexity as a run records it (a finite number >= 1, else null) -> it, or None."""
    return float(value) if is_finite(value) and value >= 1 else None
