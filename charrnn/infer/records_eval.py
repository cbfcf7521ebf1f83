"""Evaluation of a records model: the loss of whole records, each from a zero state, packed as
in training (charrnn.data.records) and padded at the end, forward only; `evaluate` reports it
per record and per character (charrnn.infer.evaluate.evaluate_text calls evaluate_records)."""
import numpy as np

from charrnn.data.records import END, START, RecordSet, open_records, packed_batches, split_records
from charrnn.data.store import open_store
from charrnn.infer.decoding import log_softmax
from charrnn.infer.evaluate import Evaluation, EvaluationStopped, perplexity
from charrnn.nn.workspace import Workspace


def records_loss(model, records: RecordSet, batch_size=32, num_steps=64, should_stop=None) -> tuple:
    """Σ of -log p over every target of the records, forward only, packed as in training and
    padded at the end -> (nats, targets, num_records); targets = Σ (n_k + 1), the ends included.
    should_stop(): asked before each packed batch; true -> charrnn.infer.evaluate.EvaluationStopped
    (as mean_loss: a signal is honoured within a validation pass)."""
    batch_size = max(1, min(batch_size, records.num_records))
    ws, state, total, count = Workspace(model, batch_size, num_steps), None, 0.0, 0
    for X, Y, resets, mask in packed_batches(records, batch_size, num_steps, pad=True):
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        model.forward_segment(X.T, state, ws, None, resets.T)
        log_p = log_softmax(model.logits(ws.top.reshape(X.size, -1)))
        picked = log_p[np.arange(X.size), Y.T.reshape(-1)]
        total -= float(picked[mask.T.reshape(-1)].sum())
        count += int(mask.sum())
        state = ws.last_state()
    return total, count, records.num_records


def evaluate_records(model, vocab, config, corpus=None, data_dir=None, cache_dir=None):
    """evaluate.evaluate_text for a records model -> Evaluation with `records`: the held-out
    records of its training text (corpus None), or every record of `corpus`, each from a zero
    state; loss in nats per target (a record's characters and its </s>)."""
    name = config.corpus if corpus is None else corpus
    limits = (config.min_freq, config.max_vocab) if corpus is None else (0, None)
    store = open_store(name, config.level, config.preprocess, *limits, data_dir=data_dir, cache_dir=cache_dir,
                       warn_dropped=corpus is not None)
    records = open_records(store, config.records, config.num_steps, vocab, name=str(name))
    if corpus is None:
        records = split_records(records, config.val_fraction)[1]
        source = f"{name} (held-out records, last {config.val_fraction:g})"
    else:
        source = str(name)
    first, stop = int(records.starts[0]), int(records.ends[-1])
    id_map = np.array(vocab[store.vocab.idx_to_token], dtype=np.int32)  # store id -> model id
    mapped = id_map[np.asarray(store.ids[first:stop])]
    unknown = sorted(t for t in store.vocab.idx_to_token[1:] if t not in vocab.token_to_idx)
    unknown_count = int(np.count_nonzero(mapped == vocab.unk))
    shifted = RecordSet(mapped, records.starts - first, records.ends - first, records.lines,
                        vocab.token_to_idx[START], vocab.token_to_idx[END])
    nats, count, num_records = records_loss(model, shifted)
    return Evaluation(source, count, nats / count, perplexity(nats / count), unknown, unknown_count, num_records)
