"""The runs of a sweep on a Dask distributed cluster (`charrnn compare --scheduler ADDRESS`, the
optional extra `cluster`).

Results and checkpoints live in a shared directory: every worker writes the run it is given
straight into --out, which must be the same path on every machine (a network file system, or
one machine). The client reads the finished runs from there, as a local sweep does, so resume,
reuse and the statistics work alike. Before it trains, a worker checks that it sees the sweep's
marker file in --out, and reports the run failed if not (a directory that is not shared).

Dask itself is imported only here, and only inside the functions, when a scheduler is asked for.
A worker that dies under a run is replaced by its nanny, and the scheduler gives the run to a
worker again (up to distributed.scheduler.allowed-failures times, then the run is reported
failed): it resumes from its checkpoint in the shared directory. Ctrl-C sets a Dask Event that
the runs poll (once a second): each stops, keeping its checkpoint of the last evaluation.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid

from charrnn.base.errors import CharrnnError
from charrnn.base.io import write_atomic
from charrnn.experiments.runs import RunInterrupted
from charrnn.experiments.sweep import attempt, finished, in_order, one_line, start_sweep
from charrnn.runtime.threads import set_blas_threads

CONNECT_TIMEOUT = 5  # seconds to reach the scheduler before giving up
STOP_POLL = 1.0  # seconds between two looks at the stop Event
STOP_WAIT = 60  # seconds Ctrl-C waits for the runs in flight to stop
EXTRA = "pip install 'charrnn[cluster]'"


def connect(address, timeout=CONNECT_TIMEOUT):
    """A distributed.Client of the scheduler at `address`; missing Dask, or no answer within
    `timeout` seconds -> CharrnnError (one line). Dask's own timeout covers the connection, not
    the handshake after it: a peer that accepts and never speaks would be waited on forever, so
    the client is made in a thread given `timeout` s."""
    try:
        from distributed import Client
    except ImportError:
        raise CharrnnError(f"--scheduler needs Dask distributed, which is not installed: {EXTRA}") from None

    class QuietClient(Client):
        def __del__(self):  # one that never connected has nothing to close: no wait, no traceback
            if getattr(self, "status", None) == "running":
                try:
                    super().__del__()
                except Exception:
                    pass

    made = {}

    def make():
        try:
            made["client"] = QuietClient(address, timeout=timeout, set_as_default=False)
        except Exception as err:  # handed to the caller's thread
            made["error"] = err

    maker = threading.Thread(target=make, name="charrnn-dask-connect", daemon=True)
    maker.start()
    maker.join(timeout)
    err = made.get("error")
    if maker.is_alive():
        raise CharrnnError(f"cannot reach the Dask scheduler at {address} (no answer within {timeout} s)")
    if isinstance(err, (OSError, TimeoutError, ValueError, TypeError, AssertionError)):
        raise CharrnnError(f"cannot reach the Dask scheduler at {address} ({one_line(err)})")
    if err is not None:
        raise err
    return made["client"]


class StopPoller:
    """should_stop() for a run on a worker: whether the sweep's stop Event is set (looked up at
    most once per STOP_POLL seconds)."""

    def __init__(self, name):
        self.name, self.next_look = name, 0.0

    def __call__(self):
        from distributed import Event

        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + STOP_POLL
        return Event(self.name).is_set()


def stop_by_raising():
    """Stop a run in a worker thread (no signals there): its last checkpoint stays."""
    raise RunInterrupted("stopped by the sweep")


def run_on_worker(spec, marker, stop_name):
    """The task a worker runs -> (status, message), as charrnn.experiments.sweep.attempt."""
    if not (spec.out_dir.parent / marker).is_file():
        return "failed", (f"worker {socket.gethostname()} does not see {spec.out_dir.parent}: --out must be "
                          f"a directory every worker reaches at the same path")
    set_blas_threads(1)  # for the worker process: its runs use one BLAS thread each
    return attempt(spec, StopPoller(stop_name), stop_by_raising, threads=None)


class DaskBackend:
    """The runs as tasks of a Dask distributed cluster, writing to a shared directory."""

    def __init__(self, client):
        self.client = client

    def run(self, specs, done, reporter):
        from distributed import Event, as_completed

        outcomes = start_sweep(specs, done, reporter)
        todo = [spec for spec in specs if spec.name not in done]
        token = uuid.uuid4().hex[:12]
        markers = [directory / f".charrnn-sweep-{token}" for directory in {s.out_dir.parent for s in todo}]
        for path in markers:
            write_atomic(path, lambda f: f.write(token.encode()))
        stop = Event(f"charrnn-stop-{token}", client=self.client)
        futures = {}  # Future -> RunSpec
        try:
            for spec in todo:
                future = self.client.submit(run_on_worker, spec, markers[0].name, stop.name, pure=False,
                                            key=f"charrnn-{spec.name}-{token}")
                futures[future] = spec
                reporter.on_run_start(spec, 1)
            for future in as_completed(list(futures), loop=self.client.loop):
                self.collect(future, futures, outcomes, reporter)
        except KeyboardInterrupt:
            self.stop_all(stop, futures, outcomes, reporter)
            return in_order(specs, outcomes, True)
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            for path in markers:
                path.unlink(missing_ok=True)
        return in_order(specs, outcomes, False)

    @staticmethod
    def collect(future, futures, outcomes, reporter, stopping=False):
        """A task has ended: its answer, or the reason it has none (a worker died too often)."""
        spec = futures[future]
        if spec.name in outcomes:
            return
        if future.status == "finished":
            status, message = future.result()
        elif future.status == "cancelled":
            status, message = "interrupted" if stopping else "failed", "cancelled"
        else:
            err = future.exception()
            status = "interrupted" if stopping else "failed"
            message = f"{type(err).__name__}: {one_line(err)}"
        outcomes[spec.name] = finished(spec, status, message, 1)
        reporter.on_run_end(outcomes[spec.name])

    def stop_all(self, stop, futures, outcomes, reporter):
        """Ctrl-C: set the stop Event, wait for the runs to stop; a second Ctrl-C leaves them."""
        from distributed import as_completed

        stop.set()
        left = [f for f in futures if futures[f].name not in outcomes]
        try:
            for future in as_completed(left, loop=self.client.loop, timeout=STOP_WAIT):
                self.collect(future, futures, outcomes, reporter, stopping=True)
        except (KeyboardInterrupt, TimeoutError):
            pass
        for future in left:
            if future.done():
                self.collect(future, futures, outcomes, reporter, stopping=True)
