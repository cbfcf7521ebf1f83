"""Data-parallel BPTT on MPI (docs/parallel.md): one model trained by N processes, the same maths as one.

Under `mpiexec -n N charrnn train ...` (or `charrnn train --procs N`, charrnn.runtime.launch), every
rank holds the same parameters and optimizer state. The user's minibatch of B rows is split
into N contiguous blocks as evenly as possible (`split_rows`: the first B mod N ranks take one
row more); rank r runs BPTT on its b_r rows from its rows' carried states. The loss of eq.
9.7.2 is a mean over the batch, L = (1/(B·T)) Σ_b Σ_t l_bt, so with L_r the mean over rank r's
rows,

    L = Σ_r (b_r / B) L_r,    ∇L = Σ_r (b_r / B) ∇L_r,

and one allreduce (MPI SUM) of one buffer (`GradientSum`: every gradient and the loss scaled by
b_r/B, rank 0's clock, the ranks' signal counts) gives every rank ∇L. Clipping then uses the
global norm (d2l §9.5) and every rank takes the same optimizer step on the same numbers.

Randomness does not depend on N: the truncation draws ξ (eq. 9.7.8) and the dropout masks are
drawn for the whole batch from the run's seeded streams on every rank, and each rank keeps its
rows (`RowShare`); the streams themselves stay identical on all ranks, so rank 0 saves them as a
single process would. Hence N ranks give one process's parameters up to the order of floating-point
sums (tests/test_parallel.py: 1e-12 relative in float64 after 20 steps), a fixed N gives the
same bits every time, and a run resumes with any N (the same B).

Rank 0 alone writes checkpoints, metrics and samples and talks to the console; checkpoints get
the full carried state, gathered from the ranks. Validation splits its rows across the ranks
(one small allreduce of the loss sum and count). A rank that raises prints one line naming
itself and aborts all ranks (`abort_on_error`), so no rank waits for ever in a collective.
"""
from __future__ import annotations

import copy
import os
import sys
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.infer.evaluate import EvaluationStopped, contiguous_batches
from charrnn.runtime.launch import world_size
from charrnn.runtime.signals import STOP_REASONS, StopSignals
from charrnn.training.events import Reporter
from charrnn.training.loop import Run
from charrnn.training.outdir import CHECKPOINT
from charrnn.training.start import as_threads, load_data

SIGNAL_NAMES = STOP_REASONS  # SIGINT, SIGTERM, SIGHUP: the order of their counts in the step's buffer


