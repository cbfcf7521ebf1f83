"""Starting and resuming a training run: everything checked before a file is written, the
data read from the token store, the directory locked; then charrnn.training.loop's loop (`Run`) trains.

`train(config, out_dir)` starts a run of a TrainConfig (charrnn.training.config), `resume(out_dir)`
continues one from its latest checkpoint, exactly. The output directory's checks are in
charrnn.training.outdir, the checkpoint format in charrnn.training.checkpoint.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.base.io import remove_stale_temporaries, save_json
from charrnn.data.baselines import ngram_baselines
from charrnn.data.records import (
    open_records,
    packed_batches,
    record_vocab,
    records_log_unigram,
    split_records,
    stream_ids,
)
from charrnn.data.samplers import SAMPLERS, split_corpus
from charrnn.data.store import open_store
from charrnn.infer.sample import text_prefix
from charrnn.nn.cells import init_output_bias
from charrnn.nn.model import RNNLM
from charrnn.nn.optim import make_optimizer
from charrnn.runtime.lock import RunLock
from charrnn.runtime.threads import DEFAULT_THREADS, Threads
from charrnn.training.autosize import SIZE_RECORD
from charrnn.training.checkpoint import check_vocab_fits, legacy_tokens_sha1, load_checkpoint, model_spec
from charrnn.training.config import DEFAULT_SAMPLE_PREFIXES, ConfigError
from charrnn.training.events import Reporter
from charrnn.training.finetune import PARENT, extend_vocab, grown_model, load_parent, parent_record
from charrnn.training.loop import Run
from charrnn.training.memory import check_training_memory, checkpoint_bytes
from charrnn.training.outdir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    VOCAB,
    check_free_space,
    check_metrics_file,
    check_writable,
    has_evaluation,
    keep_metrics_until,
    prepare_out_dir,
    refuse_existing_run,
)
from charrnn.training.state import TrainingState


def train(config, out_dir, data_dir=None, reporter=None, cache_dir=None, threads=DEFAULT_THREADS, pause_at=None,
          speed=None, spent=0.0, size_record=None, run_class=Run):
    """Start a new run of `config` writing to `out_dir` -> TrainResult. cache_dir: where the
    corpus' token store is (charrnn.data.store.default_cache_dir() if None). threads: NumPy's BLAS
    threads while it trains, "auto" (the cores that are free, looked at again as it goes), N,
    None (as they are) or a charrnn.runtime.threads.Threads; no thread count changes a number of a
    minibatch of two or more rows (charrnn.runtime.threads).

    config.init_from (fine-tuning): the run starts from that checkpoint's weights, grown for
    the tokens its vocabulary lacks (charrnn.training.finetune), with a fresh optimizer. Everything is
    checked before a file is written (memory before the directory is created); the run holds
    the directory's lock (charrnn.runtime.lock) from then to its end.

    pause_at: tokens after which the run evaluates, checkpoints and stops with reason "paused"
    (its budget, and so its learning-rate schedule, unchanged: a rung of charrnn.experiments.tune);
    speed: tokens/s measured before (charrnn.training.autosize's probe), for what a --max-time
    budget allows; spent: seconds of the budget already used (that probe); size_record: what
    --size auto chose and why, saved as the run's size.json.
    run_class: what trains, Run or (rank 0 of several processes) charrnn.training.parallel's
    ParallelRun.
    """
    threads = as_threads(threads)
    refuse_existing_run(out_dir)
    parent = load_parent(config) if config.init_from else None
    train_data, val_data, vocab, data_id = load_data(config, data_dir, parent and parent.vocab, cache_dir)
    check_vocab_fits(vocab)
    if config.sample_prefix is None:  # the run records the prefix it uses; a record's sample starts at <s>
        config = replace(config, sample_prefix="" if config.records else DEFAULT_SAMPLE_PREFIXES.get(config.corpus)
                         or text_prefix(vocab, train_data, config.level))
    network = {name: getattr(config, name) for name in ("num_hiddens", "activation", "dtype", "cell",
                                                         "num_layers", "dropout")}
    spec = {**(model_spec(parent.model) if parent else network), "vocab_size": len(vocab)}
    check_training_memory(spec, config, len(val_data))
    out_dir = prepare_out_dir(out_dir)
    check_free_space(out_dir, checkpoint_bytes(spec, config.optimizer))
    with RunLock(out_dir):
        refuse_existing_run(out_dir)  # again: another process may have started one meanwhile
        remove_stale_temporaries(out_dir)
        baselines = ngram_baselines(stream_ids(train_data), stream_ids(val_data), len(vocab))
        model = grown_model(parent.model, len(vocab), config.seed) if parent else RNNLM(**spec, seed=config.seed)
        if not parent and config.output_bias == "unigram":
            init_output_bias(model.params, records_log_unigram(train_data, vocab, config.records)
                             if config.records else baselines.log_unigram)
        optimizer = make_optimizer(config.optimizer, model.params, config.lr)
        vocab.save(out_dir / VOCAB)
        save_json(out_dir / CONFIG, asdict(config))
        if parent:
            save_json(out_dir / PARENT, parent_record(parent, vocab))
        if size_record is not None:
            save_json(out_dir / SIZE_RECORD, size_record)
        training = TrainingState.start(model=model, optimizer=optimizer, seed=config.seed, data_id=data_id)
        training.progress.elapsed = spent
        run = run_class(training, config=config, vocab=vocab, train_data=train_data, val_data=val_data,
                  out_dir=out_dir, reporter=reporter or Reporter(), baselines=baselines)
        run.pause_at, run.known_speed = pause_at, speed
        run.added_tokens = vocab.idx_to_token[len(parent.vocab):] if parent else None
        run.save(CHECKPOINT)
        return run.start(resumed=False, threads=threads)


def resume(out_dir, changes=None, data_dir=None, reporter=None, cache_dir=None, threads=DEFAULT_THREADS,
           pause_at=None, run_class=Run):
    """Continue the run in `out_dir` from its latest checkpoint -> TrainResult.

    changes: config fields given again (budget, on_nonfinite, eval_every, sample settings);
    a field that fixes the maths may only be given with its saved value, except `corpus`: the
    text's new path when it moved, accepted if its tokens hash as the run's did.
    A run at its budget whose last evaluation is not in metrics.jsonl (a signal stopped it, or
    the file was damaged) resumes to evaluate it, and ends. Everything is checked before
    anything is written, under the directory's lock. threads: as
    for train (a run may resume with another thread count and continue to the same numbers);
    pause_at: as for train.
    """
    out_dir, changes, threads = Path(out_dir), dict(changes or {}), as_threads(threads)
    moved = changes.pop("corpus", None)
    if not (out_dir / CHECKPOINT).is_file():  # before the lock file is made
        raise CharrnnError(f"no checkpoint file at {out_dir / CHECKPOINT}")
    with RunLock(out_dir):
        ckpt = load_checkpoint(out_dir / CHECKPOINT)
        config = ckpt.config.resumed(changes)
        if moved is not None:
            config = replace(config, corpus=moved)
        train_data, val_data, vocab, data_id = load_resumed_data(out_dir, config, data_dir, moved,
                                                                 ckpt.vocab if config.init_from else None, cache_dir)
        saved_id = ckpt.training.data_id  # a run from before token stores saved legacy_tokens_sha1's
        if vocab.idx_to_token != ckpt.vocab.idx_to_token or (
                saved_id != data_id and (config.records or saved_id != legacy_tokens_sha1(train_data))):
            raise CharrnnError(f"corpus {config.corpus!r} is not the text the run in {out_dir} was trained on")
        training = replace(ckpt.training, data_id=data_id)
        run = run_class(training, config=config, vocab=vocab, train_data=train_data, val_data=val_data,
                  out_dir=out_dir, reporter=reporter or Reporter(),
                  baselines=ngram_baselines(stream_ids(train_data), stream_ids(val_data), len(vocab)))
        run.pause_at = pause_at
        reached = run.budget_reached()
        last_evaluated = has_evaluation(out_dir / METRICS, ckpt.progress.tokens)
        if reached and last_evaluated:
            raise CharrnnError(f"the run in {out_dir} already reached its budget ({reached}={getattr(config, reached)}); "
                               f"give a larger --epochs, --max-tokens or --max-time to go on")
        spec = model_spec(ckpt.model)
        check_training_memory(spec, config, len(val_data), held=checkpoint_bytes(spec, config.optimizer))
        check_writable(out_dir)
        check_metrics_file(out_dir)
        check_free_space(out_dir, checkpoint_bytes(spec, config.optimizer))
        remove_stale_temporaries(out_dir)
        save_json(out_dir / CONFIG, asdict(config))
        keep_metrics_until(out_dir / METRICS, ckpt.progress.step)
        return run.start(resumed=True, threads=threads, evaluate_end=not last_evaluated)


def as_threads(threads):
    """A charrnn.runtime.threads.Threads for the `threads` argument of train and resume."""
    return threads if isinstance(threads, Threads) else Threads(threads)


def load_resumed_data(out_dir, config, data_dir, moved, base_vocab, cache_dir):
    """load_data for a resumed run; a text no longer where the run found it -> how to give its new place."""
    try:
        return load_data(config, data_dir, base_vocab, cache_dir)
    except CharrnnError as err:
        gone = moved is None and Path(config.corpus).is_absolute() and not Path(config.corpus).exists()
        if gone and not isinstance(err, ConfigError):
            raise CharrnnError(f"{err}; if the text moved, give its new path: "
                               f"charrnn train --resume {out_dir} NEW_PATH") from None
        raise


def load_data(config, data_dir, base_vocab=None, cache_dir=None):
    """-> train, val: (n,) token ids, views of the read-only memory map of the corpus' token
    store (charrnn.data.store); the vocabulary; and the SHA-1 that identifies the training data in
    checkpoints (TokenStore.split_sha1: no pass over the ids). Checks one minibatch fits.

    base_vocab (fine-tuning): the vocabulary is base_vocab's tokens, in its order, then the
    text's tokens it lacks (the ids renumbered in memory, in the narrowest type that holds them).
    """
    store = open_store(config.corpus, config.level, config.preprocess, config.min_freq, config.max_vocab,
                       data_dir=data_dir, cache_dir=cache_dir)
    corpus, vocab = store.ids, store.vocab
    if base_vocab is not None:
        corpus, vocab = extend_vocab(base_vocab, corpus, vocab)
    if config.records:
        return load_records(config, store, corpus, vocab)
    train_data, val_data = split_corpus(corpus, config.val_fraction)
    try:
        next(SAMPLERS[config.sampler](train_data, config.batch_size, config.num_steps,
                                      np.random.default_rng(0)))
    except (CharrnnError, StopIteration):
        raise ConfigError("num_steps", f"the training split ({len(train_data)} tokens) is too short for one "
                          f"minibatch of batch_size {config.batch_size} x num_steps {config.num_steps}") from None
    if len(val_data) < 2:
        raise ConfigError("val_fraction", f"val_fraction {config.val_fraction} leaves {len(val_data)} "
                          f"validation tokens; at least 2 are needed")
    return train_data, val_data, vocab, store.split_sha1(len(train_data))


def load_records(config, store, corpus, vocab):
    """load_data for a text of records (charrnn.data.records): train, val as RecordSets, the last
    val_fraction of the records held out whole; the vocabulary with <s> and </s>."""
    vocab = record_vocab(vocab)
    records = open_records(store, config.records, config.num_steps, vocab, corpus, name=config.corpus)
    train_data, val_data = split_records(records, config.val_fraction)
    if next(packed_batches(train_data, config.batch_size, config.num_steps), None) is None:
        raise ConfigError("num_steps", f"the {train_data.num_records:,} training records ({len(train_data):,} "
                          f"tokens with their ends) are too few for one minibatch of batch_size "
                          f"{config.batch_size} x num_steps {config.num_steps}")
    if val_data.num_records < 1:
        raise ConfigError("val_fraction", f"val_fraction {config.val_fraction} holds out no record of "
                          f"{records.num_records:,}; give a larger one")
    named = f"{store.split_sha1(int(train_data.ends[-1]))} records {config.records} {train_data.num_records}"
    return train_data, val_data, vocab, hashlib.sha1(named.encode()).hexdigest()

