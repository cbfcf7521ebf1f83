"""The output directory of a run: its default name, the checks before training starts, and the
trimming of metrics.jsonl before a resume. Every refusal is a one-line CharrnnError.

A new run refuses a directory that holds any file of a run (RUN_FILES), even without its
checkpoints: it never appends to or overwrites another run's records.
"""
import os
import shutil
import time
from pathlib import Path

from .checkpoint import BEST, CHECKPOINT, CONFIG, METRICS, VOCAB
from .checks import is_integer
from .curves import metrics_lines, metrics_records
from .errors import CharrnnError
from .io import write_atomic

RUN_FILES = (CHECKPOINT, BEST, CONFIG, VOCAB, METRICS)


def default_out_dir(config, root="runs"):
    """runs/<corpus name>-<date>-<time>, a fresh directory for a new run."""
    stem = Path(config.corpus).stem or "run"
    return Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def last_good_checkpoint(out_dir, step):
    """Where the run in `out_dir` can be resumed from, in words; `step`: that of its checkpoint."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return "no checkpoint was written"
    return f"the last good checkpoint (step {step:,}) is {path}"


def refuse_existing_run(out_dir):
    """Refuse a new run in a directory holding any file of a run (RUN_FILES)."""
    found = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if (Path(out_dir) / CHECKPOINT).exists():
        raise CharrnnError(f"{out_dir} already holds a run; continue it with --resume {out_dir} "
                           f"or choose another --out")
    if found:
        raise CharrnnError(f"{out_dir} holds files of another run ({', '.join(found)}) but no {CHECKPOINT}: "
                           f"a run is starting there, or its checkpoints were deleted; choose another --out")


def prepare_out_dir(out_dir):
    """Create `out_dir` for a new run and check that it is writable."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharrnnError(f"cannot create output directory {out_dir} ({err.strerror})") from None
    check_writable(out_dir)
    return out_dir


def check_writable(out_dir):
    """Write and remove a small file in `out_dir`, so a bad directory fails before training."""
    probe = Path(out_dir) / f".charrnn-write-test.{os.getpid()}"  # one per process: two may probe at once
    try:
        write_atomic(probe, lambda f: f.write(b"ok"))
        probe.unlink()
    except OSError as err:
        raise CharrnnError(f"output directory {out_dir} is not writable ({err.strerror})") from None


def check_metrics_file(out_dir):
    """Refuse a metrics.jsonl that is not a regular file (a directory, a FIFO) before training,
    rather than when the first evaluation appends to it."""
    path = Path(out_dir) / METRICS
    if os.path.lexists(path) and not path.is_file():
        raise CharrnnError(f"{path} is not a regular file; move it away to go on")


def check_free_space(out_dir, checkpoint_bytes):
    """Refuse to start unless `out_dir` has room for the checkpoint, the best one and a temporary,
    each of `checkpoint_bytes`."""
    needed = 3 * checkpoint_bytes + (1 << 20)
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise CharrnnError(f"not enough space in {out_dir}: {free:,} bytes free, checkpoints need {needed:,}")


def keep_metrics_until(path, step):
    """Drop the records of metrics.jsonl after `step` (and a torn last line), before a resume."""
    if not path.is_file():
        return

    def write_kept(f):
        for line, record in metrics_lines(path):  # torn, foreign or hostile lines are dropped
            if record is not None and is_integer(record.get("step")) and record["step"] <= step:
                f.write(line.rstrip(b"\r\n") + b"\n")
    write_atomic(path, write_kept)


def has_evaluation(path, tokens) -> bool:
    """Whether metrics.jsonl at `path` holds an evaluation at `tokens` (a run's last, say)."""
    return any(record["tokens"] == tokens for record in metrics_records(path))
