"""The data layer: corpus files, tokens and the vocabulary (the rules of text, preprocessing
included, are charrnn.data.text's).

text file -> read_text -> preprocess_text -> tokenize -> Vocab -> corpus: (num_tokens,) int32 ids
(load_corpus: the whole text in memory, for small texts and as the reference the streamed
token store is tested against). Training, evaluation and analysis read a text through
charrnn.data.store instead (streamed once by charrnn.data.stream, memory-mapped after), and draw
minibatches with charrnn.data.samplers.

Whole-text work is vectorised NumPy, done piece by piece so that memory stays bounded.
"""
from __future__ import annotations

import hashlib
import http.client
import itertools
import json
from importlib import resources
import os
import re
import sys
import urllib.request
from collections import Counter
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from charrnn.base.checks import check_choice, check_int
from charrnn.base.errors import CharrnnError
from charrnn.base.io import save_json, write_atomic
# the text rules live in charrnn.data.text, the samplers in charrnn.data.samplers; charrnn.data.corpus offers
# them too, as it always has
from charrnn.data.text import (BOM, PREPROCESS_MODES, blank_text_error, check_text_head, not_utf8_error,
                               preprocess_text, universal_newlines, warn_dropped_letters)

SOURCE_CORPORA = Path(__file__).resolve().parents[2] / "corpora"  # in a source checkout
REGISTRY_FILENAME = "registry.json"
LEVELS = ("char", "word")
UNK = "<unk>"

_PIECE_CHARS = 1 << 22
_WHITESPACE = re.compile(r"\s")  # the characters str.split() splits on
_DOWNLOAD_CHUNK_BYTES = 1 << 16


# ----------------------------------------------------------------------------- corpus files

def default_data_dir() -> Path:
    """`corpora/` beside the package in a source checkout, else `$XDG_CACHE_HOME/charrnn`
    (`~/.cache/charrnn` when XDG_CACHE_HOME is unset)."""
    if (SOURCE_CORPORA / REGISTRY_FILENAME).is_file():
        return SOURCE_CORPORA
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charrnn"


def load_registry() -> dict:
    """The known corpora: {name: {"filename", "url", "size", "sha1"}}.

    Read from `corpora/` in a source checkout, else from the copy installed as the package
    data `charrnn.corpora` (setup.cfg maps `corpora/` there); {} if neither exists.
    """
    path = SOURCE_CORPORA / REGISTRY_FILENAME
    if not path.is_file():
        try:
            path = resources.files("charrnn.corpora") / REGISTRY_FILENAME
        except ModuleNotFoundError:
            return {}
        if not path.is_file():
            return {}
    return json.loads(path.read_text(encoding="utf-8"))


def expand_user(path) -> Path:
    """`path` with a leading ~ or ~user expanded; a ~user of no such user stays as it is."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def read_text(name_or_path, data_dir=None) -> str:
    """The UTF-8 text of a file, or of a registered corpus (found locally or downloaded).

    An existing file wins over a registry name. A registry name is looked up in `data_dir`
    (default: $CHARRNN_DATA_DIR), then in `default_data_dir()`, then downloaded there. A
    registered corpus must match the registry's size and SHA-1.
    """
    path, entry = find_corpus(name_or_path, data_dir)
    data = _read_bytes(path)
    if entry is not None:
        check_registered(path, name_or_path, entry, len(data), hashlib.sha1(data).hexdigest())
    return _decode(data, path)


def find_corpus(name_or_path, data_dir=None):
    """-> (path of the text file, its registry entry or None when a path was given).

    A registered corpus that is nowhere on disk is downloaded; its checksum is the caller's to
    check (`check_registered`), as the caller reads the bytes anyway.
    """
    path = expand_user(name_or_path)
    if path.is_dir():
        raise CharrnnError(f"{path} is a directory, not a text file")
    if path.exists() and not path.is_file():  # reading a FIFO or a device could block forever
        raise CharrnnError(f"{path} is not a regular file (a pipe, socket or device), not a text file")
    if path.is_file():
        return path, None
    registry = load_registry()
    name = str(name_or_path)
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise CharrnnError(f"no such file or registered corpus: {name!r} (registered corpora: {known})")
    return _find_or_download(name, registry[name], data_dir), registry[name]


def check_registered(path, name, entry: dict, size: int, sha1: str) -> None:
    """CharrnnError unless `size` and `sha1` (of the file at `path`) are the registry entry's."""
    mismatch = _checksum_mismatch(size, sha1, entry)
    if mismatch:
        raise CharrnnError(f"{path} is not the registered corpus {str(name)!r} ({mismatch}); "
                           "delete or replace it")


