"""Fine-tuning (char-rnn's -init_from): a new run that starts from a trained model's weights.

The new run keeps its parent's network (the fields the model file describes: num_hiddens,
activation, dtype, ...) and the way text becomes tokens (level, preprocess); everything else
(learning rate, schedule, budget, sampler, ...) is its own, and its optimizer starts fresh.

Vocabulary: the parent's tokens keep their ids, in the parent's order; tokens of the new text
that the parent lacks are appended after them, most frequent first. Their new rows (of W_xh,
and of W_hq, b_q on the output side: every parameter axis of vocabulary size) are initialised
as a fresh model seeded with the run's seed initialises them: weights ~ N(0, 0.01^2), biases 0.
Parent tokens that the new text lacks keep their rows.

The run directory records its parent: config.json's `init_from` (the parent checkpoint's
path) and parent.json (that checkpoint's config, progress and the tokens added).
"""
from dataclasses import asdict, fields

import numpy as np

from charrnn.training.checkpoint import check_model_meta, load_checkpoint, model_meta
from charrnn.training.config import ConfigError, TrainConfig
from charrnn.data.corpus import Vocab
from charrnn.base.errors import CharrnnError
from charrnn.nn.model import RNNLM

PARENT = "parent.json"  # in a fine-tuned run's directory
# a fine-tuned run's learning rate when none is given: its parent's, times this (fine-tuning
# starts from weights that already fit, and a full-size first step would undo part of that)
FINETUNE_LR_SCALE = 0.3
TEXT_FIELDS = ("level", "preprocess")  # how the parent read its text, kept with its vocabulary


def inherited_fields() -> tuple:
    """The TrainConfig fields a fine-tuned run takes from its parent: the network that the
    model file describes (num_hiddens, activation, dtype, ...) and the reading of text."""
    described = set(model_meta(RNNLM(1, 1)))
    return (*(f.name for f in fields(TrainConfig) if f.name in described), *TEXT_FIELDS)


def load_parent(config):
    """The checkpoint of config.init_from (a file, or a run directory: its best.npz), checked
    against `config`: a field that the run inherits must be the parent's (ConfigError)."""
    parent = load_checkpoint(config.init_from)
    for name in inherited_fields():
        if getattr(config, name) != getattr(parent.config, name):
            raise ConfigError(name, f"a run fine-tuned from {parent.path} keeps its {name} "
                                    f"({getattr(parent.config, name)!r}), not {getattr(config, name)!r}")
    return parent


def finetune_config(init_from, corpus, **changes) -> TrainConfig:
    """A TrainConfig for fine-tuning the checkpoint `init_from` on `corpus`: the parent's
    inherited fields (inherited_fields), the path of its checkpoint file, and `changes`. Without
    an lr in `changes`, the parent's learning rate x FINETUNE_LR_SCALE."""
    parent = load_checkpoint(init_from)
    inherited = {name: getattr(parent.config, name) for name in inherited_fields()}
    clash = {name for name in set(changes) & set(inherited) if changes[name] != inherited[name]}
    if clash:
        name = sorted(clash)[0]
        raise ConfigError(name, f"a run fine-tuned from {parent.path} keeps its {name} "
                                f"({inherited[name]!r}), not {changes[name]!r}")
    if changes.get("lr") is None:
        changes["lr"] = parent.config.lr * FINETUNE_LR_SCALE
    return TrainConfig(corpus=corpus, **{**changes, **inherited, "init_from": str(parent.path.resolve())})


def extend_vocab(base_vocab, corpus, vocab):
    """Re-number a corpus (ids in `vocab`, the new text's own vocabulary) for a vocabulary that
    keeps base_vocab's ids and appends the tokens base_vocab lacks -> (corpus, extended vocab)."""
    known = set(base_vocab.idx_to_token)
    added = [token for token in vocab.idx_to_token if token not in known]
    extended = Vocab.from_dict({"idx_to_token": [*base_vocab.idx_to_token, *added],
                                "token_freqs": [[t, c] for t, c in vocab.token_freqs]})
    remap = np.array([extended.token_to_idx[token] for token in vocab.idx_to_token],  # the narrowest ids:
                     dtype=np.min_scalar_type(len(extended) - 1))  # 1 byte a token for most texts
    return remap[corpus], extended


def grown_model(parent_model, vocab_size, seed):
    """A copy of `parent_model` for `vocab_size` >= its own tokens: along every axis of
    vocabulary size the parent's entries come first, the new entries are a fresh model's
    (seeded by `seed`)."""
    if vocab_size < parent_model.vocab_size:
        raise CharrnnError(f"cannot shrink a model of {parent_model.vocab_size} tokens to {vocab_size}")
    spec = check_model_meta("the parent model", model_meta(parent_model))
    model = type(parent_model)(**{**spec, "vocab_size": vocab_size}, seed=seed)
    for name, value in parent_model.params.items():
        model.params[name][tuple(slice(0, n) for n in value.shape)] = value
    return model


def parent_record(parent, vocab) -> dict:
    """What parent.json says: the parent checkpoint, its config and progress, the tokens added."""
    return {"checkpoint": str(parent.path.resolve()), "config": asdict(parent.config),
            "progress": asdict(parent.progress), "vocab_size": len(parent.vocab),
            "added_tokens": vocab.idx_to_token[len(parent.vocab):]}
