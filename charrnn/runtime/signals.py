"""Ctrl-C and SIGTERM during training: noted, so the run can stop at a minibatch's end and save."""
import signal
import threading


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
