"""Throughput of `charrnn train` at each --threads setting, on an idle machine and beside a busy core.

Each measurement is a real run, a subprocess: `charrnn --threads MODE train CORPUS <config>
--max-time SECONDS --eval-every <huge> --val-fraction 0.005 --out <tmp>`. Its throughput is the
`step_tokens_per_s` of the last record of <tmp>/metrics.jsonl: the tokens trained over the
seconds spent in the training steps alone, without start-up, evaluation and checkpoints, which
in a run of a few seconds would weigh far more than in a real one (a checkpoint of lstm512 with
Adam's moments is ~40 MB). The small validation split keeps the one evaluation at the stop short;
the size of the training split changes nothing per token.
Configurations: rnn256 (the default run), rnn1024 (--num-hiddens 1024), lstm512 (--cell lstm
--num-hiddens 512, its default 2 layers). Situations:

- idle: nothing else started by this script;
- busy-loop: one `python -c "while True: pass"` running in the background;
- second-train: a second `charrnn --threads SECOND train CORPUS` running in the background.

A background load starts ~2 s before the situation's runs and is stopped after them (also on an
error or Ctrl-C). In each of --rounds rounds every mode runs once, the order rotated by one from
round to round, so that a busy patch of the shared machine hits the modes alike. Reported per
(config, situation, mode): the median tokens/s and its range over the rounds, and the ratio to
one thread: the median over rounds of (the mode's tokens/s / the `1` mode's in the same round).

Kernels: `machine` runs the children in the environment as it is; `native` without
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so that OpenBLAS picks the kernels of this CPU. The
script prints which kernel each gets. Children run without OPENBLAS_NUM_THREADS, OMP_NUM_THREADS
and MKL_NUM_THREADS, so that --threads alone decides; CHARRNN_DATA_DIR is passed through.

    python benchmarks/bench_threads.py                        # everything, both kernels
    python benchmarks/bench_threads.py --quick --modes 1,2    # smoke test: rnn256, 1 round of 3 s
    python benchmarks/bench_threads.py --configs rnn1024 --situations idle,busy-loop --rounds 5
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py --json

With the defaults a kernel takes 3 configs x 3 situations x 3 modes x 3 rounds = 81 runs of
about 10 s (8 s of training, start-up, the final evaluation): ~14 minutes, ~28 with both kernels.
The targets that the chosen configs and situations cover are printed at the end.
"""
import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from charrnn.runtime.threads import THREAD_VARIABLES

CONFIGS = {"rnn256": [], "rnn1024": ["--num-hiddens", "1024"],
           "lstm512": ["--cell", "lstm", "--num-hiddens", "512"]}
SITUATIONS = ("idle", "busy-loop", "second-train")
KERNELS = ("machine", "native")
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
NO_EVAL = 10**12  # --eval-every: no evaluation before the one at the stop
SETTLE_S = 2.0  # a background load runs this long before the first measured run
OVERHEAD_S = 2.0  # start-up and final evaluation of one run, for the time estimate
BUSY_LOAD = 0.5  # a 1-minute load average from which the machine is said not to be idle
IDLE_TARGETS = {"rnn256": 1.6, "rnn1024": 1.8, "lstm512": 1.8}  # ratio to 1 thread, idle
LOADED_TARGET = 0.9  # ratio to 1 thread with the other core busy (busy-loop, second-train)
BLAS_PROBE = ("import json, numpy, threadpoolctl; print(json.dumps([{k: p[k] for k in ('architecture', 'num_threads')} "
              "for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))")
QUICK = {"configs": "rnn256", "rounds": 1, "seconds": 3.0}
DEFAULTS = {"configs": ",".join(CONFIGS), "rounds": 3, "seconds": 8.0}


# ----------------------------------------------------------------------------- children

def charrnn_command(threads: str, *args: str) -> list:
    """`charrnn --threads THREADS ARGS...` run by this Python (whatever charrnn it has installed)."""
    return [sys.executable, "-m", "charrnn", "--threads", threads, *args]


def child_env(kernel: str) -> dict:
    """The children's environment: this one without the thread variables, and for `native`
    without the variables that force OpenBLAS's kernels."""
    drop = THREAD_VARIABLES + (KERNEL_VARIABLES if kernel == "native" else ())
    return {name: value for name, value in os.environ.items() if name not in drop}


def blas_kernel(env: dict) -> list:
    """[{architecture, num_threads (at start-up)}] of each BLAS library NumPy loads in a child with `env`."""
    probe = subprocess.run([sys.executable, "-c", BLAS_PROBE], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"could not ask threadpoolctl for the BLAS kernel: {last_line(probe.stderr)}")
    return json.loads(probe.stdout)