def split_rows(batch_size, size, rank) -> slice:
    """Rank `rank` of `size`'s rows of a batch of `batch_size`: contiguous blocks, the first
    batch_size mod size ranks one row more than the others (possibly none when batch_size < size)."""
    base, extra = divmod(batch_size, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Ranks:
    """This process's place among the ranks of an MPI communicator: `rank`, `size`, `comm`."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def rows(self, batch_size) -> slice:
        return split_rows(batch_size, self.size, self.rank)

    def sum(self, buffer) -> None:
        """Sum `buffer` over the ranks, in place (every rank gets the sum)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def abort(self, code=1) -> None:
        """Stop every rank now, quietly: the caller has said why on stderr."""
        sys.stderr.flush()
        try:  # MPI's own line about the abort would repeat what the caller said
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        except OSError:
            pass
        self.comm.Abort(code)


def current_ranks():
    """The Ranks of MPI_COMM_WORLD when this process is one of several started by mpiexec, else
    None. Several ranks without mpi4py -> CharrnnError saying which extra to install."""
    size = world_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise CharrnnError(f"charrnn runs as {size} MPI processes, which needs mpi4py: "
                           f"pip install 'charrnn[mpi]'") from None
    return Ranks(MPI.COMM_WORLD)


@contextmanager
def abort_on_error(ranks):
    """Around a rank's work: an exception prints `Error: [rank r of N: ]what` on stderr and aborts
    every rank (none is left waiting in a collective). ranks None: exceptions pass as usual."""
    if ranks is None:
        yield
        return
    try:
        yield
    except BaseException as err:  # noqa: B902 -- every way out of a rank must stop the others
        where = "" if ranks.rank == 0 else f"rank {ranks.rank} of {ranks.size}: "
        if os.environ.get("CHARRNN_DEBUG") == "1":
            traceback.print_exc()
        sys.stderr.write(f"Error: {where}{describe_error(err)}; stopping all {ranks.size} ranks\n")
        ranks.abort(130 if isinstance(err, KeyboardInterrupt) else 1)


def describe_error(err) -> str:
    """One line for an exception, as the command line words them."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, OSError) and not isinstance(err, CharrnnError):
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return f"{err.strerror or err}{where}"
    text = err.format_message() if hasattr(err, "format_message") else str(err)
    if isinstance(err, (CharrnnError, MemoryError)) or hasattr(err, "format_message"):
        return " ".join(text.split()) or type(err).__name__
    return f"unexpected {type(err).__name__}: {' '.join(text.split())[:300]} -- this is a bug in charrnn"


class RowShare(np.random.Generator):
    """A Generator that draws on `shared`'s bit generator as for the whole batch and returns this
    rank's rows: random(size) is the draw of size with its batch axis (the second to last, as in
    truncation.path_scales's (T-1, B, 1) and the model's masks (L, B, H)) widened to
    batch_size, sliced to `rows`. `shared` advances exactly as in a single process.

    A large draw (SKIP_FROM numbers or more: the masks of wide layers) does not make the other
    ranks' numbers: a float64 of PCG64 is one 64-bit output, so the bit generator is advanced
    past the rows before and after this rank's (PCG64.advance, O(log n)) -- the same numbers and
    the same final state, for 1/N of the work (tests/test_parallel.py checks both)."""

    SKIP_FROM = 1 << 14

    def __init__(self, shared, rows, batch_size):
        super().__init__(shared.bit_generator)
        self.rows, self.batch_size = rows, batch_size

    def random(self, size=None, dtype=np.float64, out=None):
        if size is None or len(size) < 2 or out is not None:
            raise CharrnnError("RowShare draws (..., rows, n) arrays only")
        full = (*size[:-2], self.batch_size, size[-1])
        bit = self.bit_generator
        if np.prod(full) < self.SKIP_FROM or np.dtype(dtype) != np.float64 or not isinstance(bit, np.random.PCG64):
            return super().random(full, dtype)[..., self.rows, :]
        width = size[-1]
        before, after = self.rows.start * width, (self.batch_size - self.rows.stop) * width
        drawn = np.empty(size)
        for index in np.ndindex(*size[:-2]):
            bit.advance(before)
            drawn[index] = super().random(size[-2:])
            bit.advance(after)
        return drawn

    def __deepcopy__(self, memo):  # recompute.py redraws a segment from a copy
        return RowShare(np.random.Generator(copy.deepcopy(self.bit_generator, memo)), self.rows, self.batch_size)


class GradientSum:
    """The one buffer a step sums over the ranks (module docstring): the gradients in parameter
    order and the loss, each scaled by this rank's share b_r/B of the batch; then rank 0's clock
    (the others add 0) and each rank's count of SIGINT, SIGTERM and SIGHUP received."""

    def __init__(self, params, share, ranks):
        self.ranks, self.share = ranks, share
        self.layout, start = [], 0
        for name, value in params.items():
            self.layout.append((name, start, start + value.size, value.shape))
            start += value.size
        self.size = start  # the gradients' floats; the loss, the clock and the signal counts follow
        self.buffer = np.empty(start + 2 + len(SIGNAL_NAMES), dtype=next(iter(params.values())).dtype)

    def __call__(self, loss, grads, clock, signal) -> tuple:
        """-> (loss, grads, clock, signal): the batch's loss and gradients (views of the buffer),
        rank 0's clock, and the first of SIGNAL_NAMES any rank received (None if none)."""
        b, n = self.buffer, self.size
        for name, start, stop, _ in self.layout:
            np.multiply(grads[name].reshape(-1), self.share, out=b[start:stop])
        b[n] = loss * self.share
        b[n + 1] = clock if self.ranks.rank == 0 else 0.0
        b[n + 2:] = [signal == name for name in SIGNAL_NAMES]
        self.ranks.sum(b)
        summed = {name: b[start:stop].reshape(shape) for name, start, stop, shape in self.layout}
        received = next((name for name, count in zip(SIGNAL_NAMES, b[n + 2:]) if count > 0), None)
        return float(b[n]), summed, float(b[n + 1]), received


