"""The server's limits and the checks of a request against them, with no web code.

Every request is a JSON object whose fields are checked here: type (a bool is not a number),
range, and the limits of `Limits`. What fails gets a RequestError: an HTTP status (400 bad
input, 404 unknown run, 413 over a size limit, 422 a text the run cannot read, 429 busy) and
one line saying why, which the server sends as {"error": ..., "status": ...}.
"""
import json
import math
from dataclasses import asdict, dataclass

from charrnn.base.checks import is_text


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much work the server takes on at once."""

    max_body_bytes: int = 256 << 10  # a request body, before it is parsed
    max_text_chars: int = 10_000  # text of /api/probs and /api/score, prefix of /api/generate
    max_activation_chars: int = 2_000  # text of /api/activations (its answer grows with it)
    max_activation_values: int = 4_000_000  # characters x layers x states x units in one answer
    max_length: int = 2_000  # tokens generated per sample
    max_n: int = 8  # samples per generation request
    max_top: int = 1_000  # next tokens listed by /api/probs
    max_temperature: float = 100.0
    max_generations: int = 4  # generation streams at once; more -> 429
    max_pending: int = 32  # other requests computing or waiting for a model at once; more -> 429

    def describe(self) -> dict:
        return asdict(self)


class RequestError(Exception):
    """A request the server refuses: `status` (4xx) and a one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def parse_body(body: bytes, limits: Limits) -> dict:
    """A request body -> the JSON object it holds; anything else -> RequestError 400 (413 if too large)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"the request body is over {limits.max_body_bytes:,} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise RequestError(400, f"the request body is not JSON: {str(err)[:200]}") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class Fields:
    """The fields of one request, taken one by one; `done()` refuses any that was not asked for."""

    def __init__(self, body: dict, limits: Limits):
        self.body, self.limits, self.taken = body, limits, set()

    def _get(self, name, default):
        self.taken.add(name)
        return self.body.get(name, default)

    def text(self, name, max_chars, default=None) -> str:
        value = self._get(name, default)
        if value is None:
            raise RequestError(400, f"'{name}' is required: a string")
        if not isinstance(value, str):
            raise RequestError(400, f"'{name}' must be a string, not {json_type(value)}")
        if not is_text(value):
            raise RequestError(400, f"'{name}' is not Unicode text (it holds a lone surrogate)")
        if len(value) > max_chars:
            raise RequestError(413, f"'{name}' has {len(value):,} characters, over the limit of {max_chars:,}")
        return value

    def integer(self, name, default, low, high) -> int:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(400, f"'{name}' must be an integer, not {json_type(value)}")
        if not low <= value <= high:
            status = 413 if value > high and name in ("length", "n", "top") else 400
            raise RequestError(status, f"'{name}' is {value}, outside [{low}, {high:,}]")
        return value

    def number(self, name, default, low, high) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"'{name}' must be a number, not {json_type(value)}")
        value = float(value)
        if not (math.isfinite(value) and low < value <= high):
            raise RequestError(400, f"'{name}' is {value}, outside ({low}, {high}]")
        return value

    def flag(self, name, default=False) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise RequestError(400, f"'{name}' must be true or false, not {json_type(value)}")
        return value

    def choice(self, name, default, choices):
        value = self._get(name, default)
        if value not in choices:
            raise RequestError(400, f"'{name}' must be one of {', '.join(map(repr, choices))}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.body) - self.taken)
        if unknown:
            raise RequestError(400, f"unknown field {unknown[0]!r} (this endpoint takes "
                                    f"{', '.join(sorted(self.taken))})")


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
