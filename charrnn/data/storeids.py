"""A token store's ids verified: one pass over them (their SHA-1 against the
header's ids_sha1, each < the vocabulary's size), and a stamp that spares the pass until the
file changes.

The stamp `.<store>.verified`, beside the store, records the store's device, inode, size, mtime
and ctime and its ids_sha1 when it was last verified; the builder writes it as it writes the ids
(whose SHA-1 it computes anyway). Any write to a file moves its ctime, which no user can set back,
so a store whose stat matches its stamp holds the ids that were verified. A read-only cache keeps
no stamp: its stores are verified each time they are opened. Cost: see the token store section of
docs/usage.md.
"""
import hashlib
import json
import os
import stat as stat_module
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.base.io import parse_json, write_atomic

CHUNK_IDS = 1 << 22  # ids read at a time


def open_regular(path: Path, flags: int, what: str) -> int:
    """A descriptor of `path` opened without blocking (a FIFO opens at once); CharrnnError
    unless it is a regular file; OSError if it cannot be opened."""
    fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CharrnnError(f"{what} is not a regular file; delete it")
    return fd


def check_ids(fd: int, path: Path, stat: os.stat_result, header: dict, offset: int, vocab_size: int) -> None:
    """CharrnnError unless the ids of the open store are those its header names: their SHA-1 is
    ids_sha1 and each is < vocab_size. One pass over them, skipped when the file is the one last
    verified, to its inode, size, mtime and ctime (its stamp, which the builder writes too): any
    write to a file moves its ctime, which no user can set back."""
    if read_stamp(path) == stamp_of(stat, header):
        return
    verify_ids(fd, path, offset, np.dtype(header["dtype"]).newbyteorder("<"), header["ids_sha1"], vocab_size)
    write_stamp(path, stat, header)


def verify_ids(fd: int, path: Path, offset: int, dtype: np.dtype, ids_sha1: str, vocab_size: int) -> None:
    """Read every id of the open store from `offset` (CHUNK_IDS at a time, not mapped): CharrnnError
    unless their SHA-1 is ids_sha1 and each is < vocab_size."""
    sha1, largest, at, chunk = hashlib.sha1(), 0, offset, CHUNK_IDS * dtype.itemsize
    try:
        while data := os.pread(fd, chunk, at):
            at += len(data)
            sha1.update(data)
            largest = max(largest, int(np.frombuffer(data, dtype, len(data) // dtype.itemsize).max()))
    except OSError as err:
        raise CharrnnError(f"cannot read token store {path}: {err.strerror or err}") from None
    if sha1.hexdigest() != ids_sha1 or largest >= vocab_size:
        raise CharrnnError(f"token store {path} is corrupt (its ids do not match its header); "
                           "delete it and it will be rebuilt")


def stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def stamp_of(stat: os.stat_result, header: dict) -> dict:
    return {"device": stat.st_dev, "inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns, "ids_sha1": header["ids_sha1"]}


def read_stamp(path: Path):
    """The stamp of the store at `path`, or None (none, or not one: read like any file)."""
    try:
        fd = open_regular(stamp_path(path), os.O_RDONLY, "stamp")
    except (OSError, CharrnnError):
        return None
    try:
        return parse_json(os.pread(fd, 4096, 0), "stamp")
    except (OSError, CharrnnError):
        return None
    finally:
        os.close(fd)


def write_stamp(path: Path, stat: os.stat_result, header: dict) -> None:
    """Note that the store at `path`, as `stat` saw it, has been verified; a read-only cache
    directory keeps no note, so its stores are verified each time they are opened."""
    try:
        write_atomic(stamp_path(path), lambda f: f.write(json.dumps(stamp_of(stat, header)).encode()))
    except OSError:
        pass
