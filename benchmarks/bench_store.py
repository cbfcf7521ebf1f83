"""The token store at scale: a generated UTF-8 text of --size bytes (default 2 GB).

Steps, each in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own:

1. generate the text in a temporary directory: words of English, accented Latin, Cyrillic,
   Greek, CJK and emoji (1- to 4-byte UTF-8 characters), newline every ~12 words;
2. first tokenization (charrnn.data.store.open_store, char level, --preprocess), pinned to one core:
   seconds, MB/s of text, peak RSS;                            targets: >= 30 MB/s, < 500 MB
3. a second run of training on it: seconds from launching the process to the end of the first
   training step;                                                          target: < 1 s
4. training throughput, the generated text against the book, the same settings (d2l, so
   the same network; hidden --hidden, batch 64 x 32, --train-tokens tokens, one BLAS thread as
   the CLI), --repeats runs of each, alternated: tokens/s of the steps after the first, peak
   RSS (VmHWM) and, at the end, anonymous RSS (heap) and file-backed RSS (libraries and pages
   of the memory-mapped store, page cache the kernel can drop);     target: RSS < 300 MB

The temporary directory (text and stores) is deleted at the end unless --keep.

    python benchmarks/bench_store.py                    # 2 GB: needs ~4 GB free in --dir
    python benchmarks/bench_store.py --size 200M        # a quick run
    python benchmarks/bench_store.py --json
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

WORDS = ("the time machine traveller said we go into future past strange psychologist medical man "
         "café naïve façade über straße señor déjà vu "
         "машина времени путешественник сказал будущее прошлое "
         "μηχανή χρόνου ταξιδιώτης "
         "時間 機械 旅行者 未来 過去 "
         "⌛ 🚀 😀 🕰️").split()
BLOCK_BYTES = 8 << 20
CHILD = "--child"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def generate(path: Path, size: int, seed=0) -> None:
    """Write about `size` bytes of mixed text: 16 random blocks, repeated in a random order."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(16):
        words = [WORDS[i] for i in rng.integers(len(WORDS), size=BLOCK_BYTES // 6).tolist()]
        lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
        block = ("\n".join(lines) + "\n").encode("utf-8")[:BLOCK_BYTES]
        blocks.append(block[:block.rfind(b"\n") + 1])  # whole lines, so whole characters
    with open(path, "wb") as f:
        written = 0
        while written < size:
            block = blocks[rng.integers(len(blocks))]
            if written + len(block) > size:
                block = block[:block.rfind(b"\n", 0, size - written) + 1] or block
            f.write(block)
            written += len(block)
    os.utime(path, ns=(time.time_ns() - 10**9,) * 2)  # settled: the store reads it at once


def child(args) -> dict:
    """Run one measured step in this (fresh) process; -> its measurements."""
    launched = float(args.launched)
    if args.step == "tokenize":
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from charrnn.data.store import open_store
        start = time.perf_counter()
        store = open_store(args.text, "char", args.preprocess, cache_dir=args.cache, progress=False)
        seconds = time.perf_counter() - start
        assert store.built
        return {"seconds": seconds, "tokens": len(store), "vocab": len(store.vocab),
                "dtype": str(store.ids.dtype), "store_bytes": store.nbytes, **rss()}
    from charrnn.training import start as training
    from charrnn.training.config import TrainConfig
    from charrnn.training.events import Reporter
    first_step, started = [], []

    class Timer(Reporter):
        def on_start(self, info):
            started.append(time.time() - launched)

        def on_step(self, stats):
            now = time.perf_counter()
            if not first_step:
                first_step.append((time.time() - launched, now, stats["tokens"]))
            self.last = (now, stats["tokens"])
    timer = Timer()
    config = TrainConfig(corpus=args.text, level="char", preprocess=args.preprocess,
                                  num_hiddens=args.hidden, max_tokens=args.train_tokens,
                                  val_fraction=args.val_fraction, eval_every=10**12, sample_length=0)
    from charrnn.runtime.threads import blas_threads
    with blas_threads(args.blas_threads):  # as the CLI runs (--threads, default 1)
        training.train(config, Path(args.out), data_dir=None, reporter=timer)
    (since_launch, t0, tokens0), (t1, tokens1) = first_step[0], timer.last
    return {"start_after_launch_s": started[0], "first_step_after_launch_s": since_launch,
            "tokens_per_s": (tokens1 - tokens0) / (t1 - t0), **rss()}


def rss() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mib = lambda key: int(status[key].split()[0]) / 1024  # noqa: E731 (kB -> MiB)
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and exec
    return {"peak_rss_mib": mib("VmHWM"), "rss_anon_mib": mib("RssAnon"), "rss_file_mib": mib("RssFile")}


def run_child(step, **options) -> dict:
    command = [sys.executable, __file__, CHILD, step, "--launched", repr(time.time())]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{step} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="bytes of text (2G, 200M, ...)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary directory goes")
    parser.add_argument("--preprocess", default="raw", choices=["raw", "d2l"])
    parser.add_argument("--repeats", type=int, default=3, help="training runs of each text, alternated")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads while training (the CLI's default: 1)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--train-tokens", type=int, default=300_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true")
    # the child's options
    parser.add_argument(CHILD, dest="step", choices=["tokenize", "train"])
    parser.add_argument("--launched"), parser.add_argument("--text"), parser.add_argument("--cache")
    parser.add_argument("--out"), parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(child(args)))
        return
    free = shutil.disk_usage(args.dir).free
    if free < 2.5 * args.size:
        raise SystemExit(f"{args.dir} has {free / 2**30:.1f} GiB free; {2.5 * args.size / 2**30:.1f} GiB needed")
    tmp = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.dir))
    try:
        results = measure(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def measure(args, tmp: Path) -> dict:
    text, cache = tmp / "generated.txt", tmp / "tokens"
    start = time.perf_counter()
    generate(text, args.size)
    size = text.stat().st_size
    results = {"size_bytes": size, "generate_s": time.perf_counter() - start, "hidden": args.hidden,
               "blas_threads": args.blas_threads,
               "load": os.getloadavg()}
    for preprocess in dict.fromkeys([args.preprocess, "d2l"]):
        first = run_child("tokenize", text=text, cache=cache, preprocess=preprocess)
        results[f"tokenize_{preprocess}"] = {**first, "mb_per_s": size / 1e6 / first["seconds"]}
    # the book's settings (d2l: the same vocabulary of 28, so the same network), a validation
    # split of ~100k tokens so that the one evaluation at the end stays short
    val_fraction = max(1e-6, min(0.1, 100_000 / results["tokenize_d2l"]["tokens"]))
    common = dict(preprocess="d2l", hidden=args.hidden, train_tokens=args.train_tokens,
                  blas_threads=args.blas_threads)
    env_cache = os.environ.get("CHARRNN_CACHE_DIR")
    os.environ["CHARRNN_CACHE_DIR"] = str(cache)
    try:
        for name in ("generated", "book") * args.repeats:
            run = run_child("train", text=text if name == "generated" else "timemachine",
                            out=tmp / f"run-{name}-{time.time_ns()}",
                            val_fraction=val_fraction if name == "generated" else 0.1, **common)
            results.setdefault(f"train_{name}", []).append(run)
    finally:
        if env_cache is None:
            del os.environ["CHARRNN_CACHE_DIR"]
        else:
            os.environ["CHARRNN_CACHE_DIR"] = env_cache
    results["load_after"] = os.getloadavg()
    return results


def report(r: dict) -> None:
    print(f"text: {r['size_bytes'] / 1e9:.2f} GB generated in {r['generate_s']:.0f} s; "
          f"load average before {r['load'][0]:.2f}, after {r['load_after'][0]:.2f}")
    for preprocess in ("raw", "d2l"):
        t = r.get(f"tokenize_{preprocess}")
        if t:
            print(f"first tokenization (char, {preprocess}, one core): {t['seconds']:.1f} s = {t['mb_per_s']:.0f} MB/s, "
                  f"peak RSS {t['peak_rss_mib']:.0f} MiB; {t['tokens']:,} tokens, vocab {t['vocab']}, {t['dtype']}, "
                  f"store {t['store_bytes'] / 1e9:.2f} GB")
    g, b = r["train_generated"], r["train_book"]
    print(f"later runs on the generated text (d2l): training starts {median(g, 'start_after_launch_s'):.2f} s "
          f"after launch, first step done {median(g, 'first_step_after_launch_s'):.2f} s "
          f"(medians; runs: {each(g, 'first_step_after_launch_s', '.2f')})")
    for name, runs in (("generated", g), ("book", b)):
        print(f"training on the {name} (hidden {r['hidden']}, {r['blas_threads']} BLAS thread(s)): {median(runs, 'tokens_per_s'):,.0f} tokens/s "
              f"(runs: {each(runs, 'tokens_per_s', ',.0f')}), peak RSS {max(x['peak_rss_mib'] for x in runs):.0f} MiB "
              f"(at the end: heap {median(runs, 'rss_anon_mib'):.0f} MiB, "
              f"mapped file {median(runs, 'rss_file_mib'):.0f} MiB)")
    print(f"throughput generated / book: {median(g, 'tokens_per_s') / median(b, 'tokens_per_s'):.2f}")


def median(runs, key) -> float:
    return float(np.median([run[key] for run in runs]))


def each(runs, key, spec) -> str:
    return ", ".join(format(run[key], spec) for run in runs)


if __name__ == "__main__":
    main()
