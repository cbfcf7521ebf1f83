"""What a run is at one moment: the `TrainingState` that `Run` trains, `save_checkpoint` writes
and `load_checkpoint` returns, and its `Progress`.

Resume is exact because everything a minibatch depends on is here or in the TrainConfig: the
parameters and the optimizer's slots, where the run stands (Progress), the two Generators that
draw along the way (ξ of randomized truncation, the dropout masks), the hidden state carried by
the sequential sampler, and the id of the training text. The minibatch order needs no state: the
sampler of epoch e draws from default_rng([data seed, SAMPLER_STREAM, e]).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from charrnn.base.checks import is_finite, is_integer
from charrnn.base.errors import CharrnnError
from charrnn.nn.model import RNNLM

# the second word of the seeds of a run's Generators: default_rng([seed, STREAM, ...]); the
# sample of each evaluation draws from its own default_rng([seed, SAMPLE_STREAM, step]), so
# showing samples changes no number of training
SAMPLER_STREAM, TRUNCATION_STREAM, DROPOUT_STREAM, SAMPLE_STREAM = 0, 1, 2, 3


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (JSON).

    Epochs are counted as users read them, from 1: `epoch` is the number of epochs completed,
    so the run is in epoch `epoch + 1` (see `current_epoch`).
    """

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # minibatches of the current epoch done
    step: int = 0  # minibatches done in all
    tokens: int = 0  # tokens trained on (batch_size * num_steps per minibatch)
    elapsed: float = 0.0  # seconds of training, all sessions together
    skipped: int = 0  # minibatches skipped for a non-finite loss or gradient
    skipped_in_a_row: int = 0  # the latest of them that came one after another
    interval_loss: float = 0.0  # sum of minibatch losses since the last scheduled evaluation
    interval_steps: int = 0
    last_eval_step: int = -1
    best_val_ppl: float | None = None
    best_step: int | None = None

    def current_epoch(self) -> int:
        """The epoch (from 1) of the latest minibatch: the one in progress, or the one just
        completed at an epoch's end; 0 before the first minibatch."""
        return self.epoch + (self.step_in_epoch > 0)

    @classmethod
    def from_dict(cls, d):
        """The inverse of `asdict`, for untrusted metadata: missing, unknown or impossible values
        -> CharrnnError."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise CharrnnError(f"not a training progress record: {d!r:.200}")
        p = cls(**d)
        counts = (p.epoch, p.step_in_epoch, p.step, p.tokens, p.skipped, p.skipped_in_a_row,
                  p.interval_steps, p.best_step or 0)
        possible = (all(is_integer(n) and n >= 0 for n in counts)
                    and is_integer(p.last_eval_step) and p.last_eval_step >= -1
                    and is_finite(p.elapsed) and is_finite(p.interval_loss)
                    and (p.best_val_ppl is None or is_finite(p.best_val_ppl))
                    and p.skipped_in_a_row <= p.skipped
                    and max(p.step_in_epoch, p.skipped, p.interval_steps, p.last_eval_step, p.best_step or 0) <= p.step)
        if not possible:
            raise CharrnnError(f"impossible training progress {d!r:.300}")
        return p


@dataclass
class TrainingState:
    """Everything of a run that training changes.

    model: the RNNLM, its params updated in place; optimizer: on model.params (charrnn.nn.optim);
    progress: where the run stands; truncation_rng, dropout_rng: the Generators drawing ξ
    (randomized truncation) and the dropout masks; carried: the last state of the previous
    minibatch (model.state_shape(batch_size)), carried by the sequential sampler, or None;
    data_id: the SHA-1 that names the training text (charrnn.data.store's split_sha1), checked
    on resume.
    """

    model: RNNLM
    optimizer: object
    progress: Progress
    truncation_rng: np.random.Generator
    dropout_rng: np.random.Generator
    carried: np.ndarray | None
    data_id: str

    @classmethod
    def start(cls, *, model, optimizer, seed, data_id):
        """A run's state before its first minibatch: Generators seeded from `seed`, nothing carried."""
        return cls(model=model, optimizer=optimizer, progress=Progress(),
                   truncation_rng=np.random.default_rng([seed, TRUNCATION_STREAM]),
                   dropout_rng=np.random.default_rng([seed, DROPOUT_STREAM]), carried=None, data_id=data_id)
