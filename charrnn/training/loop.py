"""The training loop of one run: minibatches, evaluation along the way, metrics.jsonl, checkpoints.

One step (d2l §9.7), `Run.train_step`: forward over `num_steps` tokens, the loss
L = (1/T) sum_t l(o_t, y_t) (eq. 9.7.2) and its gradients by backpropagation through time
(eqs. 9.7.3-9.7.8: RNNLM.loss_and_grads in charrnn.nn.model, whose steps are the cells of
charrnn.nn.cells), global-norm clipping, an optimizer step at the learning rate the schedule
gives for the share of the budget used so far (charrnn.training.schedule). With the sequential
sampler the hidden state is carried into the next minibatch (its gradient cut); with the random
one it restarts from zeros.

The loop prints nothing: it reports to a `Reporter`. Resume is exact: the sampler of epoch `e`
draws from default_rng([data seed, SAMPLER_STREAM, e]), so a run rebuilds its epoch and skips
the minibatches it has done; everything else a minibatch depends on is the TrainingState
(charrnn.training.state), saved whole in every checkpoint (charrnn.training.checkpoint).
Starting and resuming a run (its checks, data and directory) is charrnn.training.start's.
"""
from __future__ import annotations

import math
import time
import warnings
from itertools import islice
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError, CharrnnWarning
from charrnn.base.io import append_jsonl
from charrnn.data.baselines import not_learning
from charrnn.data.records import packed_batches
from charrnn.data.samplers import SAMPLERS, num_minibatches
from charrnn.infer.evaluate import EvaluationStopped, mean_loss, perplexity
from charrnn.infer.records_eval import records_loss
from charrnn.nn import fused
from charrnn.nn.optim import clip_grad_norm
from charrnn.runtime.signals import STOP_REASONS, StopSignals
from charrnn.runtime.threads import Threads
from charrnn.training.budget import PROBE_SECONDS, TimeBudget, allowance
from charrnn.training.checkpoint import save_checkpoint
from charrnn.training.config import BUDGET_FIELDS
from charrnn.training.events import TrainResult
from charrnn.training.outdir import BEST, CHECKPOINT, METRICS, last_good_checkpoint
from charrnn.training.samples import evaluation_sample, warn_about_the_sample_prefix
from charrnn.training.schedule import budget_fraction, learning_rate
from charrnn.training.state import SAMPLER_STREAM

MAX_SKIPPED_IN_A_ROW = 10  # --on-nonfinite skip gives up after this many


def finite_or_none(number):
    """`number` if finite, else None: metrics.jsonl is strict JSON, with no NaN or Infinity."""
    return number if math.isfinite(number) else None


def budget_reached(config, progress, elapsed=None, within_epoch=False):
    """The name of the first budget of `config` that `progress` has used up, or None.

    elapsed: seconds of training (default: those saved in `progress`). Epochs count only at an
    epoch's end.
    """
    elapsed = progress.elapsed if elapsed is None else elapsed
    if config.epochs is not None and not within_epoch and progress.epoch >= config.epochs:
        return "epochs"
    if config.max_tokens is not None and progress.tokens >= config.max_tokens:
        return "max_tokens"
    if config.max_time is not None and elapsed >= config.max_time:
        return "max_time"
    return None


