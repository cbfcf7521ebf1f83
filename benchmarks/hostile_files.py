"""Time and memory charrnn takes to refuse hostile checkpoints (under 1 s, under 100 MB).

A tiny run is trained on the book (CHARRNN_DATA_DIR) into a temporary directory; from its
checkpoint the script crafts the files of the issue (deeply nested JSON, numbers past a float,
a broken RNG state, zlib damage, an unknown compression method, the encrypted flag, a config
field of the wrong type, a lone surrogate token, metadata claiming a huge model, a zip bomb of
`--bomb-gib` GiB of zeros beside a valid checkpoint, a zip64 record announcing a billion
members). For each it reports:

- cli s, cli MB: wall time and peak resident set size (wait4's ru_maxrss) of `charrnn sample
  FILE`, a real process; the baseline rows are `charrnn --version` (start-up alone) and a
  sample of the untouched checkpoint;
- load ms, load MB: charrnn.training.checkpoint.load_checkpoint in this process, and the peak of what
  Python and NumPy allocated during it (tracemalloc);
- the first words of the refusal.

    python benchmarks/hostile_files.py                 # a 4 GiB zip bomb (takes ~10 s to craft)
    python benchmarks/hostile_files.py --bomb-gib 1 --json
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np

from charrnn.training.outdir import CHECKPOINT
from charrnn.training.checkpoint import load_checkpoint
from charrnn.base.errors import CharrnnError
from charrnn.base.io import META_KEY, load_npz


def write_npz(path, arrays, meta):
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode("utf-8", "surrogatepass")
    with open(path, "wb") as f:
        np.savez(f, **{META_KEY: np.frombuffer(raw, np.uint8)}, **arrays)


def edit(arrays, meta, *where, value):
    meta = json.loads(json.dumps(meta))
    target = meta
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return arrays, meta


def patched(data, name, flag=None, method=None):
    data, encoded = bytearray(data), name.encode()
    for signature, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at: at + name_at + len(encoded)] == encoded:
                if flag is not None:
                    struct.pack_into("<H", data, at + flag_at, flag)
                if method is not None:
                    struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    return bytes(data)


def craft(good, directory, bomb_gib):
    """name -> path of each hostile file."""
    arrays, meta = load_npz(good)
    data = good.read_bytes()
    files = {}

    def put(name, content):
        files[name] = directory / f"{name.replace(' ', '_')}.npz"
        if isinstance(content, bytes):
            files[name].write_bytes(content)
        else:
            write_npz(files[name], *content)

    put("JSON nested 100,000 deep", (arrays, b"[" * 100_000 + b"]" * 100_000))
    put("progress.elapsed = 10^400", edit(arrays, meta, "progress", "elapsed", value=10**400))
    put("optimizer.steps = 10^400", edit(arrays, meta, "optimizer", "steps", value=10**400))
    put("rng state = -1", edit(arrays, meta, "rng", "state", "state", value=-1))
    put("rng inc = 2^300", edit(arrays, meta, "rng", "state", "inc", value=2**300))
    put("config.sample_prefix = 5", edit(arrays, meta, "config", "sample_prefix", value=5))
    put("lone surrogate token", edit(arrays, meta, "vocab", "idx_to_token", 2, value="\udc80"))
    claim = edit(arrays, meta, "num_hiddens", value=20_000)
    put("num_hiddens 20,000", edit(*claim, "config", "num_hiddens", value=20_000))
    put("vocab_size 3x10^7", edit(arrays, meta, "vocab_size", value=30_000_000))
    put("num_layers 10^6", edit(arrays, meta, "num_layers", value=10**6))
    put("unsupported compression", patched(data, "W_hh.npy", method=99))
    put("encrypted flag", patched(data, "W_hh.npy", flag=1))
    compressed = directory / "compressed.npz"
    with open(compressed, "wb") as f:
        np.savez_compressed(f, **{META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **arrays)
    with zipfile.ZipFile(compressed) as archive:
        info = archive.getinfo("W_hh.npy")
    damaged = bytearray(compressed.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged[start + 10: start + 30] = b"\xff" * 20
    put("zlib-damaged member", bytes(damaged))
    bomb = directory / "bomb.npz"
    shutil.copy(good, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb.npy", "w", force_zip64=True) as f:
            header = repr({"descr": "|u1", "fortran_order": False, "shape": (bomb_gib << 30,)}).encode()
            header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
            f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
            zeros = bytes(64 << 20)
            for _ in range(bomb_gib * 16):
                f.write(zeros)
    files[f"zip bomb: {bomb_gib} GiB of zeros"] = bomb
    lim = zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP_FILECOUNT_LIMIT = 1  # a zip64 end record
    try:
        write_npz(directory / "zip64.npz", arrays, meta)
    finally:
        zipfile.ZIP_FILECOUNT_LIMIT = lim
    raw = bytearray((directory / "zip64.npz").read_bytes())
    struct.pack_into("<Q", raw, raw.rfind(b"PK\x06\x06") + 32, 10**9)
    put("zip64: 10^9 members", bytes(raw))
    return files


def cli(*args):
    """(seconds, peak RSS MB, last stderr line) of `charrnn ARGS` as a process."""
    start = time.perf_counter()
    process = subprocess.Popen(["charrnn", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode(errors="replace")
    _, _, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, (stderr.strip().splitlines() or [""])[-1]


def in_process(path):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        load_checkpoint(path)
        said = "accepted"
    except CharrnnError as err:
        said = str(err)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20, said


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-gib", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["charrnn", "train", "--num-hiddens", "64", "--batch-size", "8", "--num-steps", "16",
                        "--max-tokens", "4096", "--out", str(tmp / "run")], check=True, capture_output=True)
        good = tmp / "run" / CHECKPOINT
        files = craft(good, tmp, args.bomb_gib)
        rows = [("baseline: charrnn --version", *cli("--version")[:2], None, None, ""),
                ("baseline: sample of the good file", *cli("sample", good, "--length", 1)[:2], *in_process(good))]
        for name, path in files.items():
            seconds, rss, line = cli("sample", path)
            load_s, load_mb, said = in_process(path)
            rows.append((f"{name} ({path.stat().st_size:,} bytes)", seconds, rss, load_s, load_mb, said))
    if args.json:
        print(json.dumps([dict(zip(("file", "cli_s", "cli_rss_mb", "load_s", "load_mb", "message"), row))
                          for row in rows], indent=1))
        return
    print(f"{'file':58} {'cli s':>6} {'cli MB':>7} {'load ms':>8} {'load MB':>8}  refusal")
    for name, seconds, rss, load_s, load_mb, said in rows:
        load = "" if load_s is None else f"{1000 * load_s:8.1f} {load_mb:8.2f}"
        print(f"{name[:58]:58} {seconds:6.2f} {rss:7.1f} {load:>17}  {said.split(': ', 1)[-1][:70]}")


if __name__ == "__main__":
    main()
