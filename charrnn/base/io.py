"""Atomic, pickle-free files: `.npz` arrays with JSON metadata, JSON and JSON Lines.

Every write goes to a temporary file `.<name>.<pid>.tmp` in the same directory, is fsync'ed,
then renamed over the target, so a crash at any moment leaves either the old file or the new
one, never half (and at worst a temporary that `remove_stale_temporaries` clears later).

Reading an `.npz` trusts nothing in it. `NpzReader` checks the zip's directory (how many
members, their names, compression, encryption flag, declared sizes against the file's length)
and parses the JSON metadata with limits (MAX_META_BYTES, MAX_META_CONTAINERS, no NaN or
Infinity, no nesting deep enough to exhaust the stack) before anything else. An array is read
only when asked for, after its .npy header (dtype, shape, order) has been checked against what
the caller expects and against the member's declared size, so a file that claims a huge array
or hides a zip bomb is refused before a byte of it is decompressed. Every problem is a one-line
CharrnnError naming the file.
"""
import json
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError

META_KEY = "__meta__"
MAX_META_BYTES = 2 << 20  # JSON metadata read or written, at most (a parse costs ~10-20x that)
MAX_META_CONTAINERS = 1 << 17  # JSON arrays and objects in it, at most (~70 bytes of memory each)
MAX_MEMBERS = 4096  # arrays in one .npz (a checkpoint of cells.MAX_LAYERS gru layers and Adam: ~3,100)
READ_CHUNK = 16 << 20  # bytes decompressed at a time
NAME = re.compile(r"[A-Za-z0-9_.]{1,200}")  # an array's name, as charrnn writes them
DEFLATE_MAX_RATIO = 1100  # deflate expands at most ~1032x
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?:tmp|scratch)")  # write_atomic's, charrnn.data.store's
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
              ValueError, NotImplementedError, RuntimeError)


# ----------------------------------------------------------------------------- atomic writes

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path, pid=None) -> Path:
    """Where `write_atomic` writes `path` before renaming it: `.<name>.<pid>.tmp` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def write_atomic(path, write) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _is_running(pid) -> bool:
    if pid > 2**22:  # beyond any pid_max
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove_stale_temporaries(directory) -> list:
    """Delete the temporaries `write_atomic` (`.<name>.<pid>.tmp`) and a token store's build
    (`.<name>.<pid>.scratch`) left in `directory` when their process died (kill -9) -> the paths
    removed. Those of running processes are theirs and stay."""
    removed = []
    for path in [*Path(directory).glob(".*.tmp"), *Path(directory).glob(".*.scratch")]:
        match = TEMPORARY.fullmatch(path.name)
        if match and path.is_file() and not _is_running(int(match["pid"])):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def save_npz(path, arrays: dict, meta: dict) -> None:
    """Atomically write `arrays` and the JSON-serialisable `meta` to one `.npz` file."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    meta_bytes = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
    if len(meta_bytes) > MAX_META_BYTES:
        raise CharrnnError(f"the metadata of {path} would be {len(meta_bytes):,} bytes, over the "
                           f"{MAX_META_BYTES:,} charrnn reads back (is the vocabulary that large?)")
    meta_array = np.frombuffer(meta_bytes, dtype=np.uint8)
    write_atomic(path, lambda f: np.savez(f, **{META_KEY: meta_array}, **arrays))


def save_json(path, obj) -> None:
    """Atomically write `obj` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def append_jsonl(path, record: dict) -> None:
    """Append one JSON object as a line to `path` and flush it to disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- untrusted JSON

def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a float")
    return value


def json_limit_problem(data: bytes):
    """Why parse_json would refuse `data` before parsing it ("is N bytes, over ..."), or None:
    a writer checks with it that what it writes will be read back."""
    if len(data) > MAX_META_BYTES:
        return f"is {len(data):,} bytes, over the {MAX_META_BYTES:,} charrnn reads"
    if data.count(b"[") + data.count(b"{") > MAX_META_CONTAINERS:
        return f"holds more than {MAX_META_CONTAINERS:,} JSON arrays and objects"
    return None


