"""The commands that show a model's insides: `serve` (a local web page and JSON API, charrnn.serve)
and `activations` (the page's activation view as one HTML file, or the raw states as .npz)."""
import ipaddress
import math
import socket
from pathlib import Path

import click
import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.base.io import save_npz, write_atomic
from charrnn.cli.options import checkpoint_argument
from charrnn.cli.render import say, shown, warn
from charrnn.serve.engine import activation_payload, load_runs
from charrnn.serve.limits import Limits, RequestError
from charrnn.serve.page import render_page

LOOPBACK = "127.0.0.1"
SERVE_EXTRA = "charrnn serve needs the optional extra [serve]: pip install 'charrnn[serve]'"
WEB_MODULES = ("starlette", "uvicorn", "anyio", "h11")


def import_web_stack():
    """-> (uvicorn, make_app); without the [serve] extra -> CharrnnError naming it."""
    try:
        import uvicorn

        from charrnn.serve.app import make_app
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in WEB_MODULES:
            raise
        raise CharrnnError(f"{SERVE_EXTRA} ({err.name} is missing)") from None
    return uvicorn, make_app


def is_loopback(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host, port) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); a port in use -> OSError, one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default=LOOPBACK, show_default=True,
              help="Address to listen on; anything but loopback lets other machines in (a warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port, printed).")
@click.pass_context
def serve(ctx, runs, host, port):
    """Serve trained RUNS (run directories or .npz checkpoints) on a local page and JSON API:
    next-token probabilities as you type, streamed generation, activations of every unit.

    The runs are read once, at start; the server reads no other file and writes none. Ctrl-C stops it.
    """
    uvicorn, make_app = import_web_stack()
    served = load_runs(runs)
    if not is_loopback(host):
        warn(f"listening on {host}: other machines can reach the server and its runs (no password, no TLS)")
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    address = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(make_app(served, Limits()), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off")
    server = uvicorn.Server(config)
    say(f"serving {', '.join(shown(run.name) for run in served)} at http://{address}:{bound}/ (Ctrl-C stops)")
    try:
        with ctx.obj["applied"].one_row():  # one row at a time: the numbers of `charrnn sample`
            server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down, then passed the Ctrl-C on
        pass
    finally:
        sock.close()
    say("stopped")


@click.command()
@checkpoint_argument
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The text to read (UTF-8).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the activation view (the serve page's, with the data inside) as one HTML file.")
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the tokens and every state per layer as .npz (tokens, ids, layer<L>_<h|c>: (T, H)).")
@click.option("--max-chars", type=click.IntRange(min=1), default=Limits.max_activation_chars, show_default=True,
              help="Refuse a longer text (the page holds every state of every character).")
def activations(checkpoint, text_file, out, npz, max_chars):
    """The hidden states of CHECKPOINT (a run directory or .npz) after every token of a text,
    as a self-contained page (--out: text coloured by a unit, units ranked by correlation with
    features of the text) and/or raw arrays (--npz, as LSTMVis reads states)."""
    if out is None and npz is None:
        raise click.UsageError("give --out PAGE.html, --npz STATES.npz or both")
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CharrnnError(f"{text_file} is not UTF-8 text") from None
    if len(text) > max_chars:
        raise CharrnnError(f"{text_file} has {len(text):,} characters, over --max-chars {max_chars:,}")
    (run,) = load_runs([checkpoint])
    try:
        data, reading = activation_payload(run, text, "base64", max_values=math.inf)
    except RequestError as err:  # a text without a token of the run's
        raise CharrnnError(err.message) from None
    if out is not None:
        html = render_page(data).encode("utf-8")
        write_atomic(out, lambda f: f.write(html))
        say(f"{shown(out)}: {len(data['tokens']):,} tokens, {data['layers']} layer(s) of {data['units']} units")
    if npz is not None:
        arrays = {"tokens": np.array(data["tokens"]), "ids": reading.ids}
        for l in range(run.model.num_layers):
            for s, name in enumerate(data["state_names"]):
                arrays[f"layer{l}_{name}"] = reading.states[:, l, s]
        save_npz(npz, arrays, {"run": str(run.path), "cell": run.model.cell, "level": run.config.level,
                               "text": reading.preprocessed})
        say(f"{shown(npz)}: the tokens and {len(arrays) - 2} state array(s) of shape {reading.states[:, 0, 0].shape}")
