"""Processes against threads (docs/parallel.md): `charrnn train --procs N` beside `--threads`, on an idle
machine and beside a busy core, with the allreduce's cost and the expected scaling.

Each measurement is a real run, a subprocess: `charrnn [--threads X] train CORPUS <config>
[--procs N] --max-tokens TOKENS --eval-every <huge> --val-fraction 0.005 --out <tmp>` (TOKENS:
about 8 s of one thread, times --scale; --max-time is one process's only); its
throughput is the `step_tokens_per_s` of the last record of metrics.jsonl (rank 0's seconds in
the training steps alone, the allreduce's wait included; start-up, evaluation and checkpoints
left out). Modes:

- `1t`: one process, one BLAS thread -- the baseline every ratio is taken to;
- `threads`: one process, `--threads auto` (today's default);
- `procs-N`: `--procs N`, N ranks of one BLAS thread each; `procs-auto`: `--procs auto`.

Situations: `idle` (nothing started by this script) and `busy` (one `python -c "while True:
pass"` in the background, started SETTLE_S before the runs). In each of --rounds rounds every
mode runs once, the order rotated from round to round (alternating), so that a busy patch of a
shared machine hits the modes alike. Reported per (config, situation, mode): median tokens/s
and range, and the ratio to `1t`: the median over rounds of the per-round ratio, with its range.

Then, per config, from measurements rather than guesses:
- the allreduce: `mpiexec -n 2` of this script's --probe, timing MPI_Allreduce of the step's
  buffer (the parameters' float32s + 4) and of 8 floats (latency), median of --probe-repeats;
- the communication share of a 2-rank step: allreduce seconds / seconds per step of `procs-2`;
- the expected scaling at 4, 8 and 16 cores: one-thread step seconds at B/N rows (measured:
  `--threads 1 --batch-size B/N` runs) plus a ring allreduce's 2(N-1)/N · bytes / bandwidth +
  2(N-1) · latency, with latency and bandwidth from the 2-rank probe; speedup = the step at B
  over that. It leaves out what two cores cannot show (memory bandwidth shared by many
  ranks, a network between machines), so read it as an upper bound.

The 1-minute load average is printed before and after; above BUSY_LOAD the machine was not idle
and the idle figures do not count. The targets are checked at the end: idle, the default
network (rnn256) >= 1.8x and lstm512 >= 1.85x for procs-2; with a core busy the default launch
>= 0.9x.

    python benchmarks/bench_mpi.py                                   # everything (~25 min)
    python benchmarks/bench_mpi.py --quick                           # smoke test: rnn256, 1 round of ~3 s
    python benchmarks/bench_mpi.py --configs lstm512 --situations idle --rounds 5 --json
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.nn.cells import param_shapes
from charrnn.runtime.launch import THREAD_VARIABLES, find_mpiexec

CONFIGS = {"rnn256": ("rnn", 256, 1, ["--size", "default"]),
           "lstm512": ("lstm", 512, 2, ["--cell", "lstm", "--num-hiddens", "512"])}
TOKENS = {"rnn256": 800_000, "lstm512": 64_000}  # about 8 s of one thread each on a 2-core machine
BATCH, STEPS, VOCAB = 64, 32, 28  # the defaults' batch, window and the book's characters
MODES = ("1t", "threads", "procs-2", "procs-auto")
SITUATIONS = ("idle", "busy")
NO_EVAL = 10**12
SETTLE_S = 2.0
BUSY_LOAD = 0.5
SCALING_CORES = (4, 8, 16)
TARGETS = {("rnn256", "idle"): 1.8, ("lstm512", "idle"): 1.85, ("rnn256", "busy"): 0.9}


def child_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


def train_rate(mode, config, scale, extra=(), env=None) -> float:
    """step_tokens_per_s of one run of `mode` on `config` (a real subprocess)."""
    with tempfile.TemporaryDirectory(prefix="bench-mpi-") as tmp:
        out = Path(tmp) / "run"
        threads = {"1t": ["--threads", "1"], "threads": ["--threads", "auto"]}.get(mode, [])
        procs = ["--procs", mode.split("-", 1)[1]] if mode.startswith("procs-") else []
        command = [sys.executable, "-m", "charrnn", *threads, "train", *CONFIGS[config][3], *extra, *procs,
                   "--max-tokens", str(int(TOKENS[config] * scale)), "--eval-every", str(NO_EVAL),
                   "--val-fraction", "0.005",
                   "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env=env or child_env(),
                              timeout=600 * scale + 120)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
        last = (out / "metrics.jsonl").read_text().strip().splitlines()[-1]
        return float(json.loads(last)["step_tokens_per_s"])


def busy_core():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(config, situation, modes, args, log) -> dict:
    """mode -> [tokens/s per round], the modes' order rotated each round."""
    rates = {mode: [] for mode in modes}
    load = busy_core() if situation == "busy" else None
    try:
        if load:
            time.sleep(SETTLE_S)
        for round_index in range(args.rounds):
            order = modes[round_index % len(modes):] + modes[:round_index % len(modes)]
            for mode in order:
                rates[mode].append(train_rate(mode, config, args.scale))
                log(f"  {config} {situation} round {round_index + 1} {mode}: {rates[mode][-1]:,.0f} tok/s")
    finally:
        if load:
            load.kill()
            load.wait()
    return rates


def summarize(rates) -> dict:
    """mode -> median, range of tokens/s, and the median and range of the per-round ratio to 1t."""
    base = rates["1t"]
    rows = {}
    for mode, values in rates.items():
        ratios = [v / b for v, b in zip(values, base)]
        rows[mode] = {"median": statistics.median(values), "range": [min(values), max(values)],
                      "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
    return rows


def probe(floats, repeats) -> None:
    """Under mpiexec: time MPI_Allreduce of `floats` float32s (the runs' dtype); rank 0 prints the
    median seconds."""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buffer = np.ones(floats, dtype=np.float32)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - start)
    if comm.Get_rank() == 0:
        print(json.dumps({"floats": floats, "seconds": statistics.median(times)}))


