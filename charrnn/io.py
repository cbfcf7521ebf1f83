"""Atomic, pickle-free files: `.npz` arrays with JSON metadata, JSON and JSON Lines.

Every write goes to a temporary file in the same directory, is fsync'ed, then renamed over
the target, so a crash at any moment leaves either the old file or the new one, never half.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import CharrnnError

META_KEY = "__meta__"


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


def write_atomic(path, write) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


def save_npz(path, arrays: dict, meta: dict) -> None:
    """Atomically write `arrays` and the JSON-serialisable `meta` to one `.npz` file."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    write_atomic(path, lambda f: np.savez(f, **{META_KEY: meta_bytes}, **arrays))


def load_npz(path) -> tuple:
    """Read a file written by `save_npz` without pickle -> (arrays: dict, meta: dict).

    Anything that is not such a file raises CharrnnError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CharrnnError(f"no checkpoint file at {path}")
    if not zipfile.is_zipfile(path):  # else np.load would try the file as a pickle
        raise CharrnnError(f"{path} is not a charrnn checkpoint (not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        if "allow_pickle" in str(err):  # numpy refusing an object array
            raise CharrnnError(f"{path} holds pickled Python objects; charrnn never loads those") from None
        raise CharrnnError(f"{path} is not a readable .npz checkpoint ({err})") from None
    except MemoryError:
        raise CharrnnError(f"{path} declares arrays too large to load") from None
    not_arrays = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
    if not_arrays:  # np.load hands back the raw bytes of members that are not .npy arrays
        raise CharrnnError(f"{path} is not a readable .npz checkpoint ({not_arrays[0]!r} is not an array)")
    meta_bytes = arrays.pop(META_KEY, None)
    if meta_bytes is None or meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
        raise CharrnnError(f"{path} holds no charrnn metadata")
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CharrnnError(f"{path} has corrupt metadata ({err})") from None
    if not isinstance(meta, dict):
        raise CharrnnError(f"{path} has corrupt metadata (not a JSON object)")
    return arrays, meta


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
