"""Minibatch samplers over a corpus of token ids (d2l §9.3.4), and the train/validation split.

corpus: (num_tokens,) ids of any unsigned or signed integer type, typically the read-only
memory map of a token store (charrnn.data.store) -> X, Y: (batch_size, num_steps) int32, with
Y[:, t] the token that follows X[:, t]. Only the minibatch at hand is read from the corpus,
and the bookkeeping of an epoch is a few bytes per subsequence at most, so that a corpus
larger than memory trains in bounded memory.
"""
import mmap

import numpy as np

from charrnn.base.checks import check_int
from charrnn.base.errors import CharrnnError

_SHUFFLE_IN_MEMORY = 1 << 22  # subsequences the random sampler shuffles as one array
RELEASE_BYTES = 1 << 20  # a row read left to right moves on this far between two release_pages


def split_corpus(corpus, val_fraction=0.1):
    """(train, val): the last int(val_fraction * len(corpus)) tokens are held out (views)."""
    if not 0 <= val_fraction < 1:
        raise CharrnnError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    num_train = len(corpus) - int(len(corpus) * val_fraction)
    return corpus[:num_train], corpus[num_train:]


def num_minibatches(corpus_len: int, batch_size: int, num_steps: int) -> int:
    """Minibatches per epoch of either sampler when its offset is 0. This is an upper bound:
    a random offset gives this many or one fewer (and at least 1 where one minibatch fits)."""
    check_int(corpus_len, "corpus_len", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_steps, "num_steps", minimum=1)
    return max(corpus_len - 1, 0) // (batch_size * num_steps)


def seq_data_iter_random(corpus, batch_size, num_steps, rng):
    """Minibatches of non-overlapping subsequences in random order, cut from a random offset
    (d2l §9.3.4) -> iterator of (X, Y), each (batch_size, num_steps) int32.
    rng: np.random.Generator. Arguments are checked at the call, not at the first minibatch.
    Memory: the order of up to _SHUFFLE_IN_MEMORY subsequences is drawn as a whole
    (rng.shuffle); beyond that it is a keyed permutation computed a minibatch at a time."""
    corpus, offset = _checked_corpus_and_offset(corpus, batch_size, num_steps, rng)
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    num_batches = num_subseqs // batch_size
    if num_subseqs <= _SHUFFLE_IN_MEMORY:
        order = np.arange(num_subseqs, dtype=np.int32)
        rng.shuffle(order)  # the same draws, so the same order, as rng.permutation(num_subseqs)
        take = order.__getitem__
    else:
        take = KeyedPermutation(num_subseqs, rng).take
    starts = (offset + num_steps * take(slice(b * batch_size, (b + 1) * batch_size)).astype(np.int64)
              for b in range(num_batches))
    return _minibatches(corpus, starts, num_steps, release_every=1)


def seq_data_iter_sequential(corpus, batch_size, num_steps, rng):
    """Minibatches in which row i continues exactly where row i of the previous minibatch ended,
    from a random offset (d2l §9.3.4) -> iterator of (X, Y), each (batch_size, num_steps) int32.
    rng: np.random.Generator. Arguments are checked at the call, not at the first minibatch."""
    corpus, offset = _checked_corpus_and_offset(corpus, batch_size, num_steps, rng)
    row_len = (len(corpus) - offset - 1) // batch_size
    num_batches = row_len // num_steps
    row_starts = offset + row_len * np.arange(batch_size)
    return _minibatches(corpus, (row_starts + num_steps * b for b in range(num_batches)), num_steps,
                        release_every=batches_per_release(num_steps, corpus.itemsize))


class KeyedPermutation:
    """A pseudo-random permutation of range(n) in O(1) memory: a 4-round Feistel network on
    2h bits (4**h >= n) with round keys drawn from rng, whose values >= n are sent through it
    again until they fall in range ("cycle walking", Black & Rogaway 2002)."""

    ROUNDS = 4

    def __init__(self, n: int, rng):
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = rng.integers(0, 2**63, size=self.ROUNDS, dtype=np.uint64)

    def take(self, positions: slice) -> np.ndarray:
        """The permutation's values at range(n)[positions] -> int64 array."""
        x = np.arange(*positions.indices(self.n), dtype=np.uint64)
        y = self._feistel(x)
        outside = np.flatnonzero(y >= self.n)
        while len(outside):
            y[outside] = self._feistel(y[outside])
            outside = outside[y[outside] >= self.n]
        return y.astype(np.int64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix64(right ^ key) & self.mask)
        return (left << np.uint64(self.half)) | right


def _mix64(z: np.ndarray) -> np.ndarray:
    """A 64-bit mixing function (the finaliser of splitmix64), wrapping modulo 2**64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _checked_corpus_and_offset(corpus, batch_size, num_steps, rng):
    """The corpus as a 1-D integer array and a random offset in [0, num_steps), narrowed for a
    short corpus so that at least one minibatch always fits."""
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_steps, "num_steps", minimum=1)
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or not np.issubdtype(corpus.dtype, np.integer):
        raise CharrnnError(f"a corpus must be a 1-D integer array, got {corpus.ndim}-D {corpus.dtype}")
    needed = batch_size * num_steps + 1
    if len(corpus) < needed:
        raise CharrnnError(f"a corpus of {len(corpus)} tokens is too short for one minibatch of "
                           f"batch_size={batch_size} x num_steps={num_steps} "
                           f"(needs at least {needed} tokens)")
    return corpus, int(rng.integers(min(num_steps, len(corpus) - needed + 1)))


def _minibatches(corpus: np.ndarray, starts, num_steps: int, release_every: int):
    """starts: an iterable of (batch_size,) start positions -> for each, X[b, t] =
    corpus[starts[b] + t] and Y[b, t] = corpus[starts[b] + t + 1], both (batch_size, num_steps)
    int32, C-contiguous. corpus may be a memory map of narrower ids: only X and Y are read, and
    the pages mapped are released every `release_every` minibatches (release_pages)."""
    steps, mapping = np.arange(num_steps), memory_map_of(corpus)
    for b, batch_starts in enumerate(starts, 1):
        positions = batch_starts[:, None] + steps
        X, Y = corpus[positions].astype(np.int32), corpus[positions + 1].astype(np.int32)
        if mapping is not None and b % release_every == 0:
            release_pages(mapping)
        yield X, Y


def batches_per_release(num_steps: int, itemsize: int) -> int:
    """How many steps of rows read left to right (the sequential sampler, evaluation) go between
    two release_pages: each row moves on RELEASE_BYTES meanwhile, a page-cache folio or two."""
    return max(1, RELEASE_BYTES // (num_steps * itemsize))


def memory_map_of(ids: np.ndarray):
    """The mmap.mmap an array's memory belongs to (a token store's ids and views of them), or None."""
    base = ids
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base  # np.frombuffer's base
    return base if isinstance(base, mmap.mmap) else None


def release_pages(mapping) -> None:
    """Unmap the pages of `mapping` (from memory_map_of) from this process. They stay in the
    page cache; the next read maps them again. Reading a few bytes of a file mapping maps a
    whole page-cache folio (up to MBs here), so without this a long run over a large store
    would count most of the store in its resident memory."""
    if hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


# the minibatch samplers by name (TrainConfig.sampler, the CLI's --sampler)
SAMPLERS = {"sequential": seq_data_iter_sequential, "random": seq_data_iter_random}