class SharedSignals:
    """StopSignals for one rank whose `received` is what any rank received, as of the last step's
    sum, so that all ranks stop after the same minibatch."""

    def __init__(self):
        self.local, self.received = StopSignals(), None

    def __enter__(self):
        self.local.__enter__()
        return self

    def __exit__(self, *exc):
        return self.local.__exit__(*exc)


class ParallelRun(Run):
    """A Run on one rank of several (module docstring); `ranks`: Ranks. `training.carried` is the
    whole batch's carried state (or None); the rank keeps its rows of it."""

    def __init__(self, training, *, ranks, **kwargs):
        super().__init__(training, **kwargs)
        B = self.config.batch_size
        if self.config.max_time is not None:  # its stops are decided by each process's own clock
            raise CharrnnError(f"--max-time is not available on {ranks.size} processes yet; give the budget as "
                               f"--max-tokens or --epochs")
        if self.config.records:  # the held-out records' evaluation is not split across ranks yet
            raise CharrnnError(f"--records is not available on {ranks.size} processes yet; train a text of "
                               f"records in one process")
        if B < ranks.size:
            raise CharrnnError(f"batch_size {B} is smaller than the {ranks.size} processes; "
                               f"give each at least one row (--batch-size {ranks.size} or more, or fewer processes)")
        self.ranks, self.rows = ranks, ranks.rows(B)
        self.whole_carried, self.started = training.carried, False
        if training.carried is not None:
            training.carried = np.ascontiguousarray(training.carried[..., self.rows, :])
        self.row_truncation_rng = RowShare(training.truncation_rng, self.rows, B)
        self.row_dropout_rng = None if training.dropout_rng is None else RowShare(training.dropout_rng, self.rows, B)
        rows = self.rows.stop - self.rows.start
        self.summer = GradientSum(self.model.params, self.model.dtype.type(rows / B), ranks)
        self.clock = self.elapsed_before  # rank 0's seconds of training as of the last sum
        self.signals = None

    def spec(self, resumed, evaluate_end=False) -> dict:
        """What the other ranks need from rank 0 to join the run (follow)."""
        self.model._workspaces.clear()  # buffers, not state: no need to send them
        self.model._forward_ws = None
        return {"training": replace(self.training, carried=self.whole_carried), "config": self.config,
                "vocab": self.vocab, "out_dir": self.out_dir, "resumed": resumed,
                "evaluate_end": evaluate_end}

    def start(self, resumed, threads=None, evaluate_end=False):
        if self.ranks.rank == 0:
            self.ranks.comm.bcast(self.spec(resumed, evaluate_end), root=0)
        self.whole_carried, self.started = None, True
        return super().start(resumed, threads, evaluate_end)

    def start_info(self, resumed):
        return {**super().start_info(resumed), "procs": self.ranks.size}

    def stop_signals(self):
        self.signals = SharedSignals()
        return self.signals

    def loss_and_grads(self, X, Y):
        """This rank's rows' loss, gradients and state, then the sums over the ranks (GradientSum)."""
        cfg, rows = self.config, self.rows
        loss, grads, last_state = self.model.loss_and_grads(
            X[rows], Y[rows], self.training.carried, truncation=cfg.truncation, rng=self.row_truncation_rng,
            dropout_rng=self.row_dropout_rng, bptt_memory=cfg.bptt_memory,
            memory_budget_bytes=cfg.bptt_memory_budget * 2**20)
        local = self.signals.local.received if self.signals is not None else None
        loss, grads, self.clock, received = self.summer(loss, grads, super().elapsed(), local)
        if self.signals is not None and self.signals.received is None:
            self.signals.received = received
        return loss, grads, last_state

    def elapsed(self):
        """Rank 0's training time as of the last step, the same on every rank (budgets, schedules)."""
        return self.clock

    def validation_loss(self, tokens):
        """charrnn.infer.evaluate.mean_loss of the first `tokens` of the validation split, the
        evaluation's rows split across the ranks. Before each chunk the ranks sum the signals they
        received (share_signals), so that all of them stop the pass at the same chunk
        (EvaluationStopped, as Run's: a signal is honoured within the pass)."""
        total, state = np.zeros(2), None
        for X, Y in contiguous_batches(self.val_data[:tokens]):
            if self.signals is not None:
                self.share_signals()
                if self.signals.received is not None:
                    raise EvaluationStopped
            rows = self.ranks.rows(len(X))
            if rows.stop > rows.start:
                loss_sum, count, state = self.model.forward_loss(X[rows], Y[rows], state)
                total += (float(loss_sum), int(count))
        self.ranks.sum(total)
        total = self.ranks.comm.bcast(total, root=0)  # rank 0's bits everywhere: "best" is decided alike
        return total[0] / total[1]

    def share_signals(self):
        """What any rank received -> self.signals.received (a small sum over the ranks)."""
        counts = np.array([self.signals.local.received == name for name in SIGNAL_NAMES], dtype=np.float64)
        self.ranks.sum(counts)
        received = next((name for name, count in zip(SIGNAL_NAMES, counts) if count > 0), None)
        if self.signals.received is None:
            self.signals.received = received

    def sample(self):
        return super().sample() if self.ranks.rank == 0 else None

    def append_record(self, record):
        if self.ranks.rank == 0:
            super().append_record(record)

    def save(self, name):
        """Rank 0 writes `name` with the whole batch's state, gathered from the ranks; first the
        ranks check that they hold the same parameters (a CharrnnError if not)."""
        local = self.training.carried
        if not self.started:  # rank 0 alone, before the others join: the whole state is here
            whole = self.whole_carried
        else:
            self.check_agreement()
            parts = self.ranks.comm.gather(local, root=0)
            if self.ranks.rank != 0:
                self.progress.elapsed = self.elapsed()
                if name == CHECKPOINT:
                    self.checkpoint_step = self.progress.step
                return
            whole = None if local is None else np.concatenate(parts, axis=-2)
        try:
            self.training.carried = whole
            super().save(name)
        finally:
            self.training.carried = local

    def check_agreement(self):
        """All ranks must hold the same parameters bit for bit (a CRC-32 of each array)."""
        mine = [zlib.crc32(np.ascontiguousarray(p).data) for p in self.model.params.values()]
        everyone = self.ranks.comm.allgather(mine)
        if any(other != mine for other in everyone):
            odd = [r for r, other in enumerate(everyone) if other != everyone[0]]
            raise CharrnnError(f"the parameters of rank(s) {', '.join(map(str, odd))} differ from rank 0's "
                               f"at step {self.progress.step:,}: the ranks' arithmetic disagrees")


def follow(ranks, data_dir=None, cache_dir=None, threads=None):
    """A rank other than 0: join the run rank 0 starts or resumes (its ParallelRun.start sends
    the spec), with the data read here (the token store at the same path, or data_dir) -> TrainResult."""
    spec = ranks.comm.bcast(None, root=0)
    config, training = spec["config"], spec["training"]
    base_vocab = spec["vocab"] if config.init_from else None
    train_data, val_data, vocab, data_id = load_data(config, data_dir, base_vocab, cache_dir)
    if vocab.idx_to_token != spec["vocab"].idx_to_token or data_id != training.data_id:
        raise CharrnnError(f"the text {config.corpus!r} read here is not the one rank 0 trains on "
                           f"(give every rank the same data, e.g. --data-dir on shared storage)")
    run = ParallelRun(training, ranks=ranks, config=config, vocab=vocab, train_data=train_data, val_data=val_data,
                      out_dir=spec["out_dir"], reporter=Reporter())
    return run.start(spec["resumed"], as_threads(threads), spec["evaluate_end"])
