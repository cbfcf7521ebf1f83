"""Time and peak memory of full BPTT, storing every state (plain) vs recomputing from √T checkpoints.

Workload: windows of T = 1,000, 10,000 and 100,000 steps of the book, one row each
(batch 1), hidden 256, float32, truncation "full". Each (mode, T) runs in a fresh subprocess,
which reports:

- peak: the peak of memory NumPy allocated during one call (tracemalloc), over what was held
  before it: the BPTT buffers, gradients and temporaries;
- rss: the growth of the subprocess's peak resident set size (ru_maxrss) over that call;
- predicted: charrnn.nn.recompute.bptt_memory_bytes, the buffers the call keeps;
- seconds: the best of `--repeats` calls after the measured one (buffers already allocated).

    python benchmarks/bench_memory.py                      # T = 1e3, 1e4, 1e5
    python benchmarks/bench_memory.py --steps 1000,10000 --json
    python benchmarks/bench_memory.py --blas-threads 1       # steadier times on a busy machine
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from charrnn.data.corpus import load_corpus
from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import bptt_memory_bytes, default_segment_steps, loss_and_grads_recompute

MODES = ("store", "recompute")


def bptt_call(mode, model, X, Y):
    """One full-BPTT gradient of the window, by `mode`."""
    if mode == "store":
        return model.loss_and_grads(X, Y)
    return loss_and_grads_recompute(model, X, Y)


def measure(mode, num_steps, batch_size, num_hiddens, repeats) -> dict:
    """Run in the worker process: peak memory of one call, then its best time."""
    corpus, vocab = load_corpus("timemachine")
    if batch_size * num_steps + 1 > len(corpus):
        raise SystemExit(f"the book has {len(corpus)} tokens, fewer than {batch_size} rows of {num_steps} + 1")
    tokens = batch_size * num_steps
    X = corpus[:tokens].reshape(batch_size, num_steps)
    Y = corpus[1:tokens + 1].reshape(batch_size, num_steps)
    model = RNNLM(len(vocab), num_hiddens, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    loss = bptt_call(mode, model, X, Y)[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        bptt_call(mode, model, X, Y)
        seconds.append(time.perf_counter() - start)
    segment_steps = default_segment_steps(num_steps) if mode == "recompute" else None
    predicted = bptt_memory_bytes(batch_size, num_steps, num_hiddens, len(vocab), model.dtype, segment_steps)
    return {"mode": mode, "num_steps": num_steps, "batch_size": batch_size, "num_hiddens": num_hiddens,
            "loss": loss, "peak_bytes": peak, "rss_growth_bytes": rss_growth,
            "predicted_bytes": predicted, "seconds": min(seconds)}


def run_worker(mode, num_steps, args) -> dict:
    """measure() in a fresh Python process, so that each peak is its own."""
    command = [sys.executable, __file__, "--worker", mode, "--steps", str(num_steps),
               "--batch-size", str(args.batch_size), "--hiddens", str(args.hiddens),
               "--repeats", str(args.repeats)]
    env = dict(os.environ)
    if args.blas_threads:
        env.update(dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"),
                                 str(args.blas_threads)))
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout)


def mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1000,10000,100000", help="comma-separated window lengths T")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--hiddens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blas-threads", type=int, help="threads for BLAS in the workers [default: its own]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = [int(t) for t in args.steps.split(",")]
    if args.worker:
        print(json.dumps(measure(args.worker, steps[0], args.batch_size, args.hiddens, args.repeats)))
        return
    rows = [run_worker(mode, num_steps, args) for num_steps in steps for mode in MODES]
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    print(f"full BPTT, batch {args.batch_size}, hidden {args.hiddens}, float32, BLAS threads "
          f"{args.blas_threads or 'default'}; recompute: checkpoints every round(sqrt(T)) steps")
    print(f"{'T':>8} {'mode':>10} {'seconds':>9} {'peak (tracemalloc)':>20} {'RSS growth':>14} {'predicted':>14}")
    for row in rows:
        print(f"{row['num_steps']:>8,} {row['mode']:>10} {row['seconds']:>9.3f} {mib(row['peak_bytes']):>20} "
              f"{mib(row['rss_growth_bytes']):>14} {mib(row['predicted_bytes']):>14}")


if __name__ == "__main__":
    main()
