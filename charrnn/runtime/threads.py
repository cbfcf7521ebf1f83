"""How many threads NumPy's BLAS runs: `auto` (the default) or a fixed count, set at run time
with threadpoolctl (nothing happens on import).

The mechanism, chosen by measurement (docs/performance.md, "Threads"; benchmarks/bench_mechanisms.py):
OpenBLAS's own threads, each matrix product split among them. Row shards of the minibatch in
Python threads, each with one BLAS thread, gained less on two cores: each half's products cost
more than half a product, and the halves' NumPy calls take turns holding the GIL. OpenBLAS's
threads wait for each other by spinning, though, and a thread that waits for a core another
process holds slows every product 10-100x. So `auto` gives BLAS only the cores that are free:

    threads = clamp(floor(free + SLACK), 1, available_cores())
    free    = (CPUs this process may run on) - (CPUs' worth of time other processes used)

The time other processes used is read from /proc/stat over the last CHECK_EVERY seconds (the
busy time of this process's CPUs less its own CPU time); a training run looks again between
steps (`Threads.adapt`). The first look, when a block starts, counts the runnable tasks that are
not this process's (procs_running), which needs no waiting. available_cores(): the CPU affinity,
capped by a cgroup CPU quota. Both readings are charrnn.runtime.machine's. Without /proc (not
Linux), auto runs one thread.

Rounding: OpenBLAS splits a product's output among its threads, never a sum, so a product of
two or more rows gives the same bits on any number of threads, and auto's changes change no
number (tests/test_threads.py checks whole runs). A product of one row (gemv) may differ in the
last bit, so auto keeps work of one row at a time on one thread (`one_row`: sampling, batch
size 1). A fixed count is used as given.
"""
import math
import os
import time
from contextlib import contextmanager

import numpy  # noqa: F401  (loads the BLAS library that threadpoolctl finds and limits)
from threadpoolctl import ThreadpoolController, threadpool_info

from charrnn.base.checks import check_int, is_integer
from charrnn.base.errors import CharrnnError
from charrnn.runtime.machine import MachineWatch, available_cores

AUTO = "auto"
DEFAULT_THREADS = AUTO  # the CLI's and the Python API's default, unless THREAD_VARIABLES say otherwise
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CHECK_EVERY = 1.0  # seconds between auto's looks at the machine during training
SLACK = 0.25  # a core counts as free while other processes use at most this share of it


