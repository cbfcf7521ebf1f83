"""The measurements behind `--size auto` (charrnn.training.autosize): a grid of fixed networks trained on
several texts for several token budgets, each scored on its text's validation split.

Token budgets, not seconds: the numbers are the same on any machine (one BLAS thread a run).
Every run is `charrnn train TEXT <network> --max-tokens B --seed 0` through the Python API,
with the defaults of TrainConfig otherwise (batch 64 x 32 steps, cosine schedule, unigram
output bias). Results are appended to --json as one line per run (text, network, budget,
validation loss in nats, the text's bigram loss), so an interrupted grid goes on where it was.

    python benchmarks/bench_autosize.py timemachine /work/tune-data/plays.txt ... --json grid.jsonl
    python benchmarks/bench_autosize.py --grammar 300000 --json grid.jsonl   # a generated text
    python benchmarks/bench_autosize.py --report grid.jsonl                  # the table of docs/tune.md
"""
import argparse
import json
import math
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # before NumPy loads: each worker runs one thread

# the fixed networks of the grid: TrainConfig fields
NETWORKS = {
    "rnn-256": {"cell": "rnn"},  # today's default
    "gru-128-lr1e-2": {"cell": "gru", "num_hiddens": 128, "num_layers": 1, "dropout": 0.0, "lr": 1e-2},
    "gru-128-lr5e-3": {"cell": "gru", "num_hiddens": 128, "num_layers": 1, "dropout": 0.0, "lr": 5e-3},
    "gru-256-lr5e-3": {"cell": "gru", "num_hiddens": 256, "num_layers": 1, "dropout": 0.0, "lr": 5e-3},
    "gru-256-d0.2": {"cell": "gru", "num_hiddens": 256, "num_layers": 1, "dropout": 0.2, "lr": 5e-3},
    "gru-2x256-d0.3": {"cell": "gru"},  # the gru defaults
}
BUDGETS = (100_000, 400_000, 1_600_000)


def grammar_file(chars, directory):
    """A generated text of the small grammar of tests/test_learning.py, about `chars` characters."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_learning import grammar_text

    path = Path(directory) / f"grammar-{chars}.txt"
    if not path.is_file():
        text = grammar_text(max(chars // 38, 10), seed=7)  # ~38 characters a sentence
        path.write_text(text, encoding="utf-8")
    return str(path)


def one_run(text, network, budget):
    from charrnn.training.config import TrainConfig
    from charrnn.training.start import train

    config = TrainConfig(corpus=text, **NETWORKS[network], seed=0, max_tokens=budget, eval_every=10**12)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run", threads=1)
    return {"text": Path(text).name, "network": network, "budget": budget, "config": NETWORKS[network],
            "val_loss": math.log(result.val_ppl) if result.val_ppl else None,
            "bigram_loss": math.log(result.baselines.bigram), "unigram_loss": math.log(result.baselines.unigram)}


def report(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    cells = {}
    for r in rows:
        cells.setdefault((r["text"], r["budget"]), {})[r["network"]] = r["val_loss"]
    names = list(NETWORKS)
    print("| text | budget | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for (text, budget), losses in sorted(cells.items()):
        best = min(v for v in losses.values() if v is not None)
        shown = [("**%.3f**" if losses.get(n) == best else "%.3f") % losses[n] if losses.get(n) is not None else "-"
                 for n in names]
        print(f"| {text} | {budget:,} | " + " | ".join(shown) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*")
    parser.add_argument("--grammar", type=int, action="append", default=[], help="characters of a generated text")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", default="autosize.jsonl")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    texts = args.texts + [grammar_file(n, Path(args.json).resolve().parent) for n in args.grammar]
    done = set()
    if Path(args.json).is_file():
        for line in Path(args.json).read_text().splitlines():
            r = json.loads(line)
            done.add((r["text"], r["network"], r["budget"]))
    todo = [(t, n, int(b)) for b in args.budgets.split(",") for t in texts for n in args.networks.split(",")
            if (Path(t).name, n, int(b)) not in done]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_run, *job) for job in todo]
        for future in as_completed(futures):
            record = future.result()
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(record["text"], record["network"], record["budget"], record["val_loss"], flush=True)


if __name__ == "__main__":
    main()
