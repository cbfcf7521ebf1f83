"""Training from Python, in a notebook or a script: a Reporter that shows the run as it goes.

    result = charrnn.train(config, "runs/nb", reporter=charrnn.NotebookReporter())

tqdm.auto draws a widget in Jupyter (with ipywidgets installed) and a text bar elsewhere; each
evaluation prints one line. The metrics records are kept in `records` for plotting.
"""
from tqdm.auto import tqdm

from charrnn.training.events import Reporter


class NotebookReporter(Reporter):
    """A tqdm.auto bar of tokens, a line per evaluation (with the sample if `samples`)."""

    def __init__(self, samples=True):
        self.samples = samples
        self.records = []  # the metrics.jsonl records of this session
        self.bar = None

    def on_start(self, info):
        self.bar = tqdm(total=info["total_tokens"], initial=info["tokens"], unit="tok", unit_scale=True,
                        desc="resuming" if info["resumed"] else "training")

    def on_step(self, stats):
        self.bar.update(stats["tokens"] - self.bar.n)
        self.bar.set_postfix(loss=f"{stats['loss']:.3f}", ppl=f"{stats['perplexity']:.2f}", refresh=False)

    def on_validation(self, record):
        self.records.append(record)
        val = "-" if record["val_ppl"] is None else f"{record['val_ppl']:.2f}"
        train = "-" if record["train_ppl"] is None else f"{record['train_ppl']:.2f}"
        line = f"{record['tokens']:,} tokens: train ppl {train}, val ppl {val}, lr {record['lr']:.2e}"
        if self.samples and record["sample"] is not None:
            line += f"\n  {record['sample']!r}"
        self.bar.write(line)

    def on_end(self, result):
        self.bar.close()
