"""Training: the loop over minibatches, evaluation, checkpoints, metrics.jsonl and exact resume.

One step (d2l §9.7): forward over `num_steps` tokens, the loss L = (1/T) sum_t l(o_t, y_t)
(eq. 9.7.2), its gradients by backpropagation through time (eqs. 9.7.3-9.7.8, in
charrnn.model), global-norm clipping, an optimizer step. With the sequential sampler the hidden
state is carried into the next minibatch (its gradient cut); with the random one it restarts
from zeros.

The loop prints nothing: it reports to a `Reporter`. Resume is exact: the sampler of epoch `e`
draws from default_rng([seed, 0, e]), so a run rebuilds its epoch and skips the minibatches it
has done; the truncation Generator, the carried state, the optimizer state and the running sums
are saved with the parameters.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from itertools import islice
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from .data import (Vocab, num_minibatches, seq_data_iter_random, seq_data_iter_sequential,
                   split_corpus)
from .errors import CharrnnError
from .evaluate import mean_loss, perplexity
from .io import append_jsonl, save_json, write_atomic
from .model import RNNLM, parse_truncation
from .optim import clip_grad_norm, make_optimizer
from .recompute import BPTT_MEMORY_MODES, DEFAULT_MEMORY_BUDGET, loss_and_grads_auto
from .sample import sample_text
from .store import open_store

CHECKPOINT = "checkpoint.npz"  # the latest state of a run, what --resume continues
BEST = "best.npz"  # the state with the lowest validation perplexity so far
CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"
STATE_KEY = "carried_state"  # hidden state carried into the next minibatch (sequential)
DEFAULT_EPOCHS = 30  # the budget when none of epochs / max_tokens / max_time is given
SAMPLERS = {"sequential": seq_data_iter_sequential, "random": seq_data_iter_random}
MAX_SKIPPED_IN_A_ROW = 10  # --on-nonfinite skip gives up after this many
SAMPLER_STREAM, TRUNCATION_STREAM = 0, 1  # second word of the seeds of the two Generators


class ConfigError(CharrnnError):
    """A training setting that cannot work; `name` is the TrainConfig field at fault."""

    def __init__(self, name, message):
        super().__init__(message)
        self.name = name


@dataclass
class TrainConfig:
    """Everything that defines a run. The fields before `epochs` fix its maths."""

    corpus: str = "timemachine"
    level: str = "char"
    preprocess: str = "d2l"
    val_fraction: float = 0.1
    num_hiddens: int = 256
    activation: str = "tanh"
    dtype: str = "float32"
    batch_size: int = 64
    num_steps: int = 32
    sampler: str = "sequential"
    truncation: str = "full"
    optimizer: str = "adam"
    lr: float = 1e-2
    lr_decay: float = 0.9  # the learning rate of epoch e (from 0) is lr * lr_decay**e
    clip: float | None = 1.0  # None: no clipping
    seed: int = 0
    # budget: the run stops at the first one reached (none given: DEFAULT_EPOCHS epochs)
    epochs: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None  # seconds of training, all sessions of the run together
    # what happens along the way
    on_nonfinite: str = "stop"  # "stop" | "skip" the minibatch
    eval_every: int = 500_000  # tokens between evaluations (and one at the end)
    sample_prefix: str = "time traveller"
    sample_length: int = 60
    # BPTT storage: every state ("store"), or checkpoints and recomputation in O(√T) memory
    # ("recompute", charrnn.recompute); "auto" recomputes when storing would pass the budget
    bptt_memory: str = "auto"
    bptt_memory_budget: int = DEFAULT_MEMORY_BUDGET >> 20  # MiB

    def __post_init__(self):
        self.corpus = corpus_key(self.corpus)
        if self.epochs is None and self.max_tokens is None and self.max_time is None:
            self.epochs = DEFAULT_EPOCHS
        self._validate()

    def _validate(self):
        integers = ("num_hiddens", "batch_size", "num_steps", "epochs", "max_tokens", "eval_every",
                    "sample_length", "seed")
        for name in integers:
            value = getattr(self, name)
            if value is not None and not is_integer(value):
                raise ConfigError(name, f"{name} must be an integer, got {value!r}")
        positive = ("num_hiddens", "batch_size", "num_steps", "lr", "clip", "epochs",
                    "max_tokens", "max_time", "eval_every", "bptt_memory_budget")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(name, f"{name} must be positive, got {value!r}")
        if not is_finite(self.lr):
            raise ConfigError("lr", f"lr must be a finite number, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("lr_decay", f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError("seed", f"seed must be a non-negative integer, got {self.seed!r}")
        choices = {"sampler": SAMPLERS, "on_nonfinite": ("stop", "skip"), "bptt_memory": BPTT_MEMORY_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        try:
            parse_truncation(self.truncation)
        except ValueError as err:
            raise ConfigError("truncation", str(err)) from None

    @classmethod
    def from_dict(cls, d):
        """The inverse of `asdict`, for untrusted metadata: unknown or bad fields -> CharrnnError."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not set(d) <= names:
            raise CharrnnError(f"not a training configuration: {d!r:.200}")
        try:
            return cls(**d)
        except TypeError as err:
            raise CharrnnError(f"bad training configuration ({err})") from None

    def resumed(self, changes):
        """This config with `changes` (field -> value) for a resumed run.

        Changing a field that fixes the maths is an error; a budget given replaces the whole
        budget (so `epochs` alone lifts a saved `max_time`); the other fields may change.
        """
        changes = dict(changes)
        if "corpus" in changes:
            changes["corpus"] = corpus_key(changes["corpus"])
        for name in MATHS_FIELDS & set(changes):
            if changes[name] != getattr(self, name):
                raise ConfigError(name, f"a resumed run keeps its {name} ({getattr(self, name)!r}); "
                                        f"start a new run to use {changes[name]!r}")
        others = {k: v for k, v in changes.items() if k not in MATHS_FIELDS}
        if BUDGET_FIELDS & set(others):
            others = {**dict.fromkeys(BUDGET_FIELDS), **others}
        return replace(self, **others)


