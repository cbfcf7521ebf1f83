"""Speed of charrnn on this CPU, measured side by side with PyTorch's nn.RNN.

Workload: the book at char level (vocab 28), batch 32, num_steps 35, float32, SGD (lr 1) with
gradient clipping at 1, sequential sampling with the hidden state carried (detached in PyTorch).
Measured:

- training tokens/s at hidden 64, 256 and 1024: charrnn's full step as `charrnn train` runs
  it (BPTT, clipping, update) and PyTorch's (nn.RNN + nn.Linear + cross-entropy,
  clip_grad_norm_, optim.SGD), their ratio, and charrnn's FLOP/s (2·m·n·k per matrix product,
  forward and backward) as a fraction of this machine's large float32 matmul rate;
- validation-set evaluation tokens/s (the 10% tail of the book, forward only, state carried);
- `charrnn sample` characters/s at hidden 256;
- peak resident memory of a real `charrnn train` at hidden 256 (a subprocess);
- seconds to tokenize a 100 MB text made by repeating the book.

After a warm-up, each of `--rounds` rounds (default 10) trains charrnn for ~0.25 s, PyTorch on
as many minibatches, then times a 2048x2048 matmul (A B C A B C ...); the first 5 rounds also
evaluate with each. Rates are medians over the rounds; a ratio (charrnn/PyTorch, or charrnn's
FLOP/s over the matmul's) is the median of the per-round ratios, whose two sides ran back to
back, so that a machine busy with other work slows both alike. Training is also reported per
CPU-second of this process: with one BLAS thread that leaves out the time other processes took
the core, so it is the steadier figure on a shared machine (with several threads it counts
threads that wait, too).

    python benchmarks/bench_train.py                  # everything, hidden 64, 256, 1024
    python benchmarks/bench_train.py --threads 1      # one BLAS thread for NumPy and PyTorch
    python benchmarks/bench_train.py --only training --hiddens 256 --rounds 9
    python benchmarks/bench_train.py --no-torch --json

PyTorch is optional (`pip install torch`); without it only charrnn's figures are printed. It
runs with the number of threads NumPy's BLAS uses: --threads N sets both (through
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS, before NumPy loads). On a machine
where other processes keep cores busy, BLAS threads that wait for a core slow every product
down; --threads 1 then gives steadier figures.
"""
import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from charrnn.data.corpus import load_corpus, read_text
from charrnn.data.samplers import seq_data_iter_sequential, split_corpus
from charrnn.infer.evaluate import contiguous_batches, mean_loss
from charrnn.infer.export import TORCH_MODULES
from charrnn.nn.model import RNNLM
from charrnn.nn.optim import clip_grad_norm, make_optimizer
from charrnn.infer.sample import sample_text
from charrnn.runtime.threads import THREAD_VARIABLES

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE, NUM_STEPS, LR, CLIP = 32, 35, 1.0, 1.0
MATMUL_SIZE = 2048
SAMPLE_HIDDENS, SAMPLE_CHARS = 256, 20_000
MEMORY_HIDDENS, MEMORY_TOKENS = 256, 50_000
TOKENIZE_BYTES = 100_000_000
MEMORY_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
if os.waitstatus_to_exitcode(status):
    sys.exit(os.waitstatus_to_exitcode(status))
