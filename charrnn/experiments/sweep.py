"""Where the runs of a sweep execute: one after the other in this process (SerialBackend), or J
at a time in local worker processes (ProcessBackend); charrnn.experiments.cluster adds a Dask cluster.

Every backend runs charrnn.experiments.runs.execute_run; a run's numbers do not depend on the backend, nor
on its BLAS threads (charrnn.runtime.threads). The runs of this process take the sweep's thread setting;
J local workers split the cores (`threads.share`: auto capped at cores // J each, or N // J);
the cluster's workers run one thread each. A backend gets the runs and the names of those
already done, reports to a SweepReporter, and returns ([Outcome] in the order of the runs,
interrupted: bool).

Local worker processes: `jobs` fresh interpreters (spawned), each given one run at a time over
its own pipe, so the sweep always knows which run a worker has. A worker that dies (killed, out
of memory) is replaced and its run started again up to `retries` times, resuming from its
checkpoint; a run that fails (a non-finite loss, a bad setting) is reported failed and the
others go on. Ctrl-C: the
terminal's SIGINT reaches every worker, each run checkpoints where it is and stops; a stop
request (an Event the workers poll) does the same when only this process got the signal (a
SIGINT, or a SIGTERM). A
second Ctrl-C kills the workers; their runs resume from their last checkpoint next time.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

from charrnn.base.errors import CharrnnError
from charrnn.experiments.runs import RunInterrupted, execute_run, read_run, stop_by_sigint
from charrnn.runtime.signals import terminate_as_interrupt
from charrnn.runtime.threads import DEFAULT_THREADS, Threads, share

START_METHOD = "spawn"  # fresh interpreters: no inherited threads, locks or state


@dataclass
class Outcome:
    """What became of one run: status done | failed | interrupted | not started."""

    spec: object  # charrnn.experiments.runs.RunSpec
    status: str
    summary: object = None  # charrnn.experiments.runs.RunSummary when done
    message: str = ""
    attempts: int = 0  # times it was started in this sweep
    reused: bool = False  # done before this sweep


class SweepReporter:
    """Receives the events of a sweep; the CLI renders them. This one ignores them."""

    def on_sweep_start(self, total, done):
        """total runs, of which `done` are finished already."""

    def on_run_start(self, spec, attempt):
        """A run is given to a worker (attempt 1, 2, ...)."""

    def on_retry(self, spec, message):
        """A worker died under a run; it will be started again."""

    def on_run_end(self, outcome):
        """A run is done (or reused), failed or interrupted."""


def one_line(err) -> str:
    return " ".join(str(err).split())


def start_sweep(specs, done, reporter) -> dict:
    """Report the start of a sweep -> {name: Outcome} of the runs in `done` (finished before)."""
    reporter.on_sweep_start(len(specs), len(done))
    outcomes = {}
    for spec in specs:
        if spec.name in done:
            outcomes[spec.name] = finished(spec, "done", "", 0)
            outcomes[spec.name].reused = outcomes[spec.name].status == "done"
            reporter.on_run_end(outcomes[spec.name])
    return outcomes


def finished(spec, status, message, attempts) -> Outcome:
    """The Outcome of a run that ended with `status` (the directory holds the summary); a
    directory whose summary cannot be read (a damaged metrics.jsonl) -> a failed run."""
    try:
        summary = read_run(spec) if status == "done" else None
    except CharrnnError as err:
        return Outcome(spec, "failed", None, one_line(err), attempts)
    return Outcome(spec, status, summary, message, attempts)


def in_order(specs, outcomes, interrupted) -> tuple:
    """Outcomes in the order of `specs`; runs without one were not started."""
    return [outcomes.get(s.name) or Outcome(s, "not started") for s in specs], interrupted


class SerialBackend:
    """The runs one after the other in this process (Ctrl-C reaches the run directly), with
    `threads` BLAS threads (charrnn.runtime.threads: "auto", N or None)."""

    def __init__(self, threads=DEFAULT_THREADS):
        self.threads = threads

    def run(self, specs, done, reporter):
        outcomes = start_sweep(specs, done, reporter)
        for spec in (spec for spec in specs if spec.name not in done):
            reporter.on_run_start(spec, 1)
            outcomes[spec.name] = finished(spec, *attempt(spec, threads=self.threads), 1)
            reporter.on_run_end(outcomes[spec.name])
            if outcomes[spec.name].status == "interrupted":
                return in_order(specs, outcomes, True)
        return in_order(specs, outcomes, False)


def attempt(spec, should_stop=None, stop=None, threads=DEFAULT_THREADS) -> tuple:
    """Run `spec` with `threads` (as charrnn.training.start.train takes them) -> (status, message),
    status done | interrupted | failed."""
    try:
        execute_run(spec, should_stop, stop, threads)
    except RunInterrupted as err:
        return "interrupted", one_line(err)
    except (CharrnnError, OSError, MemoryError) as err:
        return "failed", one_line(err) or type(err).__name__
    return "done", ""


ORPHAN_POLL = 0.5  # seconds between a worker's looks at whether the sweep is still there


def stop_when_orphaned(poll=ORPHAN_POLL):
    """Start a thread that stops this worker's run (a SIGINT to itself: the run checkpoints and
    stops) once its parent, the sweep, is gone (SIGKILLed: it never said so); the worker then
    finds its pipe closed and ends. No orphan trains on."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="charrnn-orphan-watch", daemon=True).start()


