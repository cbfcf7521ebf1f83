"""Runs for tests/test_parallel.py, as `mpiexec -n N python tests/mpi_worker.py JOBS.json`.

JOBS.json: a list of {"out": directory, "config": TrainConfig fields} (a new run) or {"out":
directory, "resume": {changes}} (a resumed one). Rank 0 trains or resumes each run through
charrnn.training.start with charrnn.training.parallel's ParallelRun; the other ranks follow it. One BLAS thread
per rank; the token stores go where CHARRNN_CACHE_DIR says (the tests' temporary directory).
"""
import json
import sys
import warnings
from functools import partial
from pathlib import Path

from mpi4py import MPI

from charrnn.training import start as training
from charrnn.training.config import TrainConfig
from charrnn.training.parallel import ParallelRun, Ranks, abort_on_error, follow


def main(jobs_file):
    ranks = Ranks(MPI.COMM_WORLD)
    run_class = partial(ParallelRun, ranks=ranks)
    warnings.simplefilter("ignore")
    with abort_on_error(ranks):
        for job in json.loads(Path(jobs_file).read_text()):
            if ranks.rank != 0:
                follow(ranks, threads=1)
            elif "resume" in job:
                training.resume(job["out"], job["resume"], threads=1, run_class=run_class)
            else:
                training.train(TrainConfig(**job["config"]), job["out"], threads=1, run_class=run_class)


if __name__ == "__main__":
    main(sys.argv[1])
