"""Starting the ranks of a data-parallel run (charrnn.training.parallel): `charrnn train --procs N|auto`
runs `mpiexec -n N` of itself on this machine, each rank with one BLAS thread, and watches it.

The launcher (`launch`) stays between the user and the ranks:
- Ctrl-C or SIGTERM to it is passed on to every rank (each writes its pid to the launcher's
  directory as it starts), whose shared stop saves one checkpoint on rank 0 and ends all ranks
  (SIGHUP, a closed terminal, is passed on as SIGTERM);
- rank 0's output passes through, except MPICH's banner about a rank that died: for that the
  launcher says one line naming the rank, and the others are already stopped by mpiexec;
- the exit code is the ranks' (130 after Ctrl-C, 143 after SIGTERM).

`--procs auto` takes the cores that are free, as `--threads auto` counts them (charrnn.runtime.threads),
but keeps a network on one process when its step has too little arithmetic to gain from more
(`step_flops` below PARALLEL_MIN_FLOPS) and says so. This module imports only the standard
library at first: the console script asks it whether it runs under mpiexec before NumPy loads.
"""
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # MPICH (hydra), Open MPI, MVAPICH
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LAUNCHER_VARIABLE = "CHARRNN_LAUNCHER"  # the launcher's directory: rank r writes its pid to rank-r there
TERMINAL_VARIABLE = "CHARRNN_TERMINAL"  # set by the launcher when its stderr is a terminal (the progress bar)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # as charrnn.runtime.threads
INSTALL_HINT = "pip install 'charrnn[mpi]'"
# a step below this many floating-point operations gains nothing from more processes (tiny
# networks: the Python work per time step, which every rank repeats, dominates); the lead's
# benchmarks/bench_mpi.py measures where the gain starts
PARALLEL_MIN_FLOPS = 2e8
GUESSED_VOCAB = 100  # the vocabulary auto assumes for a run that has not read its text yet
BANNER = re.compile(r"^(={5,}|=   |YOUR APPLICATION TERMINATED|This typically refers to a problem|"
                    r"Please see the FAQ page)")


def world_size(environ=os.environ) -> int:
    """The number of ranks mpiexec started this process among (1 when not under mpiexec)."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world_rank(environ=os.environ) -> int:
    for name in RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def prepare_rank(environ=os.environ) -> int:
    """Before NumPy loads, in a process mpiexec started among several: one BLAS thread unless
    the user chose (THREAD_VARIABLES), the pid for the launcher, a silent stdout on ranks other
    than 0 -> the rank."""
    rank = world_rank(environ)
    if not any(environ.get(name) for name in THREAD_VARIABLES):
        for name in THREAD_VARIABLES:
            environ[name] = "1"
    directory = environ.get(LAUNCHER_VARIABLE)
    if directory:
        try:
            (Path(directory) / f"rank-{rank}").write_text(str(os.getpid()))
        except OSError:
            pass
    if rank != 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    return rank


def mpi_problem():
    """Why --procs cannot launch ranks here (a line naming the extra to install), or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return f"--procs needs MPI for Python (mpi4py and an MPI), which is not installed: {INSTALL_HINT}"
    if find_mpiexec() is None:
        return f"--procs needs an mpiexec command, and none was found next to Python or on PATH: {INSTALL_HINT}"
    return None