class Run:
    """One training run in progress: its TrainingState (model, optimizer, progress, Generators,
    carried state), config, vocabulary, data and directory."""

    def __init__(self, training, *, config, vocab, train_data, val_data, out_dir, reporter, baselines=None):
        self.training, self.config, self.vocab = training, config, vocab
        self.model, self.optimizer, self.progress = training.model, training.optimizer, training.progress
        self.model.kernel = config.kernel  # the steps of its time loop (charrnn.nn.fused)
        self.train_data, self.val_data, self.out_dir = train_data, val_data, Path(out_dir)
        self.reporter = reporter
        self.baselines = baselines  # charrnn.data.baselines.Baselines of the data, or None
        self.warned_not_learning = False
        self.tokens_per_batch = config.batch_size * config.num_steps
        self.tokens_per_epoch = (num_minibatches(len(train_data), config.batch_size, config.num_steps)
                                 * self.tokens_per_batch)
        warn_about_the_sample_prefix(config)
        self.checkpoint_step = self.progress.step  # of the checkpoint.npz on disk
        self.last_record = {}  # the latest metrics record of this session
        self.session_start = time.perf_counter()
        self.session_tokens = self.progress.tokens
        self.step_seconds = 0.0  # of this session's minibatches alone (step_tokens_per_s)
        self.elapsed_before = self.progress.elapsed
        self.time_budget = TimeBudget(config.max_time, len(val_data)) if config.max_time else None
        self.pause_at = None  # tokens after which the run checkpoints and stops ("paused"): a sweep's rung
        self.allowed = None  # what the budget allows (charrnn.training.budget.allowance), once known
        self.known_speed = None  # tokens/s measured before the run (the auto-size probe), if any
        self.added_tokens = None  # a fine-tuned run's tokens that its parent's vocabulary lacked
        self.signals = None  # the StopSignals of start (stop_signals), while it runs

    # ---- the loop ----

    def start(self, resumed, threads=None, evaluate_end=False):
        """Train until a budget, a signal or a non-finite value stops the run -> TrainResult.
        threads: the BLAS threads (charrnn.runtime.threads.Threads, not entered yet); None leaves them.
        evaluate_end: evaluate when a budget ends the run even if the step was evaluated (its
        record was lost)."""
        self.threads = Threads(None) if threads is None else threads
        with self.threads, self.threads.one_row(self.config.batch_size == 1):
            self.reporter.on_start(self.start_info(resumed))
            with self.stop_signals() as signals, np.errstate(over="ignore", invalid="ignore"):
                self.signals = signals  # log_validation asks it within a validation pass
                reason, message = "", ""
                if resumed and self.evaluation_pending():  # a signal stopped it: evaluate first
                    self.log_validation("interval")
                    reason, evaluate_end = signals.received or "", False
                if not reason:
                    reason, message = self.loop(signals)  # non-finite values are checked, not warned about
                    if self.time_budget is not None and self.allowed is None:  # a run shorter than its probe
                        self.say_allowed(self.step_tokens_per_s())
                if reason in (*BUDGET_FIELDS, "paused") and (
                        evaluate_end or self.progress.last_eval_step != self.progress.step):
                    self.log_validation("stop")
                    reason = signals.received or reason
                if reason in STOP_REASONS:
                    self.save(CHECKPOINT)
        result = self.result(reason, message)
        self.reporter.on_end(result)
        return result

    def stop_signals(self):
        """What notes Ctrl-C, SIGTERM and SIGHUP during the loop and its validation passes
        (`received`: the signal's name or None)."""
        return StopSignals()

    def loop(self, signals):
        """-> (reason, message): why the run stopped."""
        while True:
            reached = self.budget_reached()
            if reached:
                return reached, ""
            for batch in self.epoch_batches():
                self.threads.adapt()
                started = time.perf_counter()
                message = self.train_step(*batch)
                self.step_seconds += time.perf_counter() - started
                if message:
                    return "nonfinite", message
                self.observe_step(time.perf_counter() - started)
                if self.eval_due():
                    self.log_validation("interval")
                paused = self.pause_at is not None and self.progress.tokens >= self.pause_at
                reason = signals.received or self.budget_reached(within_epoch=True) or paused and "paused"
                if reason:
                    return reason, ""
            if self.progress.step_in_epoch == 0:
                raise CharrnnError(f"epoch {self.progress.epoch + 1} yielded no minibatch")
            self.progress.epoch += 1
            self.progress.step_in_epoch = 0
            self.training.carried = None

    def epoch_batches(self):
        """The minibatches of the current epoch not done yet: (X, Y) (batch_size, num_steps) int,
        and the resets of records (charrnn.data.records) for a text of records."""
        rng = np.random.default_rng([self.config.order_seed, SAMPLER_STREAM, self.progress.epoch])
        if self.config.records:
            return islice(packed_batches(self.train_data, self.config.batch_size, self.config.num_steps, rng),
                          self.progress.step_in_epoch, None)
        batches = SAMPLERS[self.config.sampler](self.train_data, self.config.batch_size,
                                                self.config.num_steps, rng)
        return islice(batches, self.progress.step_in_epoch, None)

    def train_step(self, X, Y, resets=None):
        """One minibatch: loss and gradients by BPTT, clipping, update -> "" or why the run must stop."""
        cfg, training = self.config, self.training
        self.optimizer.lr = self.learning_rate()
        loss, grads, last_state = self.loss_and_grads(X, Y) if resets is None else self.loss_and_grads(X, Y, resets)
        grad_norm = clip_grad_norm(grads, math.inf if cfg.clip is None else cfg.clip)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step(grads)
            training.carried = last_state if cfg.sampler == "sequential" or cfg.records else None
        self.count_step(loss if finite else None)
        if not finite:
            problem = self.on_nonfinite(loss, grad_norm)
            if problem:
                return problem
        p = self.progress
        self.reporter.on_step({
            "epoch": p.current_epoch(), "step": p.step, "tokens": p.tokens, "loss": loss,
            "perplexity": perplexity(loss), "grad_norm": grad_norm, "skipped": p.skipped})
        return ""

    def loss_and_grads(self, X, Y, resets=None):
        """The minibatch's mean loss (eq. 9.7.2), its gradients by BPTT and the last state ->
        (loss, grads, state): RNNLM.loss_and_grads (charrnn.nn.model, its steps charrnn.nn.cells).
        resets: where rows start a record (charrnn.data.records). charrnn.training.parallel's
        runs sum those of their ranks' rows."""
        cfg, training = self.config, self.training
        return self.model.loss_and_grads(X, Y, training.carried, truncation=cfg.truncation,
                                         rng=training.truncation_rng, dropout_rng=training.dropout_rng,
                                         bptt_memory=cfg.bptt_memory,
                                         memory_budget_bytes=cfg.bptt_memory_budget * 2**20, resets=resets)

    def count_step(self, loss):
        """Count a minibatch done; `loss` (None when not finite) joins the running training loss."""
        p = self.progress
        if loss is not None:
            p.interval_loss += loss
            p.interval_steps += 1
            p.skipped_in_a_row = 0
        p.step += 1
        p.step_in_epoch += 1
        p.tokens += self.tokens_per_batch

    def on_nonfinite(self, loss, grad_norm):
        """The policy for a minibatch whose loss or gradient is not finite (nothing was updated):
        "stop" -> why; "skip" -> "" and the carried state dropped, unless it is the
        MAX_SKIPPED_IN_A_ROW-th in a row (-> why: the model has diverged)."""
        p = self.progress
        problem = (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                   f"(loss {loss}, gradient norm {grad_norm}) at epoch {p.current_epoch()}, step {p.step}")
        if self.config.on_nonfinite == "stop":
            return problem
        if p.skipped_in_a_row + 1 >= MAX_SKIPPED_IN_A_ROW:
            return f"{problem}, the {MAX_SKIPPED_IN_A_ROW}th minibatch in a row: the model has diverged"
        p.skipped += 1
        p.skipped_in_a_row += 1
        self.training.carried = None
        return ""

    def learning_rate(self):
        """The schedule's learning rate for the next minibatch, from the budget used so far."""
        elapsed = self.elapsed() if self.time_budget is None else self.time_budget.schedule_time(self.elapsed())
        fraction = budget_fraction(self.progress, self.config, self.tokens_per_epoch, elapsed)
        return learning_rate(self.config, fraction, self.progress.epoch)

    def evaluation_pending(self):
        """Whether the checkpoint's minibatch was due an evaluation that a signal stopped."""
        return 0 < self.progress.step != self.progress.last_eval_step and self.eval_due()

    def eval_due(self):
        """Whether the last minibatch crossed a multiple of eval_every tokens."""
        every = self.config.eval_every
        return self.progress.tokens // every > (self.progress.tokens - self.tokens_per_batch) // every

    def budget_reached(self, within_epoch=False):
        """The name of the first budget used up, or None. Epochs count only at an epoch's end; a
        --max-time run stops when its final evaluation would not fit (charrnn.training.budget)."""
        reached = budget_reached(self.config, self.progress, self.elapsed(), within_epoch)
        if reached is None and self.time_budget is not None and self.time_budget.out_of_time(self.elapsed()):
            return "max_time"
        return reached

    def observe_step(self, seconds):
        """Time the latest minibatch for the time budget; once PROBE_SECONDS (or a tenth of the
        budget) of a --max-time run have passed, say what its budget allows."""
        if self.time_budget is None:
            return
        self.time_budget.observe_step(seconds, self.tokens_per_batch)
        if self.allowed is None and time.perf_counter() - self.session_start >= min(PROBE_SECONDS,
                                                                                     0.1 * self.config.max_time):
            self.say_allowed(self.step_tokens_per_s())

    def say_allowed(self, tokens_per_s=None):
        """Work out what the budget allows and tell the reporter."""
        self.allowed = allowance(self.config, self.tokens_per_epoch, self.tokens_per_batch, self.progress.tokens,
                                 tokens_per_s)
        if self.allowed is not None:
            self.reporter.on_budget(self.allowed)

    # ---- evaluation and files ----

    def log_validation(self, reason):
        """Validation perplexity and a sample -> metrics.jsonl, best.npz, checkpoint.npz.

        reason "interval" (every eval_every tokens) restarts the running training loss; the
        extra evaluation when a budget ends the run ("stop") does not, nor counts as the last
        evaluation, so a run stopped and resumed logs the same "interval" records as a run
        never stopped (plus its "stop" records). A signal stops the pass within a chunk: nothing
        is recorded, and a resumed run evaluates that step first (`evaluation_pending`).
        """
        p = self.progress
        val_tokens = self.time_budget.eval_tokens() if self.time_budget else len(self.val_data)
        started = time.perf_counter()
        try:
            val_ppl = perplexity(self.validation_loss(val_tokens))
        except EvaluationStopped:
            return
        if self.time_budget:
            self.time_budget.observe_eval(time.perf_counter() - started, val_tokens)
        train_loss = p.interval_loss / p.interval_steps if p.interval_steps else None
        improved = math.isfinite(val_ppl) and (p.best_val_ppl is None or val_ppl < p.best_val_ppl)
        record = {
            "reason": reason, "epoch": p.current_epoch(), "step": p.step, "tokens": p.tokens,
            "train_loss": train_loss, "train_ppl": None if train_loss is None else finite_or_none(perplexity(train_loss)),
            "val_ppl": finite_or_none(val_ppl), "best": improved,  # strict JSON: no NaN or Infinity
            "val_tokens": val_tokens,
            "lr": self.optimizer.lr, "skipped": p.skipped, "elapsed": round(self.elapsed(), 3),
            "tokens_per_s": round(self.tokens_per_s(), 1), "threads": self.threads.count,
            "step_tokens_per_s": round(self.step_tokens_per_s(), 1),
            "sample": self.sample(),
        }
        if reason == "interval":
            p.interval_loss, p.interval_steps = 0.0, 0
            p.last_eval_step = p.step
        self.last_record = record
        if improved:
            p.best_val_ppl, p.best_step = val_ppl, p.step
        self.append_record(record)
        if improved:
            self.save(BEST)
        self.save(CHECKPOINT)
        self.reporter.on_validation(record)
        self.check_learning(val_ppl, at_end=reason == "stop" or self.budget_reached(within_epoch=True) is not None)

    def validation_loss(self, tokens):
        """The mean cross-entropy of the model on the first `tokens` of the validation split
        (charrnn.infer.evaluate); for a text of records, on its first held-out records whole (at
        least one), each from a zero state (charrnn.infer.records_eval)."""
        if self.config.records:
            records = self.val_data
            targets = np.cumsum(np.asarray(records.ends) - np.asarray(records.starts) + 1)
            nats, count, _ = records_loss(self.model, records.part(0, max(1, int(np.searchsorted(
                targets, tokens, side="right")))), should_stop=self.should_stop)
            return nats / count
        return mean_loss(self.model, self.val_data[:tokens], should_stop=self.should_stop)

    def should_stop(self):
        """Whether a signal was received: asked before each chunk of a validation pass, which
        then ends in charrnn.infer.evaluate.EvaluationStopped."""
        return self.signals is not None and self.signals.received is not None

    def append_record(self, record):
        """Append a metrics record to metrics.jsonl."""
        try:
            append_jsonl(self.out_dir / METRICS, record)
        except OSError as err:
            raise self.failed(f"cannot append to {self.out_dir / METRICS} ({err.strerror or err})") from None

    def check_learning(self, val_ppl, at_end):
        """Once a run: charrnn.data.baselines.not_learning's warning, after a whole epoch or at the end."""
        if self.baselines is None or self.warned_not_learning or not (self.progress.epoch >= 1 or at_end):
            return
        message = not_learning(self.baselines, val_ppl, self.config, self.progress.epoch)
        if message:
            self.warned_not_learning = True
            warnings.warn(message, CharrnnWarning, stacklevel=2)

    def sample(self):
        """What the evaluation after this step shows (charrnn.training.samples), on one thread."""
        with self.threads.one_row():
            return evaluation_sample(self.model, self.vocab, self.config, self.progress.step)

    def save(self, name):
        """Write the whole state of the run to `out_dir/name`, atomically; a state with a
        non-finite value, or a failed write, leaves the file on disk as it was (CharrnnError)."""
        self.progress.elapsed = self.elapsed()
        started = time.perf_counter()
        try:
            save_checkpoint(self.out_dir / name, self.training, vocab=self.vocab, config=self.config)
        except CharrnnError as err:
            raise self.failed(f"{err} at step {self.progress.step:,}, {name} not written") from None
        except OSError as err:
            raise self.failed(f"cannot write {self.out_dir / name} ({err.strerror or err})") from None
        if self.time_budget:
            self.time_budget.observe_save(time.perf_counter() - started)
        if name == CHECKPOINT:
            self.checkpoint_step = self.progress.step

    def failed(self, what):
        """A CharrnnError: `what` went wrong, and where the run can be resumed from."""
        return CharrnnError(f"{what}; {last_good_checkpoint(self.out_dir, self.checkpoint_step)}")

    # ---- bookkeeping ----

    def elapsed(self):
        return self.elapsed_before + time.perf_counter() - self.session_start

    def tokens_per_s(self):
        """Tokens trained in this session per second of it (evaluations and checkpoints included)."""
        seconds = time.perf_counter() - self.session_start
        return (self.progress.tokens - self.session_tokens) / seconds if seconds > 0 else 0.0

    def step_tokens_per_s(self):
        """Tokens trained in this session per second of its minibatches alone."""
        tokens = self.progress.tokens - self.session_tokens
        return tokens / self.step_seconds if self.step_seconds > 0 else 0.0

    def start_info(self, resumed):
        cfg = self.config
        whole_batches = cfg.max_tokens and -(-cfg.max_tokens // self.tokens_per_batch) * self.tokens_per_batch
        totals = [n for n in (cfg.epochs and cfg.epochs * self.tokens_per_epoch, whole_batches) if n]
        if self.allowed is None and (cfg.max_time is None or self.known_speed):
            self.allowed = allowance(cfg, self.tokens_per_epoch, self.tokens_per_batch, self.progress.tokens,
                                     self.known_speed)
        return {"allowed": self.allowed, "added_tokens": self.added_tokens, "out_dir": self.out_dir, "resumed": resumed, "config": cfg,
                "epoch": self.progress.epoch + 1, "tokens": self.progress.tokens,  # of the next minibatch
                "total_tokens": min(totals) if totals else None,
                "train_tokens": len(self.train_data), "val_tokens": len(self.val_data),
                "vocab_size": len(self.vocab),
                "num_params": sum(v.size for v in self.model.params.values()),
                "baselines": self.baselines,
                "threads": self.threads.describe(), "kernel": fused.describe(cfg.kernel, self.model.dtype, self.model.cell)}

    def result(self, reason, message):
        p, cfg = self.progress, self.config
        if p.interval_steps:
            train_ppl = perplexity(p.interval_loss / p.interval_steps)
        else:
            train_ppl = self.last_record.get("train_ppl")
        checkpoint = self.out_dir / CHECKPOINT
        return TrainResult(
            reason=reason, out_dir=self.out_dir, progress=p, train_ppl=train_ppl,
            val_ppl=self.last_record.get("val_ppl"), tokens_per_s=self.tokens_per_s(),
            wall_time=time.perf_counter() - self.session_start,
            checkpoint=checkpoint if checkpoint.is_file() else None,
            checkpoint_step=self.checkpoint_step, message=message, model=self.model, vocab=self.vocab,
            config=cfg, baselines=self.baselines, val_tokens=self.last_record.get("val_tokens"),
            val_total=len(self.val_data))
