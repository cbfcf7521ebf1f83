"""The token store: a text's token ids on disk, made once in one streamed pass, memory-mapped
by every later run, so that the size of a corpus is bounded by the disk, not by memory.

open_store(text, level, preprocess) -> TokenStore: .ids, a read-only (num_tokens,) np.memmap of
uint8/uint16/uint32 ids (the narrowest that holds the vocabulary), and .vocab.

File (one per text, level, preprocessing and vocabulary limits, in the cache directory):

    MAGIC (16 bytes) | n: header length (uint64, little-endian) | header: n bytes of JSON |
    zero padding to a multiple of ALIGN | ids: num_tokens x dtype, little-endian

The header names the text (absolute path, size, mtime_ns, SHA-1 of its bytes), the settings
(level, preprocess, min_freq, max_vocab), dtype, num_tokens, the SHA-1 of the ids, the
vocabulary (Vocab.to_dict) and the letters d2l preprocessing dropped (for the same warning as
charrnn.data.corpus.load_corpus gives). A store is used only if every field is well formed, matches the
request and the text's size and modification time, and the file has exactly the length the
header implies; otherwise it is rebuilt. Stores are written atomically (charrnn.base.io.write_atomic)
under an exclusive lock (fcntl.flock), so that two processes never build the same store at once
and nobody reads a half-written one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from charrnn.base.checks import check_choice, check_int
from charrnn.data.corpus import LEVELS, Vocab, check_registered, default_data_dir, default_preprocess, find_corpus
from charrnn.data.text import PREPROCESS_MODES, blank_text_error, letters_among, warn_if_letters_dropped
from charrnn.base.errors import CharrnnError
from charrnn.base.io import write_atomic
from charrnn.data.stream import ID_DTYPES, PIECE_BYTES, CodePointCounts, IdFile, id_dtype, tokenize_stream

try:
    import fcntl
except ImportError:  # not POSIX: no lock, concurrent builders each write (atomically) their own copy
    fcntl = None

MAGIC = b"charrnn-tokens\x00\x02"  # the last byte is the format version
FORMAT_VERSION = 2  # 2: universal newlines, dropped_letters
ALIGN = 64  # the ids start at a multiple of this
CACHE_ENV = "CHARRNN_CACHE_DIR"
SUFFIX = ".tokens"
SETTLE_NS = 20_000_000  # a text is read only once its last modification is this old (a coarse tick: <= 10 ms)
_PREFIX = len(MAGIC) + 8
_MAX_HEADER_BYTES = 1 << 30


def default_cache_dir() -> Path:
    """$CHARRNN_CACHE_DIR, else `tokens/` in the data directory (`corpora/tokens` in a source
    checkout, `$XDG_CACHE_HOME/charrnn/tokens` for an installed package)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else default_data_dir() / "tokens"


@dataclass
class TokenStore:
    """A token store open for reading: its ids, memory-mapped, and its vocabulary."""

    path: Path
    ids: np.ndarray  # (num_tokens,) read-only, backed by a memory map of the file
    vocab: Vocab
    header: dict
    built: bool = field(default=False)  # whether this process tokenized the text just now

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """The size of the store file."""
        return self.path.stat().st_size

    def split_sha1(self, stop: int) -> str:
        """A SHA-1 naming ids[:stop] of this store: of the SHA-1 of all its ids (computed when
        it was written), its dtype and `stop`; no pass over the ids."""
        return hashlib.sha1(f"{self.header['ids_sha1']} {self.ids.dtype.name} [:{stop}]".encode()).hexdigest()

    def verify(self) -> None:
        """Read every id: CharrnnError unless their SHA-1 is the header's and each is < len(vocab)."""
        sha1, largest, offset = hashlib.sha1(), 0, self.path.stat().st_size - self.ids.nbytes
        with open(self.path, "rb") as f:  # read, not mapped: the map is advised for random access
            f.seek(offset)
            while data := f.read(IdFile.CHUNK * self.ids.itemsize):
                sha1.update(data)
                largest = max(largest, int(np.frombuffer(data, self.ids.dtype).max()))
        if sha1.hexdigest() != self.header["ids_sha1"] or largest >= len(self.vocab):
            raise CharrnnError(f"token store {self.path} is corrupt (its ids do not match its header); "
                               "delete it and it will be rebuilt")


