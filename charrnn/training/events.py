"""What a training run tells the outside: the events a Reporter receives while it trains
(charrnn.training.loop), and the TrainResult it ends with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charrnn.data.baselines import Baselines
from charrnn.data.vocab import Vocab
from charrnn.nn.model import RNNLM
from charrnn.training.config import TrainConfig
from charrnn.training.outdir import BEST
from charrnn.training.state import Progress


@dataclass
class TrainResult:
    """How a run ended. `reason`: epochs | max_tokens | max_time | SIGINT | SIGTERM | SIGHUP | nonfinite |
    paused (at the token count a sweep asked for, charrnn.runs)."""

    reason: str
    out_dir: Path
    progress: Progress
    train_ppl: float | None
    val_ppl: float | None
    tokens_per_s: float
    wall_time: float  # seconds of this session
    checkpoint: Path | None  # the last good checkpoint
    checkpoint_step: int | None
    message: str = ""  # what went wrong, for reason == "nonfinite"
    model: RNNLM | None = None  # the model as it ended (best.npz holds the best one)
    vocab: Vocab | None = None
    config: TrainConfig | None = None
    baselines: Baselines | None = None  # the unigram and bigram perplexities of the validation split
    val_tokens: int | None = None  # validation tokens the last evaluation read (a --max-time cap, charrnn.budget)
    val_total: int | None = None  # tokens of the validation split

    @property
    def best(self):
        path = self.out_dir / BEST
        return path if path.is_file() else None


class Reporter:
    """Receives the events of a run; the CLI renders them. This one ignores them."""

    def on_start(self, info):
        """info: dict with out_dir, resumed, tokens, total_tokens (estimate or None), sizes, threads
        (the BLAS thread setting, e.g. "auto (2 now)"), allowed (charrnn.budget.allowance, or None
        until a --max-time run has measured its speed: then on_budget)."""

    def on_budget(self, allowed):
        """What a --max-time budget allows (charrnn.budget.allowance), once the speed is known."""

    def on_step(self, stats):
        """stats: dict with epoch, step, tokens, loss, perplexity, grad_norm, skipped."""

    def on_validation(self, record):
        """record: the dict appended to metrics.jsonl."""

    def on_end(self, result):
        """result: the TrainResult."""
