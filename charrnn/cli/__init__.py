"""The charrnn command line: corpus, train, sample, evaluate, gradcheck, analyze, compare, plot, export.

Parses options, calls charrnn, renders what comes back (render.py: tqdm bar, rich tables). No
maths here. Errors: charrnn.CharrnnError and OSError -> one line `Error: ...` on stderr, exit
code 1; bad option values -> click usage errors, exit code 2; never a traceback. Importing this
package sets nothing: the BLAS thread count (--threads) is set when a command runs.

    options.py      option types, the shared options, the training options of train and compare
    render.py       what the commands print
    training.py     train, compare
    inspection.py   corpus, sample, evaluate, gradcheck, analyze
    plotting.py     plot
    exporting.py    export
"""
import click

from ..errors import CharrnnError
from ..threads import THREAD_VARIABLES, blas_threads, default_threads
from .exporting import export
from .inspection import analyze, corpus, evaluate, gradcheck, sample
from .plotting import plot
from .options import Clip, FiniteRange, Truncation  # noqa: F401  (the option types, for tests and users)
from .render import charrnn_warnings, one_line, quiet_stdout
from .training import COMPARE_EVAL_EVERY, compare, train  # noqa: F401

# NumPy's ValueErrors for sizes past the address space (MemoryError covers the rest)
NUMPY_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")


class CharrnnGroup(click.Group):
    """Turns user-facing errors into one line on stderr and exit code 1 (Ctrl-C: 130)."""

    def invoke(self, ctx):
        try:
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
        except ValueError as err:
            if not str(err).startswith(NUMPY_TOO_BIG):
                raise
            raise click.ClickException(f"arrays of these sizes cannot exist ({err}); try smaller sizes") from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)


@click.group(name="charrnn", cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charrnn")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"BLAS threads for NumPy [default: 1, unless one of {', '.join(THREAD_VARIABLES)} is set]. "
                   f"One is fastest for the thin products of each time step.")
@click.pass_context
def main(ctx, threads):
    """Character-level RNN language models trained by exact backpropagation through time."""
    ctx.with_resource(blas_threads(default_threads() if threads is None else threads))
    ctx.with_resource(charrnn_warnings())




for command in (corpus, train, sample, evaluate, gradcheck, analyze, compare, plot, export):
    main.add_command(command)