def corpus_key(corpus):
    """A corpus as a run records it: the absolute path of an existing file, else the name."""
    path = Path(corpus).expanduser()
    return str(path.resolve()) if path.is_file() else str(corpus)


def is_integer(value):
    """An int or NumPy integer, not a bool (JSON true is no count)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_finite(value):
    """A finite real number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def all_finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


def finite_or_none(number):
    return number if math.isfinite(number) else None


_FIELD_NAMES = [f.name for f in fields(TrainConfig)]
MATHS_FIELDS = frozenset(_FIELD_NAMES[: _FIELD_NAMES.index("epochs")])
BUDGET_FIELDS = frozenset(("epochs", "max_tokens", "max_time"))


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (JSON)."""

    epoch: int = 0  # index of the current epoch
    step_in_epoch: int = 0  # minibatches of the current epoch done
    step: int = 0  # minibatches done in all
    tokens: int = 0  # tokens trained on (batch_size * num_steps per minibatch)
    elapsed: float = 0.0  # seconds of training, all sessions together
    skipped: int = 0  # minibatches skipped for a non-finite loss or gradient
    skipped_in_a_row: int = 0  # the latest of them that came one after another
    interval_loss: float = 0.0  # sum of minibatch losses since the last scheduled evaluation
    interval_steps: int = 0
    last_eval_step: int = -1
    best_val_ppl: float | None = None
    best_step: int | None = None

    @classmethod
    def from_dict(cls, d):
        """The inverse of `asdict`, for untrusted metadata: missing, unknown or impossible values
        -> CharrnnError."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise CharrnnError(f"not a training progress record: {d!r:.200}")
        p = cls(**d)
        counts = (p.epoch, p.step_in_epoch, p.step, p.tokens, p.skipped, p.skipped_in_a_row,
                  p.interval_steps, p.best_step or 0)
        possible = (all(is_integer(n) and n >= 0 for n in counts)
                    and is_integer(p.last_eval_step) and p.last_eval_step >= -1
                    and is_finite(p.elapsed) and is_finite(p.interval_loss)
                    and (p.best_val_ppl is None or is_finite(p.best_val_ppl))
                    and p.skipped_in_a_row <= p.skipped
                    and max(p.step_in_epoch, p.skipped, p.interval_steps, p.last_eval_step, p.best_step or 0) <= p.step)
        if not possible:
            raise CharrnnError(f"impossible training progress {d!r:.300}")
        return p