def find_mpiexec():
    """The mpiexec of this Python's environment (the mpich wheel puts it there), else PATH's."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("mpiexec")


def step_flops(batch_size, num_steps, num_hiddens, num_layers, cell, vocab_size) -> float:
    """Floating-point operations of one training step's matrix products, forward and backward
    (about 3x the forward's): per token, layer 0's recurrence H·GH (its input is a row lookup),
    each layer above (H + H)·GH, the output layer H·V; two operations per multiply-add."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(cell, 1)
    H = num_hiddens
    per_token = H * gates * H + (num_layers - 1) * 2 * H * gates * H + H * vocab_size
    return 3 * 2 * per_token * batch_size * num_steps


def resolve_procs(procs, free_cores, flops):
    """--procs N|auto -> (processes, a note for the user or None). auto: the free cores, but one
    process when the step's arithmetic is below PARALLEL_MIN_FLOPS."""
    if procs != "auto":
        return int(procs), None
    if free_cores <= 1:
        return 1, "--procs auto: one core is free; training on one process"
    if flops < PARALLEL_MIN_FLOPS:
        return 1, (f"--procs auto: this network's step ({flops:.2g} floating-point operations) is too small to "
                   f"gain from more processes; training on one process")
    return free_cores, None


def rank_arguments(argv):
    """The `train` arguments of a command line (sys.argv[1:]) without --procs, for the ranks."""
    if "train" not in argv:
        raise ValueError("no train command in the command line")
    args = argv[argv.index("train") + 1:]
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--procs":
            skip = True
        elif not arg.startswith("--procs="):
            kept.append(arg)
    return kept


def launch(procs, train_args, out=None) -> int:
    """Run `charrnn train *train_args` as `procs` MPI ranks on this machine and wait -> exit code."""
    out = out or sys.stdout.buffer
    with tempfile.TemporaryDirectory(prefix="charrnn-ranks-") as directory:
        env = {**os.environ, LAUNCHER_VARIABLE: directory, "PYTHONUNBUFFERED": "1",
               **dict.fromkeys(THREAD_VARIABLES, "1")}
        if sys.stderr.isatty():
            env[TERMINAL_VARIABLE] = "1"
        command = [find_mpiexec(), "-n", str(procs), sys.executable, "-m", "charrnn", "train", *train_args]
        watcher = Watcher(None, Path(directory))
        previous = {sig: signal.signal(sig, watcher.forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        # the terminal closed: the ranks stop as for SIGTERM, with a checkpoint
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _, frame: watcher.forward(signal.SIGTERM, frame))
        try:
            watcher.started(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, start_new_session=True))
            child = watcher.child
            reader = threading.Thread(target=watcher.copy_output, args=(out,), daemon=True)
            reader.start()
            code = child.wait()
            reader.join(timeout=5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        death = watcher.death_line(procs)
    if death:
        sys.stderr.write(death + "\n")
        return 1
    return code


class Watcher:
    """The launcher's view of mpiexec and its ranks: passes signals on, filters the output."""

    def __init__(self, child, directory):
        self.child, self.directory = child, directory
        self.banner = []  # MPICH's lines about a rank that died
        self.pending = None  # a signal received before mpiexec started

    def started(self, child):
        """mpiexec runs: a signal received before is passed on now."""
        self.child = child
        if self.pending is not None:
            self.forward(self.pending, None)

    def pids(self) -> dict:
        """rank -> pid, as the ranks wrote them."""
        found = {}
        for path in self.directory.glob("rank-*"):
            try:
                found[int(path.name[5:])] = int(path.read_text())
            except (OSError, ValueError):
                continue
        return found

    def forward(self, signum, frame):
        """Pass a signal to every rank (to mpiexec, which passes it on, before any has started)."""
        if self.child is None:
            self.pending = signum
            return
        targets = list(self.pids().values()) or [self.child.pid]
        for pid in targets:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def copy_output(self, out):
        """mpiexec's stdout (rank 0's) to `out`, line by line, without MPICH's death banner."""
        for line in iter(self.child.stdout.readline, b""):
            text = line.decode("utf-8", "replace")
            if BANNER.match(text):
                self.banner.append(text.strip())
                continue
            out.write(line)
            out.flush()

    def death_line(self, procs):
        """One line naming the rank that died, from MPICH's banner (None without one)."""
        if not self.banner:
            return None
        text = "\n".join(self.banner)
        pid = re.search(r"PID (\d+)", text)
        how = re.search(r"EXIT STRING: (.+)", text) or re.search(r"EXIT CODE: (\d+)", text)
        ranks = {p: r for r, p in self.pids().items()}
        who = "a rank"
        if pid:
            rank = ranks.get(int(pid.group(1)))
            who = f"rank {rank} (pid {pid.group(1)})" if rank is not None else f"the rank of pid {pid.group(1)}"
        cause = f" ({how.group(1).strip()})" if how else ""
        return f"Error: {who} of {procs} died{cause}; the other ranks were stopped"
