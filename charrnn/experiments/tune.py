"""`charrnn tune`: a budgeted search for the network and training settings of a text (issue 22).

Optuna (the optional extra `tune`) does the searching and the pruning; charrnn runs the trials.

- The study is a real SQLite database, out_dir/study.db (Optuna's RDBStorage): the trials, their
  settings, the value each reported at each rung and why it was pruned. Running the same
  command again resumes it; a second tune on the same directory is refused (charrnn.runtime.lock), and
  SQLite's own locking keeps the file whole.
- A trial is an ordinary run directory, out_dir/trials/trial-NNNN (charrnn.experiments.runs): resumable,
  readable by `compare`, `plot` and `evaluate`. Its budget is `trial_tokens` training tokens
  (T), its learning rate decays over T (the cosine schedule), and it is evaluated every T/9 tokens.
- Successive halving with Optuna's SuccessiveHalvingPruner (ASHA's rule, reduction factor
  REDUCTION = 3): rungs at T/9, T/3 and T tokens. Rungs are measured in tokens, so no decision
  depends on the machine's speed. The trials run in brackets of `bracket` trials: the sampler
  (TPE, seeded by the tune's seed and the bracket's number) proposes a bracket, every live trial
  of it trains to the next rung (a sweep of run directories: in this process, J local worker
  processes, or on a Dask cluster, charrnn.experiments.sweep / .cluster), each paused there with a
  checkpoint (charrnn.experiments.runs.RunSpec.until), reports its validation loss (nats) at the rung, and
  only then does the pruner decide, trial by trial in the order of their numbers. So the
  decisions are those ASHA would make had the trials reached each rung one after another, the
  same however many run at once: the same seed finds the same winner.
- Trials that do not learn are pruned and reported, never crash the study: a non-finite loss
  (the run fails: "diverged"), a validation perplexity at or above the text's unigram model at
  the first rung or above its bigram model at a later one (charrnn.data.baselines: "not learning").
- The result: the best completed trial (lowest validation loss at T), as a `charrnn train`
  command (`train_command`); `--train-best` runs it.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from charrnn.base.errors import CharrnnError
from charrnn.experiments.runs import RunSpec, read_curve
from charrnn.training.config import TrainConfig
from charrnn.training.outdir import METRICS

STUDY_FILE = "study.db"
STUDY_NAME = "charrnn-tune"
TRIALS_DIR = "trials"
REDUCTION = 3  # successive halving keeps about 1 trial in REDUCTION at each rung
NUM_RUNGS = 3  # at T / 9, T / 3, T tokens
EXTRA = "pip install 'charrnn[tune]'"
# what a trial chooses: categorical lists, or (low, high, "log" | step) ranges
SEARCH_SPACE = {
    "cell": ["rnn", "gru", "lstm"],
    "num_hiddens": [32, 64, 128, 256],
    "num_layers": [1, 2],
    "dropout": (0.0, 0.3, 0.1),
    "lr": (1e-3, 3e-2, "log"),
    "batch_size": [32, 64, 128],
    "num_steps": [32, 64],
}
TRIAL_FIELDS = tuple(SEARCH_SPACE)  # the TrainConfig fields a trial sets; the rest are the tune's base
MIN_BATCHES = 20  # a batch size is searched only if the training split holds this many minibatches


def space_for(train_tokens, max_hiddens=None) -> dict:
    """SEARCH_SPACE for a text of `train_tokens` training tokens: the batch sizes whose
    minibatches (at the longest num_steps) fit MIN_BATCHES times (at least the smallest), the
    hidden sizes up to max_hiddens (at least the smallest, or max_hiddens itself below it)."""
    space = dict(SEARCH_SPACE)
    longest = max(space["num_steps"])
    space["batch_size"] = [b for b in space["batch_size"] if b * longest * MIN_BATCHES <= train_tokens] \
        or space["batch_size"][:1]
    if max_hiddens is not None:
        space["num_hiddens"] = [h for h in space["num_hiddens"] if h <= max_hiddens] or [max_hiddens]
    return space


def import_optuna():
    """The optuna module, quiet; not installed -> CharrnnError naming the extra (one line)."""
    try:
        import optuna
    except ImportError:
        raise CharrnnError(f"charrnn tune needs Optuna, which is not installed: {EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TuneSettings:
    """A tune: the single source of its defaults. base: the TrainConfig every trial starts from
    (corpus, seed, text settings); trial_tokens: T (None: recorded in the study, or derived from
    the time budget by the CLI)."""

    base: TrainConfig
    out_dir: Path
    trials: int = 18
    bracket: int = 9
    trial_tokens: int | None = None
    space: dict = field(default_factory=lambda: dict(SEARCH_SPACE))
    data_dir: Path | None = None
    cache_dir: Path | None = None

    def rungs(self, trial_tokens):
        """The token counts of the rungs: T / 9, T / 3, T."""
        return [trial_tokens // REDUCTION ** (NUM_RUNGS - 1 - k) for k in range(NUM_RUNGS)]


def whole_rungs(tokens) -> int:
    """`tokens` rounded down to a multiple of REDUCTION ** 2 (rungs of whole tokens), at least that."""
    step = REDUCTION ** (NUM_RUNGS - 1)
    return max(tokens // step * step, step)


def open_study(settings, optuna, trial_tokens):
    """The study of out_dir/study.db (created, or loaded with its trials). Its trial budget is
    recorded in it: a resumed tune keeps it (another one asked for -> CharrnnError)."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(settings.out_dir / STUDY_FILE).resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    rung0 = settings.rungs(trial_tokens)[0]
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=rung0, reduction_factor=REDUCTION,
                                                    min_early_stopping_rate=0)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="minimize",
                                pruner=pruner, load_if_exists=True)
    saved = study.user_attrs.get("trial_tokens")
    if saved is None:
        study.set_user_attr("trial_tokens", trial_tokens)
        study.set_user_attr("corpus", settings.base.corpus)
        study.set_user_attr("seed", settings.base.seed)
    elif saved != trial_tokens:
        raise CharrnnError(f"the tune in {settings.out_dir} trains each trial for {saved:,} tokens, not "
                           f"{trial_tokens:,}; give --trial-tokens {saved} or another --out")
    elif study.user_attrs.get("corpus") != settings.base.corpus:
        raise CharrnnError(f"the tune in {settings.out_dir} is a tune of {study.user_attrs.get('corpus')}, "
                           f"not {settings.base.corpus}; choose another --out")
    return study


