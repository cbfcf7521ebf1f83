"""Minibatch samplers over a corpus of token ids (d2l §9.3.4), and the train/validation split.

corpus: (num_tokens,) ids of any unsigned or signed integer type, typically the read-only
memory map of a token store (charrnn.store) -> X, Y: (batch_size, num_steps) int32, with
Y[:, t] the token that follows X[:, t]. Only the minibatch at hand is read from the corpus,
and the bookkeeping of an epoch is a few bytes per subsequence at most, so that a corpus
larger than memory trains in bounded memory.
"""
import numpy as np

from .checks import check_int
from .errors import CharrnnError

_SHUFFLE_IN_MEMORY = 1 << 22  # subsequences the random sampler shuffles as one array


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
    return _minibatches(corpus, starts, num_steps)


def seq_data_iter_sequential(corpus, batch_size, num_steps, rng):
    """Minibatches in which row i continues exactly where row i of the previous minibatch ended,
    from a random offset (d2l §9.3.4) -> iterator of (X, Y), each (batch_size, num_steps) int32.
    rng: np.random.Generator. Arguments are checked at the call, not at the first minibatch."""
    corpus, offset = _checked_corpus_and_offset(corpus, batch_size, num_steps, rng)
    row_len = (len(corpus) - offset - 1) // batch_size
    num_batches = row_len // num_steps
    row_starts = offset + row_len * np.arange(batch_size)
    return _minibatches(corpus, (row_starts + num_steps * b for b in range(num_batches)), num_steps)


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


def _minibatches(corpus: np.ndarray, starts, num_steps: int):
    """starts: an iterable of (batch_size,) start positions -> for each, X[b, t] =
    corpus[starts[b] + t] and Y[b, t] = corpus[starts[b] + t + 1], both (batch_size, num_steps)
    int32, C-contiguous. corpus may be a memory map of narrower ids: only X and Y are read."""
    steps = np.arange(num_steps)
    for batch_starts in starts:
        positions = batch_starts[:, None] + steps
        yield (corpus[positions].astype(np.int32, copy=False),
               corpus[positions + 1].astype(np.int32, copy=False))


# the minibatch samplers by name (TrainConfig.sampler, the CLI's --sampler)
SAMPLERS = {"sequential": seq_data_iter_sequential, "random": seq_data_iter_random}
