"""One process per run: an exclusive lock on the run directory, held while the run trains.

The lock is `fcntl.flock` on the file LOCK_FILE in the run directory, taken without waiting:
a second `charrnn train --out DIR` or `--resume DIR` is refused at once with a line naming the
process that holds it (its PID is written in the file). The kernel releases the lock when the
holder exits, however it exits (kill -9 included), so a stale lock never blocks a resume. The
file itself stays. Readers (`sample`, `evaluate`, `analyze`) take no lock: every file a run
writes is replaced atomically, so they always read a whole one.
"""
import os
from pathlib import Path

from charrnn.base.errors import CharrnnError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None


class RunLock:
    """`with RunLock(out_dir):` holds the run directory's lock for the block, or refuses."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_FILE
        self._fd = None

    def __enter__(self):
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CharrnnError(f"cannot create the lock file {self.path} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise CharrnnError(f"the run in {self.path.parent} is in use by another charrnn process "
                               f"(PID {holder}); wait for it to end or stop it") from None
        except OSError as err:  # a file system without locks
            os.close(fd)
            raise CharrnnError(f"cannot lock {self.path} ({err.strerror})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