def suggest(trial, space) -> dict:
    """The settings of a new trial, drawn by the study's sampler from `space`."""
    chosen = {}
    for name, choices in space.items():
        if isinstance(choices, list):
            chosen[name] = trial.suggest_categorical(name, choices)
        elif choices[2] == "log":
            chosen[name] = trial.suggest_float(name, choices[0], choices[1], log=True)
        else:
            chosen[name] = round(trial.suggest_float(name, choices[0], choices[1], step=choices[2]), 10)
    return chosen


def trial_config(base, params, trial_tokens) -> TrainConfig:
    """The TrainConfig of a trial: the base, the trial's settings, T tokens, an evaluation per T/9."""
    return replace(base, **params, max_tokens=trial_tokens, epochs=None, max_time=None,
                   eval_every=trial_tokens // REDUCTION ** (NUM_RUNGS - 1))


def trial_name(number) -> str:
    return f"trial-{number:04d}"


def trial_spec(settings, number, params, trial_tokens, until) -> RunSpec:
    """The run of trial `number` brought to `until` tokens."""
    name = trial_name(number)
    return RunSpec(name, trial_config(settings.base, params, trial_tokens),
                   (settings.out_dir / TRIALS_DIR / name).absolute(), settings.data_dir, settings.cache_dir,
                   until=until)


def value_at(spec, until):
    """The validation loss (nats) of the run of `spec` at the evaluation that crossed `until`
    tokens -> float, or None when it was not finite."""
    for point in read_curve(spec.out_dir / METRICS):
        if point["tokens"] >= until:
            return None if point["val_ppl"] is None else math.log(point["val_ppl"])
    raise CharrnnError(f"{spec.out_dir} has no evaluation at {until:,} tokens")


def not_learning(loss, rung, baselines):
    """Why a trial at `rung` with validation loss `loss` (nats) is not learning, or None."""
    if loss is None or not math.isfinite(loss):
        return "diverged: non-finite validation loss"
    if rung == 0 and loss >= math.log(baselines.unigram):
        return f"not learning: validation perplexity {math.exp(loss):.3g} at or above the unigram's {baselines.unigram:.3g}"
    if rung > 0 and baselines.bigram is not None and loss > math.log(baselines.bigram):
        return f"not learning: validation perplexity {math.exp(loss):.3g} above the bigram's {baselines.bigram:.3g}"
    return None


class TuneInterrupted(CharrnnError):
    """A tune stopped (Ctrl-C, its time budget) with trials in progress; the same command resumes it."""


class TuneReporter:
    """Receives the events of a tune; the CLI renders them. This one ignores them."""

    def on_bracket(self, numbers, rung, until):
        """Trials `numbers` train to rung `rung` (`until` tokens)."""

    def on_decision(self, number, rung, loss, decision):
        """decision: "promoted", "completed", or why the trial was pruned."""


def run_tune(settings, backend, trial_tokens, baselines, reporter=None, sweep_reporter=None):
    """Run (or resume) the tune of `settings` -> the study. Trials left RUNNING by an
    interrupted tune are finished first; new brackets are asked for until `settings.trials`
    trials exist. TuneInterrupted when a sweep was interrupted."""
    from charrnn.experiments.sweep import SweepReporter

    optuna = import_optuna()
    reporter, sweep_reporter = reporter or TuneReporter(), sweep_reporter or SweepReporter()
    study = open_study(settings, optuna, trial_tokens)
    running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    if running:  # an interrupted bracket: its trials go on from their rung
        live = [optuna.trial.Trial(study, t._trial_id) for t in sorted(running, key=lambda t: t.number)]
        run_bracket(study, settings, live, backend, trial_tokens, baselines, reporter, sweep_reporter)
    while len(study.get_trials(deepcopy=False)) < settings.trials:
        number = len(study.get_trials(deepcopy=False))
        size = min(settings.bracket, settings.trials - number)
        study.sampler = optuna.samplers.TPESampler(seed=settings.base.seed * 1000 + number // settings.bracket)
        live = [study.ask() for _ in range(size)]
        for trial in live:
            suggest(trial, settings.space)
        run_bracket(study, settings, live, backend, trial_tokens, baselines, reporter, sweep_reporter)
    return study


def run_bracket(study, settings, live, backend, trial_tokens, baselines, reporter, sweep_reporter):
    """Bring the trials `live` (optuna Trials, RUNNING) through the rungs (module docstring)."""
    optuna = import_optuna()
    running = optuna.trial.TrialState.RUNNING
    rungs = settings.rungs(trial_tokens)
    for rung, until in enumerate(rungs):
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        alive = [t for t in live if frozen[t.number].state == running]
        todo = [t for t in alive if until not in frozen[t.number].intermediate_values]
        if todo:
            reporter.on_bracket([t.number for t in todo], rung, until)
            specs = [trial_spec(settings, t.number, frozen[t.number].params, trial_tokens, until) for t in todo]
            (settings.out_dir / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
            outcomes, interrupted = backend.run(specs, set(), sweep_reporter)
            for trial, outcome in zip(todo, outcomes):
                if outcome.status == "done":
                    loss = value_at(outcome.spec, until)
                    trial.report(math.nan if loss is None else loss, until)
                elif outcome.status == "failed":
                    prune(study, trial, rung, None, f"diverged: {outcome.message}"
                          if "non-finite" in outcome.message else f"failed: {outcome.message}", reporter)
            if interrupted:
                raise TuneInterrupted("the tune was interrupted")
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        for trial in sorted(alive, key=lambda t: t.number):
            record = frozen[trial.number]
            if record.state != running:
                continue
            loss = record.intermediate_values[until]
            loss = None if math.isnan(loss) else loss
            why = not_learning(loss, rung, baselines)
            if why:
                prune(study, trial, rung, loss, why, reporter)
            elif rung == len(rungs) - 1:
                study.tell(trial, loss)
                reporter.on_decision(trial.number, rung, loss, "completed")
            elif record.user_attrs.get("promoted", -1) >= rung:
                continue  # decided before the tune was interrupted
            elif trial.should_prune():
                prune(study, trial, rung, loss, f"pruned at {until:,} tokens by successive halving", reporter)
            else:
                trial.set_user_attr("promoted", rung)
                reporter.on_decision(trial.number, rung, loss, "promoted")


def prune(study, trial, rung, loss, why, reporter):
    """Record trial `trial` pruned, and why."""
    optuna = import_optuna()
    trial.set_user_attr("pruned", why)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    reporter.on_decision(trial.number, rung, loss, why)


def leaderboard(study) -> list:
    """The trials, best first: completed by value, then the others by the furthest rung reached
    and their loss there -> [dict(number, state, tokens, loss, params, note)]."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        tokens = steps[-1] if steps else 0
        loss = t.intermediate_values[tokens] if steps else None
        loss = None if loss is None or math.isnan(loss) else loss
        rows.append({"number": t.number, "state": t.state.name.lower(), "tokens": tokens, "loss": loss,
                     "params": dict(t.params), "note": t.user_attrs.get("pruned", "")})
    order = {"complete": 0, "running": 1, "pruned": 2, "fail": 3}
    return sorted(rows, key=lambda r: (order.get(r["state"], 4), -r["tokens"],
                                       math.inf if r["loss"] is None else r["loss"], r["number"]))


def best_trial(study):
    """The leaderboard's first completed trial, or None."""
    rows = [r for r in leaderboard(study) if r["state"] == "complete"]
    return rows[0] if rows else None


def train_command(corpus, params, budget, seed, out=None) -> str:
    """The `charrnn train` command of a trial's settings with `budget` ("--max-tokens N" or
    "--max-time S")."""
    words = ["charrnn", "train", corpus]
    for name in TRIAL_FIELDS:
        if name in params:
            value = params[name]
            words += [f"--{name.replace('_', '-')}", f"{value:.3g}" if isinstance(value, float) else str(value)]
    words += [*budget.split(), "--seed", str(seed)]
    if out is not None:
        words += ["--out", str(out)]
    return " ".join(shlex.quote(w) for w in words)


def open_existing(out_dir):
    """The study of a tune directory, for --show; no study there -> CharrnnError."""
    optuna = import_optuna()
    path = Path(out_dir) / STUDY_FILE
    if not path.is_file():
        raise CharrnnError(f"no tune in {out_dir}: {path} does not exist")
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{path.resolve()}")