def parse_json(data: bytes, what) -> dict:
    """Untrusted JSON bytes -> the dict they hold; anything else -> CharrnnError naming `what`.

    Refused before parsing: more than MAX_META_BYTES, more than MAX_META_CONTAINERS arrays and
    objects (each costs memory); while parsing: NaN, Infinity, numbers beyond a float, nesting
    deeper than the interpreter's stack, text that is not UTF-8.
    """
    problem = json_limit_problem(data)
    if problem:
        raise CharrnnError(f"{what} {problem}")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise CharrnnError(f"{what} is nested too deeply to be charrnn's") from None
    except (UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise CharrnnError(f"{what} is corrupt ({str(err)[:200]})") from None
    if not isinstance(value, dict):
        raise CharrnnError(f"{what} is corrupt (not a JSON object)")
    return value


# ----------------------------------------------------------------------------- untrusted .npz

def _check_zip_directory(path, file_size) -> None:
    """Refuse a zip whose end record (or zip64 end record, which zipfile believes first) announces
    more members, or a larger directory, than any charrnn file has, before zipfile builds an
    object for each of them."""
    with open(path, "rb") as f:
        tail_size = min(file_size, 22 + 0xFFFF)
        f.seek(file_size - tail_size)
        tail = f.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise CharrnnError(f"{path} is not a charrnn checkpoint (not an .npz file)")
        _, _, _, _, members, directory_size, _, _ = struct.unpack("<4s4H2LH", tail[at: at + 22])
        if at >= 20 and tail[at - 20: at - 16] == b"PK\x06\x07":  # a zip64 locator
            record_at = struct.unpack("<4sLQL", tail[at - 20: at])[2]
            f.seek(min(record_at, file_size))
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                members, directory_size = struct.unpack("<4sQ2H2L4Q", record)[7:9]
    if members > MAX_MEMBERS or directory_size > MAX_MEMBERS * 1024:
        raise CharrnnError(f"{path} holds {members:,} members in a {directory_size:,}-byte directory; "
                           f"a charrnn file holds at most {MAX_MEMBERS}")


class NpzReader:
    """An `.npz` file opened for checked reading (use with `with`). `meta`: its JSON metadata;
    `names`: its arrays' names; `header(name)` and `read(name, ...)` check before they read."""

    def __init__(self, path):
        self.path = path = Path(path)
        if not path.is_file():
            raise CharrnnError(f"no checkpoint file at {path}")
        self._zip = None
        try:
            self.file_size = path.stat().st_size
            _check_zip_directory(path, self.file_size)
            self._zip = zipfile.ZipFile(path)
            self._members = self._check_members(self._zip.infolist())
            self.names = sorted(name for name in self._members if name != META_KEY)
            if META_KEY not in self._members:
                raise CharrnnError(f"{path} holds no charrnn metadata")
            meta_bytes = self.read(META_KEY, dtype=np.uint8, ndim=1, max_bytes=MAX_META_BYTES)
        except CharrnnError:
            self.close()
            raise
        except ZIP_ERRORS as err:
            self.close()
            raise self._unreadable(err) from None
        self.meta = parse_json(meta_bytes.tobytes(), f"the metadata of {path}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._zip is not None:
            self._zip.close()

    def _unreadable(self, err):
        if isinstance(err, zipfile.BadZipFile) and "not a zip file" in str(err).lower():
            return CharrnnError(f"{self.path} is not a charrnn checkpoint (not an .npz file)")
        if isinstance(err, OSError) and err.strerror:
            return CharrnnError(f"cannot read {self.path} ({err.strerror})")
        return CharrnnError(f"{self.path} is not a readable .npz checkpoint ({str(err)[:200] or type(err).__name__})")

    def _check_members(self, infos) -> dict:
        """name -> ZipInfo, each a `<name>.npy` file stored or deflated, not encrypted, whose
        declared sizes fit the file."""
        members = {}
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or not NAME.fullmatch(name):
                raise CharrnnError(f"{self.path}: member {info.filename[:100]!r} is not an array charrnn writes")
            if name in members:
                raise CharrnnError(f"{self.path}: member {info.filename!r} appears twice")
            if info.flag_bits & 0x1:
                raise CharrnnError(f"{self.path}: member {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CharrnnError(f"{self.path}: member {info.filename!r} uses compression method "
                                   f"{info.compress_type}, not one charrnn reads (stored or deflated)")
            stored = info.compress_type == zipfile.ZIP_STORED
            if info.compress_size > self.file_size - info.header_offset or (
                    info.file_size != info.compress_size if stored
                    else info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 1024):
                raise CharrnnError(f"{self.path}: member {info.filename!r} declares sizes that cannot be "
                                   f"(truncated or corrupt file)")
            members[name] = info
        return members

    def header(self, name) -> tuple:
        """The .npy header of array `name`: (shape, dtype, fortran_order), read without its data."""
        try:
            with self._zip.open(self._members[name]) as f:
                return self._read_header(name, f)[:3]
        except CharrnnError:
            raise
        except ZIP_ERRORS as err:
            raise self._unreadable(err) from None

    def _read_header(self, name, f) -> tuple:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise CharrnnError(f"{self.path}: {name!r} is not an array (no .npy header)") from None
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(f, max_header_size=10000)
        if dtype.hasobject:
            raise CharrnnError(f"{self.path}: {name} holds pickled Python objects; charrnn never loads those")
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise CharrnnError(f"{self.path}: {name} holds {dtype} values, not numbers")
        data_bytes = math.prod(shape) * dtype.itemsize
        if f.tell() + data_bytes != self._members[name].file_size:
            raise CharrnnError(f"{self.path}: {name} declares {self._members[name].file_size:,} bytes, "
                               f"its header a {dtype} array of shape {shape}")
        return shape, dtype, fortran_order, data_bytes

    def read(self, name, shape=None, dtype=None, ndim=None, max_bytes=None) -> np.ndarray:
        """Array `name`, after checking its header: `shape`, `dtype`, `ndim` (those given) and
        at most `max_bytes`; a mismatch -> CharrnnError, before anything is decompressed."""
        if name not in self._members:
            raise CharrnnError(f"{self.path} has no array {name!r}")
        try:
            with self._zip.open(self._members[name]) as f:
                found_shape, found_dtype, fortran_order, data_bytes = self._read_header(name, f)
                if ((shape is not None and found_shape != tuple(shape))
                        or (dtype is not None and found_dtype != np.dtype(dtype))
                        or (ndim is not None and len(found_shape) != ndim)):
                    expected = " ".join(str(part) for part in (dtype and np.dtype(dtype), shape and tuple(shape),
                                                               ndim and f"({ndim} dimensions)") if part)
                    raise CharrnnError(f"{self.path}: {name} is {found_dtype} {found_shape}, expected {expected}")
                if max_bytes is not None and data_bytes > max_bytes:
                    raise CharrnnError(f"{self.path}: {name} is {data_bytes:,} bytes, over the {max_bytes:,} allowed")
                array = np.empty(math.prod(found_shape), found_dtype)
                self._read_into(name, f, array.view(np.uint8))
        except CharrnnError:
            raise
        except MemoryError:
            raise CharrnnError(f"{self.path}: no memory for {name} ({data_bytes:,} bytes)") from None
        except ZIP_ERRORS as err:
            raise self._unreadable(err) from None
        if fortran_order:
            return array.reshape(found_shape[::-1]).transpose()
        return array.reshape(found_shape)

    def _read_into(self, name, f, buffer) -> None:
        at = 0
        while at < len(buffer):
            chunk = f.read(min(READ_CHUNK, len(buffer) - at))
            if not chunk:
                raise CharrnnError(f"{self.path}: {name} is truncated")
            buffer[at: at + len(chunk)] = np.frombuffer(chunk, np.uint8)
            at += len(chunk)
        f.read(1)  # at the end: zipfile checks the CRC-32


def load_npz(path) -> tuple:
    """Read every array and the metadata of a file written by `save_npz`, checked as NpzReader
    does -> (arrays: dict, meta: dict). For files whose members the caller does not know in
    advance; charrnn.training.checkpoint reads only the members a checkpoint must have."""
    with NpzReader(path) as reader:
        return {name: reader.read(name) for name in reader.names}, reader.meta
