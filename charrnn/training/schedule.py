"""The learning rate over a run: a function of how much of the run's budget has been used.

A schedule by epochs (lr * decay**epoch) depends on the size of the text: a 50 KB text has a
few minibatches an epoch, so 150 epochs decay 0.9**150 ~ 1e-7 and training freezes, while a
5 MB text barely decays. Here the learning rate follows the fraction f in [0, 1] of the budget
used (tokens, epochs or seconds, whichever is furthest along), from `lr` at f = 0 down to the
floor lr_min = lr * lr_floor at f = 1, the same curve on every text (nanoGPT decays to lr/10):

    cosine:       lr(f) = lr_min + (lr - lr_min) * (1 + cos(pi f)) / 2
    exponential:  lr(f) = lr * lr_floor**f
    constant:     lr(f) = lr
    epoch:        lr * lr_decay**(epochs completed)   (the schedule of runs made before it)

f comes from the saved Progress only (tokens, epoch, elapsed seconds), so a resumed run goes on
from where its schedule stood. With a --max-time budget f is elapsed / max_time: exact on
resume (elapsed is saved), but a function of the machine's speed, as the budget itself is.
Raising the budget on resume stretches the rest of the curve over the new budget.
"""
import math

from charrnn.base.checks import check_choice

LR_SCHEDULES = ("cosine", "exponential", "constant", "epoch")
BUDGET_SCHEDULES = ("cosine", "exponential")  # laid over the budget: another budget, another run


def budget_fraction(progress, config, tokens_per_epoch, elapsed=None) -> float:
    """The fraction of the budget used, in [0, 1]: the largest of tokens / max_tokens,
    tokens / (epochs * tokens_per_epoch) and elapsed / max_time among the budgets given.

    tokens_per_epoch: training tokens of one epoch (minibatches a epoch * batch tokens);
    elapsed: seconds of training so far (default progress.elapsed).
    """
    fractions = [0.0]
    if config.max_tokens is not None:
        fractions.append(progress.tokens / config.max_tokens)
    if config.epochs is not None and tokens_per_epoch > 0:
        fractions.append(progress.tokens / (config.epochs * tokens_per_epoch))
    if config.max_time is not None:
        fractions.append((progress.elapsed if elapsed is None else elapsed) / config.max_time)
    return min(max(fractions), 1.0)


def learning_rate(config, fraction, epoch) -> float:
    """The learning rate of `config`'s schedule at budget fraction `fraction` (epoch: epochs
    completed, for the "epoch" schedule)."""
    schedule = check_choice(config.lr_schedule, LR_SCHEDULES, "learning-rate schedule")
    lr = config.lr
    if schedule == "epoch":
        return lr * config.lr_decay ** epoch
    if schedule == "constant":
        return lr
    if schedule == "exponential":
        return lr * config.lr_floor ** fraction
    lr_min = lr * config.lr_floor
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * fraction)) / 2
