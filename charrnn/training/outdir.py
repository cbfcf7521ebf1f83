"""The output directory of a run: the names of its files, its default name, the checks before
training starts, the reading of metrics.jsonl and its trimming before a resume. Every refusal is a
one-line CharrnnError.

A new run refuses a directory that holds any file of a run (RUN_FILES), even without its
checkpoints: it never appends to or overwrites another run's records.
"""
import os
import shutil
import time
from pathlib import Path

from charrnn.base.checks import is_integer
from charrnn.base.errors import CharrnnError
from charrnn.base.io import MAX_META_BYTES, parse_json, write_atomic

# the files of a run directory
CHECKPOINT = "checkpoint.npz"  # the latest state of a run, what --resume continues
BEST = "best.npz"  # the state with the lowest validation perplexity so far
CONFIG = "config.json"  # the run's TrainConfig
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"  # one record per evaluation
RUN_FILES = (CHECKPOINT, BEST, CONFIG, VOCAB, METRICS)


def metrics_lines(path):
    """(line, record) for each line of a metrics.jsonl, record None for a line that is not a
    run's evaluation (a JSON object with a token count in [0, 2^63)). Every reader takes the
    records as this gives them: a line is parsed as untrusted JSON (charrnn.base.io.parse_json: no
    NaN, no nesting past the stack, at most MAX_META_BYTES, read a line at a time), and a torn,
    foreign or hostile line, or one without a token count, is skipped; a line longer than
    MAX_META_BYTES is skipped unread. No file -> nothing."""
    path = Path(path)
    if not path.is_file():  # nor a FIFO, which would block
        return
    with open(path, "rb") as f:
        while line := f.readline(MAX_META_BYTES + 1):
            if len(line) > MAX_META_BYTES:
                while line and not line.endswith(b"\n"):
                    line = f.readline(MAX_META_BYTES)
                continue
            try:
                record = parse_json(line, "a metrics record")
            except CharrnnError:
                record = None
            if record is not None and not (is_integer(record.get("tokens")) and 0 <= record["tokens"] < 2**63):
                record = None
            yield line, record


def metrics_records(path) -> list:
    """The records of a metrics.jsonl that are a run's evaluations, in the file's order."""
    return [record for _, record in metrics_lines(path) if record is not None]


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
