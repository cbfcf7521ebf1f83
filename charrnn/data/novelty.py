"""Whether generated records are new: a set lookup of each in the training and held-out records.

Every record r = (r_1 .. r_n) of the text has a 64-bit hash, h(r) = mix(n, Σ_k (r_k + 1) P^(k-1)
mod 2^64) (a polynomial hash in wrapping uint64 arithmetic, P odd, then a 64-bit finaliser
with the length). The hashes of the training records and of the held-out ones are sorted once
and kept beside the token store as two .npy files; a check memory-maps them and looks each
generated record up by binary search (np.searchsorted): ~log2(N) pages read per record, so a
check of 1,000 records reads a few MB whatever the size of the store. Two different records
share a hash with probability ~2^-64 per pair: with 10^9 records in the store and 10^3
generated, a false "copied" has probability ~10^-7.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from charrnn.data.records import save_npy, split_records

P = np.uint64(0x100000001B3)  # the FNV-1 64-bit prime: odd
GROUP_ELEMENTS = 1 << 22  # ids gathered at a time while hashing


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on uint64 (wrapping)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash_records(ids, starts, ends) -> np.ndarray:
    """h(r) of every record ids[starts[k]:ends[k]] -> (n,) uint64 (module docstring); records of
    one length are gathered together, at most GROUP_ELEMENTS ids at a time."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    lengths = ends - starts
    out = np.empty(len(starts), np.uint64)
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    bounds = np.flatnonzero(np.diff(sorted_lengths)) + 1
    with np.errstate(over="ignore"):
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            n = int(lengths[group[0]])
            powers = np.cumprod(np.concatenate([[1], np.full(max(n - 1, 0), P)]).astype(np.uint64), dtype=np.uint64)
            step = max(1, GROUP_ELEMENTS // max(n, 1))
            for i in range(0, len(group), step):
                rows = group[i:i + step]
                if n == 0:
                    total = np.zeros(len(rows), np.uint64)
                else:
                    gathered = np.asarray(ids)[starts[rows, None] + np.arange(n)].astype(np.uint64) + np.uint64(1)
                    total = (gathered * powers).sum(axis=1, dtype=np.uint64)
                out[rows] = _mix(total ^ _mix(np.full(len(rows), n, np.uint64)))
    return out


def hash_sequences(seqs) -> np.ndarray:
    """h of each of a list of (n,) id arrays -> (len(seqs),) uint64."""
    if not seqs:
        return np.empty(0, np.uint64)
    flat = np.concatenate([np.asarray(s, np.int64) for s in seqs] + [np.empty(0, np.int64)])
    ends = np.cumsum([len(s) for s in seqs])
    return hash_records(flat, ends - [len(s) for s in seqs], ends)


@dataclass
class NoveltyIndex:
    """The sorted hashes of the training (train) and held-out (val) records, memory-mapped."""

    train: np.ndarray
    val: np.ndarray

    def contains(self, hashes) -> tuple:
        """-> (in_train, in_val): (n,) bool each."""
        return _member(self.train, hashes), _member(self.val, hashes)


def _member(sorted_hashes, hashes) -> np.ndarray:
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    return np.asarray(sorted_hashes[at]) == hashes


def novelty_index(store, mode, val_fraction, numbering, records) -> NoveltyIndex:
    """The NoveltyIndex of a text's records, memory-mapped from beside its store, or made now
    (and written there: `<store>.novelty.<key>.{train,val}.npy`, key naming the store's ids, the
    records mode, the split and the numbering of the ids). records: a callable that gives the
    RecordSet, called only to make the index."""
    key = hashlib.sha1(f"{store.header['ids_sha1']} {mode} {val_fraction!r} {numbering}".encode()).hexdigest()[:16]
    paths = {part: store.path.with_name(f"{store.path.name}.novelty.{key}.{part}.npy") for part in ("train", "val")}
    try:
        return NoveltyIndex(*(np.load(paths[part], mmap_mode="r") for part in ("train", "val")))
    except (OSError, ValueError):
        pass
    records = records()
    train, val = split_records(records, val_fraction)
    arrays = {"train": np.sort(hash_records(records.ids, train.starts, train.ends)),
              "val": np.sort(hash_records(records.ids, val.starts, val.ends))}
    for part, array in arrays.items():
        save_npy(paths[part], array)
    return NoveltyIndex(arrays["train"], arrays["val"])