def open_store(name_or_path, level="char", preprocess=None, min_freq=0, max_vocab=None, *,
               data_dir=None, cache_dir=None, piece_bytes=PIECE_BYTES, progress=None,
               warn_dropped=True) -> TokenStore:
    """The token store of a text file or registered corpus, tokenized now if no valid one exists.

    The ids and vocabulary are the ones charrnn.data.corpus.load_corpus gives (preprocess None:
    default_preprocess; min_freq, max_vocab as Vocab's min_freq and max_size), and so is the
    CharrnnWarning about the letters d2l preprocessing drops (unless warn_dropped is false).
    cache_dir: default `default_cache_dir()`. progress: a progress bar in bytes on stderr while
    tokenizing (None: when stderr is a terminal).
    """
    preprocess = default_preprocess(name_or_path) if preprocess is None else preprocess
    check_choice(level, LEVELS, "level")
    check_choice(preprocess, PREPROCESS_MODES, "preprocess mode")
    check_int(min_freq, "min_freq", minimum=0)
    if max_vocab is not None:
        check_int(max_vocab, "max_vocab", minimum=0)
    text_path, entry = find_corpus(name_or_path, data_dir)
    text_path = text_path.resolve()
    settings = {"level": level, "preprocess": preprocess, "min_freq": min_freq, "max_vocab": max_vocab}
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if "\0" in str(cache_dir):  # the file system would raise ValueError, not OSError
        raise CharrnnError(f"the cache directory {str(cache_dir)!r} holds a NUL character")
    path = cache_dir / store_name(text_path, settings)
    expected = {"text": str(text_path), **settings, "registered_sha1": entry and entry["sha1"]}
    store = _try_read(path, expected)
    if store is not None:
        return _opened(store, name_or_path, warn_dropped)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock"), progress):
            store = _try_read(path, expected)  # built by another process while we waited?
            if store is not None:
                return _opened(store, name_or_path, warn_dropped)
            _build(path, text_path, settings, piece_bytes, progress, name_or_path, entry)
    except OSError as err:
        free = "free space there, or " if err.errno == errno.ENOSPC else ""
        raise CharrnnError(f"cannot write the token store of {text_path.name} in {cache_dir}: "
                           f"{err.strerror or err} ({free}choose another directory with --cache-dir "
                           f"or {CACHE_ENV})") from None
    store = read_store(path, expected)
    store.built = True
    return _opened(store, name_or_path, warn_dropped)


def _opened(store: TokenStore, name, warn_dropped: bool) -> TokenStore:
    if warn_dropped and store.header["preprocess"] == "d2l":
        warn_if_letters_dropped(*store.header["dropped_letters"], name, stacklevel=4)
    return store