def check_threads(value):
    """"auto", or an integer >= 1 (also as text, "2") -> "auto" or int; anything else -> CharrnnError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == AUTO or (is_integer(value) and value >= 1):
        return value if value == AUTO else int(value)
    raise CharrnnError(f"threads must be 'auto' or an integer >= 1, got {value!r}")


def capped(threads):
    """A thread count of more than available_cores() -> available_cores(), which is what BLAS can
    use (OpenBLAS caps itself lower, 40x slower than one per core); "auto" as it is."""
    return threads if threads == AUTO else min(threads, available_cores())


def default_threads():
    """The thread setting when none is given: DEFAULT_THREADS, or None (leave the BLAS library
    as it started) when the user set one of THREAD_VARIABLES."""
    return None if any(os.environ.get(name) for name in THREAD_VARIABLES) else DEFAULT_THREADS


# ---------------------------------------------------------------- the setting, applied

class Threads:
    """NumPy's BLAS threads for a block of work: `with Threads("auto") as threads: ...`.

    threads: "auto" (see the module docstring), an integer N (N threads throughout), or None
    (leave BLAS as the environment set it). limit: at most this many threads for auto (a
    sweep's workers split the cores). Inside the block, `adapt()` between steps lets auto look
    at the machine again, and `with threads.one_row(): ...` holds auto at one thread for work
    on one row at a time (exact rounding). `count`: the threads now.
    """

    def __init__(self, threads=DEFAULT_THREADS, limit=None, watch=None):
        self.setting = None if threads is None else capped(check_threads(threads))
        self.auto = self.setting == AUTO
        self.watch, self.most = None, 1
        if self.auto:
            self.watch = watch or MachineWatch()
            self.most = available_cores() if self.watch.works else 1
            if limit is not None:
                self.most = max(1, min(self.most, limit))
        self.chosen = self.controller = self.original = None  # chosen: what auto picked last
        self.pinned = 0  # one_row blocks open
        self.next_look = 0.0

    def __enter__(self):
        if self.setting is None:
            self.chosen = max(blas_thread_counts() or [1])
            return self
        self.controller = ThreadpoolController()
        if self.auto:
            self.chosen = 1 if self.most == 1 else self.threads_for(self.watch.first_look())
        else:
            self.chosen = self.setting
        self.original = self.controller.limit(limits=self.chosen, user_api="blas")
        self.next_look = time.monotonic() + CHECK_EVERY
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            self.original.restore_original_limits()
        self.original = self.controller = None

    @property
    def count(self):
        """The BLAS threads running now (None outside the block)."""
        return 1 if self.pinned else self.chosen

    def threads_for(self, busy_elsewhere) -> int:
        """The threads to run when other processes keep `busy_elsewhere` CPUs busy."""
        cpus = len(self.watch.cpus) if self.watch.cpus is not None else self.most
        return max(1, min(self.most, math.floor(cpus - busy_elsewhere + SLACK)))

    def adapt(self) -> int:
        """Auto, between steps: every CHECK_EVERY seconds, set the thread count for how busy the
        machine was since the last look -> the count now."""
        if self.auto and self.most > 1 and self.controller is not None and time.monotonic() >= self.next_look:
            count = self.threads_for(self.watch.busy_elsewhere())
            if count != self.chosen and not self.pinned:
                self.controller.limit(limits=count, user_api="blas")
                self.chosen = count
            self.next_look = time.monotonic() + CHECK_EVERY
        return self.count

    @contextmanager
    def one_row(self, active=True):
        """Auto: one thread inside the block, whatever adapt() finds (work of one row at a time,
        see the module docstring); a fixed count, or active False: no change."""
        if not (active and self.auto and self.controller is not None):
            yield
            return
        self.pinned += 1
        if self.chosen != 1:
            self.controller.limit(limits=1, user_api="blas")
        try:
            yield
        finally:
            self.pinned -= 1
            if self.chosen != 1 and not self.pinned:
                self.controller.limit(limits=self.chosen, user_api="blas")

    def describe(self) -> str:
        """E.g. "auto (2 now)", "1", "as the environment sets it (2)"."""
        if self.setting is None:
            return f"as the environment sets it ({self.count})"
        return f"auto ({self.count} now)" if self.auto else str(self.setting)


def share(threads, jobs):
    """The setting for each of `jobs` processes sharing this machine: auto capped at its share
    of the cores, or a fixed count split among them (at least 1 each) -> (setting, limit)."""
    setting = None if threads is None else check_threads(threads)
    if setting == AUTO:
        return AUTO, max(1, available_cores() // jobs)
    return (None if setting is None else max(1, setting // jobs)), None


def set_blas_threads(num_threads):
    """Limit NumPy's BLAS to `num_threads` threads from now on -> the threadpoolctl limiter
    (its `restore_original_limits()` undoes it). None changes nothing."""
    if num_threads is not None:
        check_int(num_threads, "num_threads", minimum=1)
    return ThreadpoolController().limit(limits=num_threads, user_api="blas")


@contextmanager
def blas_threads(threads):
    """`with blas_threads("auto"): ...` or `with blas_threads(1): ...` runs the block with that
    setting (see Threads; auto looks at the machine once, as the block starts) and restores the
    previous limits after it. None changes nothing."""
    with Threads(threads) as applied:
        yield applied


def blas_thread_counts():
    """The thread count of each BLAS library loaded in this process, e.g. [1]."""
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
