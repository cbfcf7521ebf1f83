"""A trained run held in memory and what the server computes with it, in NumPy, with no web code.

Every number comes from the model's own forward pass: the text is read as `charrnn sample`
reads a prefix (charrnn.sample.encode_prefix: the run's level and preprocessing) and fed one
token at a time through RNNLM.step, so the next-token probabilities are those of `charrnn sample
--show-probs` and the states those of the forward pass; generation draws as
charrnn.sample.generate does (stepper, next_token, the same Generator), so the streamed text of
a seed is `charrnn sample --seed` of it.

A model's workspaces are not safe for two threads at once: every computation holds the run's
lock (`ServedRun.lock`), and generation takes it for one chunk of tokens at a time.
"""
import base64
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.training.checkpoint import load_checkpoint
from charrnn.base.errors import CharrnnError
from charrnn.infer.sample import encode_prefix, next_token, stepper, unknown_summary
from charrnn.serve.features import rank_units
from charrnn.serve.limits import RequestError

STATE_NAMES = ("h", "c")  # a layer's states: h, and the LSTM's cell state c
CACHE_ENTRIES = 256  # states after recently read texts (the next keystroke's text starts with one)
CACHE_ID_BYTES = 16 << 20  # at most this many bytes of cached token ids
LOOK_BACK = 16  # tokens the cache looks back for a text it has read (a keystroke adds one)


class Reading:
    """A text read token by token: ids, the preprocessed text, notes (what reading changed),
    per position the logits after it (only where asked) and the state after the last token."""

    def __init__(self, ids, preprocessed, notes):
        self.ids, self.preprocessed, self.notes = ids, preprocessed, notes
        self.logits = self.states = self.state = None


@dataclass
class ServedRun:
    """A run loaded once: `name` (what a request's `run` field says), its checkpoint's model,
    vocabulary and config, and the lock its computations hold."""

    name: str
    path: Path
    checkpoint: object
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    cache: "StateCache" = field(default_factory=lambda: StateCache(), repr=False)

    @property
    def model(self):
        return self.checkpoint.model

    @property
    def vocab(self):
        return self.checkpoint.vocab

    @property
    def config(self):
        return self.checkpoint.config

    def describe(self) -> dict:
        """What /api/info tells about the run."""
        m, cfg = self.model, self.config
        return {"name": self.name, "cell": m.cell, "num_layers": m.num_layers, "num_hiddens": m.num_hiddens,
                "states": list(STATE_NAMES[:m.num_states]), "vocab_size": m.vocab_size, "dtype": m.dtype.name,
                "level": cfg.level, "preprocess": cfg.preprocess, "corpus": cfg.corpus,
                "sample_prefix": cfg.sample_prefix}

    # ------------------------------------------------------------------ reading a text

    def encode(self, text) -> Reading:
        """The text as the run's training text was read -> Reading (ids, preprocessed, notes);
        a text without tokens -> CharrnnError."""
        cfg = self.config
        ids, preprocessed, unknown, unknown_count = encode_prefix(self.vocab, text, cfg.level, cfg.preprocess)
        notes = []
        if preprocessed != text:
            notes.append(f"{cfg.preprocess!r} preprocessing changed the text")
        if unknown:
            notes.append(f"{unknown_summary(unknown, unknown_count)} of the text are not in the vocabulary "
                         f"and were read as <unk>")
        return Reading(ids, preprocessed, notes)

    def read(self, text, keep=False) -> Reading:
        """Feed the text through RNNLM.step. keep: also every position's logits (T, V) and
        states (T, L, S, H), the state after that token; else only the last logits (from the
        cache of recently read texts where it can)."""
        reading = self.encode(text)
        model, ids = self.model, reading.ids
        with self.lock:
            start, state, logits = (0, None, None) if keep else self.cache.longest(ids)
            if keep:
                reading.logits = np.empty((len(ids), model.vocab_size), model.dtype)
                reading.states = np.empty((len(ids), model.num_layers, model.num_states, model.num_hiddens),
                                          model.dtype)
            for t in range(start, len(ids)):
                logits, state = model.step(ids[t:t + 1], state)
                if keep:
                    reading.logits[t] = logits[0]
                    reading.states[t] = state.reshape(reading.states.shape[1:])
            logits = logits.copy()
            if not keep:
                self.cache.put(ids, state, logits)
        reading.state, reading.last_logits = state, logits[0]
        return reading

    def probs(self, text, top) -> dict:
        """The `top` most likely next tokens after the text, as `charrnn sample --show-probs`."""
        reading = self.read(text)
        p = softmax(reading.last_logits)
        order = np.argsort(-p, kind="stable")[:top]
        return {"run": self.name, "text": reading.preprocessed, "tokens": len(reading.ids), "notes": reading.notes,
                "top": [[self.vocab.to_tokens(int(i)), float(p[i])] for i in order]}

    def score(self, text) -> dict:
        """The log-probability (nats) of every token of the text after the first, given the ones before."""
        reading = self.read(text, keep=True)
        if len(reading.ids) < 2:
            raise CharrnnError("scoring needs a text of two tokens or more (the first one is given, not predicted)")
        logp = log_softmax(reading.logits[:-1])[np.arange(len(reading.ids) - 1), reading.ids[1:]]
        total = float(logp.sum())
        count = len(logp)
        mean = total / count
        return {"run": self.name, "text": reading.preprocessed, "notes": reading.notes, "predicted": count,
                "log_prob": total, "mean_log_prob": mean, "perplexity": math.exp(-mean) if -mean < 709 else None,
                "token_log_probs": [float(x) for x in logp]}

    def activations(self, text, guesses=5) -> tuple:
        """-> (Reading with states and logits, tokens as strings, top `guesses` next tokens with
        their probabilities per position)."""
        reading = self.read(text, keep=True)
        p = softmax(reading.logits)
        order = np.argsort(-p, axis=1, kind="stable")[:, :guesses]
        to_token = self.vocab.to_tokens
        top = [[[to_token(int(i)), round(float(row[i]), 6)] for i in best] for row, best in zip(p, order)]
        return reading, to_token([int(i) for i in reading.ids]), top

    # ------------------------------------------------------------------ generation

    def generation(self, prefix, length, seed, temperature=1.0, top_k=None, greedy=False):
        """-> (Reading of the prefix, a generator of text chunks): `length` tokens drawn as
        charrnn.sample.generate draws them (never <unk>), each chunk made under the run's lock."""
        reading = self.read(prefix)
        return reading, self._chunks(reading, length, np.random.default_rng(seed), temperature, top_k, greedy)

    def _chunks(self, reading, length, rng, temperature, top_k, greedy, chunk=16):
        vocab, level, model = self.vocab, self.config.level, self.model
        logits, state = reading.last_logits[None, :], reading.state
        with self.lock:
            advance = stepper(model)
        done = 0
        while done < length:
            ids = []
            with self.lock:
                for _ in range(min(chunk, length - done)):
                    scores = logits[0].astype(np.float64)
                    scores[vocab.unk] = -np.inf
                    token = next_token(scores, rng, temperature, top_k, greedy)
                    ids.append(token)
                    logits, state = advance(token, state)
                    logits = logits.copy()
            done += len(ids)
            yield ("" if level == "char" else " ") + vocab.decode(ids, level)


