"""One run of a sweep, as a directory: bring it to its budget (train, resume, or find it done)
and read its result back.

A run's directory is its result: charrnn.training.start's checkpoints and metrics.jsonl, and
grad_norms.json (the running sum of the gradient norms as of the checkpoint's step, so that a
resumed run keeps its mean). Whoever executes a run (charrnn.experiments.sweep, charrnn.experiments.cluster) only says
how it went; the numbers are read from the directory.
"""
from __future__ import annotations

import json
import math
import os
import signal
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

from charrnn.analysis.curves import perplexity_or_none
from charrnn.base.checks import is_finite, is_integer
from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.base.io import save_json
from charrnn.runtime.lock import RunLock
from charrnn.runtime.signals import STOP_REASONS
from charrnn.runtime.threads import DEFAULT_THREADS
from charrnn.training.checkpoint import load_checkpoint
from charrnn.training.config import BUDGET_FIELDS, MATHS_FIELDS, TrainConfig
from charrnn.training.events import Reporter
from charrnn.training.finetune import PARENT
from charrnn.training.loop import budget_reached
from charrnn.training.outdir import BEST, CHECKPOINT, CONFIG, METRICS, VOCAB, has_evaluation, metrics_records
from charrnn.training.schedule import BUDGET_SCHEDULES
from charrnn.training.start import resume, train

GRAD_NORMS = "grad_norms.json"  # running sum of the gradient norms, as of the checkpoint's step


class RunInterrupted(CharrnnError):
    """A run stopped by a signal or a stop request; its checkpoint lets it resume."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its directory (named by strategy and seed) and its full settings."""

    name: str
    config: TrainConfig
    out_dir: Path
    data_dir: Path | None = None
    cache_dir: Path | None = None  # where the corpus' token store is (charrnn.data.store)
    until: int | None = None  # tokens to bring the run to (a rung of charrnn.experiments.tune); None: its budget

    @property
    def truncation(self):
        return self.config.truncation

    @property
    def seed(self):
        return self.config.seed


@dataclass(frozen=True)
class RunSummary:
    """A finished run, read from its directory. curve: its evaluations, dicts with tokens,
    elapsed (s), val_ppl."""

    name: str
    truncation: str
    seed: int
    reason: str  # the budget that ended it
    tokens: int
    final_val_ppl: float | None
    best_val_ppl: float | None
    tokens_per_s: float | None  # of its last session
    mean_grad_norm: float | None  # over all its minibatches, before clipping (None: not known)
    curve: list


def run_state(spec) -> str:
    """"new", "resume" or "done" for the directory of `spec`; a run there with other settings,
    or longer than asked for, -> CharrnnError."""
    path = spec.out_dir / CHECKPOINT
    if not path.is_file():
        return "new"
    ckpt = load_checkpoint(path)
    for name in sorted(MATHS_FIELDS):
        if getattr(ckpt.config, name) != getattr(spec.config, name):
            raise CharrnnError(f"{spec.out_dir} holds a run with {name} {getattr(ckpt.config, name)!r}, this "
                               f"comparison asks for {getattr(spec.config, name)!r}; choose another --out")
    budgets = [{name: getattr(config, name) for name in sorted(BUDGET_FIELDS)} for config in (ckpt.config, spec.config)]
    if budgets[0] != budgets[1] and spec.config.lr_schedule in BUDGET_SCHEDULES:
        raise CharrnnError(f"{spec.out_dir} holds a run with the budget {budgets[0]}, this comparison asks for "
                           f"{budgets[1]}; with --lr-schedule {spec.config.lr_schedule} the learning rate follows "
                           f"the budget, so that run cannot become this one; choose another --out")
    if spec.until is not None and ckpt.progress.tokens >= spec.until:
        return "done"
    if not budget_reached(spec.config, ckpt.progress):
        return "resume"
    if overshoots(spec.config, ckpt.progress):
        raise CharrnnError(f"{spec.out_dir} holds a longer run ({ckpt.progress.tokens:,} tokens) than this "
                           f"comparison asks for; choose another --out")
    # its last evaluation lost (a signal in it, a damaged metrics.jsonl): resuming evaluates it again
    return "done" if has_evaluation(spec.out_dir / METRICS, ckpt.progress.tokens) else "resume"


def overshoots(config, progress) -> bool:
    """Whether `progress` went past the budget of `config` (a run trained for a larger budget)."""
    tokens_per_batch = config.batch_size * config.num_steps
    past_epochs = config.epochs is not None and progress.epoch > config.epochs
    past_tokens = config.max_tokens is not None and progress.tokens - tokens_per_batch >= config.max_tokens
    return past_epochs or past_tokens


def execute_run(spec, should_stop=None, stop=None, threads=DEFAULT_THREADS) -> RunSummary:
    """Bring the run of `spec` to its budget (or to spec.until tokens, where it pauses with a
    checkpoint): train it, resume it, or find it done -> RunSummary.
    threads: NumPy's BLAS threads, as charrnn.training.start.train takes them.

    should_stop(): polled every minibatch; once true, stop() is called (which must end the run:
    a SIGINT to this process, or an exception) and RunInterrupted raised. A run stopped by a
    signal raises RunInterrupted too, its checkpoint written.
    """
    state = run_state(spec)
    if state != "done":
        if should_stop is not None and should_stop():
            raise RunInterrupted(f"{spec.name} not started: the sweep was stopped")
        recorder = GradNormLog(spec.out_dir, should_stop, stop)
        with warnings.catch_warnings():  # a sweep reports its runs' perplexities (and tune prunes
            warnings.filterwarnings("ignore", "not learning", CharrnnWarning)  # the stuck) itself
            result = _train_or_resume(spec, state, recorder, threads)
        if result.reason in STOP_REASONS:
            raise RunInterrupted(f"{spec.name} stopped by {result.reason} at {result.progress.tokens:,} tokens")
        if result.reason == "nonfinite":
            raise CharrnnError(f"{spec.name}: {result.message}")
    return read_run(spec)


