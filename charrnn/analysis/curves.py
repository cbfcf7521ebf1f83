"""The history of a run read back from its metrics.jsonl: perplexity against tokens.

Each evaluation of a run appends one record (charrnn.training.loop); a resumed run first drops the
records after its checkpoint, so the file reads as one run. The records are read as
charrnn.training.outdir.metrics_records gives them: each line parsed as untrusted JSON, a torn,
foreign or hostile line, or one without a token count, skipped.
"""
from dataclasses import dataclass
from pathlib import Path

from charrnn.base.checks import is_finite
from charrnn.base.errors import CharrnnError
from charrnn.training.outdir import METRICS, metrics_records


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
