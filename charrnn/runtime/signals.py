"""Signals that end a command: Ctrl-C (SIGINT), SIGTERM, and SIGHUP (a terminal closed), which
charrnn takes as SIGTERM.

During training they are noted (`StopSignals`), so the run stops at a minibatch's end, or within
a validation pass, and saves a checkpoint. Anywhere else in a command, SIGTERM and SIGHUP raise
`Terminated` in the main thread as Ctrl-C raises KeyboardInterrupt (`terminate_as_interrupt`),
so that `finally` blocks clean up (a token store's scratch file) and the command line says so
in one line and exits 128 + the signal's number.
"""
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOP_REASONS = tuple(sig.name for sig in STOP_SIGNALS)  # a run's `reason` when a signal stopped it
EXIT_CODES = {sig.name: 128 + sig.value for sig in STOP_SIGNALS}  # 130, 143, 129


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopSignals:
    """While active, SIGINT/SIGTERM/SIGHUP only set `received` (the signal's name); a second
    one acts as usual."""

    SIGNALS = STOP_SIGNALS

    def __enter__(self):
        self.received = None
        self._previous = {}
        if _main_thread():
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread was; `name` is the signal's."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _raise_terminated(signum, frame):
    raise Terminated(signal.Signals(signum).name)


@contextmanager
def terminate_as_interrupt():
    """While active (main thread only), SIGTERM and SIGHUP raise Terminated."""
    if not _main_thread():
        yield
        return
    signals = [sig for sig in STOP_SIGNALS if sig != signal.SIGINT]
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_name(err: KeyboardInterrupt) -> str:
    """The signal a KeyboardInterrupt stands for: SIGINT, or a Terminated's own."""
    return err.name if isinstance(err, Terminated) else "SIGINT"
