"""`--size auto`: the network for this text and this budget (issue 22, part 1).

The rule (docs/tune.md has the measurements behind it, benchmarks/bench_autosize.py made them):
a ladder of candidate networks, smallest first (CANDIDATES), each with the least training
budget, in tokens, from which it beat the one below it on the measured texts (MIN_TOKENS). A
budget of B tokens gets the largest candidate whose MIN_TOKENS <= B.

- `--max-tokens N` (or epochs x the text's training tokens): B is known, and the choice depends
  only on the text's length and the budget: the same on any machine (`choose_for_tokens`).
- `--max-time S`: each candidate sees a different number of tokens in S seconds, so a short
  timed probe (`probe_speeds`: PROBE_STEPS minibatches of each candidate on the text, after a
  warm-up one) measures this machine's speed for each; a candidate's B is its speed x the
  seconds left after the probe, less the EVAL_SHARE kept for the final evaluation
  (charrnn.training.budget). The choice is the largest candidate that the rule would give for its own B
  (`choose_for_time`). The probe's seconds count against the budget.

Options the user gives win over the choice (the CLI applies them on top). The choice, its
reasons and the probe's speeds are printed and recorded in the run directory (SIZE_RECORD); a
resumed run keeps its network, as every run does.
"""
from __future__ import annotations

import time

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.data.samplers import SAMPLERS
from charrnn.nn.model import RNNLM
from charrnn.nn.optim import clip_grad_norm, make_optimizer
from charrnn.training.budget import EVAL_SHARE

SIZE_RECORD = "size.json"  # in the run directory: what --size auto chose, and why
SIZES = ("default", "auto")
NETWORK_FIELDS = ("cell", "num_hiddens", "num_layers", "dropout", "lr")
# the ladder, smallest first: TrainConfig fields (see docs/tune.md, "The rule")
CANDIDATES = {
    "gru-128": {"cell": "gru", "num_hiddens": 128, "num_layers": 1, "dropout": 0.0, "lr": 1e-2},
    "gru-2x256": {"cell": "gru", "num_hiddens": 256, "num_layers": 2, "dropout": 0.3, "lr": 5e-3},
}
# the least budget of each: the 2 x 256 GRU was best at 400,000 tokens on all four texts measured,
# the 1 x 128 GRU within 2% of the best at 100,000 (docs/tune.md)
MIN_TOKENS = {"gru-128": 0, "gru-2x256": 400_000}
PROBE_STEPS = 3  # timed minibatches per candidate, after one warm-up minibatch


def choose_for_tokens(train_tokens, budget_tokens) -> dict:
    """The rule: the network for a budget of `budget_tokens` on a text of `train_tokens`
    training tokens -> dict(name, fields, reason)."""
    if train_tokens < 1 or budget_tokens < 1:
        raise CharrnnError(f"auto size needs a text and a budget, got {train_tokens} tokens and {budget_tokens}")
    name = [n for n in CANDIDATES if MIN_TOKENS[n] <= budget_tokens][-1]
    fields = dict(CANDIDATES[name])
    epochs = budget_tokens / train_tokens
    reason = (f"{budget_tokens:,} tokens = {epochs:.3g} epochs of {train_tokens:,}: {name} "
              f"(the largest network whose least budget, {MIN_TOKENS[name]:,} tokens, this reaches)")
    return {"name": name, "fields": fields, "reason": reason, "budget_tokens": int(budget_tokens)}


def choose_for_time(train_tokens, seconds, speeds) -> dict:
    """The network for `seconds` of training at the measured `speeds` ({candidate: tokens/s}):
    the largest candidate that the rule gives for the tokens it would itself see."""
    chosen = None
    for name in CANDIDATES:
        tokens = int(speeds[name] * seconds * (1 - EVAL_SHARE))
        pick = choose_for_tokens(train_tokens, max(tokens, 1))
        if list(CANDIDATES).index(pick["name"]) >= list(CANDIDATES).index(name):
            chosen = {**pick, "name": name, "fields": dict(CANDIDATES[name])}
    if chosen is None:
        first = next(iter(CANDIDATES))
        chosen = choose_for_tokens(train_tokens, max(int(speeds[first] * seconds * (1 - EVAL_SHARE)), 1))
    chosen["speeds"] = {name: round(speed) for name, speed in speeds.items()}
    chosen["reason"] = (f"{seconds:.3g} s at {speeds[chosen['name']]:,.0f} tokens/s (probe) ~ "
                        + chosen["reason"])
    return chosen


def probe_speeds(train_data, vocab_size, config, candidates=CANDIDATES, steps=PROBE_STEPS) -> dict:
    """This machine's training speed for each candidate, tokens/s: `steps` minibatches of the
    text (config's batch_size, num_steps, sampler, optimizer, clip, bptt_memory), after a
    warm-up one, with a throwaway model of the candidate's network."""
    speeds = {}
    batches = SAMPLERS[config.sampler](train_data, config.batch_size, config.num_steps, np.random.default_rng(0))
    minibatches = [next(batches) for _ in range(steps + 1)]
    tokens = config.batch_size * config.num_steps
    for name, fields in candidates.items():
        model = RNNLM(vocab_size=vocab_size, num_hiddens=fields["num_hiddens"], cell=fields["cell"],
                      num_layers=fields["num_layers"], dropout=fields["dropout"], dtype=config.dtype, seed=0)
        optimizer = make_optimizer(config.optimizer, model.params, fields["lr"])
        rng = np.random.default_rng(0)
        started = None
        for i, (X, Y) in enumerate(minibatches):
            if i == 1:
                started = time.perf_counter()
            _, grads, _ = model.loss_and_grads(X, Y, None, truncation="full", rng=rng, dropout_rng=rng,
                                               bptt_memory=config.bptt_memory,
                                               memory_budget_bytes=config.bptt_memory_budget * 2**20)
            clip_grad_norm(grads, config.clip or float("inf"))
            optimizer.step(grads)
        speeds[name] = steps * tokens / max(time.perf_counter() - started, 1e-9)
    return speeds