def _train_or_resume(spec, state, recorder, threads):
    """execute_run's training: a new run of spec, or the resume of one under way -> TrainResult."""
    if state == "new":
        clear_unstarted(spec.out_dir)
        return train(spec.config, spec.out_dir, spec.data_dir, recorder, spec.cache_dir, threads,
                     pause_at=spec.until)
    recorder.restore(load_checkpoint(spec.out_dir / CHECKPOINT).progress.step)
    changes = {f.name: getattr(spec.config, f.name) for f in fields(spec.config)  # None: as saved
               if f.name not in MATHS_FIELDS and (f.name in BUDGET_FIELDS or getattr(spec.config, f.name) is not None)}
    return resume(spec.out_dir, changes, spec.data_dir, recorder, spec.cache_dir, threads, pause_at=spec.until)


def clear_unstarted(out_dir) -> None:
    """Remove the files of a run that died before its first checkpoint (config.json, vocab.json,
    ... written in the milliseconds before it), under the run's lock, so that the sweep can start
    it again; a directory holding a checkpoint, or in use, is left as it is."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or any((out_dir / name).exists() for name in (CHECKPOINT, BEST)):
        return
    with RunLock(out_dir):
        for name in (CONFIG, VOCAB, PARENT, METRICS, GRAD_NORMS):
            (out_dir / name).unlink(missing_ok=True)


def stop_by_sigint():
    """Stop the run in this process as Ctrl-C would: it checkpoints where it is (main thread only)."""
    os.kill(os.getpid(), signal.SIGINT)


def read_run(spec) -> RunSummary:
    """The summary of the finished run of `spec`, from its directory."""
    progress = load_checkpoint(spec.out_dir / CHECKPOINT).progress
    curve = read_curve(spec.out_dir / METRICS)
    final = [point for point in curve if point["tokens"] == progress.tokens]
    if not final:
        raise CharrnnError(f"{spec.out_dir / METRICS} holds no evaluation at the run's last step "
                           f"({progress.tokens:,} tokens)")
    last = final[-1]
    norms = read_grad_norms(spec.out_dir)
    known = norms is not None and norms["step"] == progress.step and norms["count"] > 0
    return RunSummary(spec.name, spec.truncation, spec.seed, budget_reached(spec.config, progress),
                      progress.tokens, last.get("val_ppl"), progress.best_val_ppl, last.get("tokens_per_s"),
                      norms["sum"] / norms["count"] if known else None,
                      [{k: p[k] for k in ("tokens", "elapsed", "val_ppl")} for p in curve])


def read_curve(path) -> list:
    """The evaluations of a run from its metrics.jsonl -> [{tokens, elapsed, val_ppl, tokens_per_s}],
    each checked (charrnn.training.outdir.metrics_records): a perplexity that is not a finite number >= 1
    reads as None, a time or rate that is not a finite number >= 0 too."""
    return [{"tokens": record["tokens"], "elapsed": _seconds(record.get("elapsed")),
             "val_ppl": perplexity_or_none(record.get("val_ppl")),
             "tokens_per_s": _seconds(record.get("tokens_per_s"))} for record in metrics_records(path)]


def _seconds(value):
    return float(value) if is_finite(value) and value >= 0 else None


def read_grad_norms(out_dir):
    """The sums in out_dir/grad_norms.json, {step, sum, count}; None if missing, unknown or corrupt."""
    try:
        norms = json.loads((Path(out_dir) / GRAD_NORMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = (isinstance(norms, dict) and is_integer(norms.get("step")) and is_finite(norms.get("sum"))
             and is_integer(norms.get("count")))
    return norms if valid else None


class GradNormLog(Reporter):
    """Sums the gradient norms of a run into out_dir/grad_norms.json whenever a checkpoint is
    written (each evaluation, a stop by signal), so a resumed run goes on from the same sum; also
    polls should_stop() each minibatch."""

    def __init__(self, out_dir, should_stop=None, stop=None):
        self.out_dir, self.should_stop, self.stop = Path(out_dir), should_stop, stop
        self.total, self.count, self.stopping = 0.0, 0, False

    def restore(self, step):
        """Go on from the sums saved at checkpoint `step` (at step 0 they are known: nothing);
        saved at another step: not known."""
        norms = read_grad_norms(self.out_dir)
        if step == 0:
            self.total, self.count = 0.0, 0
        elif norms is not None and norms["step"] == step:
            self.total, self.count = norms["sum"], norms["count"]
        else:
            self.total, self.count = math.nan, 0

    def on_step(self, stats):
        if math.isfinite(stats["grad_norm"]):
            self.total += stats["grad_norm"]
            self.count += 1
        if self.should_stop is not None and not self.stopping and self.should_stop():
            self.stopping = True
            self.stop()

    def on_validation(self, record):
        self.save(record["step"])

    def on_end(self, result):
        if result.reason in STOP_REASONS:
            self.save(result.progress.step)

    def save(self, step):
        total = self.total if math.isfinite(self.total) else None
        save_json(self.out_dir / GRAD_NORMS, {"step": step, "sum": total, "count": self.count if total is not None else 0})
