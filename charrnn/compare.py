"""Full, regularly truncated and randomly truncated BPTT, trained side by side (d2l §9.7.1).

The same network from the same seed is trained once per truncation strategy, every other setting
(budget in tokens or seconds included) shared, each run in its own subdirectory of the output
directory with its own checkpoints and metrics.jsonl (charrnn.train). The result per strategy:
validation perplexity over time, the final perplexity, tokens/s and the mean gradient norm
(before clipping).
"""
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from .analysis import DEFAULT_TRUNCATIONS as TRUNCATED
from .errors import CharrnnError
from .model import parse_truncation
from .train import METRICS, Reporter, train

DEFAULT_TRUNCATIONS = ("full", *TRUNCATED)


@dataclass
class StrategyResult:
    """One strategy's run. curve: its evaluations, dicts with tokens, elapsed (s), val_ppl."""

    truncation: str
    out_dir: Path
    reason: str  # what stopped the run (charrnn.train.TrainResult.reason)
    tokens: int
    final_val_ppl: float | None
    tokens_per_s: float
    mean_grad_norm: float | None  # over the minibatches of the run, before clipping
    curve: list


class GradNormRecorder(Reporter):
    """Keeps the gradient norm of every step and passes every event on to `inner`."""

    def __init__(self, inner=None):
        self.inner = inner or Reporter()
        self.grad_norms = []

    def on_start(self, info):
        self.inner.on_start(info)

    def on_step(self, stats):
        self.grad_norms.append(stats["grad_norm"])
        self.inner.on_step(stats)

    def on_validation(self, record):
        self.inner.on_validation(record)

    def on_end(self, result):
        self.inner.on_end(result)


def run_name(truncation) -> str:
    """The subdirectory of a strategy: "full", "regular-10", "randomized-0.9"."""
    kind, value = parse_truncation(truncation)
    return kind if value is None else f"{kind}-{value:g}"


def compare(config, out_dir, truncations=DEFAULT_TRUNCATIONS, data_dir=None, reporter_for=None,
            cache_dir=None) -> list:
    """Train `config` (a charrnn.train.TrainConfig) once per truncation -> [StrategyResult].

    Runs go to out_dir/run_name(truncation). reporter_for(truncation) -> a Reporter for that
    run's progress, or None. A run stopped by SIGINT/SIGTERM ends the comparison: its result is
    the last one.
    """
    names = [run_name(truncation) for truncation in truncations]
    if not names or len(set(names)) != len(names):
        raise CharrnnError(f"truncations to compare must be distinct and at least one, got {list(truncations)}")
    results = []
    for truncation, name in zip(truncations, names):
        recorder = GradNormRecorder(reporter_for(truncation) if reporter_for else None)
        run = train(replace(config, truncation=truncation), Path(out_dir) / name, data_dir, recorder, cache_dir)
        norms = [n for n in recorder.grad_norms if math.isfinite(n)]
        results.append(StrategyResult(
            truncation, run.out_dir, run.reason, run.progress.tokens, run.val_ppl, run.tokens_per_s,
            sum(norms) / len(norms) if norms else None, read_curve(run.out_dir / METRICS)))
        if run.reason in ("SIGINT", "SIGTERM"):  # the user stops the comparison, not one run
            break
    return results


def read_curve(path) -> list:
    """Validation perplexity over a run from its metrics.jsonl -> [{tokens, elapsed, val_ppl}]."""
    curve = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        curve.append({key: record.get(key) for key in ("tokens", "elapsed", "val_ppl")})
    return curve