print(json.dumps([usage.ru_maxrss, time.perf_counter() - start]))
"""
GOALS = {"ratio": 1.5, "ratio_256": 2.0, "matmul_fraction_1024": 0.70, "sample_chars_per_s": 20_000,
         "tokenize_s": 10.0, "train_peak_rss_mb": 150.0}


# ----------------------------------------------------------------------------- machine

def blas_threads() -> int:
    """Threads NumPy's BLAS uses: threadpoolctl's answer if installed, else the thread
    variables, else the CPU count (OpenBLAS's default)."""
    try:
        from threadpoolctl import threadpool_info
        return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
    except (ImportError, ValueError):
        pass
    for name in THREAD_VARIABLES[:2]:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return os.cpu_count() or 1


def machine_report(no_torch: bool, quiet: bool) -> tuple:
    """-> (BLAS threads, whether PyTorch is measured, a report dict of the machine and versions),
    printing a line about them unless quiet."""
    try:
        import torch
        with_torch = not no_torch
    except ImportError:
        with_torch = False
    threads = blas_threads()
    report = {"threads": threads, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
              "numpy": np.__version__,
              "openblas_env": {name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}
    if with_torch:
        report["torch"] = torch.__version__
    if not quiet:
        print(f"{threads} BLAS thread(s), {os.cpu_count()} CPUs, load average {report['load_average']:.2f}, "
              f"numpy {np.__version__}" + (f", torch {report['torch']}" if with_torch else "")
              + f", {report['openblas_env']}", flush=True)
    return threads, with_torch, report


def set_threads_and_restart(threads: int) -> None:
    """Re-run this script with every BLAS thread variable at `threads` (read when NumPy loads)."""
    wanted = {name: str(threads) for name in THREAD_VARIABLES}
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def matmul_flops(a, b, out) -> float:
    """FLOP/s of one large float32 product a @ b (2·n³), the better of two."""
    seconds = min(timed(lambda: np.matmul(a, b, out=out)) for _ in range(2))
    return 2 * len(a) ** 3 / seconds


def train_step_flops(num_hiddens: int, vocab_size: int, gates: int = 1) -> int:
    """FLOPs of one training step, 2·m·n·k per matrix product, forward and backward.

    Per time step: h W_hh (forward), dA W_hhᵀ and the share of dW_hh (backward): 3 products
    of (batch, H)x(H, G·H), G = 1 (rnn), 3 (gru), 4 (lstm) fused gates; h W_hq, dO W_hqᵀ and
    dW_hq: 3 of (batch, H)x(H, V). x W_xh is a row lookup (x one-hot), no product.
    """
    return NUM_STEPS * 3 * 2 * BATCH_SIZE * num_hiddens * (gates * num_hiddens + vocab_size)


def timed(fn) -> float:
    """Wall-clock seconds of fn()."""
    return clocked(fn)[0]


def clocked(fn) -> tuple:
    """(wall-clock seconds, CPU seconds of this process) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# ----------------------------------------------------------------------------- the two engines

def charrnn_engine(vocab_size: int, num_hiddens: int, cell: str = "rnn", kernel: str = "auto"):
    """-> (train_step(X, Y), evaluate(corpus)) for charrnn, as `charrnn train` runs them;
    kernel: the time loop's steps (charrnn.nn.fused)."""
    model = RNNLM(vocab_size=vocab_size, num_hiddens=num_hiddens, seed=0, cell=cell, kernel=kernel)
    optimizer = make_optimizer("sgd", model.params, LR)
    state = None

    def train_step(X, Y):
        nonlocal state
        loss, grads, state = model.loss_and_grads(X, Y, state, bptt_memory="auto")
        grad_norm = clip_grad_norm(grads, CLIP)
        if math.isfinite(loss) and math.isfinite(grad_norm):
            optimizer.step(grads)

    return train_step, lambda corpus: mean_loss(model, corpus)


def torch_engine(vocab_size: int, num_hiddens: int, threads: int, cell: str = "rnn"):
    """-> (train_step(X, Y), evaluate(corpus)) for the same network in PyTorch: nn.RNN, nn.GRU
    or nn.LSTM as `cell` says."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rnn = getattr(torch.nn, TORCH_MODULES[cell])(vocab_size, num_hiddens)
    head = torch.nn.Linear(num_hiddens, vocab_size)
    params = list(rnn.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    state = None

    def loss_and_state(X, Y, h, reduction):
        inputs = F.one_hot(torch.from_numpy(X.T).long(), vocab_size).float()
        outputs, h = rnn(inputs, h)
        logits = head(outputs.reshape(-1, num_hiddens))
        targets = torch.from_numpy(np.ascontiguousarray(Y.T)).reshape(-1).long()
        return F.cross_entropy(logits, targets, reduction=reduction), h

    def detached(state):  # nn.LSTM's state is a pair (h, c)
        if state is None:
            return None
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def train_step(X, Y):
        nonlocal state
        loss, state = loss_and_state(X, Y, detached(state), "mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        if math.isfinite(loss.item()) and math.isfinite(grad_norm.item()):
            optimizer.step()

    def evaluate(corpus):
        total, count, h = 0.0, 0, None
        with torch.no_grad():
            for X, Y in contiguous_batches(corpus):
                loss_sum, h = loss_and_state(X, Y, h, "sum")
                total += loss_sum.item()
                count += X.size
        return total / count

    return train_step, evaluate


# ----------------------------------------------------------------------------- measurements

def minibatches(corpus: np.ndarray):
    """An endless stream of sequential (X, Y) minibatches, epoch after epoch."""
    for epoch in itertools.count():
        yield from seq_data_iter_sequential(corpus, BATCH_SIZE, NUM_STEPS, np.random.default_rng(epoch))


def train_rates(train_step, batches) -> tuple:
    """Training tokens per second of wall clock and per CPU-second, over a list of minibatches."""
    wall, cpu = clocked(lambda: [train_step(X, Y) for X, Y in batches])
    tokens = len(batches) * BATCH_SIZE * NUM_STEPS
    return tokens / wall, tokens / cpu


def bench_hidden(train, val, vocab_size, num_hiddens, rounds, threads, with_torch,
                 round_seconds=0.25, eval_rounds=5, cell="rnn", probes=None, kernel="auto") -> dict:
    """Alternating rounds at one hidden size -> the per-round figures, each a list.

    A round: charrnn trains on `count` minibatches, PyTorch on the next `count`, then one
    large matmul and each of `probes` ({name: fn() -> a number}, recorded under its name); the
    first `eval_rounds` rounds also evaluate the validation split with each. A warm-up sizes
    `count` to about `round_seconds` of charrnn's training.
    """
    engines = {"charrnn": charrnn_engine(vocab_size, num_hiddens, cell, kernel)}
    if with_torch:
        engines["torch"] = torch_engine(vocab_size, num_hiddens, threads, cell)
    stream = minibatches(train)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32) for _ in range(2))
    product = np.empty_like(a)

    warmup = {name: train_rates(step, list(itertools.islice(stream, 3)))[0] for name, (step, _) in engines.items()}
    for _, evaluate in engines.values():
        evaluate(val[:BATCH_SIZE * 256 + 1])
    count = max(2, round(round_seconds * warmup["charrnn"] / (BATCH_SIZE * NUM_STEPS)))
    samples = {"matmul": []}
    for round_index in range(rounds):
        for name, (train_step, _) in engines.items():
            wall, cpu = train_rates(train_step, list(itertools.islice(stream, count)))
            samples.setdefault(f"train_{name}", []).append(wall)
            samples.setdefault(f"cpu_train_{name}", []).append(cpu)
        samples["matmul"].append(matmul_flops(a, b, product))
        for name, probe in (probes or {}).items():
            samples.setdefault(name, []).append(probe())
        for name, (_, evaluate) in engines.items():
            if round_index < eval_rounds:
                samples.setdefault(f"eval_{name}", []).append(len(val) / timed(lambda: evaluate(val)))
    return samples


def median_ratio(numerators, denominators) -> float:
    """Median over rounds of the per-round ratio (both measured back to back)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def training_report(args, threads, with_torch) -> dict:
    corpus, vocab = load_corpus(args.corpus)
    train, val = split_corpus(corpus, 0.1)
    rows = []
    for num_hiddens in args.hiddens:
        runs = bench_hidden(train, val, len(vocab), num_hiddens, args.rounds, threads, with_torch)
        step_flops = train_step_flops(num_hiddens, len(vocab)) / (BATCH_SIZE * NUM_STEPS)
        flops = [rate * step_flops for rate in runs["train_charrnn"]]
        row = {"num_hiddens": num_hiddens, "train_tokens_per_s": statistics.median(runs["train_charrnn"]),
               "train_tokens_per_cpu_s": statistics.median(runs["cpu_train_charrnn"]),
               "eval_tokens_per_s": statistics.median(runs["eval_charrnn"]), "flops": statistics.median(flops),
               "matmul_flops": statistics.median(runs["matmul"]), "matmul_fraction": median_ratio(flops, runs["matmul"])}
        if with_torch:
            row.update(torch_train_tokens_per_s=statistics.median(runs["train_torch"]),
                       torch_train_tokens_per_cpu_s=statistics.median(runs["cpu_train_torch"]),
                       train_ratio=median_ratio(runs["train_charrnn"], runs["train_torch"]),
                       cpu_train_ratio=median_ratio(runs["cpu_train_charrnn"], runs["cpu_train_torch"]),
                       torch_eval_tokens_per_s=statistics.median(runs["eval_torch"]),
                       eval_ratio=median_ratio(runs["eval_charrnn"], runs["eval_torch"]))
        rows.append(row)
        if not args.json:
            print(training_line(row), flush=True)
    return {"vocab_size": len(vocab), "batch_size": BATCH_SIZE, "num_steps": NUM_STEPS,
            "val_tokens": len(val), "rows": rows}


def sampling_report(args) -> dict:
    """`charrnn sample`'s generation (sample_text) at hidden 256, characters/s, median of 3."""
    corpus, vocab = load_corpus(args.corpus)
    model = RNNLM(len(vocab), SAMPLE_HIDDENS, seed=0)
    sample_text(model, vocab, "time traveller", 200)
    rates = [SAMPLE_CHARS / timed(lambda: sample_text(model, vocab, "time traveller", SAMPLE_CHARS, seed=seed))
             for seed in range(3)]
    return {"num_hiddens": SAMPLE_HIDDENS, "chars": SAMPLE_CHARS, "chars_per_s": statistics.median(rates)}


def memory_report(args) -> dict:
    """Peak resident set of a real `charrnn train` run at hidden 256: the ru_maxrss of the
    training process, started by a small launcher process (a child forked straight from this
    big process would count this process's pages in its peak)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "cli.py"), "train", args.corpus, "--num-hiddens", str(MEMORY_HIDDENS),
                   "--batch-size", str(BATCH_SIZE), "--num-steps", str(NUM_STEPS), "--optimizer", "sgd",
                   "--lr", str(LR), "--clip", str(CLIP), "--max-tokens", str(MEMORY_TOKENS),
                   "--out", str(Path(out, "run"))]
        launched = subprocess.run([sys.executable, "-c", MEMORY_LAUNCHER, *command],
                                  capture_output=True, text=True, check=False)
    if launched.returncode != 0:
        raise SystemExit(f"charrnn train failed ({launched.returncode}): {launched.stderr.strip()}")
    max_rss, seconds = json.loads(launched.stdout)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"num_hiddens": MEMORY_HIDDENS, "tokens": MEMORY_TOKENS, "seconds": seconds,
            "peak_rss_mb": max_rss * scale / 1e6, "command": " ".join(["charrnn", *command[2:]])}


def tokenize_report(args) -> dict:
    """Seconds for load_corpus (read, check, preprocess, count, encode) of ~100 MB: the book repeated."""
    book = read_text(args.corpus).encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "repeated.txt")
        path.write_bytes(book * math.ceil(TOKENIZE_BYTES / len(book)))
        size = path.stat().st_size
        seconds = timed(lambda: load_corpus(path))
    return {"bytes": size, "seconds": seconds, "mb_per_s": size / 1e6 / seconds}


# ----------------------------------------------------------------------------- output

def training_line(row) -> str:
    line = (f"hidden {row['num_hiddens']:>5}: train {row['train_tokens_per_s']:>9,.0f} tok/s "
            f"({row['flops'] / 1e9:5.1f} GFLOP/s, {row['matmul_fraction']:4.0%} of matmul)")
    if "train_ratio" in row:
        line += (f" torch {row['torch_train_tokens_per_s']:>9,.0f}  x{row['train_ratio']:.2f}"
                 f" (per CPU-second x{row['cpu_train_ratio']:.2f})")
    line += f" | eval {row['eval_tokens_per_s']:>9,.0f} tok/s"
    if "eval_ratio" in row:
        line += f" torch {row['torch_eval_tokens_per_s']:>9,.0f}  x{row['eval_ratio']:.2f}"
    return line


def goals(report) -> dict:
    """Each goal that was measured -> met (bool)."""
    met = {}
    for row in report.get("training", {}).get("rows", []):
        H = row["num_hiddens"]
        if "train_ratio" in row:
            ratio = GOALS["ratio_256"] if H == 256 else GOALS["ratio"]
            met[f"train >= {ratio}x torch at hidden {H}"] = row["train_ratio"] >= ratio
        if H == 1024:
            met[f">= {GOALS['matmul_fraction_1024']:.0%} of matmul FLOP/s at hidden 1024"] = (
                row["matmul_fraction"] >= GOALS["matmul_fraction_1024"])
    if "sampling" in report:
        met[f"sampling >= {GOALS['sample_chars_per_s']:,} chars/s"] = report["sampling"]["chars_per_s"] >= GOALS["sample_chars_per_s"]
    if "memory" in report:
        met[f"train peak RSS < {GOALS['train_peak_rss_mb']:.0f} MB"] = report["memory"]["peak_rss_mb"] < GOALS["train_peak_rss_mb"]
    if "tokenize" in report:
        met[f"tokenize 100 MB < {GOALS['tokenize_s']:.0f} s"] = report["tokenize"]["seconds"] < GOALS["tokenize_s"]
    return met


def print_summary(report) -> None:
    if "sampling" in report:
        s = report["sampling"]
        print(f"sample: {s['chars_per_s']:,.0f} chars/s at hidden {s['num_hiddens']}")
    if "memory" in report:
        m = report["memory"]
        print(f"charrnn train at hidden {m['num_hiddens']}: peak RSS {m['peak_rss_mb']:.0f} MB")
    if "tokenize" in report:
        t = report["tokenize"]
        print(f"tokenize {t['bytes'] / 1e6:.0f} MB: {t['seconds']:.2f} s ({t['mb_per_s']:.0f} MB/s)")
    for goal, met in report["goals"].items():
        print(f"{'met    ' if met else 'NOT MET'}  {goal}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hiddens", default="64,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per hidden size (median)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads for NumPy and PyTorch")
    parser.add_argument("--only", default="training,sampling,memory,tokenize",
                        help="comma-separated parts: training, sampling, memory, tokenize")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--no-torch", action="store_true", help="measure charrnn alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads is not None:
        set_threads_and_restart(args.threads)
    args.hiddens = [int(h) for h in args.hiddens.split(",")]
    parts = args.only.split(",")
    unknown = sorted(set(parts) - {"training", "sampling", "memory", "tokenize"})
    if unknown:
        parser.error(f"unknown part {unknown[0]!r} in --only (use training, sampling, memory, tokenize)")

    threads, with_torch, report = machine_report(args.no_torch, args.json)
    measures = {"training": lambda: training_report(args, threads, with_torch), "sampling": lambda: sampling_report(args),
                "memory": lambda: memory_report(args), "tokenize": lambda: tokenize_report(args)}
    for part in parts:
        report[part] = measures[part]()
    report["goals"] = goals(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report)


if __name__ == "__main__":
    main()
