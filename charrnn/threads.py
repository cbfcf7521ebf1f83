"""How many threads NumPy's BLAS uses, set at run time with threadpoolctl (nothing happens on import).

The products of one time step are thin (batch x hidden): one BLAS thread runs them fastest, and
a second thread that waits for a busy core slows them by 10-100x (README, Performance). The CLI
therefore runs with one thread unless the user asks for more (`--threads N`, or one of the
usual environment variables); a notebook gets the same with `with blas_threads(1): ...`.
"""
import os
from contextlib import contextmanager

import numpy  # noqa: F401  (loads the BLAS library that threadpoolctl finds and limits)
from threadpoolctl import threadpool_info, threadpool_limits

from .checks import check_int

DEFAULT_THREADS = 1  # the CLI's default, unless THREAD_VARIABLES say otherwise
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads():
    """The CLI's thread count when --threads is not given: DEFAULT_THREADS, or None (leave the
    BLAS library as it started) when the user set one of THREAD_VARIABLES."""
    return None if any(os.environ.get(name) for name in THREAD_VARIABLES) else DEFAULT_THREADS


def set_blas_threads(num_threads):
    """Limit NumPy's BLAS to `num_threads` threads from now on -> the threadpoolctl controller
    (its `restore_original_limits()` undoes it). None changes nothing."""
    if num_threads is not None:
        check_int(num_threads, "num_threads", minimum=1)
    return threadpool_limits(limits=num_threads, user_api="blas")


@contextmanager
def blas_threads(num_threads):
    """`with blas_threads(1): ...` runs the block with NumPy's BLAS on `num_threads` threads and
    restores the previous limits after it. None changes nothing."""
    controller = set_blas_threads(num_threads)
    try:
        yield controller
    finally:
        controller.restore_original_limits()


def blas_thread_counts():
    """The thread count of each BLAS library loaded in this process, e.g. [1]."""
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
