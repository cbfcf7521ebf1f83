"""Training-step speed of the gated cells, side by side with PyTorch's nn.GRU/nn.LSTM.

Workload (bench_train.py's): the book at char level, batch 32 x 35 steps, float32, one layer,
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

    python benchmarks/bench_cells.py                          # rnn, gru, lstm x 64, 256, 1024
    python benchmarks/bench_cells.py --threads 1              # one thread for NumPy and PyTorch
    python benchmarks/bench_cells.py --cells lstm --hiddens 256 --rounds 5 --json
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cells.py

The issue's goals (gru and lstm): at least 1.5x PyTorch at hidden 64 and 256, 1.2x at 1024.
"""
import argparse
import json
import os
import statistics

import numpy as np

from bench_train import (BATCH_SIZE, NUM_STEPS, bench_hidden, machine_report, median_ratio,
                         set_threads_and_restart, timed, train_step_flops)
from charrnn.data.corpus import load_corpus
from charrnn.data.samplers import split_corpus

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
GOALS = {64: 1.5, 256: 1.5, 1024: 1.2}  # minimum charrnn/PyTorch ratio of the gated cells


def step_products(num_hiddens, vocab_size, gates) -> list:
    """The matrix products of one training step -> [(m, k, n, times per step)]: per time step
    h_{t-1} W_hh (B, H)x(H, G·H) and dA_t W_hhᵀ (B, G·H)x(G·H, H); once per window the
    output layer's o = h W_hq (T·B, H)x(H, V), dO W_hqᵀ (T·B, V)x(V, H), dW_hq = hᵀ dO
    (H, T·B)x(T·B, V), and dW_hh = hᵀ dA (H, T·B)x(T·B, G·H)."""
    B, T, H, V, GH = BATCH_SIZE, NUM_STEPS, num_hiddens, vocab_size, gates * num_hiddens
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


def cell_row(train, val, vocab_size, cell, num_hiddens, rounds, threads, with_torch) -> dict:
    products = step_products(num_hiddens, vocab_size, GATES[cell])
    probes = {"products_s": lambda: products_seconds(products)}
    if with_torch:
        import torch
        probes["torch_products_s"] = lambda: products_seconds(products, torch=torch)
    runs = bench_hidden(train, val, vocab_size, num_hiddens, rounds, threads, with_torch, eval_rounds=0, cell=cell,
                        probes=probes)
    tokens = BATCH_SIZE * NUM_STEPS
    flops_per_token = train_step_flops(num_hiddens, vocab_size, GATES[cell]) / tokens
    step_seconds = [tokens / rate for rate in runs["train_charrnn"]]
    row = {"cell": cell, "num_hiddens": num_hiddens, "rounds": rounds,
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
    line = (f"{row['cell']:>4} {row['num_hiddens']:>5} | charrnn {row['tokens_per_s']:>9,.0f} tok/s "
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm", help="comma-separated cells")
    parser.add_argument("--hiddens", default="64,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per setting (median)")
    parser.add_argument("--threads", type=int, default=None, help="threads for NumPy's BLAS and PyTorch")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--no-torch", action="store_true", help="measure charrnn alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads is not None:
        set_threads_and_restart(args.threads)
    cells = args.cells.split(",")
    unknown = sorted(set(cells) - set(GATES))
    if unknown:
        parser.error(f"unknown cell {unknown[0]!r} in --cells (use rnn, gru, lstm)")
    threads, with_torch, report = machine_report(args.no_torch, args.json)
    report.update(batch_size=BATCH_SIZE, num_steps=NUM_STEPS, rows=[])
    corpus, vocab = load_corpus(args.corpus)
    train, val = split_corpus(corpus, 0.1)
    for cell in cells:
        for num_hiddens in (int(h) for h in args.hiddens.split(",")):
            row = cell_row(train, val, len(vocab), cell, num_hiddens, args.rounds, threads, with_torch)
            report["rows"].append(row)
            if not args.json:
                print(row_line(row), flush=True)
    report["goals"] = {f"{row['cell']} >= {GOALS[row['num_hiddens']]}x torch at hidden {row['num_hiddens']}":
                       row["ratio"] >= GOALS[row["num_hiddens"]] for row in report["rows"]
                       if "ratio" in row and row["cell"] != "rnn" and row["num_hiddens"] in GOALS}
    report["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for goal, met in report["goals"].items():
            print(f"{'met    ' if met else 'NOT MET'}  {goal}")
        print(f"load average at the end {report['load_average_end']:.2f}")


if __name__ == "__main__":
    main()
