"""What a run's budget allows, and a --max-time budget that holds (issue 22, part 3).

What the budget allows: the tokens, epochs and minibatches of a budget, said when a run starts
(`allowance`): exact for --epochs and --max-tokens; for --max-time an estimate from a speed (the
auto-size probe's, charrnn.training.autosize, or the run's own first PROBE_SECONDS of training).
`below_one_epoch` is the warning of a network that will not see its whole text once.

A --max-time budget that holds: the run ends within max_time seconds of training *including*
its final evaluation and checkpoint (`TimeBudget`). Two things make that so:

1. The validation split is capped. A --max-time run evaluates the first `eval_tokens` tokens of
   its validation split (contiguous, as charrnn.infer.evaluate reads them), at most what one
   evaluation can score in EVAL_SHARE of the budget at the speed measured so far (training
   speed x FORWARD_COST before the first evaluation is timed); a split that fits is evaluated
   whole. The cap is fixed at the run's first evaluation, recorded in every metrics record
   (`val_tokens`), and the summary says "first N of M validation tokens" when it applies.
2. Training stops early enough: after each minibatch the run stops when the time used plus the
   predicted cost of one more minibatch, the final evaluation (the capped split at the measured
   speed) and two checkpoint writes (the slowest write seen so far, twice), plus MARGIN_S, would
   pass max_time. The learning-rate schedule counts time stretched to end there (`schedule_time`).
"""
from __future__ import annotations

import math

EVAL_SHARE = 0.1  # the final evaluation of a --max-time run takes at most this share of the budget
FORWARD_COST = 0.5  # seconds to evaluate a token / seconds to train on it, until an evaluation is timed
MARGIN_S = 0.3  # seconds kept for what follows the final checkpoint (the result, the summary)
PROBE_SECONDS = 1.0  # of training (at most a tenth of the budget), before a --max-time run says what it allows
MIN_EVAL_TOKENS = 2  # a capped evaluation still scores at least one pair


def allowance(config, tokens_per_epoch, tokens_per_batch, tokens_done=0, tokens_per_s=None):
    """What the budget of `config` allows from the start of the run -> dict(tokens, epochs,
    steps, estimated) or None when it cannot be said yet (--max-time without a speed).

    tokens: the smallest of the budgets given (epochs x tokens_per_epoch, max_tokens rounded
    up to whole minibatches, max_time x tokens_per_s); estimated: whether a speed went into it.
    """
    totals, estimated = [], False
    if config.epochs is not None:
        totals.append(config.epochs * tokens_per_epoch)
    if config.max_tokens is not None:
        totals.append(-(-config.max_tokens // tokens_per_batch) * tokens_per_batch)
    if config.max_time is not None:
        if not tokens_per_s:
            return None
        by_time = int(config.max_time * tokens_per_s)
        if not totals or by_time < min(totals):
            estimated = True
        totals.append(by_time)
    tokens = max(min(totals), tokens_done)
    return {"tokens": tokens, "epochs": tokens / tokens_per_epoch if tokens_per_epoch else math.inf,
            "steps": tokens // tokens_per_batch, "estimated": estimated}


def below_one_epoch(allowed):
    """The warning for a budget `allowed` (from `allowance`) of less than one epoch, or None.
    `charrnn train` shows it when the run starts (sweeps, whose runs are small on purpose, do not)."""
    if allowed is None or allowed["epochs"] >= 1:
        return None
    return (f"less than one epoch: the budget allows {allowed['epochs']:.2f} of an epoch "
            f"({allowed['tokens']:,} tokens), so the network sees only part of its text; a larger "
            f"budget or a smaller network (--num-hiddens, --num-layers) sees more")


def round_down(n, digits=2) -> int:
    """n rounded down to `digits` significant digits (123,456 -> 120,000), at least 1."""
    if n < 10 ** digits:
        return max(int(n), 1)
    scale = 10 ** (int(math.log10(n)) - digits + 1)
    return int(n // scale * scale)


class TimeBudget:
    """Keeps a --max-time run within max_time seconds, final evaluation included (module docstring).

    The run tells it the seconds of each minibatch, evaluation and checkpoint write; it says
    how many validation tokens to evaluate (`eval_tokens`) and when to stop (`out_of_time`).
    """

    def __init__(self, max_time, val_tokens):
        self.max_time, self.val_tokens = max_time, val_tokens
        self.train_s_per_token = None  # of the latest minibatches (a moving average)
        self.step_s = 0.0  # the latest minibatch's
        self.eval_s_per_token = None  # measured by an evaluation
        self.save_s = 0.0  # the slowest checkpoint write seen
        self.cap = None  # validation tokens evaluated, fixed at the first evaluation

    def observe_step(self, seconds, tokens):
        self.step_s = seconds
        rate = seconds / tokens
        self.train_s_per_token = rate if self.train_s_per_token is None else 0.8 * self.train_s_per_token + 0.2 * rate

    def observe_eval(self, seconds, tokens):
        if tokens:
            self.eval_s_per_token = seconds / tokens

    def observe_save(self, seconds):
        self.save_s = max(self.save_s, seconds)

    def eval_rate(self):
        """Seconds to evaluate one token: measured, else estimated from training (None: unknown)."""
        if self.eval_s_per_token is not None:
            return self.eval_s_per_token
        return None if self.train_s_per_token is None else self.train_s_per_token * FORWARD_COST

    def eval_tokens(self) -> int:
        """Validation tokens each evaluation reads: the whole split, or the first ones that one
        evaluation scores in EVAL_SHARE of the budget (fixed once decided)."""
        if self.cap is None:
            rate = self.eval_rate()
            fits = self.val_tokens if rate is None else int(round(EVAL_SHARE * self.max_time / rate, 6))
            self.cap = self.val_tokens if fits >= self.val_tokens else max(round_down(fits), MIN_EVAL_TOKENS)
        return self.cap

    def reserve(self) -> float:
        """Seconds to keep for one more minibatch, the final evaluation and checkpoints."""
        rate = self.eval_rate() or 0.0
        cap = self.cap if self.cap is not None else self.eval_tokens() if rate else self.val_tokens
        return self.step_s + rate * cap + 2 * self.save_s + MARGIN_S

    def schedule_time(self, elapsed) -> float:
        """`elapsed` as the learning-rate schedule counts it: stretched so that the schedule ends
        where training stops, at max_time less the reserve (at most half the budget)."""
        if self.train_s_per_token is None:
            return elapsed
        left = max(self.max_time - self.reserve(), 0.5 * self.max_time)
        return elapsed * self.max_time / left

    def out_of_time(self, elapsed) -> bool:
        return self.train_s_per_token is not None and elapsed + self.reserve() >= self.max_time