@dataclass
class TrainResult:
    """How a run ended. `reason`: epochs | max_tokens | max_time | SIGINT | SIGTERM | nonfinite."""

    reason: str
    out_dir: Path
    progress: Progress
    train_ppl: float | None
    val_ppl: float | None
    tokens_per_s: float
    wall_time: float  # seconds of this session
    checkpoint: Path | None  # the last good checkpoint
    checkpoint_step: int | None
    message: str = ""  # what went wrong, for reason == "nonfinite"

    @property
    def best(self):
        path = self.out_dir / BEST
        return path if path.is_file() else None


class Reporter:
    """Receives the events of a run; the CLI renders them. This one ignores them."""

    def on_start(self, info):
        """info: dict with out_dir, resumed, tokens, total_tokens (estimate or None), sizes."""

    def on_step(self, stats):
        """stats: dict with epoch, step, tokens, loss, perplexity, grad_norm, skipped."""

    def on_evaluate(self, record):
        """record: the dict appended to metrics.jsonl."""

    def on_end(self, result):
        """result: the TrainResult."""


@dataclass
class Checkpoint:
    """A training checkpoint read back and checked whole: the model, its vocabulary, config,
    progress and the state training goes on from."""

    path: Path
    model: RNNLM
    vocab: Vocab
    config: TrainConfig
    progress: Progress
    optimizer: object = field(repr=False)  # restored on model.params
    truncation_rng: np.random.Generator = field(repr=False)
    state: np.ndarray | None = field(repr=False)  # carried (batch_size, num_hiddens), or None
    arrays: dict = field(repr=False)  # extra arrays: optimizer state, carried state
    meta: dict = field(repr=False)


