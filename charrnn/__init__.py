"""charrnn: character-level RNN language models trained by exact BPTT, in NumPy.

The Python API (docs/python-api.md): the names below are imported from their modules
when first used, so `import charrnn` stays fast and sets nothing (no BLAS threads, no warnings
filters, no files).

    data        read_text, preprocess_text, load_corpus, split_corpus, Vocab,
                seq_data_iter_random, seq_data_iter_sequential, SAMPLERS
    model       RNNLM
    training    SGD, Adagrad, Adam, make_optimizer, clip_grad_norm, TrainConfig, train, resume,
                TrainResult, Reporter, NotebookReporter, finetune_config
    files       load_checkpoint, Checkpoint, save_model, load_model
    using       sample_text, continue_text, next_token_probs, evaluate_text, mean_loss, perplexity
    generating  sample (n records or continuations in one batch: top-p, beam, stop, novelty), score
                (log-probabilities of texts), Generated, Score (docs/records.md)
    machine     blas_threads
    errors      CharrnnError, CharrnnWarning

`charrnn.train(config, out_dir)` starts a run (charrnn.training.start.train).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "data.corpus": ("read_text", "load_corpus", "Vocab"),
    "data.text": ("preprocess_text",),
    "data.samplers": ("split_corpus", "seq_data_iter_random", "seq_data_iter_sequential", "SAMPLERS"),
    "nn.model": ("RNNLM",),
    "nn.optim": ("SGD", "Adagrad", "Adam", "make_optimizer", "clip_grad_norm"),
    "training.config": ("TrainConfig",),
    "training.start": ("train", "resume"),
    "training.events": ("TrainResult", "Reporter"),
    "training.notebook": ("NotebookReporter",),
    "training.finetune": ("finetune_config",),
    "training.checkpoint": ("load_checkpoint", "Checkpoint", "save_model", "load_model"),
    "infer.sample": ("sample_text", "continue_text", "next_token_probs"),
    "infer.evaluate": ("evaluate_text", "mean_loss", "perplexity"),
    "infer.generation": ("sample", "score", "Generated", "Score"),
    "runtime.threads": ("blas_threads",),
    "base.errors": ("CharrnnError", "CharrnnWarning"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name):
    """Import an exported name from its module on first use (PEP 562)."""
    from importlib import import_module

    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
