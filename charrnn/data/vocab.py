"""Tokens and the vocabulary: a preprocessed text cut into characters or words (`tokenize`),
counted (`count_tokens`), and `Vocab`, the mapping tokens <-> ids that turns a text into ids and
back and is saved beside a run (vocab.json) and inside its checkpoints.

Whole-text work is vectorised NumPy, done piece by piece so that memory stays bounded.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from charrnn.base.checks import check_choice, check_int
from charrnn.base.errors import CharrnnError
from charrnn.base.io import save_json

LEVELS = ("char", "word")
UNK = "<unk>"

_PIECE_CHARS = 1 << 22
_WHITESPACE = re.compile(r"\s")  # the characters str.split() splits on


# ----------------------------------------------------------------------------- tokens

def tokenize(text: str, level: str):
    """'char': the characters as a (len(text),) '<U1' array (a view, no copy).
    'word': `text.split()`, a list of the whitespace-separated words."""
    check_choice(level, LEVELS, "level")
    if level == "word":
        return text.split()
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<U1")


def count_tokens(text: str, level: str) -> Counter:
    """How often each token of `text` occurs at `level`."""
    counts = Counter()
    for piece in _pieces(text):
        _add_counts(counts, tokenize(piece, level))
    return counts


def _add_counts(counts: Counter, tokens) -> Counter:
    """Add the tokens of a '<U1' array (counted by code point with np.bincount) or of any
    token iterable to `counts`, and return it."""
    if isinstance(tokens, np.ndarray) and tokens.dtype == np.dtype("<U1"):
        char_counts = np.bincount(_code_points(tokens))
        present = np.flatnonzero(char_counts)
        tokens = dict(zip(map(chr, present.tolist()), char_counts[present].tolist()))
    counts.update(tokens)
    return counts


def _code_points(chars: np.ndarray) -> np.ndarray:
    """'<U1' array -> the same characters' code points as uint32 (a view)."""
    return np.ascontiguousarray(chars).view(np.uint32)


def _pieces(text: str):
    """Consecutive slices of `text` of about _PIECE_CHARS characters, each cut just after a
    whitespace character so that no word is cut in two."""
    start = 0
    while start < len(text):
        cut = _WHITESPACE.search(text, start + _PIECE_CHARS)
        end = cut.end() if cut else len(text)
        yield text[start:end]
        start = end


# ----------------------------------------------------------------------------- vocabulary

