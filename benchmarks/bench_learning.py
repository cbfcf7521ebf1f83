"""Do the gated networks learn on a text of your own, for every seed? charrnn's defaults against
PyTorch's same recipe, by token budget (so the numbers are exact on any machine).

For each network and each seed, both sides train on the same training split of TEXT, read the
same minibatches in the same order (charrnn's sequential sampler, hidden state carried), and
are scored on the same validation split (charrnn's evaluation: 32 contiguous rows, state
carried), after --tokens training tokens:

- charrnn: `charrnn train TEXT --cell C [network options] --max-tokens N --seed S` through the
  Python API (charrnn.train), one BLAS thread;
- PyTorch: nn.GRU / nn.LSTM / nn.RNN with the same sizes and dropout between layers, dropout
  before an nn.Linear output layer, one-hot inputs, PyTorch's default initialisation (every
  weight and bias U(±1/√H)), Adam at the same learning rate with the same cosine decay to 10%
  over the budget, global-norm clipping at the same threshold, torch.manual_seed(S), one thread.

Reported per network: the validation loss in nats of every seed for both, the medians and the
largest, the number of charrnn seeds above the text's bigram perplexity (charrnn.data.baselines), and
whether charrnn's median is within --margin nats of PyTorch's.

    python benchmarks/bench_learning.py TEXT                       # gru, lstm, rnn2; seeds 0-19
    python benchmarks/bench_learning.py TEXT --networks gru --seeds 0-3 --jobs 2
    python benchmarks/bench_learning.py TEXT --json results.json

Runs go to worker processes (--jobs, default 2), each with one thread.
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # before NumPy loads: each worker runs one thread

import numpy as np  # noqa: E402

# the networks compared: charrnn's TrainConfig fields beyond the cell's defaults
NETWORKS = {
    "gru": {"cell": "gru"},
    "lstm": {"cell": "lstm"},
    "rnn2": {"cell": "rnn", "num_layers": 2, "dropout": 0.3, "lr": 0.005},
}


def parse_seeds(text):
    """"0-19" or "0,3,5" -> a list of ints."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def charrnn_run(text, network, seed, tokens):
    """charrnn's validation loss (nats) after `tokens` training tokens."""
    from charrnn.training.config import TrainConfig
    from charrnn.training.start import train

    config = TrainConfig(corpus=text, **NETWORKS[network], seed=seed, max_tokens=tokens, eval_every=10**12)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run", threads=1)
    return math.log(result.val_ppl)