class StateCache:
    """The state and logits after recently read token sequences, least recently used dropped
    first: a keystroke's text is the last one plus a token, so it is read in one step. The
    states are those the steps made, so a hit gives the same numbers as reading anew."""

    def __init__(self, entries=CACHE_ENTRIES, id_bytes=CACHE_ID_BYTES):
        self.entries, self.id_bytes, self.held = entries, id_bytes, 0
        self.table = OrderedDict()

    def longest(self, ids) -> tuple:
        """-> (tokens already read, state after them, logits) for the longest cached head of
        ids within LOOK_BACK tokens, or (0, None, None)."""
        for cut in range(len(ids), max(0, len(ids) - LOOK_BACK) - 1, -1):
            hit = self.table.get(ids[:cut].tobytes()) if cut else None
            if hit is not None:
                self.table.move_to_end(ids[:cut].tobytes())
                return (cut, *hit)
        return 0, None, None

    def put(self, ids, state, logits) -> None:
        key = ids.tobytes()
        if key in self.table or len(key) > self.id_bytes:
            return
        self.table[key] = (state, logits)
        self.held += len(key)
        while len(self.table) > self.entries or self.held > self.id_bytes:
            old, _ = self.table.popitem(last=False)
            self.held -= len(old)


def softmax(logits) -> np.ndarray:
    """softmax over the last axis in float64, as charrnn.sample.next_token_probs computes it."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def log_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def activation_payload(run, text, encoding, max_values) -> tuple:
    """-> (/api/activations' answer, the Reading): tokens, states (T, L, S, H) as base64 of
    little-endian floats of the model's dtype (encoding "base64") or nested lists ("list"), the
    top next-token guesses per token, the units ranked per feature (char level). A text whose
    states would pass `max_values` numbers -> RequestError 413, before any is computed."""
    model = run.model
    per_token = model.num_layers * model.num_states * model.num_hiddens
    if len(text) * per_token > max_values:
        raise RequestError(413, f"{len(text):,} characters x {per_token:,} states per character is over the "
                                f"limit of {max_values:,} values; send a shorter text")
    reading, tokens, top = run.activations(text)
    names = list(STATE_NAMES[:model.num_states])
    states = reading.states
    if encoding == "base64":
        data = base64.b64encode(states.astype(states.dtype.newbyteorder("<"), copy=False).tobytes()).decode()
    else:
        data = states.tolist()
    ranked = rank_units(tokens, states, names) if run.config.level == "char" else {}
    return {"run": run.name, "level": run.config.level, "text": reading.preprocessed, "notes": reading.notes,
            "tokens": tokens, "top": top, "layers": model.num_layers, "state_names": names,
            "units": model.num_hiddens, "shape": list(states.shape), "dtype": states.dtype.name,
            "encoding": encoding, "states": data, "features": ranked}, reading


def load_runs(paths) -> list:
    """Checkpoints or run directories -> [ServedRun], each named by its directory (or file
    stem), made unique with '-2', '-3' where two share a name; read once, here and only here."""
    runs, names = [], set()
    for path in paths:
        checkpoint = load_checkpoint(path)
        path = Path(path)
        base = path.name if path.is_dir() else path.stem
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        runs.append(ServedRun(name, path, checkpoint))
    return runs
