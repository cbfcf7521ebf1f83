"""Training-step speed of the cells, side by side with PyTorch's nn.RNN/GRU/LSTM.

Workload (bench_train.py's): the book at char level, batch 32 and 64 x 35 steps, float32, one layer,
SGD (lr 1) with gradient clipping at 1, the state carried. For each cell (rnn, gru, lstm) and
hidden size (64, 256, 1024): charrnn's step as `charrnn train` runs it (BPTT, clip_grad_norm,
SGD) against PyTorch's (nn.RNN/GRU/LSTM + nn.Linear + cross-entropy, clip_grad_norm_,
optim.SGD) with the same number of threads, in alternating rounds (bench_train.bench_hidden:
charrnn, PyTorch, a 2048² matmul, the step's products alone, repeated). Reported: median
tokens/s of each with the range over rounds, the median of the per-round ratios charrnn/PyTorch
with its range, the same ratio per CPU-second of this process (steadier on a shared machine
with one thread: it leaves out the time other processes held the core), and two shares of the
machine's matrix-product rate:

- "of peak": charrnn's FLOP/s (the step's matrix products, 2·m·n·k each, bench_train's
  train_step_flops with G = 1, 3, 4 fused gates) over a large float32 matmul's FLOP/s;
- "products": the time the step's own products take when NumPy runs them alone, shape for
  shape (the (32, H) x (H, G·H) product of every time step, forward and backward, and the
  big ones of the output layer and dW_hh), over the step's time: the share of the step that
  is matrix products (median of the per-round ratios); the rest is overhead and elementwise
  work around them.

With PyTorch, also: the same products timed with torch.mm (PyTorch's BLAS, MKL in the pip
build, against NumPy's OpenBLAS), and the ceiling: PyTorch's step time over the time of
charrnn's products alone, the ratio charrnn would reach if everything but its matrix products
cost nothing.

charrnn runs its default kernel (--kernel auto: the fused steps in float32, charrnn.nn.fused);
--kernel numpy measures the readable NumPy steps. Each setting of --threads (default "1,2") runs
in a process of its own, the thread variables set before NumPy and PyTorch load. Printed first:
the load average, the BLAS libraries (threadpoolctl: NumPy's OpenBLAS and its kernel, PyTorch's)
and the fused kernels' compile (or cache-load) time; last, the load average again. On a busy
machine the figures measure the other processes too: compare the load averages with the cores.

    python benchmarks/bench_cells.py                          # rnn, gru, lstm x 64, 256, 1024 x B 32, 64 x 1, 2 threads
    python benchmarks/bench_cells.py --threads 1 --batches 64
    python benchmarks/bench_cells.py --cells lstm --hiddens 256 --rounds 5 --kernel numpy --json
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cells.py

Issue 23's goals at batch 64 (one thread and two): lstm >= 1.5x nn.LSTM at 64, 1.0x at 256 and
1024; gru >= 2.0x, 1.5x, 1.1x; rnn >= 1.5x at every size.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

import bench_train
from bench_train import NUM_STEPS, bench_hidden, machine_report, median_ratio, set_threads_and_restart, timed
from charrnn.nn import fused
from charrnn.data.corpus import load_corpus
from charrnn.data.samplers import split_corpus

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
GOALS = {"lstm": {64: 1.5, 256: 1.0, 1024: 1.0}, "gru": {64: 2.0, 256: 1.5, 1024: 1.1},
         "rnn": {64: 1.5, 256: 1.5, 1024: 1.5}}  # issue 23: minimum charrnn/PyTorch ratio at batch 64
GOAL_BATCH = 64


def step_products(num_hiddens, vocab_size, gates) -> list:
    """The matrix products of one training step -> [(m, k, n, times per step)]: per time step
    h_{t-1} W_hh (B, H)x(H, G·H) and dA_t W_hhᵀ (B, G·H)x(G·H, H); once per window the
    output layer's o = h W_hq (T·B, H)x(H, V), dO W_hqᵀ (T·B, V)x(V, H), dW_hq = hᵀ dO
    (H, T·B)x(T·B, V), and dW_hh = hᵀ dA (H, T·B)x(T·B, G·H)."""
    B, T, H, V, GH = bench_train.BATCH_SIZE, NUM_STEPS, num_hiddens, vocab_size, gates * num_hiddens
    return [(B, H, GH, T), (B, GH, H, T), (T * B, H, V, 1), (T * B, V, H, 1), (H, T * B, V, 1),
            (H, T * B, GH, 1)]


def products_seconds(products, torch=None) -> float:
    """Wall-clock seconds NumPy (or, given the torch module, PyTorch: torch.mm) takes for the
    products of one step (float32, C-contiguous, into preallocated outputs), each shape as many
    times as the step has it, after one untimed pass: measured as the step is, so that on a busy
    machine both lose alike."""
    rng = np.random.default_rng(0)
    calls = []
    for m, k, n, times in products:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        out = np.empty((m, n), np.float32)
        if torch is None:
            calls += [(np.matmul, a, b, out)] * times
        else:
            calls += [(torch.mm, torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out))] * times

    def run():
        for product, a, b, out in calls:
            product(a, b, out=out)

    run()
    return timed(run)


def spread(values) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def blas_libraries() -> list:
    """threadpoolctl's view of the BLAS and OpenMP libraries loaded (NumPy's OpenBLAS with its
    kernel, PyTorch's MKL/oneDNN/OpenMP) -> short descriptions."""
    from threadpoolctl import threadpool_info
    return [f"{info.get('internal_api')} {info.get('version')} {info.get('architecture') or ''} "
            f"{info['num_threads']} thread(s) ({os.path.basename(info['filepath'])})".replace("  ", " ")
            for info in threadpool_info()]


