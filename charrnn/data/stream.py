"""Streamed tokenization: a text file read in pieces of bounded size -> token ids and counts.

file -> byte pieces (the first checked for binary content) -> whole UTF-8 characters (a
character cut by a piece boundary is carried to the next piece) -> the d2l rule on bytes (a run
of non-letters across a boundary is still one space) -> tokens: code points, or words (a word
cut by a boundary is carried) -> ids in order of first sight, with counts.

The ids are provisional: the vocabulary orders tokens by their counts over the whole text
(charrnn.data.corpus.Vocab), known only at the end. charrnn.data.store renumbers them. Memory is a small
multiple of the piece size, whatever the length of the text.
"""
from __future__ import annotations

import codecs
from itertools import repeat

import numpy as np

from charrnn.data.text import (BOM, check_no_nul, check_text_head, not_utf8_error, preprocess_d2l_bytes,
                   universal_newlines)
from charrnn.base.errors import CharrnnError

PIECE_BYTES = 1 << 22  # bytes read at a time
HEAD_BYTES = 1 << 16  # at least this much of the start is checked for binary content first
ID_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


def id_dtype(num_ids: int) -> np.dtype:
    """The narrowest unsigned type that holds the ids 0 .. num_ids - 1."""
    for dtype in ID_DTYPES:
        if num_ids <= np.iinfo(dtype).max + 1:
            return dtype
    raise CharrnnError(f"{num_ids:,} distinct tokens do not fit in 32-bit ids")


# ----------------------------------------------------------------------------- pieces of a file

def byte_pieces(f, path, piece_bytes=PIECE_BYTES, on_read=None):
    """The bytes of the open binary file `f`, `piece_bytes` at a time, a leading byte order
    mark dropped. The first max(piece_bytes, HEAD_BYTES) bytes are checked to look like text
    before anything is yielded; a NUL byte further on is refused too.
    on_read(raw) is called with every block read (the byte order mark included), e.g. to hash."""
    head = _read(f, max(piece_bytes, HEAD_BYTES), path)
    check_text_head(head, path)
    if on_read:
        on_read(head)
    head = head.removeprefix(BOM)
    for start in range(0, len(head), piece_bytes):
        yield head[start:start + piece_bytes]
    while block := _read(f, piece_bytes, path):
        check_no_nul(block, path)
        if on_read:
            on_read(block)
        yield block


def _read(f, size: int, path) -> bytes:
    try:
        return f.read(size)
    except OSError as err:
        raise CharrnnError(f"cannot read {path}: {err.strerror or err}") from None


def utf8_pieces(pieces, path):
    """Byte pieces -> (bytes, text) pieces of whole UTF-8 characters: the bytes of a character
    cut by a piece boundary wait for the next piece. Bytes that are not UTF-8 -> CharrnnError
    naming their offset (counted after the byte order mark, as charrnn.data.corpus.read_text does)."""
    pending, offset = b"", 0
    for piece in pieces:
        data = pending + piece
        try:
            text, used = codecs.utf_8_decode(data, "strict", False)
        except UnicodeDecodeError as err:
            raise not_utf8_error(path, err, offset) from None
        pending = data[used:]
        offset += used
        yield data[:used], text
    if pending:  # the text ends inside a character
        try:
            codecs.utf_8_decode(pending, "strict", True)
        except UnicodeDecodeError as err:
            raise not_utf8_error(path, err, offset) from None


def newline_pieces(pieces):
    """(bytes, text) pieces -> the same with universal newlines (\r\n and \r -> \n), as
    charrnn.data.corpus reads a text: a \r that ends a piece waits for the next, which may begin
    with the \n of the same \r\n."""
    held = False  # whether the previous piece ended with a \r, held back
    for data, text in pieces:
        if held:
            data, text = b"\r" + data, "\r" + text
        held = text.endswith("\r")
        if held:
            data, text = data[:-1], text[:-1]
        yield universal_newlines(data), universal_newlines(text)
    if held:
        yield b"\n", "\n"


class CodePointCounts:
    """Occurrences by code point of the characters of the pieces that are not all ASCII, piece
    by piece: charrnn.data.text.letters_among finds there the letters d2l preprocessing drops."""

    def __init__(self):
        self.counts = np.zeros(0, np.int64)

    def add(self, text: str) -> None:
        if text.isascii():
            return
        piece_counts = np.bincount(np.frombuffer(text.encode("utf-32-le"), np.uint32))  # ASCII too: cheaper
        if len(piece_counts) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(piece_counts) - len(self.counts), np.int64)])
        self.counts[:len(piece_counts)] += piece_counts


