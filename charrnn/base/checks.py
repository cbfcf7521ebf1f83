"""One place for each rule an argument must meet, used by every layer (data, model, training, CLI).

Each `check_*` returns the value it accepted and raises CharrnnError with a one-line message
naming the argument otherwise; each `is_*` answers the same question without raising.
"""
import math
from numbers import Integral, Real

from charrnn.base.errors import CharrnnError


def is_integer(value) -> bool:
    """An int or NumPy integer, not a bool (JSON true is no count)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int, float or NumPy number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_finite(value) -> bool:
    """A finite real number, not a bool (an integer too large for a float is not)."""
    try:
        return is_real(value) and math.isfinite(value)
    except OverflowError:
        return False


def is_text(value) -> bool:
    """A string that is Unicode text: no lone surrogates (what Python makes of bytes that are not
    UTF-8 in a file name or argument), which can be neither printed nor saved as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_int(value, name, minimum=None) -> int:
    """An integer (not a bool) >= minimum -> int(value); anything else -> CharrnnError."""
    if not is_integer(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise CharrnnError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_finite(value, name) -> float:
    """A finite real number (not a bool) -> float(value); anything else -> CharrnnError."""
    if not is_finite(value):
        raise CharrnnError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_choice(value, choices, what):
    """`value` if it is one of `choices`, else CharrnnError "unknown <what> ... (choose from ...)"."""
    if value not in tuple(choices):
        raise CharrnnError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")
    return value
