"""The history of a run read back from its metrics.jsonl: perplexity against tokens.

Each evaluation of a run appends one record (charrnn.training.loop); a resumed run first drops the
records after its checkpoint, so the file reads as one run. A torn last line (a run killed while
writing) is skipped.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from charrnn.training.outdir import METRICS
from charrnn.base.checks import is_finite, is_integer
from charrnn.base.errors import CharrnnError


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
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # torn, foreign or hostile lines
            continue
        if isinstance(record, dict) and is_integer(record.get("tokens")) and 0 <= record["tokens"] < 2**63:
            records.append(record)
    if not records:
        raise CharrnnError(f"{path} holds no evaluation yet")
    records.sort(key=lambda record: record["tokens"])
    return RunHistory(str(run_dir), [r["tokens"] for r in records],
                      [perplexity_or_none(r.get("train_ppl")) for r in records],
                      [perplexity_or_none(r.get("val_ppl")) for r in records])


def perplexity_or_none(value):
    """A perplexity as a run records it (a finite number >= 1, else null) -> it, or None."""
    return float(value) if is_finite(value) and value >= 1 else None