def token_pieces(pieces, level: str, preprocess: str, dropped=None):
    """(bytes, text) pieces -> token pieces, as charrnn.data.corpus.tokenize would cut the whole text:
    level 'char': code points, a (n,) uint8 or uint32 array per piece; 'word': a list of the
    whitespace-separated words per piece (a word cut by a boundary is carried to the next).
    dropped: a CodePointCounts that counts what d2l preprocessing drops, or None."""
    after_letter, carry = True, ""
    for data, text in pieces:
        if preprocess == "d2l":
            if dropped is not None:
                dropped.add(text)
            kept, after_letter = preprocess_d2l_bytes(data, after_letter)
            if level == "char":
                yield kept
                continue
            text = kept.tobytes().decode("ascii")
        elif level == "char":
            yield (np.frombuffer(data, np.uint8) if data.isascii()
                   else np.frombuffer(text.encode("utf-32-le"), np.uint32))
            continue
        text = carry + text
        words = text.split()
        carry = words.pop() if words and not text[-1].isspace() else ""
        yield words
    if carry:
        yield [carry]


# ----------------------------------------------------------------------------- first-sight ids

class CharIds:
    """Characters -> ids in order of first sight, by a table indexed by code point."""

    def __init__(self):
        self.table = np.full(256, -1, np.int32)
        self.code_points = []

    def __len__(self) -> int:
        return len(self.code_points)

    def ids(self, code_points: np.ndarray) -> np.ndarray:
        """(n,) code points -> (n,) int32 ids; unseen characters get the next ids."""
        if len(code_points) and code_points.max() >= len(self.table):
            grown = np.full(max(2 * len(self.table), int(code_points.max()) + 1), -1, np.int32)
            grown[:len(self.table)] = self.table
            self.table = grown
        ids = np.take(self.table, code_points)
        unseen = ids < 0
        if unseen.any():
            new = np.unique(code_points[unseen])
            self.table[new] = np.arange(len(self), len(self) + len(new))
            self.code_points.extend(new.tolist())
            ids = np.take(self.table, code_points)
        return ids

    def tokens(self) -> list:
        return list(map(chr, self.code_points))


class WordIds:
    """Words -> ids in order of first sight, by a dict."""

    def __init__(self):
        self.index = {}

    def __len__(self) -> int:
        return len(self.index)

    def ids(self, words: list) -> np.ndarray:
        """A list of n words -> (n,) int64 ids; unseen words get the next ids."""
        ids = np.fromiter(map(self.index.get, words, repeat(-1)), np.int64, count=len(words))
        for i in np.flatnonzero(ids < 0).tolist():
            ids[i] = self.index.setdefault(words[i], len(self.index))
        return ids

    def tokens(self) -> list:
        return list(self.index)


class IdFile:
    """Ids appended to an open scratch file ("w+b") in the narrowest type that holds them so
    far; when a new id does not fit, what was written is widened in place (from the end)."""

    CHUNK = 1 << 22  # ids converted at a time

    def __init__(self, f):
        self.f, self.dtype, self.count = f, ID_DTYPES[0], 0

    def append(self, ids: np.ndarray, num_ids: int) -> None:
        """Append `ids`, all < num_ids."""
        needed = id_dtype(num_ids)
        if needed.itemsize > self.dtype.itemsize:
            self._widen(needed)
        self.f.write(ids.astype(self.dtype).data)
        self.count += len(ids)

    def _widen(self, dtype: np.dtype) -> None:
        old = self.dtype
        for start in reversed(range(0, self.count, self.CHUNK)):  # new places lie after the old
            n = min(self.CHUNK, self.count - start)
            self.f.seek(start * old.itemsize)
            chunk = np.frombuffer(self.f.read(n * old.itemsize), old)
            self.f.seek(start * dtype.itemsize)
            self.f.write(chunk.astype(dtype).tobytes())
        self.f.seek(self.count * dtype.itemsize)
        self.dtype = dtype

    def chunks(self):
        """The ids written, from the start, CHUNK at a time."""
        self.f.flush()
        for start in range(0, self.count, self.CHUNK):
            n = min(self.CHUNK, self.count - start)
            self.f.seek(start * self.dtype.itemsize)
            yield np.frombuffer(self.f.read(n * self.dtype.itemsize), self.dtype)


def tokenize_stream(f, path, level: str, preprocess: str, id_file: IdFile, piece_bytes=PIECE_BYTES,
                    on_read=None, dropped=None):
    """Tokenize the open text file `f` in one streamed pass, appending first-sight ids to
    `id_file` -> (tokens: list of str, the token of each id; counts: (len(tokens),) int64).
    dropped: as in token_pieces."""
    seen = CharIds() if level == "char" else WordIds()
    counts = np.zeros(256, np.int64)
    texts = newline_pieces(utf8_pieces(byte_pieces(f, path, piece_bytes, on_read), path))
    pieces = token_pieces(texts, level, preprocess, dropped)
    for tokens in pieces:
        ids = seen.ids(tokens)
        if len(seen) > len(counts):
            counts = np.concatenate([counts, np.zeros(max(len(counts), len(seen)), np.int64)])
        piece_counts = np.bincount(ids)
        counts[:len(piece_counts)] += piece_counts
        id_file.append(ids, len(seen))
    return seen.tokens(), counts[:len(seen)]