def torch_run(text, network, seed, tokens):
    """PyTorch's validation loss (nats) after `tokens` training tokens, the same recipe."""
    import torch
    from torch import nn

    from charrnn.training.config import TrainConfig
    from charrnn.infer.evaluate import contiguous_batches
    from charrnn.data.samplers import seq_data_iter_sequential
    from charrnn.training.start import load_data

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    config = TrainConfig(corpus=text, **NETWORKS[network], seed=seed, max_tokens=tokens)
    train, val, vocab, _ = load_data(config, None)
    V, H, L, P = len(vocab), config.num_hiddens, config.num_layers, config.dropout
    module = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[config.cell]
    rnn, drop, decoder = module(V, H, num_layers=L, dropout=P if L > 1 else 0.0), nn.Dropout(P), nn.Linear(H, V)
    params = [*rnn.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)

    def forward(X, state):
        x = nn.functional.one_hot(torch.from_numpy(X.T.astype(np.int64)), V).float()
        out, state = rnn(x, state)
        return decoder(drop(out)), state

    def detached(state):
        if state is None:
            return None
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def loss_of(logits, Y, reduction="mean"):
        return nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(Y.T.reshape(-1).astype(np.int64)),
                                           reduction=reduction)

    per_batch = config.batch_size * config.num_steps
    total_steps = -(-tokens // per_batch)
    step, epoch = 0, 0
    rnn.train(), drop.train()
    while step < total_steps:
        state = None
        batches = seq_data_iter_sequential(train, config.batch_size, config.num_steps,
                                           np.random.default_rng([config.order_seed, 0, epoch]))
        for X, Y in batches:
            if step == total_steps:
                break
            fraction = step * per_batch / tokens  # charrnn.training.schedule's cosine over the tokens used
            lr_min = config.lr * config.lr_floor
            for group in optimizer.param_groups:
                group["lr"] = lr_min + (config.lr - lr_min) * (1 + math.cos(math.pi * fraction)) / 2
            logits, state = forward(X, detached(state))
            loss = loss_of(logits, Y)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            step += 1
        epoch += 1
    rnn.eval(), drop.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for X, Y in contiguous_batches(val):
            logits, state = forward(X, state)
            total += float(loss_of(logits, Y, reduction="sum"))
            count += Y.size
    return total / count


def one(task):
    side, text, network, seed, tokens = task
    started = time.perf_counter()
    loss = (charrnn_run if side == "charrnn" else torch_run)(text, network, seed, tokens)
    return side, network, seed, loss, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="a UTF-8 text (read raw, as `charrnn train PATH` reads it)")
    parser.add_argument("--networks", default="gru,lstm,rnn2", help=f"comma-separated, of {', '.join(NETWORKS)}")
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--margin", type=float, default=0.1, help="nats by which charrnn's median may trail")
    parser.add_argument("--no-torch", action="store_true", help="charrnn alone")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="a --json file of an earlier run: its PyTorch results are taken, not run again")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    from charrnn.data.baselines import ngram_baselines
    from charrnn.training.config import TrainConfig
    from charrnn.training.start import load_data

    text = str(Path(args.text).resolve())
    networks, seeds = args.networks.split(","), parse_seeds(args.seeds)
    train, val, vocab, _ = load_data(TrainConfig(corpus=text), None)
    baselines = ngram_baselines(train, val, len(vocab))
    print(f"{text}: {len(train):,} train / {len(val):,} validation tokens, vocabulary {len(vocab)}; "
          f"unigram {math.log(baselines.unigram):.3f} nats (ppl {baselines.unigram:.2f}), "
          f"bigram {math.log(baselines.bigram):.3f} nats (ppl {baselines.bigram:.2f}); "
          f"{args.tokens:,} tokens, seeds {seeds[0]}..{seeds[-1]}", flush=True)
    sides = ["charrnn"] + ([] if args.no_torch else ["pytorch"])
    results = {}
    if args.reuse:  # the same recipe on the same data gives PyTorch's same numbers: taken as they were
        earlier = json.loads(args.reuse.read_text())["networks"]
        for network in networks:
            if "pytorch" in earlier.get(network, {}):
                results.setdefault(network, {})["pytorch"] = {int(k): v for k, v in earlier[network]["pytorch"].items()}
    tasks = [(side, text, network, seed, args.tokens) for network in networks for seed in seeds for side in sides
             if seed not in results.get(network, {}).get(side, {})]
    with ProcessPoolExecutor(args.jobs) as pool:
        for side, network, seed, loss, seconds in pool.map(one, tasks):
            results.setdefault(network, {}).setdefault(side, {})[seed] = loss
            print(f"  {network:5s} {side:8s} seed {seed:2d}: {loss:.4f} nats ({seconds:.0f} s)", flush=True)
    bigram = math.log(baselines.bigram)
    summary = {}
    print(f"\n| network | charrnn median [min, max] | PyTorch median [min, max] | difference | "
          f"charrnn seeds above bigram ({bigram:.3f}) |")
    print("|---|---|---|---|---|")
    for network in networks:
        ours = list(results[network]["charrnn"].values())
        row = {"charrnn": results[network]["charrnn"], "charrnn_median": statistics.median(ours),
               "above_bigram": sum(loss > bigram for loss in ours)}
        theirs_text, difference = "-", "-"
        if "pytorch" in results[network]:
            theirs = list(results[network]["pytorch"].values())
            row.update(pytorch=results[network]["pytorch"], pytorch_median=statistics.median(theirs))
            row["difference"] = row["charrnn_median"] - row["pytorch_median"]
            row["within_margin"] = row["difference"] <= args.margin
            theirs_text = f"{row['pytorch_median']:.3f} [{min(theirs):.3f}, {max(theirs):.3f}]"
            difference = f"{row['difference']:+.3f} ({'within' if row['within_margin'] else 'NOT within'} {args.margin})"
        summary[network] = row
        print(f"| {network} | {row['charrnn_median']:.3f} [{min(ours):.3f}, {max(ours):.3f}] | {theirs_text} | "
              f"{difference} | {row['above_bigram']} of {len(ours)} |")
    if args.json:
        args.json.write_text(json.dumps({"text": text, "tokens": args.tokens, "seeds": seeds,
                                         "unigram_nats": math.log(baselines.unigram), "bigram_nats": bigram,
                                         "networks": summary}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