def last_line(text: str) -> str:
    """The last non-empty line of a child's output (where click and Python put the error)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def train_rate(mode: str, config: str, args, env: dict) -> float:
    """Tokens/s of one `charrnn --threads MODE train` of `args.seconds` seconds, in a fresh tmp dir."""
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as out:
        command = charrnn_command(mode, "train", args.corpus, *CONFIGS[config], "--max-time", str(args.seconds),
                                  "--eval-every", str(NO_EVAL), "--val-fraction", str(args.val_fraction),
                                  "--out", out)
        run = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode in (130, -signal.SIGINT):  # Ctrl-C reached the child first
            raise KeyboardInterrupt
        if run.returncode != 0:
            raise SystemExit(f"charrnn --threads {mode} train ({config}) failed with exit code "
                             f"{run.returncode}: {last_line(run.stderr)}")
        records = Path(out, "metrics.jsonl").read_text().splitlines()
    last = json.loads(records[-1])
    return float(last.get("step_tokens_per_s") or last["tokens_per_s"])


def check_thread_values(values: list) -> None:
    """Fail at once, before any measurement, if this charrnn refuses one of the --threads values
    (click checks the group option before the subcommand's --help)."""
    for value in values:
        check = subprocess.run(charrnn_command(value, "train", "--help"), capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"this charrnn does not take --threads {value}: {last_line(check.stderr)}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, up to 5 s to exit, then SIGKILL; returns when the process is gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def background_load(situation: str, args, env: dict):
    """Run the situation's background load (none when idle) around the block: started SETTLE_S
    before it, checked to be still running after it, and always stopped."""
    if situation == "idle":
        yield
        return
    with tempfile.TemporaryDirectory(prefix="bench_threads_load_") as folder:
        if situation == "busy-loop":
            command = [sys.executable, "-c", "while True: pass"]
        else:
            command = charrnn_command(args.second_threads, "train", args.corpus, "--max-time", "100000",
                                      "--out", str(Path(folder, "run")))
        with open(Path(folder, "stderr.txt"), "w+") as stderr:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                time.sleep(SETTLE_S)
                check_running(process, situation, stderr)
                yield
                check_running(process, situation, stderr)
            finally:
                stop(process)


def check_running(process: subprocess.Popen, situation: str, stderr) -> None:
    """Stop the benchmark if the background load has exited: its measurements would be idle ones."""
    if process.poll() is not None:
        stderr.seek(0)
        raise SystemExit(f"the {situation} background load exited with code {process.returncode}: "
                         f"{last_line(stderr.read())}")


def cpu_quota():
    """This cgroup's CPU quota as cgroup v2 writes it ("max 100000": none), or None where not found."""
    try:
        return Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    except OSError:
        return None


# ----------------------------------------------------------------------------- measurements

def rotated(modes: list, round_index: int) -> list:
    """The modes in round `round_index`'s order: starting at mode round_index mod len(modes)."""
    start = round_index % len(modes)
    return modes[start:] + modes[:start]


def measure_situation(config: str, situation: str, kernel: str, args, env: dict, log) -> dict:
    """{mode: [tokens/s of each round]} of one config in one situation, printing each run."""
    rates = {mode: [] for mode in args.modes}
    with background_load(situation, args, env):
        for round_index in range(args.rounds):
            for mode in rotated(args.modes, round_index):
                rates[mode].append(train_rate(mode, config, args, env))
                log(f"[{kernel}] {config:<7} {situation:<12} round {round_index + 1}/{args.rounds} "
                    f"--threads {mode:<4}: {rates[mode][-1]:>9,.0f} tokens/s")
    return rates


def summarize(config: str, situation: str, rates: dict) -> list:
    """One row per mode: median and range of tokens/s, and the median per-round ratio to mode `1`."""
    rows = []
    for mode, values in rates.items():
        row = {"config": config, "situation": situation, "mode": mode, "tokens_per_s": values,
               "median": statistics.median(values), "min": min(values), "max": max(values)}
        if "1" in rates:
            row["ratio"] = statistics.median(value / one for value, one in zip(values, rates["1"]))
        rows.append(row)
    return rows


def measure_kernel(kernel: str, args, log) -> dict:
    """The BLAS kernel the children get and every row, for one kernel."""
    env = child_env(kernel)
    report = {"blas": blas_kernel(env), "env": {name: env.get(name) for name in KERNEL_VARIABLES}, "rows": []}
    log(f"[{kernel}] children's BLAS: {describe_blas(report['blas'])}; {describe_env(report['env'])}")
    for config in args.configs:
        for situation in args.situations:
            rates = measure_situation(config, situation, kernel, args, env, log)
            report["rows"] += summarize(config, situation, rates)
    return report


def goals(kernels: dict, target_mode: str) -> list:
    """Each target that the rows cover: {kernel, config, situation, ratio, target, met}."""
    met = []
    for kernel, report in kernels.items():
        for row in report["rows"]:
            target = IDLE_TARGETS.get(row["config"]) if row["situation"] == "idle" else LOADED_TARGET
            if row["mode"] == target_mode and "ratio" in row and target is not None:
                met.append({"kernel": kernel, "config": row["config"], "situation": row["situation"],
                            "ratio": row["ratio"], "target": target, "met": row["ratio"] >= target})
    return met


# ----------------------------------------------------------------------------- output

def describe_blas(pools: list) -> str:
    return ", ".join(f"OpenBLAS {pool['architecture']} kernel, {pool['num_threads']} thread(s) at start-up"
                     for pool in pools) or "no BLAS found"


def describe_env(env: dict) -> str:
    return ", ".join(f"{name}={value}" if value is not None else f"{name} unset" for name, value in env.items())


def print_table(kernel: str, report: dict) -> None:
    print(f"\nkernel {kernel}: {describe_blas(report['blas'])}; {describe_env(report['env'])}")
    print(f"{'config':<8} {'situation':<13} {'mode':<5} {'tokens/s median (min-max)':>32}  ratio to 1 thread")
    for row in report["rows"]:
        spread = f"{row['median']:,.0f} ({row['min']:,.0f}-{row['max']:,.0f})"
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        print(f"{row['config']:<8} {row['situation']:<13} {row['mode']:<5} {spread:>32}  {ratio}")


def print_goals(met: list, target_mode: str) -> None:
    if met:
        print(f"\ntargets (--threads {target_mode}, ratio to one thread):")
    for goal in met:
        print(f"{'MET    ' if goal['met'] else 'NOT MET'}  [{goal['kernel']}] {goal['situation']}, {goal['config']}: "
              f"{goal['ratio']:.2f}x, target >= {goal['target']}x")


def kernels_to_measure(requested: list, log) -> list:
    """The kernels to run: `native` is dropped (one line says so) when it would equal `machine`."""
    if len(requested) == 2 and not any(os.environ.get(name) for name in KERNEL_VARIABLES):
        log(f"neither {' nor '.join(KERNEL_VARIABLES)} is set: native is the same as machine, measured once")
        return ["machine"]
    return requested


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", help="comma-separated: " + ", ".join(CONFIGS) + " (default: all)")
    parser.add_argument("--modes", default="1,2,auto", help="comma-separated values of charrnn --threads")
    parser.add_argument("--situations", default=",".join(SITUATIONS), help="comma-separated: " + ", ".join(SITUATIONS))
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated: machine, native")
    parser.add_argument("--rounds", type=int, help="runs of each mode: median and range (default: 3)")
    parser.add_argument("--seconds", type=float, help="--max-time of each measured run (default: 8)")
    parser.add_argument("--val-fraction", type=float, default=0.005,
                        help="of the measured runs: a small one keeps the evaluation at the stop short")
    parser.add_argument("--second-threads", default="auto", help="--threads of the second-train load")
    parser.add_argument("--target-mode", default="auto", help="the mode the issue's targets are checked on")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: --configs rnn256 --rounds 1 --seconds 3 unless given")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    args = parser.parse_args()
    for option, default in DEFAULTS.items():
        if getattr(args, option) is None:
            setattr(args, option, QUICK[option] if args.quick else default)
    for option, choices in (("configs", CONFIGS), ("situations", SITUATIONS), ("kernels", KERNELS)):
        values = getattr(args, option).split(",")
        unknown = [value for value in values if value not in choices]
        if unknown:
            parser.error(f"unknown {option[:-1]} {unknown[0]!r} in --{option} (use {', '.join(choices)})")
        setattr(args, option, list(dict.fromkeys(values)))
    args.modes = list(dict.fromkeys(mode.strip() for mode in args.modes.split(",")))
    if "" in args.modes:
        parser.error("--modes has an empty value")
    if args.rounds < 1 or args.seconds <= 0 or not 0 < args.val_fraction < 1:
        parser.error("--rounds must be at least 1, --seconds above 0 and --val-fraction between 0 and 1")
    return args


def machine_report(args) -> dict:
    """The machine as the run starts (load, CPUs, affinity, quota) and the settings measured."""
    return {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "cpu_quota": cpu_quota(), "data_dir": os.environ.get("CHARRNN_DATA_DIR"), "corpus": args.corpus,
            "modes": args.modes, "rounds": args.rounds, "seconds": args.seconds, "val_fraction": args.val_fraction,
            "second_threads": args.second_threads}


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks stop the loads
    log = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)
    report = machine_report(args)
    load = report["load_average"]
    log(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {report['cpus']} CPUs, affinity "
        f"{report['affinity']}, cgroup cpu.max {report['cpu_quota']}, CHARRNN_DATA_DIR={report['data_dir']}")
    if load[0] >= BUSY_LOAD:
        log(f"note: load average {load[0]:.2f} before the start: other processes run, `idle` is not an idle machine")
    check_thread_values(args.modes + ([args.second_threads] if "second-train" in args.situations else []))
    kernels = kernels_to_measure(args.kernels, log)
    runs = len(kernels) * len(args.configs) * len(args.situations) * len(args.modes) * args.rounds
    log(f"{runs} runs of ~{args.seconds + OVERHEAD_S:.0f} s: about {runs * (args.seconds + OVERHEAD_S) / 60:.1f} min")
    try:
        report["kernels"] = {kernel: measure_kernel(kernel, args, log) for kernel in kernels}
    except KeyboardInterrupt:
        print("interrupted: background loads stopped, nothing reported", file=sys.stderr)
        sys.exit(130)
    report["load_average_end"] = os.getloadavg()
    report["goals"] = goals(report["kernels"], args.target_mode)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for kernel, measured in report["kernels"].items():
        print_table(kernel, measured)
    print_goals(report["goals"], args.target_mode)


if __name__ == "__main__":
    main()
