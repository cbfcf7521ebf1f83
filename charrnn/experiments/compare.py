"""Full, regularly truncated and randomly truncated BPTT, trained side by side from several seeds
(d2l §9.7.1), and what the runs support (charrnn.experiments.stats).

A comparison is a sweep of runs: every strategy (a truncation) from seeds s0, s0 + 1, ..., all
other settings shared. The seed changes the initialisation and the truncation draws; the data
order is the same for all runs (TrainConfig.data_seed = s0), so runs of the same seed are paired.
Each run lives in its own directory, out_dir/<strategy>-seed<s> (charrnn.experiments.runs), which is its
result: running a comparison again reuses finished runs, resumes interrupted ones and trains
only what is missing. A run's result depends on its settings and seed only, not on where or
beside what it ran (charrnn.experiments.sweep, charrnn.experiments.cluster).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from charrnn.analysis.gradients import DEFAULT_TRUNCATIONS as TRUNCATED
from charrnn.base.errors import CharrnnError
from charrnn.base.io import save_json
from charrnn.experiments.runs import RunSpec, run_state
from charrnn.experiments.stats import CONFIDENCE, mean_curve, mean_interval, paired_difference, verdict
from charrnn.experiments.sweep import SerialBackend, SweepReporter
from charrnn.nn.truncation import parse_truncation

DEFAULT_TRUNCATIONS = ("full", *TRUNCATED)
SWEEP = "sweep.json"  # the runs of a sweep directory and the settings they share


def run_name(truncation) -> str:
    """A strategy as a name: "full", "regular-10", "randomized-0.9"."""
    kind, value = parse_truncation(truncation)
    return kind if value is None else f"{kind}-{value:g}"


def plan(config, out_dir, truncations=DEFAULT_TRUNCATIONS, num_seeds=1, data_dir=None, cache_dir=None) -> list:
    """The runs of a comparison -> [RunSpec], strategy by strategy, seeds config.seed, +1, ...

    Every run keeps the data order of config (its data_seed, else its seed).
    """
    names = [run_name(truncation) for truncation in truncations]
    if not names or len(set(names)) != len(names):
        raise CharrnnError(f"truncations to compare must be distinct and at least one, got {list(truncations)}")
    if not (isinstance(num_seeds, int) and num_seeds >= 1):
        raise CharrnnError(f"the number of seeds must be at least 1, got {num_seeds!r}")
    out_dir = Path(out_dir).absolute()
    base = replace(config, data_seed=config.order_seed)
    return [RunSpec(f"{name}-seed{seed}", replace(base, truncation=truncation, seed=seed),
                    out_dir / f"{name}-seed{seed}", data_dir, cache_dir)
            for truncation, name in zip(truncations, names)
            for seed in range(config.seed, config.seed + num_seeds)]


def shared_settings(config) -> dict:
    """The settings all runs of a comparison of `config` share: all but truncation and seed."""
    return {k: v for k, v in asdict(config).items() if k not in ("truncation", "seed")}


def default_out_dir(config, root="runs") -> Path:
    """runs/compare-<corpus>-<hash of the shared settings>: the same command finds its runs again."""
    shared = shared_settings(replace(config, data_seed=config.order_seed))
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / f"compare-{Path(config.corpus).stem or 'corpus'}-{digest}"


def write_sweep_file(out_dir, specs) -> None:
    """out_dir/sweep.json: the runs of the sweep (also how cluster workers find the directory)."""
    shared = shared_settings(specs[0].config)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_json(Path(out_dir) / SWEEP, {"runs": [spec.name for spec in specs], "config": shared})


# ---------------------------------------------------------------------------- the comparison

@dataclass
class StrategyStats:
    """One strategy over its seeds: the mean and interval of its final and best perplexity."""

    truncation: str
    runs: list  # RunSummary, by seed
    final: object  # charrnn.experiments.stats.Estimate
    best: object
    mean_grad_norm: float | None
    tokens: int


@dataclass
class Comparison:
    """The runs of a sweep, what failed or was interrupted, and their statistics against `baseline`."""

    truncations: list
    summaries: list  # RunSummary of every finished run
    failed: dict  # run name -> message
    baseline: str = "full"
    confidence: float = CONFIDENCE
    interrupted: dict = field(default_factory=dict)  # run name -> message: stopped, though the sweep was not

    def strategies(self) -> list:
        out = []
        for truncation in self.truncations:
            runs = [s for s in self.summaries if s.truncation == truncation and s.final_val_ppl is not None]
            if not runs:
                continue
            norms = [r.mean_grad_norm for r in runs]
            out.append(StrategyStats(
                truncation, runs, mean_interval([r.final_val_ppl for r in runs], self.confidence),
                mean_interval([r.best_val_ppl for r in runs], self.confidence),
                None if None in norms else sum(norms) / len(norms), runs[0].tokens))
        return out

    def differences(self, what="final_val_ppl") -> list:
        """Each strategy minus the baseline, seed by seed -> [charrnn.experiments.stats.PairedDifference]."""
        by_seed = {s.truncation: {r.seed: getattr(r, what) for r in s.runs} for s in self.strategies()}
        if self.baseline not in by_seed:
            return []
        return [paired_difference(t, self.baseline, values, by_seed[self.baseline], self.confidence)
                for t, values in by_seed.items() if t != self.baseline]

    def verdict(self) -> str:
        return verdict(self.differences(), confidence=self.confidence)

    def num_seeds(self) -> int:
        return len({s.seed for s in self.summaries})

    def mean_curves(self) -> dict:
        """truncation -> (tokens, mean validation perplexity, band low, band high) over its seeds."""
        return {s.truncation: mean_curve([curve_of(r) for r in s.runs], self.confidence) for s in self.strategies()}

    def difference_curves(self) -> dict:
        """truncation -> (tokens, mean of its perplexity minus the baseline's, seed by seed, band
        low, band high), for every strategy but the baseline."""
        by_seed = {s.truncation: {r.seed: curve_of(r) for r in s.runs} for s in self.strategies()}
        base = by_seed.get(self.baseline, {})
        out = {}
        for truncation, curves in by_seed.items():
            pairs = [(curves[seed], base[seed]) for seed in sorted(set(curves) & set(base))]
            if truncation != self.baseline and pairs:
                out[truncation] = mean_curve([{x: a[x] - b[x] for x in set(a) & set(b)} for a, b in pairs],
                                             self.confidence)
        return out


def curve_of(summary) -> dict:
    """tokens -> validation perplexity of one run."""
    return {p["tokens"]: p["val_ppl"] for p in summary.curve if p["val_ppl"] is not None}


def compare(config, out_dir, truncations=DEFAULT_TRUNCATIONS, num_seeds=1, data_dir=None, backend=None,
            reporter=None, baseline=None, cache_dir=None) -> tuple:
    """Train, resume or reuse every run of the comparison -> (Comparison, interrupted: bool).

    backend: a charrnn.experiments.sweep backend (default: one run after the other in this process);
    reporter: a charrnn.experiments.sweep.SweepReporter; baseline: the strategy the others are set against
    (default: the first); data_dir, cache_dir: where the text and its token store are.
    """
    specs = plan(config, out_dir, truncations, num_seeds, data_dir, cache_dir)
    baseline = truncations[0] if baseline is None else baseline
    if baseline not in truncations:
        raise CharrnnError(f"the baseline {baseline} is not among the strategies compared")
    done = {spec.name for spec in specs if run_state(spec) == "done"}  # checks every directory first
    write_sweep_file(out_dir, specs)
    outcomes, interrupted = (backend or SerialBackend()).run(specs, done, reporter or SweepReporter())
    summaries = [o.summary for o in outcomes if o.status == "done"]
    failed = {o.spec.name: o.message for o in outcomes if o.status == "failed"}
    stopped = {o.spec.name: o.message or o.status for o in outcomes if o.status in ("interrupted", "not started")}
    return Comparison(list(truncations), summaries, failed, baseline, interrupted=stopped), interrupted
