"""Text as charrnn reads it: the checks that a file's bytes are text, universal newlines, the
d2l preprocessing rule (on text, or on UTF-8 bytes piece by piece) and the letters it drops.

One place for each rule, shared by the whole text in memory (charrnn.data.corpus) and the streamed
tokenizer (charrnn.data.stream).
"""
from __future__ import annotations

import warnings

import numpy as np

from charrnn.base.checks import check_choice
from charrnn.base.errors import CharrnnError, CharrnnWarning

PREPROCESS_MODES = ("d2l", "raw")
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, dropped from the start of a text
_CONTROL_BYTES = bytes(b for b in [*range(32), 127] if b not in b"\t\n\v\f\r")
_MAX_CONTROL_FRACTION = 0.1
_D2L_BYTES = bytes(byte | 0x20 if chr(byte).isascii() and chr(byte).isalpha() else ord(" ") for byte in range(256))


# ----------------------------------------------------------------------------- is it text?

def check_text_head(head: bytes, path) -> None:
    """CharrnnError unless the first bytes of a file look like text: not empty, no NUL byte,
    at most _MAX_CONTROL_FRACTION control characters. The streamed reader checks its first
    block with this, so a binary file is refused before gigabytes are read."""
    if not head:
        raise CharrnnError(f"{path} is empty")
    check_no_nul(head, path)
    control_fraction = 1 - len(head.translate(None, _CONTROL_BYTES)) / len(head)
    if control_fraction > _MAX_CONTROL_FRACTION:
        raise CharrnnError(f"{path} looks binary ({control_fraction:.0%} of its bytes are "
                           "control characters), not like UTF-8 text")


def check_no_nul(data: bytes, path) -> None:
    """CharrnnError if `data` (a file's bytes, or a piece of them) holds a NUL byte."""
    if b"\0" in data:
        raise CharrnnError(f"{path} looks binary (it contains NUL bytes), not like UTF-8 text")


def not_utf8_error(path, err: UnicodeDecodeError, offset: int = 0) -> CharrnnError:
    """The error for a file whose bytes fail to decode: `offset` is where err.object starts."""
    return CharrnnError(f"{path} is not UTF-8 text "
                        f"(byte 0x{err.object[err.start]:02x} at offset {offset + err.start})")


def universal_newlines(text):
    """\r\n and \r -> \n, in a str or in UTF-8 bytes."""
    cr, lf = ("\r", "\n") if isinstance(text, str) else (b"\r", b"\n")
    return text.replace(cr + lf, lf).replace(cr, lf) if cr in text else text


def blank_text_error(name, preprocess: str) -> CharrnnError:
    """The error for a text left with nothing but whitespace by preprocessing."""
    hint = " (which keeps only the letters A-Z, a-z; try 'raw')" if preprocess == "d2l" else ""
    return CharrnnError(f"{name} holds nothing but whitespace after {preprocess!r} preprocessing{hint}")


# ----------------------------------------------------------------------------- d2l preprocessing


def preprocess_text(text: str, mode: str) -> str:
    """'raw': the text as it is. 'd2l': every run of characters other than the ASCII letters
    A-Z, a-z becomes one space and letters are lowercased, over the whole text at once
    (d2l §9.2; The Time Machine -> 173,428 characters)."""
    check_choice(mode, PREPROCESS_MODES, "preprocess mode")
    if mode == "raw":
        return text
    return preprocess_d2l_bytes(text.encode("utf-8", "surrogatepass"))[0].tobytes().decode("ascii")


def preprocess_d2l_bytes(data: bytes, after_letter=True):
    """The d2l rule on UTF-8 bytes -> (kept: (m,) uint8 ASCII, whether the last byte was a
    letter). UTF-8 keeps ASCII letters as single bytes and writes everything else with other
    bytes, so bytes suffice. A text read in pieces passes each piece the `after_letter` of the
    one before (True at the start), so that a run of non-letters across a boundary still
    becomes one space."""
    mapped = np.frombuffer(data.translate(_D2L_BYTES), np.uint8)  # a lowercase letter or a space
    is_letter = mapped != ord(" ")
    keep = is_letter.copy()  # a letter, or the first character of a run of non-letters
    keep[1:] |= is_letter[:-1]
    keep[:1] |= after_letter
    return np.compress(keep, mapped), bool(is_letter[-1]) if len(mapped) else after_letter


def dropped_letters(text: str, num_examples: int = 8):
    """The letters 'd2l' preprocessing drops (any alphabet but A-Z, a-z) -> (how many,
    up to num_examples of the most frequent, as a string)."""
    if text.isascii():
        return 0, ""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    return letters_among(np.bincount(codes[codes > 127]) if (codes > 127).any() else np.zeros(0, np.int64),
                         num_examples)


def letters_among(counts: np.ndarray, num_examples: int = 8):
    """counts: occurrences by code point -> (how many occurrences of letters outside ASCII,
    up to num_examples of the most frequent of those, as a string)."""
    present = np.flatnonzero(counts[128:]) + 128
    letters = [(int(counts[c]), chr(c)) for c in present.tolist() if chr(c).isalpha()]
    letters.sort(key=lambda count_letter: -count_letter[0])
    return sum(n for n, _ in letters), "".join(letter for _, letter in letters[:num_examples])


def warn_dropped_letters(text: str, what) -> None:
    """A CharrnnWarning when 'd2l' preprocessing of `text` drops letters outside A-Z."""
    warn_if_letters_dropped(*dropped_letters(text), what, stacklevel=4)


def warn_if_letters_dropped(count: int, examples: str, what, stacklevel=3) -> None:
    """The warning of warn_dropped_letters, from dropped_letters' result."""
    if count:
        warnings.warn(f"'d2l' preprocessing of {what} dropped {count:,} letters outside A-Z "
                      f"(e.g. {examples}); raw preprocessing keeps them", CharrnnWarning, stacklevel=stacklevel)
