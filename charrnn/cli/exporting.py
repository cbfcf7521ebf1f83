"""The command that writes a model for another framework: `export` (safetensors for PyTorch)."""
from pathlib import Path

import click

from charrnn.cli.options import checkpoint_argument
from charrnn.cli.render import say, shown
from charrnn.infer.export import TORCH_MODULES, export_model
from charrnn.training.checkpoint import load_checkpoint


@click.command()
@checkpoint_argument
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export(checkpoint, out, force):
    """Write a trained model's weights to OUT.safetensors under PyTorch's names.

    CHECKPOINT: a .npz file or a run directory (best.npz there). OUT loads into
    torch.nn.RNN/GRU/LSTM(batch_first=True) + torch.nn.Linear (the decoder.* tensors); its
    metadata holds the cell, sizes and vocabulary as JSON text (see charrnn.infer.export).
    """
    ckpt = load_checkpoint(checkpoint)
    path = export_model(ckpt.model, ckpt.vocab, out, level=ckpt.config.level, preprocess=ckpt.config.preprocess,
                        force=force)
    model = ckpt.model
    say(f"{shown(path)}: {model.cell}, {model.num_layers} layer(s) of {model.num_hiddens}, vocabulary of "
        f"{model.vocab_size} -> torch.nn.{TORCH_MODULES[model.cell]} + torch.nn.Linear")
