"""The command that draws: `plot` (training and validation perplexity of runs against tokens)."""
from pathlib import Path

import click

from charrnn.analysis.curves import read_history
from charrnn.analysis.plot import check_plot_path, plot_runs
from charrnn.cli.render import print_histories, say, shown


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw a figure to this .png/.pdf/.svg file (needs matplotlib); without it, "
                   "one-line charts in the terminal.")
def plot(runs, out):
    """Training and validation perplexity against tokens for one or more RUNS (run directories,
    read from their metrics.jsonl)."""
    if out is not None:
        check_plot_path(out)
    histories = [read_history(run) for run in runs]
    if out is not None:
        plot_runs(histories, out)
    print_histories(histories)
    if out is not None:
        say(f"figure: {shown(out)}")
