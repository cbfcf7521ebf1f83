"""What verifying a token store's ids costs (charrnn.data.storeids).

A text of --size bytes of random words (default 64 MiB) is tokenized once (char level, raw) in a
temporary directory; then, each --repeats times, the median of:

  open, stamped   open_store of the store as its builder left it: the stamp matches, no pass
  open, changed   open_store after the store's ctime moved (os.utime): one pass over the ids
  verify          TokenStore.verify(): the pass alone (what `charrnn corpus` does on every call)

    python benchmarks/bench_store_verify.py
    python benchmarks/bench_store_verify.py --size 256M --repeats 5
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from charrnn.data.store import open_store

WORDS = "the time machine traveller said we go into future past strange".split()


def size_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def timed(action, repeats):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_arg, default=64 << 20, help="bytes of text (e.g. 64M)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        text, cache = Path(directory) / "words.txt", Path(directory) / "cache"
        words = np.random.default_rng(0).choice(WORDS, size=args.size // 6)
        text.write_text(" ".join(words)[: args.size], encoding="utf-8")
        store = open_store(text, "char", "raw", cache_dir=cache)
        mb = store.ids.nbytes / 1e6

        def changed():
            os.utime(store.path)
            open_store(text, "char", "raw", cache_dir=cache)

        rows = [("open, stamped", timed(lambda: open_store(text, "char", "raw", cache_dir=cache), args.repeats)),
                ("open, changed", timed(changed, args.repeats)),
                ("verify", timed(store.verify, args.repeats))]
        print(f"store: {mb:,.1f} MB of {store.ids.dtype} ids")
        for name, seconds in rows:
            print(f"{name:<14} {seconds * 1e3:9.1f} ms  {mb / seconds:8.0f} MB/s of ids")


if __name__ == "__main__":
    main()