def store_name(text_path: Path, settings: dict) -> str:
    """<text stem>.<level>-<preprocess>[-min<f>][-max<n>].<12 hex digits of the path's SHA-1>.tokens"""
    limits = (f"-min{settings['min_freq']}" if settings["min_freq"] else "") + \
             (f"-max{settings['max_vocab']}" if settings["max_vocab"] is not None else "")
    digest = hashlib.sha1(str(text_path).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{text_path.stem}.{settings['level']}-{settings['preprocess']}{limits}.{digest}{SUFFIX}"


@contextmanager
def _locked(lock_path: Path, progress):
    """Hold an exclusive flock on `lock_path` (created if need be; never deleted, as deleting
    a lock file races with another process opening it)."""
    with open(lock_path, "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if _show_progress(progress):
                    print(f"waiting for another process tokenizing into {lock_path.parent} ...",
                          file=sys.stderr, flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _show_progress(progress) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


# ----------------------------------------------------------------------------- building

def _build(path: Path, text_path: Path, settings: dict, piece_bytes: int, progress, name, entry) -> None:
    """Tokenize the text into first-sight ids in a scratch file beside `path`, count, make the
    vocabulary, then write the store (ids renumbered to the vocabulary's) atomically."""
    scratch_path = path.with_name(f".{path.name}.{os.getpid()}.scratch")
    if entry is not None:  # checked first: a corrupt copy is told as such, not as bad text
        check_registered(text_path, name, entry, *_size_and_sha1(text_path))
    try:
        f = open(text_path, "rb")
    except OSError as err:
        raise CharrnnError(f"cannot read {text_path}: {err.strerror or err}") from None
    try:
        with f, open(scratch_path, "w+b") as scratch:
            before = _settled_stat(f)
            sha1 = hashlib.sha1()

            def on_read(block):
                sha1.update(block)
                bar.update(len(block))

            with tqdm(total=before.st_size, unit="B", unit_scale=True, file=sys.stderr,
                      desc=f"tokenizing {text_path.name}", disable=not _show_progress(progress)) as bar:
                id_file, dropped = IdFile(scratch), CodePointCounts()
                tokens, counts = tokenize_stream(f, text_path, settings["level"], settings["preprocess"],
                                                 id_file, piece_bytes, on_read, dropped)
            after = os.fstat(f.fileno())
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise CharrnnError(f"{text_path} changed while it was being read; try again")
            vocab = Vocab(dict(zip(tokens, counts.tolist())), min_freq=settings["min_freq"],
                          max_size=settings["max_vocab"])
            if all(token.isspace() for token in tokens):
                raise blank_text_error(name, settings["preprocess"])
            dtype = id_dtype(len(vocab))
            renumber = np.array([vocab.token_to_idx.get(token, vocab.unk) for token in tokens], dtype)
            header = {"format": "charrnn token store", "version": FORMAT_VERSION,
                      "text": {"path": str(text_path), "size": before.st_size,
                               "mtime_ns": before.st_mtime_ns, "sha1": sha1.hexdigest()},
                      **settings, "dtype": dtype.name, "num_tokens": id_file.count,
                      "dropped_letters": list(letters_among(dropped.counts)),
                      "ids_sha1": "0" * 40, "vocab": vocab.to_dict()}
            write_atomic(path, lambda out: _write_store(out, header, dtype,
                                                        (np.take(renumber, chunk) for chunk in id_file.chunks())))
    finally:
        scratch_path.unlink(missing_ok=True)


def _size_and_sha1(path: Path):
    sha1, size = hashlib.sha1(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(PIECE_BYTES):
                sha1.update(block)
                size += len(block)
    except OSError as err:
        raise CharrnnError(f"cannot read {path}: {err.strerror or err}") from None
    return size, sha1.hexdigest()


def _settled_stat(f) -> os.stat_result:
    """os.fstat of the text once its modification time is SETTLE_NS old: file systems stamp
    times at a coarse tick, so an edit in the same tick as the last one, of the same length,
    would otherwise look unchanged to the (size, mtime) check of later runs."""
    while 0 <= (age := time.time_ns() - os.fstat(f.fileno()).st_mtime_ns) < SETTLE_NS:
        time.sleep((SETTLE_NS - age) / 1e9)
    return os.fstat(f.fileno())


def _write_store(out, header: dict, dtype, id_chunks) -> None:
    """Header with a placeholder ids_sha1, the ids, then the header again with the real one."""
    ids_sha1 = hashlib.sha1()
    _write_header(out, header)
    for chunk in id_chunks:
        data = np.ascontiguousarray(chunk, dtype.newbyteorder("<")).data
        ids_sha1.update(data)
        out.write(data)
    header["ids_sha1"] = ids_sha1.hexdigest()
    out.seek(0)
    _write_header(out, header)  # the same length: only the 40 hex digits changed


def _write_header(out, header: dict) -> None:
    data = json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8")
    out.write(MAGIC + len(data).to_bytes(8, "little") + data)
    out.write(bytes(-(_PREFIX + len(data)) % ALIGN))


# ----------------------------------------------------------------------------- reading

def _try_read(path: Path, expected: dict):
    """The store at `path` if it is valid and current, else None (missing, stale or corrupt:
    the caller builds it again)."""
    try:
        return read_store(path, expected)
    except CharrnnError:
        return None


def read_store(path, expected: dict | None = None) -> TokenStore:
    """Open a store file read-only, checking its structure (not every id: TokenStore.verify).

    expected: {"text", "level", "preprocess", "min_freq", "max_vocab", "registered_sha1"} that
    the store must have been made with; the text must also still have the recorded size and
    modification time. Anything else -> CharrnnError naming the path and what is wrong.
    """
    path = Path(path)
    header, offset = _read_header(path)
    problem = _header_problem(header, path.stat().st_size - offset)
    if problem is None and expected is not None:
        problem = _staleness(header, expected)
    if problem is not None:
        raise CharrnnError(f"token store {path} is not usable: {problem}")
    try:
        vocab = Vocab.from_dict(header["vocab"])
    except CharrnnError as err:
        raise CharrnnError(f"token store {path} is not usable: {err}") from None
    if id_dtype(len(vocab)) != np.dtype(header["dtype"]):
        raise CharrnnError(f"token store {path} is not usable: dtype {header['dtype']} "
                           f"for a vocabulary of {len(vocab)}")
    ids = _map_ids(path, np.dtype(header["dtype"]).newbyteorder("<"), offset, header["num_tokens"])
    return TokenStore(path, ids, vocab, header)


def _map_ids(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """The ids of a store file as a read-only array backed by a memory map of the file."""
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise CharrnnError(f"cannot map token store {path}: {err}") from None
    if hasattr(mmap, "MADV_RANDOM"):  # minibatches read small, scattered windows: no read-ahead
        mapped.madvise(mmap.MADV_RANDOM)  # around each one (8 MB here), which would only swell RSS
    return np.frombuffer(mapped, dtype, count, offset)


def _read_header(path: Path):
    """-> (header dict, offset of the ids); CharrnnError if the file is not a store."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX)
            if len(prefix) < _PREFIX or prefix[:len(MAGIC)] != MAGIC:
                raise CharrnnError(f"{path} is not a charrnn token store (version {FORMAT_VERSION})")
            length = int.from_bytes(prefix[len(MAGIC):], "little")
            if length > _MAX_HEADER_BYTES:
                raise CharrnnError(f"token store {path} is corrupt (header of {length:,} bytes)")
            data = f.read(length)
    except OSError as err:
        raise CharrnnError(f"cannot read token store {path}: {err.strerror or err}") from None
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CharrnnError(f"token store {path} is corrupt (truncated or unreadable header)") from None
    if not isinstance(header, dict):
        raise CharrnnError(f"token store {path} is corrupt (header is not a JSON object)")
    return header, _PREFIX + length + (-(_PREFIX + length) % ALIGN)


def _header_problem(header: dict, ids_bytes: int):
    """What is malformed in a header, given the bytes that follow it, or None."""
    if header.get("format") != "charrnn token store" or header.get("version") != FORMAT_VERSION:
        return "not a charrnn token store of this version"
    text = header.get("text")
    if not (isinstance(text, dict) and isinstance(text.get("path"), str) and _is_count(text.get("size"))
            and _is_count(text.get("mtime_ns")) and _is_sha1(text.get("sha1"))):
        return "malformed text record"
    if header.get("dtype") not in [dtype.name for dtype in ID_DTYPES] or not _is_sha1(header.get("ids_sha1")):
        return "malformed dtype or ids_sha1"
    dropped = header.get("dropped_letters")
    if not (isinstance(dropped, list) and len(dropped) == 2 and _is_count(dropped[0]) and isinstance(dropped[1], str)):
        return "malformed dropped_letters"
    num_tokens = header.get("num_tokens")
    if not _is_count(num_tokens) or num_tokens < 1:
        return f"bad num_tokens {num_tokens!r}"
    if ids_bytes != num_tokens * np.dtype(header["dtype"]).itemsize:
        return (f"{ids_bytes:,} bytes of ids where the header says {num_tokens:,} {header['dtype']} "
                "(truncated or overlong)")
    return None


def _staleness(header: dict, expected: dict):
    """Why a well-formed store is not the one asked for (other text or settings, or the text
    changed since), or None."""
    for key in ("level", "preprocess", "min_freq", "max_vocab"):
        if header.get(key) != expected[key]:
            return f"made with {key} {header.get(key)!r}, not {expected[key]!r}"
    text = header["text"]
    if text["path"] != expected["text"]:
        return f"made from {text['path']}, not {expected['text']}"
    try:
        stat = os.stat(expected["text"])
    except OSError as err:
        return f"cannot stat {expected['text']}: {err.strerror}"
    if (text["size"], text["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
        return f"{expected['text']} changed since it was tokenized"
    if expected["registered_sha1"] not in (None, text["sha1"]):
        return f"{expected['text']} is not the registered text"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha1(value) -> bool:
    return isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)