def worker_loop(conn, stop_event, threads=1, limit=None):
    """A worker process: takes runs from `conn` until None, runs each with `threads` BLAS threads
    (auto: at most `limit`), answers each with (status, message). SIGINT and SIGHUP are left to
    the run in progress (which checkpoints and stops); an orphaned worker stops its run."""
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):  # between runs; a run installs its own
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    stop_when_orphaned()
    try:
        for spec in iter(conn.recv, None):
            try:
                result = attempt(spec, stop_event.is_set, stop_by_sigint, Threads(threads, limit))
            except Exception as err:  # a bug, reported as the run's failure rather than a dead worker
                result = "failed", f"{type(err).__name__}: {one_line(err)}"
            conn.send(result)
    except (EOFError, OSError):  # the sweep is gone: nobody to work for
        pass


class Worker:
    """A worker process and the run it has (None when idle)."""

    def __init__(self, context, stop_event, threads):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_loop, args=(child, stop_event, *threads), daemon=True)
        self.process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        self.spec, self.attempt = None, 0

    def give(self, spec, attempt_number):
        self.spec, self.attempt = spec, attempt_number
        self.conn.send(spec)

    def answer(self):
        """(status, message) for the run it had, or None if the worker died."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            return None

    def close(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


class ProcessBackend:
    """At most `jobs` runs at once, in `jobs` worker processes that live for the sweep and split
    the cores: `threads` ("auto", N or None) is shared out among them (charrnn.runtime.threads.share)."""

    def __init__(self, jobs, retries=1, threads=DEFAULT_THREADS):
        if not (isinstance(jobs, int) and jobs >= 1):
            raise CharrnnError(f"jobs must be at least 1, got {jobs!r}")
        self.jobs, self.retries, self.threads = jobs, retries, share(threads, jobs)
        self.context = multiprocessing.get_context(START_METHOD)

    def run(self, specs, done, reporter):
        outcomes = start_sweep(specs, done, reporter)
        queue = deque((spec, 1) for spec in specs if spec.name not in done)
        self.stop_event = self.context.Event()
        self.workers = workers = []  # the live workers, each with the run it has (spec)
        try:
            with terminate_as_interrupt():  # SIGTERM, SIGHUP: as Ctrl-C, workers included
                workers += [Worker(self.context, self.stop_event, self.threads) for _ in range(min(self.jobs, len(queue)))]
                self.loop(workers, queue, outcomes, reporter)
        except KeyboardInterrupt:
            self.stop_all(workers, outcomes, reporter)
            return in_order(specs, outcomes, True)
        finally:
            for worker in workers:
                worker.close()
        return in_order(specs, outcomes, False)

    def loop(self, workers, queue, outcomes, reporter):
        while True:
            for worker in workers:
                if worker.spec is None and queue:
                    worker.give(*queue.popleft())
                    reporter.on_run_start(worker.spec, worker.attempt)
            busy = {worker.conn: worker for worker in workers if worker.spec is not None}
            if not busy:
                return
            for conn in wait(list(busy)):
                worker = busy[conn]
                if not self.collect(worker, worker.answer(), queue, outcomes, reporter):
                    workers.remove(worker)  # it died: a new one takes its place if runs are left
                    if queue:
                        workers.append(Worker(self.context, self.stop_event, self.threads))

    def collect(self, worker, answer, queue, outcomes, reporter, stopping=False) -> bool:
        """Record the answer of `worker` about its run -> whether the worker is still alive.

        A worker that died is replaced and its run started again (resuming from its checkpoint)
        up to `retries` times, then reported failed.
        """
        spec, attempt_number = worker.spec, worker.attempt
        worker.spec = None
        if answer is None:
            died = f"its worker died (exit code {worker.process.exitcode})"
            if not stopping and attempt_number <= self.retries:
                reporter.on_retry(spec, died)
                queue.appendleft((spec, attempt_number + 1))
                return False
            answer = ("interrupted", died) if stopping else ("failed", f"{died}, {attempt_number} time(s)")
        outcomes[spec.name] = finished(spec, *answer, attempt_number)
        reporter.on_run_end(outcomes[spec.name])
        return answer is not None and worker.process.is_alive()

    def stop_all(self, workers, outcomes, reporter):
        """Ctrl-C: ask every run to checkpoint and stop, wait for them; a second Ctrl-C kills them."""
        self.stop_event.set()
        busy = [worker for worker in workers if worker.spec is not None]
        try:
            for worker in busy:
                self.collect(worker, worker.answer(), deque(), outcomes, reporter, stopping=True)
        except KeyboardInterrupt:
            for worker in busy:
                worker.process.kill()
            for worker in busy:
                if worker.spec is not None:
                    self.collect(worker, None, deque(), outcomes, reporter, stopping=True)