def cell_row(train, val, vocab_size, cell, num_hiddens, rounds, threads, with_torch, kernel) -> dict:
    products = step_products(num_hiddens, vocab_size, GATES[cell])
    probes = {"products_s": lambda: products_seconds(products)}
    if with_torch:
        import torch
        probes["torch_products_s"] = lambda: products_seconds(products, torch=torch)
    runs = bench_hidden(train, val, vocab_size, num_hiddens, rounds, threads, with_torch, eval_rounds=0, cell=cell,
                        probes=probes, kernel=kernel)
    tokens = bench_train.BATCH_SIZE * NUM_STEPS
    flops_per_token = bench_train.train_step_flops(num_hiddens, vocab_size, GATES[cell]) / tokens
    step_seconds = [tokens / rate for rate in runs["train_charrnn"]]
    row = {"cell": cell, "num_hiddens": num_hiddens, "batch_size": bench_train.BATCH_SIZE, "rounds": rounds,
           "tokens_per_s": statistics.median(runs["train_charrnn"]), "tokens_per_s_all": runs["train_charrnn"],
           "step_ms": statistics.median(step_seconds) * 1e3,
           "peak_share": median_ratio([r * flops_per_token for r in runs["train_charrnn"]], runs["matmul"]),
           "matmul_gflops": statistics.median(runs["matmul"]) / 1e9,
           "products_ms": statistics.median(runs["products_s"]) * 1e3,
           "products_share": median_ratio(runs["products_s"], step_seconds)}
    if with_torch:
        ratios = [a / b for a, b in zip(runs["train_charrnn"], runs["train_torch"])]
        row.update(torch_tokens_per_s=statistics.median(runs["train_torch"]),
                   torch_tokens_per_s_all=runs["train_torch"], ratio=statistics.median(ratios), ratio_all=ratios,
                   cpu_ratio=median_ratio(runs["cpu_train_charrnn"], runs["cpu_train_torch"]),
                   torch_products_ms=statistics.median(runs["torch_products_s"]) * 1e3,
                   ceiling=median_ratio([tokens / rate for rate in runs["train_torch"]], runs["products_s"]))
    return row