def allreduce_seconds(floats, repeats) -> float:
    command = [find_mpiexec(), "-n", "2", sys.executable, __file__, "--probe", str(floats),
               "--probe-repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env())
    if done.returncode != 0:
        raise SystemExit(f"the allreduce probe failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def buffer_floats(config) -> int:
    cell, hidden, layers, _ = CONFIGS[config]
    return sum(math.prod(s) for s in param_shapes(cell, VOCAB, hidden, layers).values()) + 4


def scaling(config, args, log) -> dict:
    """The allreduce's measured cost, and the expected speedup at SCALING_CORES (module docstring)."""
    floats = buffer_floats(config)
    latency = allreduce_seconds(8, args.probe_repeats)
    whole = allreduce_seconds(floats, args.probe_repeats)
    bytes_ = 4 * floats  # float32, as the runs
    bandwidth = bytes_ / max(whole - latency, 1e-9)  # bytes/s of one exchange between 2 ranks
    step_one = BATCH * STEPS / statistics.median(
        [train_rate("1t", config, args.scale) for _ in range(args.rounds)])
    expected = {}
    for cores in SCALING_CORES:
        rows = max(1, BATCH // cores)
        rate = statistics.median([train_rate("1t", config, args.scale, ["--batch-size", str(rows)])
                                  for _ in range(args.rounds)])
        rank_step = rows * STEPS / rate
        comm = 2 * (cores - 1) / cores * bytes_ / bandwidth + 2 * (cores - 1) * latency
        expected[cores] = {"rank_step_s": rank_step, "allreduce_s": comm,
                           "speedup": step_one / (rank_step + comm), "comm_share": comm / (rank_step + comm)}
        log(f"  {config}: {cores} cores: a rank's step {rank_step * 1e3:.1f} ms + allreduce {comm * 1e3:.2f} ms")
    return {"buffer_floats": floats, "latency_s": latency, "allreduce_s": whole, "bandwidth_bytes_s": bandwidth,
            "step_one_thread_s": step_one, "expected": expected}


def report(results, scaling_results, loads) -> None:
    print(f"\nload average (1 min): {loads[0]:.2f} before, {loads[1]:.2f} after"
          + ("  -- NOT IDLE: the idle figures do not count" if max(loads) > BUSY_LOAD else ""))
    print(f"\n{'config':9} {'situation':9} {'mode':11} {'tok/s median':>13} {'range':>21} {'x 1t':>6} {'range':>13}")
    for (config, situation), rows in results.items():
        for mode, row in rows.items():
            low, high = row["range"]
            print(f"{config:9} {situation:9} {mode:11} {row['median']:13,.0f} {low:10,.0f}-{high:<10,.0f} "
                  f"{row['ratio']:6.2f} {row['ratio_range'][0]:6.2f}-{row['ratio_range'][1]:.2f}")
    for config, s in scaling_results.items():
        two = results.get((config, "idle"), {}).get("procs-2")
        share = ""
        if two:
            step = BATCH * STEPS / two["median"]
            share = f"; communication share of a 2-rank step: {s['allreduce_s'] / step:.1%}"
        print(f"\n{config}: allreduce of {s['buffer_floats']:,} float32 on 2 ranks {s['allreduce_s'] * 1e3:.3f} ms "
              f"(latency {s['latency_s'] * 1e6:.0f} us, {s['bandwidth_bytes_s'] / 1e9:.2f} GB/s){share}")
        for cores, e in s["expected"].items():
            print(f"  expected at {cores:2} cores: {e['speedup']:.2f}x one thread "
                  f"(communication {e['comm_share']:.1%} of a step)")
    print()
    for (config, situation), target in TARGETS.items():
        rows = results.get((config, situation))
        if rows:
            mode = "procs-2" if situation == "idle" else "procs-auto"
            got = rows.get(mode, {}).get("ratio")
            if got is not None:
                print(f"target {config} {situation} {mode} >= {target}x: {got:.2f}x "
                      f"{'met' if got >= target else 'NOT met'}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--situations", default=",".join(SITUATIONS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="times each run's tokens (TOKENS)")
    parser.add_argument("--probe-repeats", type=int, default=200)
    parser.add_argument("--no-scaling", action="store_true", help="skip the allreduce probe and the scaling runs")
    parser.add_argument("--quick", action="store_true", help="rnn256, 1 round of ~3 s runs, the idle situation")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.configs, args.situations, args.rounds, args.scale = "rnn256", "idle", 1, 0.4
    return args


def main():
    args = parse_args()
    if args.probe is not None:
        return probe(args.probe, args.probe_repeats)
    if find_mpiexec() is None:
        raise SystemExit("needs mpiexec and mpi4py: pip install -e '.[mpi]'")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    loads = [os.getloadavg()[0]]
    log(f"load average before: {loads[0]:.2f}")
    modes = args.modes.split(",")
    if "1t" not in modes:
        modes.insert(0, "1t")
    results, scaling_results = {}, {}
    for config in args.configs.split(","):
        for situation in args.situations.split(","):
            results[(config, situation)] = summarize(measure(config, situation, modes, args, log))
        if not args.no_scaling:
            scaling_results[config] = scaling(config, args, log)
    loads.append(os.getloadavg()[0])
    report(results, scaling_results, loads)
    if args.json:
        print(json.dumps({"load": loads, "results": {f"{c}/{s}": r for (c, s), r in results.items()},
                          "scaling": scaling_results}, indent=1))


if __name__ == "__main__":
    main()
