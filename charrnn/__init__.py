"""charrnn: character-level RNN language models trained by exact BPTT, in NumPy."""

__version__ = "0.1.0"