def checkpoint_path(path, prefer=BEST):
    """A checkpoint file, or a run directory -> its `prefer` file (else its latest checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (prefer, CHECKPOINT):
        if (path / name).is_file():
            return path / name
    raise CharrnnError(f"no checkpoint in directory {path} (expected {CHECKPOINT})")


def load_checkpoint(path, prefer=BEST):
    """Read a checkpoint written by `train` (file or run directory) and check it whole; anything
    else, or metadata that disagrees with the arrays, -> CharrnnError."""
    path = checkpoint_path(path, prefer)
    model, arrays, meta = RNNLM.load_with_extras(path)
    try:
        vocab = Vocab.from_dict(meta["vocab"])
        config = TrainConfig.from_dict(meta["config"])
        progress = Progress.from_dict(meta["progress"])
    except KeyError as err:
        raise CharrnnError(f"{path} is not a charrnn training checkpoint (no {err} in its metadata)") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise CharrnnError(f"{path} has corrupt training metadata ({err})") from None
    if len(vocab) != model.vocab_size:
        raise CharrnnError(f"{path}: vocabulary of {len(vocab)} tokens for a model of {model.vocab_size}")
    described = model.meta()
    for name in ("num_hiddens", "activation", "dtype"):
        if getattr(config, name) != described[name]:
            raise CharrnnError(f"{path}: its config has {name} {getattr(config, name)!r}, its arrays {described[name]!r}")
    if progress.tokens != progress.step * config.batch_size * config.num_steps:
        raise CharrnnError(f"{path}: {progress.tokens} tokens cannot be {progress.step} minibatches "
                           f"of {config.batch_size} x {config.num_steps}")
    optimizer, truncation_rng, state = restore_training_state(path, model, config, arrays, meta)
    return Checkpoint(path, model, vocab, config, progress, optimizer, truncation_rng, state, arrays, meta)


def restore_training_state(path, model, config, arrays, meta):
    """-> (optimizer on model.params, truncation Generator, carried state or None) as a checkpoint
    saved them; a missing, misshapen or non-finite piece -> CharrnnError."""
    try:
        optimizer = make_optimizer(config.optimizer, model.params, config.lr)
        optimizer.load_state(arrays, meta["optimizer"])
        truncation_rng = np.random.default_rng()
        truncation_rng.bit_generator.state = meta["rng"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CharrnnError(f"{path} has a corrupt training state ({err})") from None
    state, shape = arrays.get(STATE_KEY), (config.batch_size, model.num_hiddens)
    if state is not None and (state.shape != shape or state.dtype != model.dtype):
        raise CharrnnError(f"{path}: {STATE_KEY} is {state.dtype.name} {state.shape}, "
                           f"expected {model.dtype.name} {shape}")
    if not all_finite([*optimizer.state_arrays().values(), *([] if state is None else [state])]):
        raise CharrnnError(f"{path} holds a non-finite optimizer or carried state")
    return optimizer, truncation_rng, state


def default_out_dir(config, root="runs"):
    """runs/<corpus name>-<date>-<time>, a fresh directory for a new run."""
    stem = Path(config.corpus).stem or "run"
    return Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config, out_dir, data_dir=None, reporter=None):
    """Start a new run of `config` writing to `out_dir` -> TrainResult."""
    refuse_existing_run(out_dir)
    train_data, val_data, vocab = load_data(config, data_dir)
    out_dir = prepare_out_dir(out_dir)
    model = RNNLM(vocab_size=len(vocab), num_hiddens=config.num_hiddens,
                  activation=config.activation, dtype=config.dtype, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, model.params, config.lr)
    check_free_space(out_dir, model, optimizer)
    vocab.save(out_dir / VOCAB)
    save_json(out_dir / CONFIG, asdict(config))
    truncation_rng = np.random.default_rng([config.seed, TRUNCATION_STREAM])
    run = Run(config, model, optimizer, vocab, train_data, val_data, out_dir,
              reporter or Reporter(), Progress(), truncation_rng, None)
    run.save(CHECKPOINT)
    return run.start(resumed=False)


def resume(out_dir, changes=None, data_dir=None, reporter=None):
    """Continue the run in `out_dir` from its latest checkpoint -> TrainResult.

    changes: config fields given again (budget, on_nonfinite, eval_every, sample settings);
    a field that fixes the maths may only be given with its saved value.
    """
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(out_dir / CHECKPOINT)
    config = ckpt.config.resumed(changes or {})
    train_data, val_data, vocab = load_data(config, data_dir)
    run = Run(config, ckpt.model, ckpt.optimizer, vocab, train_data, val_data, out_dir,
              reporter or Reporter(), ckpt.progress, ckpt.truncation_rng, ckpt.state)
    if vocab.idx_to_token != ckpt.vocab.idx_to_token or ckpt.meta.get("data_sha1") != run.data_sha1:
        raise CharrnnError(f"corpus {config.corpus!r} is not the text the run in {out_dir} was trained on")
    reached = run.budget_reached()
    if reached:
        raise CharrnnError(f"the run in {out_dir} already reached its budget ({reached}={getattr(config, reached)}); "
                           f"give a larger --epochs, --max-tokens or --max-time to go on")
    check_writable(out_dir)
    check_free_space(out_dir, ckpt.model, ckpt.optimizer)
    save_json(out_dir / CONFIG, asdict(config))
    keep_metrics_until(out_dir / METRICS, ckpt.progress.step)
    return run.start(resumed=True)


def load_data(config, data_dir, cache_dir=None):
    """-> train, val: (n,) token ids (views of the memory-mapped token store, charrnn.store),
    and the vocabulary; checks one minibatch fits."""
    store = open_store(config.corpus, level=config.level, preprocess=config.preprocess,
                       data_dir=data_dir, cache_dir=cache_dir)
    vocab = store.vocab
    train_data, val_data = split_corpus(store.ids, config.val_fraction)
    try:
        next(SAMPLERS[config.sampler](train_data, config.batch_size, config.num_steps,
                                      np.random.default_rng(0)))
    except (CharrnnError, StopIteration):
        raise ConfigError("num_steps", f"the training split ({len(train_data)} tokens) is too short for one "
                          f"minibatch of batch_size {config.batch_size} x num_steps {config.num_steps}") from None
    if len(val_data) < 2:
        raise ConfigError("val_fraction", f"val_fraction {config.val_fraction} leaves {len(val_data)} "
                          f"validation tokens; at least 2 are needed")
    return train_data, val_data, vocab


def data_sha1(tokens, chunk=1 << 22):
    """SHA-1 of a token array as int32, to recognise the training text on resume; read `chunk`
    ids at a time, so that a memory-mapped corpus is never copied whole."""
    sha1 = hashlib.sha1()
    for start in range(0, len(tokens), chunk):
        sha1.update(np.ascontiguousarray(tokens[start:start + chunk], dtype=np.int32).tobytes())
    return sha1.hexdigest()


def last_good_checkpoint(out_dir, step):
    """Where the run in `out_dir` can be resumed from, in words; `step`: that of its checkpoint."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return "no checkpoint was written"
    return f"the last good checkpoint (step {step:,}) is {path}"


