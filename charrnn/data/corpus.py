"""Corpus files: the registered corpora, finding, downloading and reading a text, and
load_corpus (the rules of text, preprocessing included, are charrnn.data.text's; tokens and
the vocabulary charrnn.data.vocab's).

text file -> read_text -> preprocess_text -> tokenize -> Vocab -> corpus: (num_tokens,) int32 ids
(load_corpus: the whole text in memory, for small texts and as the reference the streamed
token store is tested against). Training, evaluation and analysis read a text through
charrnn.data.store instead (streamed once by charrnn.data.stream, memory-mapped after), and draw
minibatches with charrnn.data.samplers.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.request
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from charrnn.base.checks import check_choice
from charrnn.base.errors import CharrnnError
from charrnn.base.io import write_atomic
from charrnn.data.text import (
    BOM,
    PREPROCESS_MODES,
    blank_text_error,
    check_text_head,
    not_utf8_error,
    preprocess_text,
    universal_newlines,
    warn_dropped_letters,
)
from charrnn.data.vocab import LEVELS, Vocab, count_tokens

SOURCE_CORPORA = Path(__file__).resolve().parents[2] / "corpora"  # in a source checkout
REGISTRY_FILENAME = "registry.json"

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


# ----------------------------------------------------------------------------- reading a corpus

def default_preprocess(name_or_path) -> str:
    """'d2l' for a registered corpus (the book: the textbook's numbers), 'raw' for a file."""
    return "d2l" if str(name_or_path) in load_registry() and not Path(name_or_path).is_file() else "raw"


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