class Vocab:
    """Tokens <-> indices: <unk> is 0, then the reserved tokens, then the other tokens by
    descending frequency, ties in token order (Python string order)."""

    def __init__(self, tokens=(), min_freq=0, reserved_tokens=None, max_size=None):
        """tokens: a sequence of tokens (e.g. from `tokenize`) or a mapping token -> count.
        Tokens seen fewer than `min_freq` times, and all but the `max_size` most frequent
        (None: no limit; <unk> and the reserved tokens not counted), are left out and map
        to <unk>."""
        check_int(min_freq, "min_freq", minimum=0)
        if max_size is not None:
            check_int(max_size, "max_size", minimum=0)
        counts = tokens if isinstance(tokens, Mapping) else _add_counts(Counter(), tokens)
        token_freqs = sorted(counts.items(), key=lambda token_count: (-token_count[1], token_count[0]))
        specials = list(dict.fromkeys([UNK, *(reserved_tokens or ())]))
        seen = set(specials)
        frequent = [token for token, count in token_freqs if count >= min_freq and token not in seen]
        self._set(specials + frequent[:max_size], token_freqs)

    def _set(self, idx_to_token: list, token_freqs: list) -> None:
        self.idx_to_token = idx_to_token
        self.token_to_idx = {token: idx for idx, token in enumerate(idx_to_token)}
        self.token_freqs = token_freqs  # [(token, count)] of every token counted, most frequent first

    @property
    def unk(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        """A token's index (<unk>'s if unknown), or a list of them for a list/tuple/array."""
        if isinstance(tokens, (list, tuple, np.ndarray)):
            return [self[token] for token in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices):
        """The token at an index, or a list of them for a sequence of indices."""
        if isinstance(indices, (int, np.integer)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[idx] for idx in indices]

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, most_frequent={[t for t, _ in self.token_freqs[:5]]})"

    def encode(self, text: str, level: str):
        """Ids of an already preprocessed text -> (ids: (num_tokens,) int32, unknown: sorted
        distinct tokens that are not in the vocab and were mapped to <unk>)."""
        check_choice(level, LEVELS, "level")
        id_pieces, unknown = [np.empty(0, np.int32)], set()
        for piece in _pieces(text):
            tokens = tokenize(piece, level)
            ids, piece_unknown = self._char_ids(tokens) if level == "char" else self._word_ids(tokens)
            id_pieces.append(ids)
            unknown.update(piece_unknown)
        return np.concatenate(id_pieces), sorted(unknown)

    def decode(self, ids, level: str) -> str:
        """The text of token ids: characters joined by "", words by " "."""
        check_choice(level, LEVELS, "level")
        return ("" if level == "char" else " ").join(self.to_tokens(ids))

    def _char_ids(self, chars: np.ndarray):
        codes = _code_points(chars)
        table = self._char_table
        ids = table[np.minimum(codes, len(table) - 1)]
        missing = ids < 0
        ids[missing] = self.unk
        return ids, map(chr, np.unique(codes[missing]).tolist())

    def _word_ids(self, words: list):
        ids = np.fromiter(map(self.token_to_idx.get, words, itertools.repeat(-1)),
                          dtype=np.int32, count=len(words))
        missing = np.flatnonzero(ids < 0)
        ids[missing] = self.unk
        return ids, [words[i] for i in missing.tolist()]

    @cached_property
    def _char_table(self) -> np.ndarray:
        """Index by code point for the one-character tokens, -1 for other code points; the last
        entry (-1) stands for every code point beyond the table."""
        pairs = [(ord(token), idx) for idx, token in enumerate(self.idx_to_token) if len(token) == 1]
        codes, ids = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
        table = np.full(codes.max(initial=-1) + 2, -1, dtype=np.int32)
        table[codes] = ids
        return table

    def to_dict(self) -> dict:
        """A JSON-serialisable dict that `from_dict` turns back into an equal Vocab."""
        return {"idx_to_token": list(self.idx_to_token),
                "token_freqs": [[token, count] for token, count in self.token_freqs]}

    @classmethod
    def from_dict(cls, d) -> "Vocab":
        """The Vocab of a `to_dict` dict, e.g. read from a checkpoint: CharrnnError if malformed."""
        if not isinstance(d, Mapping):
            raise CharrnnError(f"a vocab must be a JSON object, got {type(d).__name__}")
        idx_to_token, token_freqs = d.get("idx_to_token"), d.get("token_freqs")
        if not isinstance(idx_to_token, list) or not all(isinstance(t, str) for t in idx_to_token):
            raise CharrnnError("vocab idx_to_token must be a list of strings")
        if not idx_to_token or idx_to_token[0] != UNK:
            raise CharrnnError(f"vocab idx_to_token must start with {UNK!r}")
        duplicate, times = Counter(idx_to_token).most_common(1)[0]
        if times > 1:
            raise CharrnnError(f"vocab idx_to_token holds {duplicate!r} {times} times")
        if not isinstance(token_freqs, list) or not all(map(_is_token_count, token_freqs)):
            raise CharrnnError("vocab token_freqs must be a list of [token, count] pairs")
        vocab = cls.__new__(cls)
        vocab._set(idx_to_token, [(token, count) for token, count in token_freqs])
        return vocab

    def save(self, path) -> None:
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "Vocab":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CharrnnError(f"cannot read vocab file {path}: {err}") from None
        try:
            return cls.from_dict(d)
        except CharrnnError as err:
            raise CharrnnError(f"{path}: {err}") from None


def _is_token_count(pair) -> bool:
    return (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            and isinstance(pair[1], int) and not isinstance(pair[1], bool) and pair[1] >= 0)
