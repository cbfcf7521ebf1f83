"""The speed goals of records (issue 26), on a generated list of names of --size bytes (default 1 GB):

1. set-up (reported, not a goal): generate the names (syllable grammar, one per line, a pool
   of distinct names drawn with repeats), tokenize them (the token store), train a tiny records
   model for a few hundred tokens (which makes the record index beside the store), make the
   novelty index (sorted hashes of the training and held-out records);
2. in a fresh process: draw 1,000 records, then time the novelty check of those 1,000
   (charrnn.infer.generation.record_novelty: the indexes memory-mapped, a binary search per record):
   seconds and the peak resident memory of the check (VmHWM reset before it), and what the
   process held before it;                                  targets: < 2 s and < 200 MB
3. `-n 1000` against 1,000 single calls, -n 1000 at least 20x faster:
   in Python, charrnn.sample(ckpt, n=1000) once against charrnn.sample(ckpt, n=1, seed=i) for
   i < 1000, the same checkpoint loaded once, one BLAS thread, --length tokens at most each
   (the strict measure: no process start or checkpoint load in either);
   from the command line, one `charrnn sample RUN -n 1000` against `charrnn sample RUN`
   run --cli-calls times, scaled to 1,000 (each call starts Python and loads the checkpoint).

    python benchmarks/bench_records.py                  # 1 GB: ~3 GB free in --dir, minutes of set-up
    python benchmarks/bench_records.py --size 20M       # a quick run
    python benchmarks/bench_records.py --json
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ONSETS = ["", "b", "br", "ch", "d", "el", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "sh", "st", "t",
          "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ia", "ea", "y"]
CODAS = ["", "", "", "n", "l", "r", "s", "th", "x", "nd", "m"]
POOL = 2_000_000  # distinct names drawn from
CHILD = "--child"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def make_pool(rng, count) -> np.ndarray:
    """count names of 1-4 syllables (shares 12/48/32/8 %), capitalised, as a bytes array."""
    parts = [np.array(ONSETS), np.array(VOWELS), np.array(CODAS)]
    syllables = rng.choice(4, count, p=[0.12, 0.48, 0.32, 0.08]) + 1
    names = np.full(count, "", dtype=object)
    for k in range(4):
        rows = syllables > k
        piece = (parts[0][rng.integers(0, len(ONSETS), rows.sum())].astype(object)
                 + parts[1][rng.integers(0, len(VOWELS), rows.sum())].astype(object)
                 + parts[2][rng.integers(0, len(CODAS), rows.sum())].astype(object))
        names[rows] += piece
    return np.array([name.capitalize() for name in names], dtype=object)


def write_names(path: Path, size: int, seed=0) -> int:
    rng = np.random.default_rng(seed)
    pool = make_pool(rng, POOL)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            block = "\n".join(pool[rng.integers(0, POOL, 200_000)]) + "\n"
            f.write(block)
            written += len(block)
    return written


def child(run: str, length: int) -> None:
    """Steps 2 and 3 in a process of their own; prints one JSON object."""
    import charrnn
    from charrnn.infer.generation import record_novelty
    from charrnn.runtime.threads import blas_threads
    ckpt = charrnn.load_checkpoint(run)
    with blas_threads(1):
        samples = charrnn.sample(ckpt, n=1000, length=length, seed=1)
        vocab = ckpt.vocab
        seqs = [np.array(vocab[list(s.text)], np.int64) for s in samples]
        before = vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        started = time.perf_counter()
        found = record_novelty(ckpt, seqs)
        check_s = time.perf_counter() - started
        peak = vm("VmHWM")
        started = time.perf_counter()
        charrnn.sample(ckpt, n=1000, length=length, seed=2)
        batch_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(1000):
            charrnn.sample(ckpt, n=1, length=length, seed=i)
        single_s = time.perf_counter() - started
    print(json.dumps({"novelty_check_s": check_s, "rss_before_mb": before, "peak_rss_mb": peak,
                      "check_rss_growth_mb": peak - before,
                      "found": {k: found.count(k) for k in ("train", "val", "new")},
                      "batch_1000_s": batch_s, "single_1000_s": single_s, "speedup": single_s / batch_s}))


def vm(field: str) -> float:
    """A VmXXX line of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="bytes of names, e.g. 20M, 1G [default: 1G]")
    parser.add_argument("--length", type=int, default=20, help="most tokens of a sample [default: 20]")
    parser.add_argument("--dir", default=None, help="where the text and stores go [default: a temporary dir]")
    parser.add_argument("--keep", action="store_true", help="keep the text and stores")
    parser.add_argument("--cli-calls", type=int, default=20, help="single CLI calls timed [default: 20]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_records_", dir=args.dir))
    env = {**os.environ, "CHARRNN_CACHE_DIR": str(root / "tokens"), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    report = {"size_bytes": parse_size(args.size)}
    try:
        started = time.perf_counter()
        report["text_bytes"] = write_names(root / "names.txt", report["size_bytes"])
        report["generate_s"] = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "charrnn", "train", str(root / "names.txt"), "--records", "lines",
                        "--cell", "gru", "--num-hiddens", "64", "--num-layers", "1", "--dropout", "0",
                        "--max-tokens", "2048", "--batch-size", "16", "--num-steps", "16", "--out", str(root / "run")],
                       check=True, env=env, capture_output=True)
        report["store_index_and_train_s"] = time.perf_counter() - started
        started = time.perf_counter()  # the first check makes the novelty index: set-up
        subprocess.run([sys.executable, "-m", "charrnn", "sample", str(root / "run"), "-n", "1", "--novelty"],
                       check=True, env=env, capture_output=True)
        report["novelty_index_s"] = time.perf_counter() - started
        out = subprocess.run([sys.executable, __file__, CHILD, str(root / "run"), str(args.length)],
                             check=True, env=env, capture_output=True, text=True).stdout
        report.update(json.loads(out.strip().splitlines()[-1]))
        command = [sys.executable, "-m", "charrnn", "sample", str(root / "run"), "--length", str(args.length)]
        started = time.perf_counter()
        subprocess.run(command + ["-n", "1000"], check=True, env=env, capture_output=True)
        report["cli_n_1000_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(args.cli_calls):
            subprocess.run(command + ["--seed", str(i)], check=True, env=env, capture_output=True)
        report["cli_single_1000_s"] = (time.perf_counter() - started) * 1000 / args.cli_calls
        report["cli_speedup"] = report["cli_single_1000_s"] / report["cli_n_1000_s"]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["targets_met"] = {"novelty_check_under_2_s": report.get("novelty_check_s", 99) < 2,
                             "novelty_check_under_200_mb": report.get("peak_rss_mb", 1e9) < 200,
                             "n_1000_at_least_20x_in_python": report.get("speedup", 0) >= 20,
                             "n_1000_at_least_20x_from_the_cli": report.get("cli_speedup", 0) >= 20}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
