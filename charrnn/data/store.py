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
from charrnn.base.errors import CharrnnError
from charrnn.base.io import MAX_META_BYTES, json_limit_problem, parse_json, remove_stale_temporaries, write_atomic
from charrnn.base.schema import SchemaError
from charrnn.data.corpus import check_registered, default_data_dir, default_preprocess, find_corpus
from charrnn.data.storeheader import token_store_header
from charrnn.data.storeids import check_ids, open_regular, verify_ids, write_stamp
from charrnn.data.stream import ID_DTYPES, PIECE_BYTES, CodePointCounts, IdFile, id_dtype, tokenize_stream
from charrnn.data.text import PREPROCESS_MODES, blank_text_error, letters_among, warn_if_letters_dropped
from charrnn.data.vocab import LEVELS, Vocab

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
MAX_HEADER_BYTES = MAX_META_BYTES  # a store's header is capped, and parsed, as a checkpoint's metadata


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
        fd = _open_store(self.path)
        try:
            verify_ids(fd, self.path, os.fstat(fd).st_size - self.ids.nbytes, self.ids.dtype,
                        self.header["ids_sha1"], len(self.vocab))
        finally:
            os.close(fd)


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
            remove_stale_temporaries(cache_dir)  # scratch and temporaries of killed builds
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
    a lock file races with another process opening it). A FIFO or device there is refused at
    once, not opened for writing (which would wait for a reader)."""
    with open(open_regular(lock_path, os.O_RDWR | os.O_CREAT, f"the lock file {lock_path}"), "r+b") as lock:
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
            too_large = json_limit_problem(_header_bytes(header))
            if too_large:
                raise CharrnnError(f"{text_path} has {len(tokens):,} distinct tokens, too many for a token store "
                                   f"(its header {too_large}, as a checkpoint's metadata); use --level char "
                                   f"or a smaller text")
            write_atomic(path, lambda out: _write_store(out, header, dtype,
                                                        (np.take(renumber, chunk) for chunk in id_file.chunks())))
            write_stamp(path, os.stat(path), header)  # the ids were verified as they were written
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


def _header_bytes(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _write_header(out, header: dict) -> None:
    data = _header_bytes(header)
    out.write(MAGIC + len(data).to_bytes(8, "little") + data)
    out.write(bytes(-(_PREFIX + len(data)) % ALIGN))


# ----------------------------------------------------------------------------- reading

def _try_read(path: Path, expected: dict):
    """The store at `path` if it is valid, current and its ids verified, else None (missing,
    stale or corrupt: the caller builds it again)."""
    try:
        return read_store(path, expected, verify=True)
    except CharrnnError:
        return None


def read_store(path, expected: dict | None = None, verify: bool = False) -> TokenStore:
    """Open a store file read-only, as carefully as charrnn.training.checkpoint reads a checkpoint: a
    regular file (a FIFO or device is refused unopened for reading), a header of at most
    MAX_HEADER_BYTES parsed with charrnn.base.io.parse_json's limits and checked whole against the
    schema (`_header_problem`), zero padding, exactly the ids the header implies.

    expected: {"text", "level", "preprocess", "min_freq", "max_vocab", "registered_sha1"} that
    the store must have been made with; the text must also still have the recorded size and
    modification time. verify: the ids are checked too (`check_ids`: a pass over them unless
    the file is, to its ctime, the one last verified). Anything wrong -> CharrnnError naming
    the path and what is wrong.
    """
    path = Path(path)
    fd = _open_store(path)
    try:
        stat = os.fstat(fd)
        header, offset = _read_header(fd, path, stat.st_size)
        problem = _header_problem(header, stat.st_size - offset)
        if problem is None and expected is not None:
            problem = _staleness(header, expected)
        if problem is not None:
            raise CharrnnError(f"token store {path} is not usable: {problem}")
        vocab = Vocab.from_dict(header["vocab"])  # checked: cannot fail
        dtype = np.dtype(header["dtype"]).newbyteorder("<")
        if verify:
            check_ids(fd, path, stat, header, offset, len(vocab))
        ids = _map_ids(fd, path, dtype, offset, header["num_tokens"])
    finally:
        os.close(fd)
    return TokenStore(path, ids, vocab, header)


def _open_store(path: Path) -> int:
    try:
        return open_regular(path, os.O_RDONLY, f"token store {path}")
    except OSError as err:
        raise CharrnnError(f"cannot read token store {path}: {err.strerror or err}") from None


def _map_ids(fd: int, path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """The ids of a store file as a read-only array backed by a memory map of the file."""
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise CharrnnError(f"cannot map token store {path}: {err}") from None
    if hasattr(mmap, "MADV_RANDOM"):  # minibatches read small, scattered windows: no read-ahead
        mapped.madvise(mmap.MADV_RANDOM)  # around each one (8 MB here), which would only swell RSS
    return np.frombuffer(mapped, dtype, count, offset)


def _read_header(fd: int, path: Path, file_size: int):
    """-> (header dict, offset of the ids); CharrnnError if the file is not a store or its
    header is over MAX_HEADER_BYTES, past the file's end, not safe JSON, or padded with other
    than zeros. Nothing is read beyond what the cap allows."""
    try:
        prefix = os.pread(fd, _PREFIX, 0)
        if len(prefix) < _PREFIX or prefix[:len(MAGIC)] != MAGIC:
            raise CharrnnError(f"{path} is not a charrnn token store (version {FORMAT_VERSION})")
        length = int.from_bytes(prefix[len(MAGIC):], "little")
        offset = _PREFIX + length + (-(_PREFIX + length) % ALIGN)
        if length > MAX_HEADER_BYTES or offset > file_size:
            raise CharrnnError(f"token store {path} is corrupt (a header of {length:,} bytes in a file of "
                               f"{file_size:,}; at most {MAX_HEADER_BYTES:,})")
        data = os.pread(fd, offset - _PREFIX, _PREFIX)
    except OSError as err:
        raise CharrnnError(f"cannot read token store {path}: {err.strerror or err}") from None
    if len(data) != offset - _PREFIX or data[length:].count(0) != len(data) - length:
        raise CharrnnError(f"token store {path} is corrupt (truncated header or padding that is not zeros)")
    return parse_json(data[:length], f"the header of token store {path}"), offset


def _header_problem(header: dict, ids_bytes: int):
    """What is malformed in a header, given the bytes that follow it, or None: exactly the keys
    a store has, each checked as a checkpoint's metadata is (charrnn.data.storeheader.token_store_header),
    the dtype the vocabulary needs, and the bytes of ids the header implies."""
    if header.get("format") != "charrnn token store" or header.get("version") != FORMAT_VERSION:
        return "not a charrnn token store of this version"
    try:
        token_store_header(header, LEVELS, PREPROCESS_MODES, [dtype.name for dtype in ID_DTYPES])
        vocab = Vocab.from_dict(header["vocab"])
    except (SchemaError, CharrnnError) as err:
        return str(err)
    if id_dtype(len(vocab)) != np.dtype(header["dtype"]):
        return f"dtype {header['dtype']} for a vocabulary of {len(vocab)}"
    if ids_bytes != header["num_tokens"] * np.dtype(header["dtype"]).itemsize:
        return (f"{ids_bytes:,} bytes of ids where the header says {header['num_tokens']:,} {header['dtype']} "
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