def _find_or_download(name: str, entry: dict, data_dir) -> Path:
    """The path of a registered corpus' file: the first place that has it, else a fresh download."""
    chosen = data_dir if data_dir is not None else os.environ.get("CHARRNN_DATA_DIR")
    places = [expand_user(chosen)] if chosen else []
    places.append(default_data_dir())
    for place in places:
        if (place / entry["filename"]).is_file():
            return place / entry["filename"]
    target = places[-1] / entry["filename"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(entry, target)
    except (OSError, http.client.HTTPException) as err:
        looked = " or ".join(str(place) for place in places)
        raise CharrnnError(
            f"corpus {name!r} is not in {looked} and downloading {entry['url']} failed ({err}); "
            f"put {entry['filename']} in a directory named by CHARRNN_DATA_DIR, "
            "or pass the path of a text file") from None
    return target


def _download(entry: dict, path: Path) -> None:
    """Stream entry["url"] into `path` with a progress bar on stderr. Only a file with the
    registry's size and SHA-1 is renamed into place; on any failure nothing is left behind."""
    def write(f):
        sha1, size = hashlib.sha1(), 0
        with urllib.request.urlopen(entry["url"], timeout=60) as response, \
                tqdm(total=entry["size"], unit="B", unit_scale=True, file=sys.stderr,
                     desc=f"downloading {path.name}") as progress:
            while size <= entry["size"] and (chunk := response.read(_DOWNLOAD_CHUNK_BYTES)):
                f.write(chunk)
                sha1.update(chunk)
                size += len(chunk)
                progress.update(len(chunk))
        mismatch = _checksum_mismatch(size, sha1.hexdigest(), entry)
        if mismatch:
            raise CharrnnError(f"download of {entry['url']} is corrupt ({mismatch}); "
                               "nothing was saved")
    write_atomic(path, write)


def _checksum_mismatch(size: int, sha1: str, entry: dict):
    """None if size and sha1 are the registry entry's, else a description of the difference."""
    if size == entry["size"] and sha1 == entry["sha1"]:
        return None
    return (f"{size} bytes with SHA-1 {sha1}, "
            f"expected {entry['size']} bytes with SHA-1 {entry['sha1']}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CharrnnError(f"cannot read {path}: {err.strerror or err}") from None


def _decode(data: bytes, path: Path) -> str:
    """The text of a file's bytes, which must be non-empty UTF-8 and not look binary.
    A leading byte order mark is dropped; line ends are universal newlines (\r\n and \r -> \n)."""
    check_text_head(data, path)
    data = data.removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise not_utf8_error(path, err) from None
    return universal_newlines(text)


# ----------------------------------------------------------------------------- text and tokens

def default_preprocess(name_or_path) -> str:
    """'d2l' for a registered corpus (the book: the textbook's numbers), 'raw' for a file."""
    return "d2l" if str(name_or_path) in load_registry() and not Path(name_or_path).is_file() else "raw"


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


def load_corpus(name_or_path, level="char", preprocess=None, data_dir=None):
    """A text file or registered corpus -> (corpus: (num_tokens,) int32 ids, vocab of the whole text).

    preprocess None: default_preprocess(name_or_path). 'd2l' warns (CharrnnWarning) about the
    letters outside A-Z it drops.
    """
    check_choice(level, LEVELS, "level")
    preprocess = default_preprocess(name_or_path) if preprocess is None else preprocess
    check_choice(preprocess, PREPROCESS_MODES, "preprocess mode")
    text = read_text(name_or_path, data_dir)
    if preprocess == "d2l":
        warn_dropped_letters(text, name_or_path)
    text = preprocess_text(text, preprocess)
    if not text.strip():
        raise blank_text_error(name_or_path, preprocess)
    vocab = Vocab(count_tokens(text, level))
    corpus, _ = vocab.encode(text, level)
    return corpus, vocab

