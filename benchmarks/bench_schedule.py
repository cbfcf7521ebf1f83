"""Learning-rate schedules side by side: the book and a small text, by the CLI.

Each case is one `charrnn train` command; the table shows its final and best validation
perplexity, the tokens trained, tokens/s and the last learning rate (from metrics.jsonl).

    python benchmarks/bench_schedule.py --small small.txt [--only book|small|time] [--out DIR]

--small: a ~50 KB text (e.g. 50,000 bytes of the book from byte 60,000), read with d2l as the
book is, so that the numbers compare. The machine's load (uptime) is printed with the table.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def cases(small):
    book = ["timemachine"]
    tokens = ["--max-tokens", "6000000"]
    text = [str(small), "--preprocess", "d2l", "--epochs", "150"]
    return {
        "book": [("book 6M tokens, today's schedule (epoch, 0.9)", book + tokens + ["--lr-schedule", "epoch"]),
                 ("book 6M tokens, cosine to lr/10 (new default)", book + tokens),
                 ("book 6M tokens, exponential to lr/10", book + tokens + ["--lr-schedule", "exponential"])],
        "small": [("50 KB, 150 epochs, today's schedule (epoch, 0.9)", text + ["--lr-schedule", "epoch"]),
                  ("50 KB, 150 epochs, cosine to lr/10 (new default)", text),
                  ("50 KB, 150 epochs, constant lr", text + ["--lr-schedule", "constant"])],
        "time": [("book --max-time 60, today's schedule (epoch, 0.9)", book + ["--max-time", "60", "--lr-schedule", "epoch"]),
                 ("book --max-time 60 (new default: cosine by time)", book + ["--max-time", "60"])],
    }


def run(args, out_dir):
    command = ["charrnn", "train", *args, "--out", str(out_dir)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    best = min(r["val_ppl"] for r in records if r["val_ppl"] is not None)
    return {"command": " ".join(map(shlex.quote, command[:-2])), "val_ppl": last["val_ppl"], "best": best,
            "tokens": last["tokens"], "tokens_per_s": last["tokens_per_s"], "lr": last["lr"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path, required=True)
    parser.add_argument("--only", choices=("book", "small", "time"), action="append")
    parser.add_argument("--out", type=Path, default=Path("runs") / f"schedule-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    for group, group_cases in cases(args.small.resolve()).items():
        if args.only and group not in args.only:
            continue
        for i, (name, case) in enumerate(group_cases):
            result = run(case, args.out / f"{group}-{i}")
            print(f"{name:52s} val ppl {result['val_ppl']:.3f} (best {result['best']:.3f}) "
                  f"{result['tokens']:>10,} tokens {result['tokens_per_s']:>9,.0f} tok/s  "
                  f"last lr {result['lr']:.2e}  [{result['command']}]", flush=True)
    print("load:", os.getloadavg(), file=sys.stderr)


if __name__ == "__main__":
    main()
