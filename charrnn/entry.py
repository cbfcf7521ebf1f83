"""The `charrnn` console script and `python -m charrnn`: Ctrl-C while starting ends quietly.

Importing NumPy, click and rich takes a good part of a second. A SIGINT then would print a
KeyboardInterrupt traceback from deep inside an import, so the first thing `main` does, before
importing anything heavy, is make SIGINT end the process with "Interrupted." and exit code 130;
once the command line is imported, Python's own handler is back and the commands handle Ctrl-C
themselves (training saves a checkpoint). This module imports only the standard library (and
charrnn.runtime.launch, which does too), so that a rank of `mpiexec -n N charrnn train` can limit the BLAS
threads before NumPy loads.
"""
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    os.write(2, b"\nInterrupted.\n")
    os._exit(130)  # nothing to clean up yet: no file is open for writing


def main():
    """Run the charrnn command line (sys.argv) with a quiet Ctrl-C during start-up."""
    try:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:  # not the main thread: leave signals alone
        pass
    from charrnn.runtime.launch import prepare_rank, world_size
    rank = prepare_rank() if world_size() > 1 else None  # one of several MPI ranks (charrnn.training.parallel)
    from charrnn.cli import main as command_line
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if rank:  # a rank other than 0 says nothing: rank 0 reports the errors all ranks see alike
            return _quiet(command_line)
        return command_line(prog_name="charrnn")
    except KeyboardInterrupt:  # in the instant between the handlers
        sys.stderr.write("\nInterrupted.\n")
        return 130


def _quiet(command_line):
    """Run the command line without printing its usage errors -> the exit code."""
    import click
    try:
        return command_line(prog_name="charrnn", standalone_mode=False)
    except click.ClickException as err:
        return err.exit_code
    except click.Abort:
        return 1