def refuse_existing_run(out_dir):
    if (Path(out_dir) / CHECKPOINT).exists():
        raise CharrnnError(f"{out_dir} already holds a run; continue it with --resume {out_dir} "
                           f"or choose another --out")


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
    probe = Path(out_dir) / ".charrnn-write-test"
    try:
        write_atomic(probe, lambda f: f.write(b"ok"))
        probe.unlink()
    except OSError as err:
        raise CharrnnError(f"output directory {out_dir} is not writable ({err.strerror})") from None


def check_free_space(out_dir, model, optimizer):
    """Refuse to start unless `out_dir` has room for the checkpoint, the best one and a temporary."""
    arrays = [*model.params.values(), *optimizer.state_arrays().values()]
    needed = 3 * sum(a.nbytes for a in arrays) + (1 << 20)
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise CharrnnError(f"not enough space in {out_dir}: {free:,} bytes free, checkpoints need {needed:,}")


def keep_metrics_until(path, step):
    """Drop the records of metrics.jsonl after `step` (and a torn last line), before a resume."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and is_integer(record.get("step")) and record["step"] <= step:
            kept.append(line + "\n")
    write_atomic(path, lambda f: f.write("".join(kept).encode("utf-8")))


class StopSignals:
    """While active, SIGINT/SIGTERM only set `received` (the signal's name); a second one acts as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.received = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        self._restore()


class Run:
    """One training run in progress: model, optimizer, data, RNG streams and where it stands."""

    def __init__(self, config, model, optimizer, vocab, train_data, val_data, out_dir,
                 reporter, progress, truncation_rng, state):
        self.config, self.model, self.optimizer, self.vocab = config, model, optimizer, vocab
        self.train_data, self.val_data, self.out_dir = train_data, val_data, Path(out_dir)
        self.reporter, self.progress = reporter, progress
        self.truncation_rng = truncation_rng
        self.state = state  # (batch_size, num_hiddens) carried by the sequential sampler, or None
        self.tokens_per_batch = config.batch_size * config.num_steps
        self.checkpoint_step = progress.step  # of the checkpoint.npz on disk
        self.last_record = {}  # the latest metrics record of this session
        self.session_start = time.perf_counter()
        self.session_tokens = progress.tokens
        self.elapsed_before = progress.elapsed

    @cached_property
    def data_sha1(self):
        """Saved in every checkpoint, checked on resume; computed when first needed, as it
        reads the whole training split."""
        return data_sha1(self.train_data)

    # ---- the loop ----

    def start(self, resumed):
        """Train until a budget, a signal or a non-finite value stops the run -> TrainResult."""
        self.reporter.on_start(self.start_info(resumed))
        with StopSignals() as signals, np.errstate(over="ignore", invalid="ignore"):
            reason, message = self.loop(signals)  # non-finite values are checked, not warned about
            if reason in BUDGET_FIELDS and self.progress.last_eval_step != self.progress.step:
                self.evaluate("stop")
            elif reason in ("SIGINT", "SIGTERM"):
                self.save(CHECKPOINT)
        result = self.result(reason, message)
        self.reporter.on_end(result)
        return result

    def loop(self, signals):
        """-> (reason, message): why the run stopped."""
        while True:
            reached = self.budget_reached()
            if reached:
                return reached, ""
            for X, Y in self.epoch_batches():
                message = self.train_step(X, Y)
                if message:
                    return "nonfinite", message
                if self.eval_due():
                    self.evaluate("interval")
                reason = signals.received or self.budget_reached(within_epoch=True)
                if reason:
                    return reason, ""
            if self.progress.step_in_epoch == 0:
                raise CharrnnError(f"epoch {self.progress.epoch + 1} yielded no minibatch")
            self.progress.epoch += 1
            self.progress.step_in_epoch = 0
            self.state = None

    def epoch_batches(self):
        """The minibatches of the current epoch not done yet: (X, Y) (batch_size, num_steps) int.

        Also sets the epoch's learning rate, lr * lr_decay**epoch.
        """
        self.optimizer.lr = self.config.lr * self.config.lr_decay ** self.progress.epoch
        rng = np.random.default_rng([self.config.seed, SAMPLER_STREAM, self.progress.epoch])
        batches = SAMPLERS[self.config.sampler](self.train_data, self.config.batch_size,
                                                self.config.num_steps, rng)
        return islice(batches, self.progress.step_in_epoch, None)

    def train_step(self, X, Y):
        """One minibatch: BPTT, clipping, update. -> "" or a message if it was not finite."""
        cfg, p = self.config, self.progress
        loss, grads, state = loss_and_grads_auto(self.model, X, Y, self.state, truncation=cfg.truncation,
                                                 rng=self.truncation_rng, bptt_memory=cfg.bptt_memory,
                                                 memory_budget_bytes=cfg.bptt_memory_budget * 2**20)
        grad_norm = clip_grad_norm(grads, cfg.clip if cfg.clip is not None else math.inf)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step(grads)
            self.state = state if cfg.sampler == "sequential" else None
            p.interval_loss += loss
            p.interval_steps += 1
            p.skipped_in_a_row = 0
        p.step += 1
        p.step_in_epoch += 1
        p.tokens += self.tokens_per_batch
        if not finite:
            problem = (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                       f"(loss {loss}, gradient norm {grad_norm}) at epoch {self.epoch()}, step {p.step}")
            if cfg.on_nonfinite == "stop":
                return problem
            if p.skipped_in_a_row + 1 >= MAX_SKIPPED_IN_A_ROW:
                return f"{problem}, the {MAX_SKIPPED_IN_A_ROW}th minibatch in a row: the model has diverged"
            p.skipped += 1
            p.skipped_in_a_row += 1
            self.state = None
        self.reporter.on_step({
            "epoch": self.epoch(), "step": p.step, "tokens": p.tokens, "loss": loss,
            "perplexity": perplexity(loss), "grad_norm": grad_norm, "skipped": p.skipped})
        return ""

    def eval_due(self):
        """Whether the last minibatch crossed a multiple of eval_every tokens."""
        every = self.config.eval_every
        return self.progress.tokens // every > (self.progress.tokens - self.tokens_per_batch) // every

    def budget_reached(self, within_epoch=False):
        """The name of the first budget used up, or None. Epochs count only at an epoch's end."""
        cfg, p = self.config, self.progress
        if cfg.epochs is not None and not within_epoch and p.epoch >= cfg.epochs:
            return "epochs"
        if cfg.max_tokens is not None and p.tokens >= cfg.max_tokens:
            return "max_tokens"
        if cfg.max_time is not None and self.elapsed() >= cfg.max_time:
            return "max_time"
        return None

    # ---- evaluation and files ----

    def evaluate(self, reason):
        """Validation perplexity and a sample -> metrics.jsonl, best.npz, checkpoint.npz.

        reason "interval" (every eval_every tokens) restarts the running training loss; the
        extra evaluation when a budget ends the run ("stop") does not, nor counts as the last
        evaluation, so a run stopped and resumed logs the same "interval" records as a run
        never stopped (plus its "stop" records).
        """
        p = self.progress
        val_ppl = perplexity(mean_loss(self.model, self.val_data))
        train_loss = p.interval_loss / p.interval_steps if p.interval_steps else None
        improved = math.isfinite(val_ppl) and (p.best_val_ppl is None or val_ppl < p.best_val_ppl)
        record = {
            "reason": reason, "epoch": self.epoch(), "step": p.step, "tokens": p.tokens,
            "train_loss": train_loss, "train_ppl": None if train_loss is None else finite_or_none(perplexity(train_loss)),
            "val_ppl": finite_or_none(val_ppl), "best": improved,  # strict JSON: no NaN or Infinity
            "lr": self.optimizer.lr, "skipped": p.skipped, "elapsed": round(self.elapsed(), 3),
            "tokens_per_s": round(self.tokens_per_s(), 1),
            "sample": self.sample(),
        }
        if reason == "interval":
            p.interval_loss, p.interval_steps = 0.0, 0
            p.last_eval_step = p.step
        self.last_record = record
        if improved:
            p.best_val_ppl, p.best_step = val_ppl, p.step
        append_jsonl(self.out_dir / METRICS, record)
        if improved:
            self.save(BEST)
        self.save(CHECKPOINT)
        self.reporter.on_evaluate(record)

    def sample(self):
        """The greedy continuation of the configured prefix (as the textbook's predict), or None
        when there is none to show (a prefix without tokens, a model without finite outputs)."""
        cfg = self.config
        try:
            text, _ = sample_text(self.model, self.vocab, cfg.sample_prefix, cfg.sample_length,
                                  level=cfg.level, preprocess=cfg.preprocess, greedy=True)
        except CharrnnError:
            return None
        return text

    def save(self, name):
        """Write the whole state of the run to `out_dir/name`, atomically; a state with a
        non-finite value, or a failed write, leaves the file on disk as it was (CharrnnError)."""
        self.progress.elapsed = self.elapsed()
        arrays = dict(self.optimizer.state_arrays())  # named "optim.<slot>.<param>"
        if self.state is not None:
            arrays[STATE_KEY] = self.state
        if not all_finite([*self.model.params.values(), *arrays.values()]):
            raise CharrnnError(f"non-finite parameters or optimizer state at step {self.progress.step:,}, "
                               f"{name} not written; {last_good_checkpoint(self.out_dir, self.checkpoint_step)}")
        meta = {"vocab": self.vocab.to_dict(), "config": asdict(self.config),
                "progress": asdict(self.progress), "optimizer": self.optimizer.state_meta(),
                "rng": self.truncation_rng.bit_generator.state, "data_sha1": self.data_sha1}
        try:
            self.model.save(self.out_dir / name, extra_arrays=arrays, extra_meta=meta)
        except OSError as err:
            raise CharrnnError(f"cannot write {self.out_dir / name} ({err.strerror or err}); "
                               f"{last_good_checkpoint(self.out_dir, self.checkpoint_step)}") from None
        if name == CHECKPOINT:
            self.checkpoint_step = self.progress.step

    # ---- bookkeeping ----

    def epoch(self):
        """The 1-based epoch the run is in, or has just finished at an epoch's end."""
        return self.progress.epoch + (self.progress.step_in_epoch > 0)

    def elapsed(self):
        return self.elapsed_before + time.perf_counter() - self.session_start

    def tokens_per_s(self):
        seconds = time.perf_counter() - self.session_start
        return (self.progress.tokens - self.session_tokens) / seconds if seconds > 0 else 0.0

    def start_info(self, resumed):
        cfg = self.config
        per_epoch = num_minibatches(len(self.train_data), cfg.batch_size, cfg.num_steps) * self.tokens_per_batch
        whole_batches = cfg.max_tokens and -(-cfg.max_tokens // self.tokens_per_batch) * self.tokens_per_batch
        totals = [n for n in (cfg.epochs and cfg.epochs * per_epoch, whole_batches) if n]
        return {"out_dir": self.out_dir, "resumed": resumed, "config": cfg,
                "epoch": self.progress.epoch + 1, "tokens": self.progress.tokens,
                "total_tokens": min(totals) if totals else None,
                "train_tokens": len(self.train_data), "val_tokens": len(self.val_data),
                "vocab_size": len(self.vocab),
                "num_params": sum(v.size for v in self.model.params.values())}

    def result(self, reason, message):
        p = self.progress
        if p.interval_steps:
            train_ppl = perplexity(p.interval_loss / p.interval_steps)
        else:
            train_ppl = self.last_record.get("train_ppl")
        checkpoint = self.out_dir / CHECKPOINT
        return TrainResult(
            reason=reason, out_dir=self.out_dir, progress=p, train_ppl=train_ppl,
            val_ppl=self.last_record.get("val_ppl"), tokens_per_s=self.tokens_per_s(),
            wall_time=time.perf_counter() - self.session_start,
            checkpoint=checkpoint if checkpoint.is_file() else None,
            checkpoint_step=self.checkpoint_step, message=message)
