"""What a token store's header (charrnn.data.store) must be, checked as a checkpoint's metadata is
(charrnn.base.schema) before anything is built from it."""
from charrnn.base.schema import choice, integer, obj, refuse, sha1, text, vocab_dict

STORE_HEADER_KEYS = ("format", "version", "text", "level", "preprocess", "min_freq", "max_vocab", "dtype",
                     "num_tokens", "dropped_letters", "ids_sha1", "vocab")


def token_store_header(value, levels, modes, dtypes, where="header") -> dict:
    """A token store's header (charrnn.data.store): exactly its keys, integers in int64, Unicode text,
    the settings among `levels`, `modes` and `dtypes`, the vocabulary as vocab_dict takes it."""
    obj(value, where, STORE_HEADER_KEYS)
    text_record = obj(value["text"], "text", ("path", "size", "mtime_ns", "sha1"))
    text(text_record["path"], "text.path")
    integer(text_record["size"], "text.size", 0)
    integer(text_record["mtime_ns"], "text.mtime_ns")
    sha1(text_record["sha1"], "text.sha1")
    choice(value["level"], levels, "level")
    choice(value["preprocess"], modes, "preprocess")
    integer(value["min_freq"], "min_freq", 0)
    if value["max_vocab"] is not None:
        integer(value["max_vocab"], "max_vocab", 0)
    choice(value["dtype"], dtypes, "dtype")
    integer(value["num_tokens"], "num_tokens", 1)
    sha1(value["ids_sha1"], "ids_sha1")
    dropped = value["dropped_letters"]
    if not (isinstance(dropped, list) and len(dropped) == 2):
        refuse("dropped_letters", "a [count, letters] pair", dropped)
    integer(dropped[0], "dropped_letters[0]", 0)
    text(dropped[1], "dropped_letters[1]")
    tokens = value["vocab"].get("idx_to_token") if isinstance(value["vocab"], dict) else None
    vocab_dict(value["vocab"], len(tokens) if isinstance(tokens, list) else 0)
    return value