def row_line(row) -> str:
    line = (f"{row['cell']:>4} {row['num_hiddens']:>5} B{row['batch_size']:<3} | charrnn {row['tokens_per_s']:>9,.0f} tok/s "
            f"({spread(row['tokens_per_s_all'])}) {row['step_ms']:7.2f} ms/step")
    if "ratio" in row:
        line += (f" | torch {row['torch_tokens_per_s']:>9,.0f} ({spread(row['torch_tokens_per_s_all'])})"
                 f" | x{row['ratio']:.2f} ({min(row['ratio_all']):.2f}-{max(row['ratio_all']):.2f})"
                 f" per CPU-s x{row['cpu_ratio']:.2f}")
    line += (f" | {row['peak_share']:4.0%} of peak, products {row['products_ms']:6.2f} ms"
             f" = {row['products_share']:4.0%} of the step")
    if "ceiling" in row:
        line += f" | same products in torch {row['torch_products_ms']:6.2f} ms, ceiling x{row['ceiling']:.2f}"
    return line


def run_per_thread_count(counts) -> None:
    """Run this script once per thread count, each in a process of its own (the counts are
    read when NumPy loads), passing the other arguments through."""
    rest, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--threads":
            skip = True
        elif not arg.startswith("--threads="):
            rest.append(arg)
    for count in counts:
        subprocess.run([sys.executable, sys.argv[0], *rest, "--threads", str(count)], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm", help="comma-separated cells")
    parser.add_argument("--hiddens", default="64,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--batches", default="32,64", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per setting (median)")
    parser.add_argument("--threads", default="1,2", help="comma-separated BLAS threads of NumPy and PyTorch, "
                                                         "one process each")
    parser.add_argument("--kernel", default="auto", choices=fused.KERNELS, help="charrnn's steps (charrnn.nn.fused)")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--no-torch", action="store_true", help="measure charrnn alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object (per thread count)")
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    if len(counts) > 1:
        return run_per_thread_count(counts)
    set_threads_and_restart(counts[0])
    cells = args.cells.split(",")
    unknown = sorted(set(cells) - set(GATES))
    if unknown:
        parser.error(f"unknown cell {unknown[0]!r} in --cells (use rnn, gru, lstm)")
    threads, with_torch, report = machine_report(args.no_torch, args.json)
    if with_torch:
        import torch  # noqa: F401  (loaded, so that threadpoolctl lists its libraries)
    report.update(num_steps=NUM_STEPS, rows=[], kernel={cell: fused.describe(args.kernel, "float32", cell) for cell in cells},
                  blas=blas_libraries())
    if not args.json:
        print("\n".join(["BLAS: " + line for line in report["blas"]] + [f"charrnn kernel: {report['kernel']}"]),
              flush=True)
    corpus, vocab = load_corpus(args.corpus)
    train, val = split_corpus(corpus, 0.1)
    for batch_size in (int(b) for b in args.batches.split(",")):
        bench_train.BATCH_SIZE = batch_size  # read by bench_train's minibatches, rates and FLOP counts
        for cell in cells:
            for num_hiddens in (int(h) for h in args.hiddens.split(",")):
                row = cell_row(train, val, len(vocab), cell, num_hiddens, args.rounds, threads, with_torch,
                               args.kernel)
                report["rows"].append(row)
                if not args.json:
                    print(row_line(row), flush=True)
    report["goals"] = {f"{row['cell']} >= {GOALS[row['cell']][row['num_hiddens']]}x torch at hidden "
                       f"{row['num_hiddens']}, batch {GOAL_BATCH}, {threads} thread(s)":
                       row["ratio"] >= GOALS[row["cell"]][row["num_hiddens"]] for row in report["rows"]
                       if "ratio" in row and row["batch_size"] == GOAL_BATCH and row["num_hiddens"] in GOALS[row["cell"]]}
    report["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for goal, met in report["goals"].items():
            print(f"{'met    ' if met else 'NOT MET'}  {goal}")
        print(f"load average at the start {report['load_average']:.2f}, at the end {report['load_average_end']:.2f} "
              f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
