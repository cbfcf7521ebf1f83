"""Which way of using two cores trains fastest: the measurement behind `--threads auto`.

One minibatch of the default run's shape (batch 64, num_steps 32, float32, vocabulary 28):
loss and gradients by BPTT (RNNLM.loss_and_grads), then clipping and an SGD step, in three ways:

- `1`:      one OpenBLAS thread (what `--threads 1` does);
- `blas2`:  two OpenBLAS threads, each product split between them (what `auto` does on an idle
            machine with two cores);
- `shards2`: the batch's rows cut in two halves, run in two Python threads of one OpenBLAS
            thread each (NumPy lets go of the GIL inside its products), the halves' gradients
            summed: data parallelism inside the minibatch.

The three alternate in rounds of ~0.3 s each (after a warm-up), so that a busy patch of the
shared machine slows them alike; reported: the median tokens/s over the rounds and the median
per-round ratio to `1`.

    python benchmarks/bench_mechanisms.py                      # rnn 256, rnn 1024, lstm 512 (2 layers)
    python benchmarks/bench_mechanisms.py --configs rnn256 --rounds 30
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_mechanisms.py
"""
import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info

from charrnn.nn.model import RNNLM
from charrnn.nn.optim import clip_grad_norm, make_optimizer

BATCH_SIZE, NUM_STEPS, VOCAB = 64, 32, 28
CONFIGS = {"rnn256": dict(cell="rnn", num_hiddens=256, num_layers=1),
           "rnn1024": dict(cell="rnn", num_hiddens=1024, num_layers=1),
           "lstm512": dict(cell="lstm", num_hiddens=512, num_layers=2)}
MECHANISMS = {"1": 1, "blas2": 2, "shards2": 1}  # -> OpenBLAS threads
ROUND_S = 0.3


def steps(network):
    """mechanism -> a function running one training step of `network` that way."""
    rng = np.random.default_rng(0)
    X, Y = (rng.integers(0, VOCAB, (BATCH_SIZE, NUM_STEPS)) for _ in range(2))
    model = RNNLM(VOCAB, seed=0, **network)
    optimizer = make_optimizer("sgd", model.params, 0.01)
    halves = [RNNLM(VOCAB, seed=0, **network) for _ in range(2)]  # own buffers; the same parameters
    for half in halves:
        half.params = model.params
    rows = [slice(0, BATCH_SIZE // 2), slice(BATCH_SIZE // 2, BATCH_SIZE)]
    pool = ThreadPoolExecutor(2)

    def whole():
        loss, grads, _ = model.loss_and_grads(X, Y)
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)

    def half(k):
        return halves[k].loss_and_grads(X[rows[k]], Y[rows[k]])[1]

    def sharded():
        first, second = pool.map(half, range(2))
        grads = {name: (first[name] + second[name]) / 2 for name in first}  # each half: its mean
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)

    return {"1": whole, "blas2": whole, "shards2": sharded}


def rate(step) -> float:
    """Tokens/s of `step` over ~ROUND_S seconds."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < ROUND_S:
        step()
        count += 1
    return count * BATCH_SIZE * NUM_STEPS / (time.perf_counter() - start)


def measure(network, rounds, controller) -> dict:
    """mechanism -> [tokens/s per round], the mechanisms alternating."""
    runs = steps(network)
    rates = {name: [] for name in MECHANISMS}
    for r in range(rounds + 1):
        for name, threads in MECHANISMS.items():
            with controller.limit(limits=threads, user_api="blas"):
                measured = rate(runs[name])
            if r:  # round 0 warms up
                rates[name].append(measured)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    blas = [(p["architecture"], p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]
    print(f"OpenBLAS kernel and threads at start-up: {blas}")
    controller = ThreadpoolController()
    for name in args.configs.split(","):
        rates = measure(CONFIGS[name], args.rounds, controller)
        cells = []
        for mechanism, values in rates.items():
            ratio = statistics.median(v / one for v, one in zip(values, rates["1"]))
            cells.append(f"{mechanism} {statistics.median(values):>9,.0f} tok/s ({ratio:.2f}x)")
        print(f"{name:8} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
