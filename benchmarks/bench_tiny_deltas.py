"""Tiny δ in a gated cell's float32 backward pass, and what setting them to zero buys (cells.flush_tiny).

Trains an LSTM on the book through `charrnn.train` (default: 2 layers of 512, the cell's other
defaults, --max-tokens 26,624 = 13 minibatches, one BLAS thread), then takes the run's model and
its next minibatch and times `loss_and_grads` (BPTT of one minibatch, 64 × 32 tokens) as it is and
with flush_tiny switched off, alternating, the median of --repeats each. Also prints how much of
each layer's δ was below 1e-20 and below 2^-63 when flush_tiny saw it.

    python benchmarks/bench_tiny_deltas.py
    python benchmarks/bench_tiny_deltas.py --cell gru --max-tokens 100000 --threads 2
"""
import argparse
import statistics
import tempfile
import time

import numpy as np

from charrnn.nn import model as model_module
from charrnn.training import start as training
from charrnn.nn.cells import TINY_DELTA, flush_tiny
from charrnn.data.samplers import seq_data_iter_sequential
from charrnn.runtime.threads import blas_threads
from charrnn.training.config import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("gru", "lstm"))
    parser.add_argument("--num-hiddens", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=26_624)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = TrainConfig(corpus="timemachine", cell=args.cell, num_hiddens=args.num_hiddens,
                                  max_tokens=args.max_tokens, eval_every=10**12)
    with tempfile.TemporaryDirectory() as out:
        result = training.train(config, f"{out}/run", threads=args.threads)
    model, cfg = result.model, result.config
    train_ids, _, _, _ = training.load_data(cfg, None)
    batches = seq_data_iter_sequential(train_ids, cfg.batch_size, cfg.num_steps, np.random.default_rng(0))
    X, Y = next(iter(batches))
    print(f"{cfg.cell} {cfg.num_layers} x {cfg.num_hiddens}, after {result.progress.step} minibatches; "
          f"one more minibatch of {X.shape[0]} x {X.shape[1]}, {args.threads} BLAS thread(s)")

    seen = []

    def counting(delta, scratch):  # as flush_tiny, counting first
        magnitude = np.abs(delta)
        seen.append((np.mean(magnitude < 1e-20), np.mean((magnitude < TINY_DELTA["float32"]) & (delta != 0))))
        flush_tiny(delta, scratch)

    def step(flush):
        model_module.flush_tiny = flush
        dropout_rng = np.random.default_rng(0)
        start = time.perf_counter()
        model.loss_and_grads(X, Y, dropout_rng=dropout_rng)
        return time.perf_counter() - start

    ways = {True: flush_tiny, False: lambda delta, scratch: None}
    times = {True: [], False: []}
    with blas_threads(args.threads):
        step(counting)  # the shares, in a call of its own: counting takes time
        step(ways[False])
        for _ in range(args.repeats):
            for flush in (True, False):
                times[flush].append(step(ways[flush]))
    model_module.flush_tiny = flush_tiny
    for layer, (below_1e20, flushed) in zip(range(cfg.num_layers - 1, -1, -1), seen[:cfg.num_layers]):
        print(f"layer {layer}: δ below 1e-20 {below_1e20:.0%}, nonzero and below 2^-63 (set to zero) {flushed:.0%}")
    kept, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"loss_and_grads: {kept * 1e3:.0f} ms with tiny δ set to zero, {off * 1e3:.0f} ms without "
          f"({off / kept:.1f}x slower), medians of {args.repeats}")


if __name__ == "__main__":
    main()
