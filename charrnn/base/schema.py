"""What the metadata of a model file or training checkpoint, and a token store's header, must be,
checked before anything is built from it. In the base layer because both charrnn.training.checkpoint
and charrnn.data.storeheader check with it.

A file is untrusted: its JSON (parsed with limits by charrnn.base.io.parse_json) may hold any type
anywhere, integers of any size, strings with lone surrogates. Every value charrnn uses is checked
here for its type and range: integers fit int64 (sizes are at least 1 and at most MAX_SIZE),
floats are finite, strings are Unicode text, the random generator's state is a PCG64 state, and a
dataclass's fields (TrainConfig, Progress) have the types their annotations name. Each check
raises CharrnnError saying where in the metadata the fault is; messages never echo a value
whole (`describe`).
"""
from dataclasses import fields

from charrnn.base.checks import is_integer, is_text

INT64 = 1 << 63
MAX_SIZE = (1 << 31) - 1  # vocab_size, num_hiddens, batch_size, ...: one array dimension
SHA1_DIGITS = frozenset("0123456789abcdef")


def describe(value) -> str:
    """A short description of an untrusted value, safe to print (no huge or nested repr)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if is_integer(value):
        return repr(value) if abs(value) < 10**20 else "an integer of more than 20 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value[:40].encode("utf-8", "backslashreplace").decode("utf-8")
        return repr(shown) + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    return type(value).__name__


class SchemaError(Exception):
    """A value that breaks the schema; the reader adds the file's name (CharrnnError)."""


def refuse(where, must, value):
    raise SchemaError(f"{where} must be {must}, got {describe(value)}")


def integer(value, where, minimum=-INT64, maximum=INT64 - 1) -> int:
    if not is_integer(value) or not minimum <= value <= maximum:
        refuse(where, f"an integer in [{minimum:,}, {maximum:,}]", value)
    return int(value)


def size(value, where) -> int:
    return integer(value, where, 1, MAX_SIZE)


def number(value, where) -> float:
    """A finite number (a JSON integer counts if it fits a float)."""
    if is_integer(value) and -INT64 <= value < INT64:
        return float(value)
    if not isinstance(value, float) or value != value or value in (float("inf"), float("-inf")):
        refuse(where, "a finite number", value)
    return value


def text(value, where) -> str:
    """A string that is Unicode text: no lone surrogates, which cannot be printed or saved."""
    if not isinstance(value, str):
        refuse(where, "a string", value)
    if not is_text(value):
        refuse(where, "Unicode text (it holds a lone surrogate)", value)
    return value


def choice(value, choices, where):
    if not isinstance(value, str) or value not in choices:
        refuse(where, f"one of {', '.join(choices)}", value)
    return value


def obj(value, where, keys=None) -> dict:
    """A JSON object; with `keys`, exactly those."""
    if not isinstance(value, dict):
        refuse(where, "an object", value)
    if keys is not None and set(value) != set(keys):
        raise SchemaError(f"{where} must have exactly the keys {', '.join(sorted(keys))}, "
                          f"got {', '.join(describe(key) for key in sorted(value)[:10])}")
    return value


def sha1(value, where) -> str:
    if not (isinstance(value, str) and len(value) == 40 and set(value) <= SHA1_DIGITS):
        refuse(where, "a SHA-1 (40 hexadecimal digits)", value)
    return value


# the annotations of TrainConfig and Progress fields (strings: `from __future__ import annotations`)
KINDS = {"int": integer, "float": number, "str": text}


def dataclass_fields(cls, value, where, required=True) -> dict:
    """`value` as keyword arguments of dataclass `cls`: an object whose keys are fields of `cls`
    (all of them if `required`), each value of the type its annotation names ("int",
    "float | None", ...). Ranges are `cls`'s own to check."""
    obj(value, where)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise SchemaError(f"{where} has unknown fields {', '.join(describe(name) for name in unknown[:5])}")
    missing = sorted(set(known) - set(value))
    if required and missing:
        raise SchemaError(f"{where} lacks the fields {', '.join(missing[:5])}")
    for name, item in value.items():
        kinds = [kind.strip() for kind in str(known[name].type).split("|")]
        if item is None and "None" in kinds:
            continue
        checks = [KINDS[kind] for kind in kinds if kind in KINDS]
        if not checks:
            continue  # a type this schema does not know: the class checks it
        errors = []
        for check in checks:
            try:
                check(item, f"{where}.{name}")
                break
            except SchemaError as err:
                errors.append(err)
        else:
            raise errors[-1] if len(checks) == 1 else SchemaError(
                f"{where}.{name} must be {' or '.join(kinds)}, got {describe(item)}")
    return value


def vocab_dict(value, vocab_size, where="vocab") -> dict:
    """A Vocab.to_dict of exactly `vocab_size` tokens of text with counts that fit int64."""
    obj(value, where, keys=("idx_to_token", "token_freqs"))
    tokens, freqs = value["idx_to_token"], value["token_freqs"]
    if not isinstance(tokens, list):
        refuse(f"{where}.idx_to_token", "a list", tokens)
    if len(tokens) != vocab_size:
        raise SchemaError(f"vocabulary of {len(tokens)} tokens for a model of {vocab_size}")
    for i, token in enumerate(tokens):
        text(token, f"{where}.idx_to_token[{i}]")
    if not isinstance(freqs, list) or not freqs:
        refuse(f"{where}.token_freqs", "a list of the text's token counts", freqs)
    for i, pair in enumerate(freqs):
        if not (isinstance(pair, list) and len(pair) == 2):
            refuse(f"{where}.token_freqs[{i}]", "a [token, count] pair", pair)
        text(pair[0], f"{where}.token_freqs[{i}][0]")
        integer(pair[1], f"{where}.token_freqs[{i}][1]", 0)
    return value


def optimizer_meta(value, name, where="optimizer") -> dict:
    """Optimizer.state_meta() of optimizer `name`."""
    obj(value, where, keys=("name", "lr", "steps"))
    choice(value["name"], (name,), f"{where}.name (the config's optimizer)")
    number(value["lr"], f"{where}.lr")
    integer(value["steps"], f"{where}.steps", 0, 1 << 62)
    return value


def pcg64_state(value, where="rng") -> dict:
    """numpy.random.PCG64().state: a 128-bit state and increment, a buffered 32-bit draw."""
    obj(value, where, keys=("bit_generator", "state", "has_uint32", "uinteger"))
    choice(value["bit_generator"], ("PCG64",), f"{where}.bit_generator")
    obj(value["state"], f"{where}.state", keys=("state", "inc"))
    for key in ("state", "inc"):
        integer(value["state"][key], f"{where}.state.{key}", 0, (1 << 128) - 1)
    integer(value["has_uint32"], f"{where}.has_uint32", 0, 1)
    integer(value["uinteger"], f"{where}.uinteger", 0, (1 << 32) - 1)
    return value

