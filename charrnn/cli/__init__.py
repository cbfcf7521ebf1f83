"""The charrnn command line: corpus, train, sample, score, evaluate, gradcheck, analyze, compare, tune,
plot, export, serve, activations.

Parses options, calls charrnn, renders what comes back (render.py: tqdm bar, rich tables). No
maths here. Errors: charrnn.CharrnnError and OSError -> one line `Error: ...` on stderr, exit
code 1; bad option values -> click usage errors, exit code 2; never a traceback. Any other
exception is a bug: one line saying so and how to see its traceback (CHARRNN_DEBUG=1), exit 1.
No NumPy warning reaches the user: each command checks the numbers it reports. Importing this
package sets nothing: the BLAS thread count (--threads) is set when a command runs; the
console script (charrnn.entry) first makes Ctrl-C quiet while this package is imported.

    options.py      option types, the shared options, the training options of train and compare
    render.py       what the commands print
    training.py     train, compare
    tuning.py       tune
    inspection.py   corpus, sample, evaluate, gradcheck, analyze
    plotting.py     plot
    exporting.py    export
    serving.py      serve, activations (charrnn.serve)
"""
import os
import warnings

import click
import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.cli.exporting import export
from charrnn.cli.inspection import analyze, corpus, evaluate, gradcheck, sample
from charrnn.cli.options import ThreadCount
from charrnn.cli.plotting import plot
from charrnn.cli.render import charrnn_warnings, one_line, quiet_stdout
from charrnn.cli.scoring import score
from charrnn.cli.serving import activations, serve
from charrnn.cli.training import compare, train
from charrnn.cli.tuning import tune
from charrnn.runtime.signals import EXIT_CODES, interrupted_name, terminate_as_interrupt
from charrnn.runtime.threads import DEFAULT_THREADS, THREAD_VARIABLES, Threads, default_threads

# NumPy's ValueErrors for sizes past the address space (MemoryError covers the rest)
NUMPY_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")
DEBUG_VARIABLE = "CHARRNN_DEBUG"  # set to 1: unexpected exceptions show their traceback


class CharrnnGroup(click.Group):
    """Turns user-facing errors into one line on stderr and exit code 1 (Ctrl-C: 130, SIGTERM:
    143, SIGHUP: 129, charrnn.runtime.signals), and any other exception into one line that reports a bug
    (unless CHARRNN_DEBUG=1)."""

    def invoke(self, ctx):
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings(), terminate_as_interrupt():
                warnings.simplefilter("ignore", RuntimeWarning)  # numbers are checked, not warned about
                return super().invoke(ctx)
        except CharrnnError as err:
            raise click.ClickException(one_line(err)) from None
        except BrokenPipeError:  # `charrnn ... | head`: the reader has all it wanted, a normal end
            quiet_stdout()
            ctx.exit(0)
        except OSError as err:
            where = f": {err.filename}" if err.filename else ""
            raise click.ClickException(one_line(f"{err.strerror or err}{where}")) from None
        except MemoryError:
            raise click.ClickException("out of memory; try smaller sizes") from None
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP (charrnn.runtime.signals.Terminated)
            name = interrupted_name(err)
            click.echo("\nInterrupted." if name == "SIGINT" else f"\nInterrupted by {name}.", err=True)
            ctx.exit(EXIT_CODES[name])
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ValueError as err:
            if str(err) == "embedded null byte":  # os.stat of a path given with \0, as click checks it
                raise click.ClickException("a path holds a NUL character (\\0), which no file name can") from None
            if not str(err).startswith(NUMPY_TOO_BIG):
                raise_bug(err)
            raise click.ClickException(f"arrays of these sizes cannot exist ({err}); try smaller sizes") from None
        except Exception as err:  # the last line of defence
            raise_bug(err)


def raise_bug(err):
    """An exception charrnn did not expect: one line saying so, or its traceback with CHARRNN_DEBUG=1."""
    if os.environ.get(DEBUG_VARIABLE) == "1":
        raise err
    raise click.ClickException(one_line(
        f"unexpected {type(err).__name__}: {str(err)[:300]} -- this is a bug in charrnn; run the command "
        f"again with {DEBUG_VARIABLE}=1 to see the traceback, and please report it")) from None


@click.group(name="charrnn", cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charrnn")
@click.option("--threads", type=ThreadCount(), default=None, metavar="auto|N",
              help=f"NumPy's BLAS threads: auto uses the cores that no other process keeps busy, and looks "
                   f"again as training goes; N uses N [default: {DEFAULT_THREADS}, unless one of "
                   f"{', '.join(THREAD_VARIABLES)} is set].")
@click.pass_context
def main(ctx, threads):
    """Character-level RNN language models trained by exact backpropagation through time."""
    threads = default_threads() if threads is None else threads
    # train and compare take the setting to their runs; sample holds auto at one thread (one row)
    ctx.obj = {"threads": threads, "applied": ctx.with_resource(Threads(threads))}
    ctx.with_resource(charrnn_warnings())




for command in (corpus, train, sample, score, evaluate, gradcheck, analyze, compare, tune, plot, export, serve,
                activations):
    main.add_command(command)
